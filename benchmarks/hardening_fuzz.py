"""Hostile inputs against every file the CLI reads, each in its own capped process.

Run (resumable; each call runs for at most --minutes, then report):
    flock /work/bench.lock .venv/bin/python benchmarks/hardening_fuzz.py --minutes 8
    .venv/bin/python benchmarks/hardening_fuzz.py --report-only

Generates ≥ 500 inputs from one seed — scenarios, deployments, trace CSVs,
calibration files, optimize fronts (``decide``), optimize checkpoints
(``optimize --resume``) and run folders' ``run.json`` (``validate-deployment``)
— and runs the command that reads each as a subprocess under a 10 s timeout
whose peak RSS (``wait4``) must stay under 500 MB, with a 2 GB address-space
cap (``RLIMIT_AS``) that only protects the host; BLAS limited to one thread.
Most inputs are built to be unusable (alias bombs, devices, FIFOs, duplicate
keys, nesting, NaN/∞/negative/mistyped values at known fields, runs above the
work budget, traces with bad seconds, paths out of the folder, damaged tables,
unsigned pickles); some are random mutations of a valid file (usable or not);
a few are valid controls that must succeed.

Counted per file kind, all of which must be 0: hangs (past 10 s), runs over
500 MB (peak RSS, a MemoryError or a "not enough memory" refusal), tracebacks,
exit 0 on an input built to be unusable, and refusals whose message does not
name the file (and, where the input has one, the field). Results accumulate in
``benchmarks/results/hardening_fuzz.jsonl`` with the digest of the product code
they were made on; the table goes to
``benchmarks/results/hardening_fuzz.md``.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import os
import pickle
import random
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import RESULTS, machine_line, markdown_table, write_result

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
# the umbrella CLI (mlops_twin.cli once the lab restructure lands, twin.cli before)
CLI = [
    sys.executable,
    "-m",
    "mlops_twin.cli" if (ROOT / "mlops_twin" / "cli.py").exists() else "twin.cli",
]
TIMEOUT_S = 10.0
MEM_LIMIT_MB = 500  # peak RSS a run may reach
# RLIMIT_AS only guards the host: address space is not memory (importing the optimizer
# alone maps ~580 MB, numba's LLVM more), so a 500 MB address-space cap failed valid runs
MEM_CAP_BYTES = 2 * 2**30
JSONL = RESULTS / "hardening_fuzz.jsonl"
# what a record was made with: the packages the CLI runs and the examples it reads
PRODUCT = ("twin", "mlops_twin", "lab", "optimizer", "calibrate", "loadgen", "testbed", "examples")


def code_version() -> str:
    """A digest of every product source and example file: records made on other code are re-run."""
    h = hashlib.sha256()
    for pkg in PRODUCT:
        for f in sorted((ROOT / pkg).rglob("*")):
            # no case starts a service, so the servers' own code is left out of the digest
            skip = f.is_relative_to(ROOT / "testbed" / "services")
            if f.is_file() and f.suffix in (".py", ".yaml", ".csv", ".json") and not skip:
                h.update(str(f.relative_to(ROOT)).encode() + b"\0" + f.read_bytes())
    return h.hexdigest()[:12]


def git_head() -> str:
    """The checked-out commit, '+' when the tree has changes (for the report only)."""
    try:
        head = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(ROOT), "status", "--porcelain", "--", *PRODUCT],
            capture_output=True,
            text=True,
        ).stdout.strip()
    except OSError:
        return "unknown"
    return head + ("+" if dirty else "")


def case_version(case: Case) -> str:
    """A digest of one case's inputs and expectations (a changed case is re-run)."""
    limits = (TIMEOUT_S, MEM_LIMIT_MB, MEM_CAP_BYTES)
    return hashlib.sha256(repr((asdict(case), limits)).encode()).hexdigest()[:12]


@dataclass
class Case:
    """One hostile input: the files to write, the command, what must happen."""

    id: str
    kind: str  # scenario, deployment, trace, calibration, front, checkpoint, run.json
    what: str  # the class of input, for the table
    argv: list[str]
    files: dict[str, Any] = field(default_factory=dict)  # relative path → text/bytes/special
    usable: bool | None = False  # None: a random mutation, may be either
    names: str = ""  # the file a refusal must name
    field: str = ""  # and the field, when there is one
    marker: str = ""  # a file that must NOT exist afterwards (code ran)


# --------------------------------------------------------------------------- base files


def base_scenario() -> dict[str, Any]:
    return yaml.safe_load((EXAMPLES / "edge-cloud.yaml").read_text())


def base_deployment() -> dict[str, Any]:
    return yaml.safe_load((EXAMPLES / "edge-cloud.deployment.yaml").read_text())


