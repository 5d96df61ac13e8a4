"""Hostile files: alias bombs, devices, FIFOs, duplicate keys, deep nesting, traces
with odd seconds, paths out of the scenario's folder, runs too large to fit.

Each is refused by the input layer with a message naming the file (and the
field where there is one), in the same way by ``validate`` and by the command
that would run it; none hangs or exhausts memory (the budgets are structural,
so these tests need no timers).
"""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from twin.cli import app
from twin.inputs import SpecError, load_yaml_text, read_bytes
from twin.limits import MAX_EVENTS_PER_REPLICATION, check_work
from twin.load import load_scenario
from twin.spec import Process, topological_order
from twin.workload import read_trace

from .conftest import EXAMPLES

runner = CliRunner()


def _bomb(levels: int, width: int) -> str:
    lines = ['a0: &a0 ["x"]']
    for i in range(1, levels):
        refs = ", ".join([f"*a{i - 1}"] * width)
        lines.append(f"a{i}: &a{i} [{refs}]")
    return "\n".join(lines) + "\n"


def test_an_alias_bomb_is_refused_from_its_size_not_its_expansion() -> None:
    with pytest.raises(SpecError, match="expands to more than"):
        load_yaml_text(_bomb(10, 9), "bomb.yaml")  # 9^9 values when expanded


def test_a_few_aliases_still_work() -> None:
    assert load_yaml_text(_bomb(3, 3), "ok.yaml")["a2"] == [[["x"]] * 3] * 3


def test_an_anchor_used_inside_itself_is_refused() -> None:
    with pytest.raises(SpecError, match=r"rec\.yaml"):
        load_yaml_text("a: &a [1, *a]\n", "rec.yaml")


def test_duplicate_keys_are_refused_with_their_line() -> None:
    with pytest.raises(SpecError, match=r"dup.yaml: .*line 3.*duplicate key 'name'"):
        load_yaml_text("name: a\nservers: []\nname: b\n", "dup.yaml")


def test_deep_nesting_is_refused() -> None:
    with pytest.raises(SpecError, match="deep"):
        load_yaml_text("[" * 200 + "]" * 200, "deep.yaml")


def test_unsafe_tags_are_refused() -> None:
    with pytest.raises(SpecError, match=r"t\.yaml"):
        load_yaml_text("!!python/object/apply:os.system ['true']\n", "t.yaml")


def test_yaml_errors_do_not_quote_the_file() -> None:
    secret = "API_KEY=hunter2-very-secret"
    with pytest.raises(SpecError) as exc:
        load_yaml_text(f"a: [\n{secret}: ]]\n", "s.yaml")
    assert "hunter2" not in str(exc.value)


@pytest.mark.parametrize("target", ["/dev/zero", "/dev/urandom", "/dev/null"])
def test_devices_and_symlinks_to_them_are_refused(tmp_path: Path, target: str) -> None:
    link = tmp_path / "scenario.yaml"
    link.symlink_to(target)
    with pytest.raises(SpecError, match="character device"):
        load_scenario(link)


def test_a_fifo_is_refused_without_blocking(tmp_path: Path) -> None:
    fifo = tmp_path / "scenario.yaml"
    os.mkfifo(fifo)
    with pytest.raises(SpecError, match="FIFO"):
        load_scenario(fifo)


def test_reads_stop_one_byte_past_the_limit(tmp_path: Path) -> None:
    f = tmp_path / "big.yaml"
    f.write_bytes(b"#" * 101)
    with pytest.raises(SpecError, match="larger than"):
        read_bytes(f, 100)
    assert read_bytes(f, 101) == b"#" * 101


# -------------------------------------------------------------------- traces


def _trace(tmp_path: Path, text: str) -> str:
    p = tmp_path / "t.csv"
    p.write_text(text)
    read_trace.cache_clear()
    return str(p)


def test_the_second_column_orders_a_trace(tmp_path: Path) -> None:
    p = _trace(tmp_path, "second,rate_per_s\n2,30\n0,10\n1,20\n4,50\n")
    # second 3 has no row: the rate of second 2 holds
    assert read_trace(p).tolist() == [10, 20, 30, 30, 50]