TRACE = (EXAMPLES / "traces" / "sample.csv").read_text()
SIM = ["--horizon", "5", "--replications", "1"]


def scenario_files(doc: Any, *, raw: str | bytes | None = None) -> dict[str, Any]:
    text = raw if raw is not None else yaml.safe_dump(doc, sort_keys=False)
    return {"s.yaml": text, "traces/sample.csv": TRACE, "d.yaml": yaml.safe_dump(base_deployment())}


def digits_scenario() -> str:
    return (EXAMPLES / "digits-pipeline.yaml").read_text()


def base_calibration() -> dict[str, Any]:
    return {
        "kind": "mlops-twin-calibration",
        "version": 2,
        "scenario": "digits-pipeline",
        "fits": [
            {
                "component": "denoise",
                "variant": v,
                "cpu_share": 0.5,
                "n": 40,
                "batches": [1, 8],
                "dist": "lognormal",
                "structure": "affine",
                "service_time": {"kind": "lognormal", "mean_ms": 2.0, "cv": 0.3},
            }
            for v in ("d-small",)
        ],
    }


CRITERIA = ("time_mean_s", "time_var_s2", "overruns", "cost")


def base_front() -> list[dict[str, Any]]:
    alloc = json.dumps(base_deployment()["allocation"])
    return [
        {
            "id": i,
            "allocation": alloc,
            "non_dominated": True,
            **{c: 1.0 + i + k for k, c in enumerate(CRITERIA)},
        }
        for i in range(3)
    ]


def front_csv(rows: list[dict[str, Any]], columns: list[str] | None = None) -> str:
    import csv
    import io

    cols = columns or ["id", "allocation", "non_dominated", *CRITERIA]
    buf = io.StringIO()
    w = csv.DictWriter(buf, cols, extrasaction="ignore")
    w.writeheader()
    for r in rows:
        w.writerow(r)
    return buf.getvalue()


# --------------------------------------------------------------------------- hostile values

BOMB = (
    "\n".join(
        ['a0: &a0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
        + [f"a{i}: &a{i} [" + ",".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, 9)]
    )
    + "\n"
)
SPECIAL = {"@dev/zero": "/dev/zero", "@dev/urandom": "/dev/urandom", "@fifo": None, "@dir": None}
NUMERIC_FIELDS = [
    (("servers", 0, "cpu_cores"), "servers[0].cpu_cores"),
    (("servers", 1, "ram_gb"), "servers[1].ram_gb"),
    (("servers", 0, "count"), "servers[0].count"),
    (("components", 0, "keepalive_cpu_cores"), "components[0].keepalive_cpu_cores"),
    (("components", 0, "max_replicas"), "components[0].max_replicas"),
    (("processes", 0, "arrivals", "rate_per_s"), "processes[0].arrivals.rate_per_s"),
    (("processes", 1, "arrivals", "period_s"), "processes[1].arrivals.period_s"),
    (("workloads", 0, "rate_per_s"), "workloads[0].rate_per_s"),
    (("settings", "cpu_overcommit"), "settings.cpu_overcommit"),
]
BAD_VALUES = [
    ".nan",
    ".inf",
    "-.inf",
    -1,
    0,
    "'12'",
    "yes",
    "[]",
    "{}",
    "null",
    "1e400",
    "-1e400",
    "'" + "9" * 500 + "'",
    str(2**80),
]
RANDOM_VALUES = [
    None,
    True,
    -1,
    0,
    1e308,
    -1e-308,
    float("nan"),
    float("inf"),
    "",
    "x" * 5000,
    [],
    {},
    [[[[[]]]]],
    {"kind": "poisson"},
    2**70,
    "𝔘𝔫𝔦𝔠𝔬𝔡𝔢",
    "../../etc/passwd",
]


def set_path(doc: Any, path: tuple, value: Any) -> None:
    for key in path[:-1]:
        doc = doc[key]
    doc[path[-1]] = value


def yaml_with_raw(doc: dict[str, Any], path: tuple, raw: str) -> str:
    """The document with the value at ``path`` replaced by raw YAML text."""
    marker = "__RAW_VALUE__"
    d = copy.deepcopy(doc)
    set_path(d, path, marker)
    return yaml.safe_dump(d, sort_keys=False, width=10**6).replace(marker, raw)


def random_paths(doc: Any, rnd: random.Random, n: int) -> list[tuple]:
    """Random paths to values of ``doc``."""
    out = []
    for _ in range(n):
        path: list = []
        node = doc
        while isinstance(node, dict | list) and node and (not path or rnd.random() < 0.75):
            key = rnd.choice(list(node)) if isinstance(node, dict) else rnd.randrange(len(node))
            path.append(key)
            node = node[key]
        if path:
            out.append(tuple(path))
    return out


# --------------------------------------------------------------------------- generators


def scenario_cases(rnd: random.Random) -> list[Case]:
    cases: list[Case] = []
    base = base_scenario()
    v = ["validate", "s.yaml"]
    sim = ["simulate", "s.yaml", "-d", "d.yaml", *SIM]

    def add(
        what: str,
        argv: list[str],
        files: dict,
        usable: bool | None = False,
        field_: str = "",
        names: str = "s.yaml",
    ) -> None:
        cases.append(
            Case(f"scenario-{len(cases)}", "scenario", what, argv, files, usable, names, field_)
        )

    add("valid control", v, scenario_files(base), True)
    add("valid control (simulate)", sim, scenario_files(base), True)
    for argv in (v, sim):
        add("alias bomb", argv, scenario_files(None, raw=BOMB))
        add("recursive alias", argv, scenario_files(None, raw="a: &a [1, *a]\n"))
        for special in SPECIAL:
            add(f"not a file: {special[1:]}", argv, {**scenario_files(base), "s.yaml": special})
        add("missing file", argv, {k: x for k, x in scenario_files(base).items() if k != "s.yaml"})
        add("3 MB file", argv, scenario_files(None, raw="# pad\n" * 500_000))
        add("invalid UTF-8", argv, scenario_files(None, raw=b"name: \xff\xfe\x00bad\n"))
        add(
            "binary garbage",
            argv,
            scenario_files(None, raw=bytes(rnd.randrange(256) for _ in range(2000))),
        )
        add(
            "unsafe tag",
            argv,
            scenario_files(None, raw="!!python/object/apply:os.system ['touch ran']\n"),
        )
        add("empty", argv, scenario_files(None, raw=""))
        add("top-level list", argv, scenario_files(None, raw="- 1\n- 2\n"))
        add("deep nesting", argv, scenario_files(None, raw="a: " + "[" * 5000 + "]" * 5000 + "\n"))
        dup = yaml.safe_dump(base, sort_keys=False) + "name: again\n"
        add("duplicate key", argv, scenario_files(None, raw=dup), field_="name")
    # known numeric fields × hostile values: unusable, field must be named
    for path, name in NUMERIC_FIELDS:
        for raw in BAD_VALUES:
            if raw in (0,) and name.endswith(("keepalive_cpu_cores",)):
                continue  # 0 is a valid keep-alive
            add(
                f"bad number ({raw!s:.8})",
                v,
                scenario_files(None, raw=yaml_with_raw(base, path, str(raw))),
                field_=name.split(".")[-1],
            )
    # work budget: accepted field by field, refused for the work they imply
    for rate in (3e5, 3e6, 1e9, 1e12, 1e300):
        d = copy.deepcopy(base)
        d["processes"][0]["arrivals"]["rate_per_s"] = rate
        for argv in (v, [*sim, "-w", "none"]):
            add(f"rate {rate:g}/s", argv, scenario_files(d), field_="processes[0]")
    for period in (1e-3, 1e-6, 1e-9):
        d = copy.deepcopy(base)
        d["processes"][1]["arrivals"]["period_s"] = period
        d["processes"][1]["arrivals"]["offset_s"] = 0
        add(f"period {period:g} s", v, scenario_files(d), field_="processes[1]")
    for rate in (1e7, 1e10):
        d = copy.deepcopy(base)
        d["workloads"][0]["rate_per_s"] = rate
        add(
            f"workload rate {rate:g}/s",
            ["simulate", "s.yaml", "-d", "d.yaml", "-w", "steady-low", *SIM],
            scenario_files(d),
            field_="steady-low",
        )
    for h in ("1e9", "1e300", "inf", "nan"):
        add(
            f"--horizon {h}",
            ["simulate", "s.yaml", "-d", "d.yaml", "--horizon", h, "--replications", "1"],
            scenario_files(base),
            field_="horizon",
            names="--horizon",  # a command-line value: the option is what must be named
        )
    for n in (1001, 5000, 20000):
        d = copy.deepcopy(base)
        steps = [
            {
                "name": f"s{i}",
                "component": "ingest",
                "cpu_work": {"kind": "constant", "ms": 1},
                "depends_on": [f"s{i - 1}"] if i else [],
            }
            for i in range(n)
        ]
        d["processes"][0]["steps"] = steps
        # 20,000 steps (1.8 MB of YAML) pass the size cap only in flow style; either
        # refusal (size or steps) is right, and only the second has a field
        add(f"{n}-step chain", v, scenario_files(d), field_="steps" if n < 20000 else "")
    for n in (1001, 10000):
        d = copy.deepcopy(base)
        d["servers"] = [dict(base["servers"][0], name=f"m{i}") for i in range(n)]
        add(f"{n} server types", v, scenario_files(d), field_="servers")
    # unknown keys anywhere (extra="forbid")
    for path in random_paths(base, rnd, 20):
        d = copy.deepcopy(base)
        node = d
        for key in path[:-1]:
            node = node[key]
        if isinstance(node, dict):
            node["zz_unknown"] = 1
            add("unknown key", v, scenario_files(d), field_="zz_unknown")
    # random mutations: usable or not, but never a hang, a traceback or silence
    for path in random_paths(base, rnd, 70):
        d = copy.deepcopy(base)
        set_path(d, path, rnd.choice(RANDOM_VALUES))
        add("random mutation", rnd.choice([v, sim]), scenario_files(d), None)
    return cases