@pytest.mark.parametrize(
    ("text", "expect"),
    [
        ("second,rate_per_s\n0,1\n0,2\n", "repeats second 0"),
        ("second,rate_per_s\n-1,1\n", "whole seconds ≥ 0"),
        ("second,rate_per_s\n0.5,1\n", "whole seconds ≥ 0"),
        ("second,rate_per_s\nx,1\n", "whole seconds ≥ 0"),
        ("second,rate_per_s\n1e12,1\n", "goes past"),
        ("second,rate_per_s\n0,-3\n", "finite rates ≥ 0"),
        ("second,rate_per_s\n0,nan\n", "finite rates ≥ 0"),
        ("PATH=/secret/value\nHOME=/root\n", "no column"),
    ],
)
def test_bad_traces_are_refused_without_quoting_them(
    tmp_path: Path, text: str, expect: str
) -> None:
    p = _trace(tmp_path, text)
    with pytest.raises(ValueError, match=expect) as exc:
        read_trace(p)
    assert "/secret/value" not in str(exc.value) and p in str(exc.value)


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    st.lists(
        st.tuples(
            st.one_of(st.integers(-5, 50), st.floats(allow_nan=True)),
            st.one_of(st.floats(-10, 1e6), st.just(float("nan"))),
        ),
        max_size=30,
    )
)
def test_fuzz_traces_load_sorted_or_are_refused(tmp_path: Path, rows: list) -> None:
    body = "".join(f"{s},{r}\n" for s, r in rows)
    p = _trace(tmp_path, "second,rate_per_s\n" + body)
    try:
        rates = read_trace(p)
    except ValueError as exc:
        assert p in str(exc)
        return
    by_second = {int(s): r for s, r in rows}
    assert len(by_second) == len(rows)  # no repeated second was accepted
    for s, r in by_second.items():
        assert rates[s] == r


# -------------------------------------------------------------------- scenario paths


def _scenario_with_trace(folder: Path, path: str) -> Path:
    doc = yaml.safe_load((EXAMPLES / "small-placement.yaml").read_text())
    doc["workloads"] = [{"kind": "trace", "name": "t", "path": path}]
    f = folder / "s.yaml"
    f.write_text(yaml.safe_dump(doc))
    return f


@pytest.mark.parametrize(
    ("path", "expect"),
    [
        ("../../etc/passwd.csv", "leaves the scenario's folder"),
        ("/proc/self/environ", "not a .csv"),
        ("missing.csv", "file not found"),
    ],
)
def test_trace_paths_stay_in_the_scenario_folder_and_validate_checks_them(
    tmp_path: Path, path: str, expect: str
) -> None:
    f = _scenario_with_trace(tmp_path, path)
    r = runner.invoke(app, ["validate", str(f)])
    assert r.exit_code == 2 and expect in r.output and "workloads[0].path" in r.output


# -------------------------------------------------------------------- work budget


def _fast_scenario(tmp_path: Path, rate: float) -> tuple[Path, Path]:
    doc = yaml.safe_load((EXAMPLES / "small-placement.yaml").read_text())
    for p in doc["processes"]:
        if p.get("arrivals", {}).get("kind") == "poisson":
            p["arrivals"]["rate_per_s"] = rate
    f = tmp_path / "fast.yaml"
    f.write_text(yaml.safe_dump(doc))
    return f, EXAMPLES / "small-placement.yaml"


def test_validate_refuses_what_simulate_would_refuse_and_force_lets_both_through(
    tmp_path: Path,
) -> None:
    f, _ = _fast_scenario(tmp_path, 3e6)
    v = runner.invoke(app, ["validate", str(f)])
    assert v.exit_code == 2 and "budget" in v.output and "processes[" in v.output
    sc = load_scenario(f)
    with pytest.raises(SpecError, match="budget"):
        check_work(sc, None, 3600, 10)
    assert check_work(sc, None, 3600, 10, force=True) > MAX_EVENTS_PER_REPLICATION
    assert runner.invoke(app, ["validate", str(f), "--force"]).exit_code == 0


@pytest.mark.parametrize("horizon", [1e9, float("inf"), -1.0])
def test_absurd_horizons_are_refused_at_once(horizon: float) -> None:
    sc = load_scenario(EXAMPLES / "small-placement.yaml")
    # the value came from the command line: the option is named, not the file
    with pytest.raises(SpecError, match="--horizon") as e:
        check_work(sc, None, horizon, 1, source="s.yaml")
    assert "s.yaml" not in str(e.value)