def deployment_cases(rnd: random.Random) -> list[Case]:
    cases: list[Case] = []
    base = base_deployment()
    scen = yaml.safe_dump(base_scenario())

    def add(
        what: str, files: dict, usable: bool | None = False, field_: str = "", sim: bool = False
    ) -> None:
        argv = (
            ["simulate", "s.yaml", "-d", "d.yaml", *SIM]
            if sim
            else ["validate", "d.yaml", "--scenario", "s.yaml"]
        )
        cases.append(
            Case(
                f"deployment-{len(cases)}",
                "deployment",
                what,
                argv,
                {"s.yaml": scen, "traces/sample.csv": TRACE, **files},
                usable,
                "d.yaml",
                field_,
            )
        )

    add("valid control", {"d.yaml": yaml.safe_dump(base)}, True)
    add("valid control (simulate)", {"d.yaml": yaml.safe_dump(base)}, True, sim=True)
    for sim in (False, True):
        add("alias bomb", {"d.yaml": "allocation:\n" + BOMB.replace("\n", "\n  ")}, sim=sim)
        for special in SPECIAL:
            add(f"not a file: {special[1:]}", {"d.yaml": special}, sim=sim)
        add(
            "duplicate key",
            {"d.yaml": yaml.safe_dump(base) + "name: twice\n"},
            field_="name",
            sim=sim,
        )
    for comp in list(base["allocation"])[:6]:
        machine = next(iter(base["allocation"][comp]))
        for raw in ("-1", ".nan", "1e400", "'2'", "yes", "100000", "2.5"):
            text = yaml_with_raw(base, ("allocation", comp, machine), raw)
            add(f"bad instances ({raw})", {"d.yaml": text}, field_=comp, sim=rnd.random() < 0.3)
    for raw in ("{}", "[]", "null", "'x'"):
        add(
            f"allocation = {raw}",
            {"d.yaml": yaml_with_raw(base, ("allocation",), raw)},
            field_="allocation",
        )
    d = copy.deepcopy(base)
    d["allocation"]["no-such-component"] = {"onprem-1": 1}
    add("unknown component", {"d.yaml": yaml.safe_dump(d)}, field_="no-such-component")
    d = copy.deepcopy(base)
    d["allocation"]["ingest"] = {"no-such-machine": 1}
    add("unknown machine", {"d.yaml": yaml.safe_dump(d)}, field_="no-such-machine")
    for path in random_paths(base, rnd, 40):
        d = copy.deepcopy(base)
        set_path(d, path, rnd.choice(RANDOM_VALUES))
        add("random mutation", {"d.yaml": yaml.safe_dump(d)}, None, sim=rnd.random() < 0.3)
    return cases


def trace_cases(rnd: random.Random) -> list[Case]:
    cases: list[Case] = []
    base = base_scenario()

    def add(
        what: str,
        csv: Any,
        usable: bool | None = False,
        field_: str = "",
        path: str = "traces/t.csv",
        names: str = "t.csv",
    ) -> None:
        d = copy.deepcopy(base)
        d["workloads"] = [{"kind": "trace", "name": "t", "path": path}]
        files = {"s.yaml": yaml.safe_dump(d), "d.yaml": yaml.safe_dump(base_deployment())}
        if csv is not None:
            files["traces/t.csv"] = csv
        argv = (
            ["validate", "s.yaml"]
            if rnd.random() < 0.6
            else ["simulate", "s.yaml", "-d", "d.yaml", "-w", "t", *SIM]
        )
        cases.append(Case(f"trace-{len(cases)}", "trace", what, argv, files, usable, names, field_))

    add("valid control", TRACE, True)
    add("unsorted seconds (valid)", "second,rate_per_s\n2,3\n0,1\n1,2\n", True)
    for _ in range(10):
        add("duplicate second", "second,rate_per_s\n0,1\n1,2\n1,3\n", field_="second")
        add(
            "negative second", f"second,rate_per_s\n{-rnd.randint(1, 99)},1\n0,2\n", field_="second"
        )
        add("fractional second", f"second,rate_per_s\n0,1\n{rnd.random():.3f},2\n", field_="second")
        add(
            "second past the limit",
            f"second,rate_per_s\n0,1\n{rnd.randint(10**7, 10**15)},2\n",
            field_="second",
        )
        add("negative rate", f"second,rate_per_s\n0,{-rnd.random() - 0.1}\n", field_="rate_per_s")
        add("NaN rate", "second,rate_per_s\n0,nan\n1,2\n", field_="rate_per_s")
    add("no rate column", "second,other\n0,1\n", field_="rate_per_s")
    add("header only", "second,rate_per_s\n", field_="rate_per_s")
    add("empty", "")
    add("binary", bytes(rnd.randrange(256) for _ in range(3000)))
    add("secret-looking text", "PATH=/secret/bin\nAWS_SECRET=hunter2\n", field_="rate_per_s")
    for special in SPECIAL:
        add(f"not a file: {special[1:]}", special)
    add("missing", None, field_="path")
    add("40 MB", "second,rate_per_s\n" + "0,1\n" * 10_000_000)
    add(
        "path out of the folder",
        TRACE,
        field_="path",
        path="../../../etc/hosts.csv",
        names="s.yaml",
    )
    add("absolute /proc path", TRACE, field_="path", path="/proc/self/environ", names="s.yaml")
    add("not .csv", TRACE, field_="path", path="traces/t.txt", names="s.yaml")
    for _ in range(25):  # random CSVs: usable or not
        rows = [
            f"{rnd.choice([rnd.randint(-3, 30), rnd.random() * 30, 'x', ''])},"
            f"{rnd.choice([rnd.random() * 50, -1, 'nan', 'inf', '', 'y'])}"
            for _ in range(rnd.randint(0, 20))
        ]
        add("random CSV", "second,rate_per_s\n" + "\n".join(rows) + "\n", None)
    return cases


def calibration_cases(rnd: random.Random) -> list[Case]:
    cases: list[Case] = []
    base = base_calibration()

    def add(
        what: str, text: Any, usable: bool | None = False, field_: str = "", extra: list[str] = ()
    ) -> None:
        argv = ["calibrate", "apply", "c.yaml", "-s", "s.yaml", "-o", "out.yaml", *extra]
        files = {"c.yaml": text, "s.yaml": digits_scenario(), "traces/sample.csv": TRACE}
        cases.append(
            Case(
                f"calibration-{len(cases)}",
                "calibration",
                what,
                argv,
                files,
                usable,
                "c.yaml",
                field_,
            )
        )

    add("valid control", yaml.safe_dump(base), True)
    add("alias bomb", BOMB)
    for special in SPECIAL:
        add(f"not a file: {special[1:]}", special)
    d = copy.deepcopy(base)
    d["scenario"] = "another-scenario"
    add("made for another scenario", yaml.safe_dump(d), field_="scenario")
    d = copy.deepcopy(base)
    d["fits"][0]["component"] = "elsewhere"
    add("fits of another scenario", yaml.safe_dump(d), field_="fits")
    for share in ("0", "-1", "nan", "inf", "1e9"):
        add(
            f"--cpu-share {share}",
            yaml.safe_dump(base),
            field_="share",
            extra=["--cpu-share", share],
        )
    for rate in ("0", "-5", "nan"):
        add(f"--rate {rate}", yaml.safe_dump(base), field_="rate", extra=["--rate", rate])
    for path, name in [
        (("fits", 0, "cpu_share"), "cpu_share"),
        (("fits", 0, "n"), "n"),
        (("fits", 0, "service_time", "mean_ms"), "mean_ms"),
        (("version",), "version"),
    ]:
        for raw in (".nan", "-1", "'x'", "[]", "1e400"):
            add(f"bad {name} ({raw})", yaml_with_raw(base, path, raw), field_=name)
    for path in random_paths(base, rnd, 25):
        d = copy.deepcopy(base)
        set_path(d, path, rnd.choice(RANDOM_VALUES))
        add("random mutation", yaml.safe_dump(d), None)
    return cases