def test_the_budget_message_names_the_field_that_sets_the_rate(tmp_path: Path) -> None:
    f, _ = _fast_scenario(tmp_path, 3e6)
    sc = load_scenario(f)
    with pytest.raises(SpecError, match=r"processes\[\d+\]\.arrivals\.rate_per_s"):
        check_work(sc, None, 3600, 1)
    doc = yaml.safe_load((EXAMPLES / "edge-cloud.yaml").read_text())
    doc["workloads"][0]["rate_per_s"] = 1e9
    (tmp_path / "traces").mkdir(exist_ok=True)
    (tmp_path / "traces" / "sample.csv").write_text(
        (EXAMPLES / "traces" / "sample.csv").read_text()
    )
    (tmp_path / "w.yaml").write_text(yaml.safe_dump(doc))
    sc = load_scenario(tmp_path / "w.yaml")
    with pytest.raises(SpecError, match=r"via workloads\[0\]\.rate_per_s"):
        check_work(sc, sc.workloads[0], 3600, 1)


@pytest.mark.parametrize(
    ("path", "field"),
    [
        (("servers", 0, "cpu_cores"), "cpu_cores"),
        (("servers", 1, "ram_gb"), "ram_gb"),
        (("components", 0, "keepalive_cpu_cores"), "keepalive_cpu_cores"),
        (("processes", 1, "arrivals", "period_s"), "period_s"),
    ],
)
def test_physically_absurd_sizes_are_refused_naming_the_field(
    tmp_path: Path, path: tuple, field: str
) -> None:
    doc = yaml.safe_load((EXAMPLES / "edge-cloud.yaml").read_text())
    node = doc
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = 2**80  # used to validate as a machine with 1.2e24 cores
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(doc))
    with pytest.raises(SpecError, match=field) as e:
        load_scenario(tmp_path / "s.yaml")
    assert "s.yaml" in str(e.value)


# -------------------------------------------------------------------- DAG order


def _old_order(process: Process) -> list[str] | None:
    deps = {s.name: list(s.depends_on) for s in process.steps}
    order: list[str] = []
    done: set[str] = set()
    while len(order) < len(deps):
        ready = [n for n, d in deps.items() if n not in done and all(x in done for x in d)]
        if not ready:
            return None
        done.update(ready)
        order.extend(ready)
    return order


@settings(max_examples=100, deadline=None)
@given(st.integers(1, 25), st.integers(0, 2**32 - 1))
def test_linear_topological_order_matches_the_wave_order(n: int, seed: int) -> None:
    rnd = random.Random(seed)
    steps = []
    for i in range(n):
        deps = rnd.sample([f"s{j}" for j in range(i)], k=min(i, rnd.randint(0, 3)))
        steps.append(
            {
                "name": f"s{i}",
                "component": "c",
                "depends_on": deps,
                "cpu_work": {"kind": "constant", "ms": 1},
            }
        )
    rnd.shuffle(steps)
    p = Process.model_validate({"name": "p", "steps": steps, "arrivals": None})
    assert topological_order(p) == _old_order(p)


def test_a_long_chain_is_ordered_and_too_long_ones_are_refused() -> None:
    def chain(n: int) -> dict[str, Any]:
        return {
            "name": "p",
            "steps": [
                {
                    "name": f"s{i}",
                    "component": "c",
                    "depends_on": [f"s{i - 1}"] if i else [],
                    "cpu_work": {"kind": "constant", "ms": 1},
                }
                for i in range(n)
            ],
        }

    p = Process.model_validate(chain(1000))
    assert topological_order(p) == [f"s{i}" for i in range(1000)]
    with pytest.raises(ValueError, match="at most 1000"):
        Process.model_validate(chain(1001))


# -------------------------------------------------------------------- YAML fuzz

yaml_scalars = st.one_of(
    st.integers(-(10**30), 10**30),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
    st.booleans(),
    st.none(),
)
yaml_docs = st.recursive(
    yaml_scalars,
    lambda kids: (
        st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=6), kids, max_size=4)
    ),
    max_leaves=25,
)


@settings(max_examples=200, deadline=None)
@given(yaml_docs, st.integers(0, 2**32 - 1))
def test_fuzz_documents_parse_or_are_refused_by_the_spec(doc: Any, seed: int) -> None:
    text = yaml.safe_dump(doc)
    rnd = np.random.default_rng(seed)
    if rnd.random() < 0.5 and text:  # damage it: flip a few characters
        chars = list(text)
        for i in rnd.integers(0, len(chars), size=3):
            chars[i] = rnd.choice(list("[]{}:&*!-'\"\n\t|>%@`"))
        text = "".join(chars)
    from twin.load import parse
    from twin.spec import Scenario

    try:
        data = load_yaml_text(text, "fuzz.yaml")
        parse(Scenario, data, "fuzz.yaml")
    except SpecError as exc:
        assert str(exc).startswith("fuzz.yaml")