def front_cases(rnd: random.Random) -> list[Case]:
    cases: list[Case] = []
    dep = yaml.safe_dump(base_deployment())

    def add(
        what: str, pareto: Any, usable: bool | None = False, field_: str = "", extra: list[str] = ()
    ) -> None:
        files = {"run/pareto.csv": pareto, "run/inputs/base.yaml": dep}
        argv = ["decide", "run", "--out", "chosen.yaml", *extra]
        names = "--weights" if "--weights" in extra else "pareto.csv"
        cases.append(Case(f"front-{len(cases)}", "front", what, argv, files, usable, names, field_))

    rows = base_front()
    add("valid control", front_csv(rows), True)
    for c in CRITERIA:
        for bad in ("nan", "inf", "", "x"):
            r = copy.deepcopy(rows)
            r[rnd.randrange(3)][c] = bad
            add(f"{c} = {bad!r}", front_csv(r), field_=c)
    for bad in ("{", "[]", "null", '"x"', "1", '{"a": 1}', ""):
        r = copy.deepcopy(rows)
        for row in r:
            row["allocation"] = bad
        add(f"allocation = {bad!r}", front_csv(r), field_="allocation")
    for bad in ("nan", "1.5", "x", ""):
        r = copy.deepcopy(rows)
        r[0]["id"] = bad
        add(f"id = {bad!r}", front_csv(r), field_="id")
    r = copy.deepcopy(rows)
    for row in r:
        row["allocation"] = json.dumps({"ingest": {"onprem-1": -5}})
    add("allocation out of the schema", front_csv(r), field_="allocation")
    for col in ("id", "allocation", "non_dominated", "cost"):
        cols = [c for c in ["id", "allocation", "non_dominated", *CRITERIA] if c != col]
        add(f"no {col} column", front_csv(rows, cols), field_=col)
    add("binary", bytes(rnd.randrange(256) for _ in range(2000)))
    for special in SPECIAL:
        add(f"not a file: {special[1:]}", special)
    for w in ("nan,1,1,1", "-1,1,1,1", "0,0,0,0", "inf,1,1,1"):
        add(
            f"--weights {w}",
            front_csv(rows),
            field_="weights",
            extra=["--method", "weighted", "--weights", w],
        )
    return cases


def checkpoint_cases(rnd: random.Random) -> list[Case]:
    cases: list[Case] = []
    scen = yaml.safe_dump(base_scenario())

    class Touch:
        def __reduce__(self) -> tuple:
            return (os.system, ("touch RAN_CODE",))

    payloads: list[tuple[str, Any]] = [
        ("plain pickle that runs code", pickle.dumps(Touch())),
        ("random bytes", bytes(rnd.randrange(256) for _ in range(5000))),
        (
            "signed header, bad signature",
            b"mlops-twin checkpoint v1\n" + b"0" * 64 + b"\n" + pickle.dumps(Touch()),
        ),
        ("signed header, no signature", b"mlops-twin checkpoint v1\n"),
        ("empty", b""),
        ("JSON", b'{"search": 1}'),
    ]
    payloads += [
        (f"truncated pickle {i}", pickle.dumps(Touch())[: rnd.randint(1, 40)]) for i in range(6)
    ]
    for what, data in payloads + [(f"not a file: {s[1:]}", s) for s in SPECIAL]:
        for place in ("run/checkpoint.pkl", ".run.checkpoint.pkl"):
            argv = [
                "optimize",
                "s.yaml",
                "--out",
                "run",
                "--resume",
                "--gens",
                "2",
                "--pop",
                "4",
                "--horizon",
                "5",
                "--final-horizon",
                "5",
                "--final-replications",
                "1",
            ]
            files = {"s.yaml": scen, "traces/sample.csv": TRACE, place: data}
            cases.append(
                Case(
                    f"checkpoint-{len(cases)}",
                    "checkpoint",
                    what,
                    argv,
                    files,
                    False,
                    "checkpoint.pkl",
                    marker="RAN_CODE",
                )
            )
    return cases


def runjson_cases(rnd: random.Random) -> list[Case]:
    cases: list[Case] = []
    dep = yaml.safe_dump(base_deployment())
    scen = yaml.safe_dump(base_scenario())
    bodies: list[tuple[str, Any]] = [
        ("a list", "[1, 2]"),
        ("a string", '"x"'),
        ("null", "null"),
        ("a number", "12"),
        ("broken JSON", '{"scenario": '),
        ("binary", bytes(rnd.randrange(256) for _ in range(500))),
        ("empty", ""),
        ("NaN", "NaN"),
        ("deep", "[" * 100000 + "]" * 100000),
        ("search not an object", '{"search": 5, "scenario": "s.yaml"}'),
        ("fidelity not an object", '{"final_fidelity": [], "scenario": "s.yaml"}'),
    ]
    bodies += [(f"not a file: {s[1:]}", s) for s in SPECIAL]
    for what, body in bodies:
        for extra in (
            [],
            ["--duration", "-5"],
            ["--replications", "0"],
            ["--name", "../../escape"],
        ):
            files = {
                "run/run.json": body,
                "run/chosen.yaml": dep,
                "run/inputs/base.yaml": dep,
                "run/inputs/s.yaml": scen,
            }
            argv = ["validate-deployment", "run", "--backend", "none-such", *extra]
            cases.append(
                Case(
                    f"run.json-{len(cases)}",
                    "run.json",
                    what + (f" {extra}" if extra else ""),
                    argv,
                    files,
                    False,
                    # a bad option is refused before run.json is read: the option is named
                    extra[0] if extra else "run.json",
                )
            )
    return cases


def all_cases(seed: int) -> list[Case]:
    rnd = random.Random(seed)
    return [
        *scenario_cases(rnd),
        *deployment_cases(rnd),
        *trace_cases(rnd),
        *calibration_cases(rnd),
        *front_cases(rnd),
        *checkpoint_cases(rnd),
        *runjson_cases(rnd),
    ]


# --------------------------------------------------------------------------- running


def write_files(folder: Path, files: dict[str, Any]) -> None:
    for rel, content in files.items():
        p = folder / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        if content in ("@dev/zero", "@dev/urandom"):
            p.symlink_to(SPECIAL[content])
        elif content == "@fifo":
            os.mkfifo(p)
        elif content == "@dir":
            p.mkdir()
        elif isinstance(content, bytes):
            p.write_bytes(content)
        else:
            p.write_text(content)


def _limits() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (MEM_CAP_BYTES, MEM_CAP_BYTES))
    os.setsid()


CODE = ""  # set by main(): code_version() of the tree under test


def run_case(case: Case, work: Path) -> dict[str, Any]:
    folder = work / case.id
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    write_files(folder, case.files)
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "ORT_DISABLE_TELEMETRY": "1",
        "OPENBLAS_NUM_THREADS": "1",
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
        "MLOPS_TWIN_STATE": str(work / "state"),
        "NO_COLOR": "1",
        "COLUMNS": "200",
    }
    t0 = time.monotonic()
    with open(folder / ".stdout", "wb") as fo, open(folder / ".stderr", "wb") as fe:
        proc = subprocess.Popen(
            CLI + case.argv,
            cwd=folder,
            env=env,
            stdout=fo,
            stderr=fe,
            stdin=subprocess.DEVNULL,
            preexec_fn=_limits,
        )
    hung = False
    status, usage = 0, None
    while True:  # wait4, not wait: it gives this child's own peak RSS
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            break
        if time.monotonic() - t0 > TIMEOUT_S:
            hung = True
            os.killpg(proc.pid, signal.SIGKILL)
            _, status, usage = os.wait4(proc.pid, 0)
            break
        time.sleep(0.02)
    proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.monotonic() - t0
    stderr = (folder / ".stderr").read_bytes().decode("utf-8", "replace")
    stdout = (folder / ".stdout").read_bytes().decode("utf-8", "replace")
    rc = proc.returncode
    max_rss_mb = usage.ru_maxrss / 1024 if usage is not None else 0.0
    text = " ".join((stderr + stdout).split())
    refused = rc not in (0, None) and not hung
    memory = "MemoryError" in stderr or "not enough memory" in text or max_rss_mb > MEM_LIMIT_MB
    named = case.names in text if refused else True
    fielded = (case.field.lower() in text.lower()) if (refused and case.field) else True
    result = {
        **{k: v for k, v in asdict(case).items() if k in ("id", "kind", "what", "usable", "field")},
        "argv": " ".join(case.argv),
        "rc": rc,
        "wall_s": round(wall, 2),
        "hung": hung,
        "memory": memory,
        "traceback": "Traceback (most recent call last)" in stderr,
        "exit0_unusable": rc == 0 and case.usable is False,
        "control_failed": case.usable is True and rc != 0,
        "unnamed": refused and not (named and fielded),
        "code_ran": bool(case.marker) and (folder / case.marker).exists(),
        "message": text[:400],
    }
    result["max_rss_mb"] = round(max_rss_mb, 1)
    result["code"] = CODE
    result["case"] = case_version(case)
    shutil.rmtree(folder, ignore_errors=True)
    return result


# --------------------------------------------------------------------------- report

FAILURES = (
    "hung",
    "memory",
    "traceback",
    "exit0_unusable",
    "unnamed",
    "control_failed",
    "code_ran",
)


def report(results: list[dict[str, Any]], total: int) -> str:
    kinds = sorted({r["kind"] for r in results})
    rows = []
    for k in [*kinds, "all"]:
        rs = [r for r in results if k in ("all", r["kind"])]
        rows.append(
            [
                k,
                len(rs),
                sum(r["usable"] is False for r in rs),
                *(sum(bool(r[f]) for r in rs) for f in FAILURES),
                max((r["wall_s"] for r in rs), default=0.0),
            ]
        )
    bad = [r for r in results if any(r[f] for f in FAILURES)]
    lines = [
        "# Hardening fuzz: hostile inputs to every file the CLI reads",
        "",
        f"Machine: {machine_line()}",
        f"Command: `flock /work/bench.lock .venv/bin/python benchmarks/hardening_fuzz.py` "
        f"(resumable, {len(results)} of {total} cases run); each case a subprocess under a "
        f"{TIMEOUT_S:g} s timeout; 'over {MEM_LIMIT_MB} MB' is a peak RSS (wait4) above it, a "
        "MemoryError or a 'not enough memory' refusal, under a "
        f"{MEM_CAP_BYTES // 2**20} MB RLIMIT_AS that only guards the host (address space is "
        "not memory: importing the optimizer alone maps ≈ 580 MB); BLAS 1 thread. "
        f"Every record was made on product code {CODE} (commit {git_head()}; a digest of "
        f"{', '.join(PRODUCT)}; "
        "testbed/services left out: no case starts a service); "
        "records made on other code are dropped and re-run.",
        "",
        markdown_table(
            [
                "file kind",
                "inputs",
                "built unusable",
                "hangs",
                "over 500 MB",
                "tracebacks",
                "exit 0 on unusable",
                "message lacks file/field",
                "valid control failed",
                "code ran",
                "slowest (s)",
            ],
            rows,
        ),
        "",
        "'inputs' counts every generated case (random mutations included); 'built unusable' "
        "those whose unusability is known by construction, the only ones where exit 0 is a "
        "failure. 'message lacks file/field': a refusal whose message does not name the "
        "bad file, or the field the input damaged. Peak RSS per case (wait4's ru_maxrss) is in "
        "the JSONL; the largest here: "
        f"{max((r['max_rss_mb'] for r in results), default=0):.0f} MB.",
        "",
    ]
    if bad:
        lines += ["## Failures", ""]
        lines += [
            f"- `{r['id']}` ({r['what']}; `{r['argv']}`): "
            f"{', '.join(f for f in FAILURES if r[f])} — rc {r['rc']}: {r['message'][:200]}"
            for r in bad[:60]
        ]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, default=16)
    ap.add_argument("--minutes", type=float, default=8.0, help="stop starting cases after this")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--only", default="", help="only these kinds (comma-separated)")
    ap.add_argument("--fresh", action="store_true", help="forget earlier results")
    ap.add_argument("--report-only", action="store_true")
    a = ap.parse_args()
    global CODE
    CODE = code_version()
    cases = all_cases(a.seed)
    versions = {c.id: case_version(c) for c in cases}
    if a.only:
        cases = [c for c in cases if c.kind in a.only.split(",")]
    RESULTS.mkdir(exist_ok=True)
    if a.fresh and JSONL.exists():
        JSONL.unlink()
    done = {}
    if JSONL.exists():
        for line in JSONL.read_text().splitlines():
            r = json.loads(line)
            # records made on other product code, or for a case since changed, are re-run
            if r.get("code") == CODE and r.get("case") == versions.get(r["id"]):
                done[r["id"]] = r
        # keep only what still counts, so the JSONL matches the table
        JSONL.write_text("".join(json.dumps(r) + "\n" for r in done.values()))
    todo = [c for c in cases if c.id not in done]
    # smallest kinds first: a run cut by --minutes still covers every kind of file
    sizes = {k: sum(c.kind == k for c in cases) for k in {c.kind for c in cases}}
    todo.sort(key=lambda c: sizes[c.kind])
    if not a.report_only and todo:
        deadline = time.monotonic() + a.minutes * 60
        work = Path(tempfile.mkdtemp(prefix="hardening-fuzz-"))
        print(f"{len(todo)} cases to run ({len(done)} done) in {work}", file=sys.stderr)

        def one(case: Case) -> dict[str, Any] | None:
            if time.monotonic() > deadline:
                return None
            return run_case(case, work)

        with ThreadPoolExecutor(a.workers) as pool, JSONL.open("a") as fh:
            for i, r in enumerate(pool.map(one, todo)):
                if r is None:
                    continue
                done[r["id"]] = r
                fh.write(json.dumps(r) + "\n")
                fh.flush()
                flags = [f for f in FAILURES if r[f]]
                if flags or i % 25 == 0:
                    print(
                        f"[{len(done)}/{len(cases)}] {r['id']} {r['what']}: rc {r['rc']} "
                        f"{r['wall_s']} s {' '.join(flags)}",
                        file=sys.stderr,
                    )
        shutil.rmtree(work, ignore_errors=True)
    ids = {c.id for c in cases}
    write_result("hardening_fuzz", report([r for i, r in done.items() if i in ids], len(cases)))


if __name__ == "__main__":
    main()
