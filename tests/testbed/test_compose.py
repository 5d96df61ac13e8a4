"""The compose backend's rendered Compose file: structure, hardening, limits.

These run everywhere (no Docker engine needed); the file is also checked by the
installed Compose tool (`config -q`) when one exists. The end-to-end run is in
test_compose_e2e.py.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml

from testbed.backends import compose_file as cf
from testbed.backends.base import CPU_PERIOD_US, SERVICES, Capacity
from testbed.backends.compose import BackendUnavailable, compose_command
from testbed.capacity import plan_capacity
from twin.load import load_deployment, load_scenario
from twin.spec import Scenario

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
GATEWAY_PORT = 18080


# host cores to plan each example on: the large scenario does not fit 2 cores
HOST_CORES = {"digits-pipeline": 2.0, "edge-cloud": 16.0}


def capacity(scenario: Scenario, host_cores: float, factor: float | None = None) -> Capacity:
    """The local backend's planning: one CPU factor for all machines."""
    return plan_capacity(scenario, host_cores=host_cores, factor=factor)


@pytest.fixture(scope="module", params=sorted(HOST_CORES))
def case(request: pytest.FixtureRequest) -> tuple[Scenario, dict]:
    scenario = load_scenario(EXAMPLES / f"{request.param}.yaml")
    deployment = load_deployment(EXAMPLES / f"{request.param}.deployment.yaml")
    scale = capacity(scenario, HOST_CORES[request.param])
    doc = cf.render(scenario, deployment, scale, GATEWAY_PORT)
    return scenario, doc


def node_services(doc: dict) -> dict[str, dict]:
    return {k: v for k, v in doc["services"].items() if v["labels"][cf.ROLE_LABEL] == "node"}


def test_compose_spec_form_without_version(case):
    _, doc = case
    assert "version" not in doc
    assert set(doc) == {"services", "networks"}
    # Round-trips through YAML unchanged (what the backend writes is what we test).
    assert yaml.safe_load(yaml.safe_dump(doc)) == doc


def test_one_container_per_machine_plus_platform(case):
    scenario, doc = case
    machines = scenario.server_instances()
    assert set(doc["services"]) == {cf.service_key(m) for m in machines} | {
        "registry",
        "features",
        "gateway",
    }
    for m in machines:
        svc = doc["services"][cf.service_key(m)]
        assert svc["labels"][cf.MACHINE_LABEL] == m
        argv = svc["command"]
        assert argv[:3] == [cf.VENV_PYTHON, "-m", SERVICES["node"]]
        assert argv[argv.index("--name") + 1] == m
        assert argv[argv.index("--host") + 1] == "0.0.0.0"


@pytest.mark.parametrize("factor", [0.1, 0.25, 1.0 / 3.0])
def test_cpu_quota_is_spec_cores_times_factor(factor):
    scenario = load_scenario(EXAMPLES / "edge-cloud.yaml")
    deployment = load_deployment(EXAMPLES / "edge-cloud.deployment.yaml")
    doc = cf.render(scenario, deployment, capacity(scenario, 64.0, factor), GATEWAY_PORT)
    for m, server in scenario.server_of().items():
        svc = doc["services"][cf.service_key(m)]
        assert svc["cpu_period"] == CPU_PERIOD_US == 10_000
        cores = server.cpu_cores * server.cpu_speed * factor
        assert svc["cpu_quota"] == pytest.approx(cores * CPU_PERIOD_US, abs=1)
        assert svc["mem_limit"] == f"{round(server.ram_gb * 1024)}m"
        assert float(svc["labels"]["org.mlops-twin.cpu-factor"]) == pytest.approx(factor, rel=1e-5)
        argv = svc["command"]
        assert float(argv[argv.index("--cpu-cores") + 1]) == pytest.approx(cores, rel=1e-3)


def test_the_twins_quota_period_is_the_backends():
    # the twin's CPU quota model (twin.sim._Quota) stalls per Settings.cpu_period_ms;
    # both backends must use that period (Docker's default, 100 ms, stalls ~10× longer)
    from twin.spec import Settings

    assert Settings().cpu_period_ms * 1000 == CPU_PERIOD_US


def test_every_service_is_hardened(case):
    _, doc = case
    for name, svc in doc["services"].items():
        assert svc["user"] == "10001:10001", name
        assert svc["read_only"] is True, name
        assert svc["cap_drop"] == ["ALL"], name
        assert svc["security_opt"] == ["no-new-privileges:true"], name
        assert svc["image"] == cf.IMAGE, name
        assert svc["environment"]["ORT_DISABLE_TELEMETRY"] == "1", name
        assert svc["environment"]["PYTHONDONTWRITEBYTECODE"] == "1", name
        # HOME must be writable although the root fs is not.
        home = svc["environment"]["HOME"]
        assert any(home.startswith(t.split(":")[0] + "/") for t in svc["tmpfs"]), name
        assert "mem_limit" in svc, name
        assert "privileged" not in svc and "cap_add" not in svc, name


def test_healthchecks_are_a_cheap_shell_probe_of_the_services_port(case):
    # The probe runs inside the container, charged to the emulated server's quota:
    # bash /dev/tcp, not an interpreter start (benchmarks/results/testbed_compose_tail.md).
    _, doc = case
    for name, svc in doc["services"].items():
        if svc["labels"][cf.ROLE_LABEL] == "node":
            # an emulated server's probe would run inside its CPU quota: none
            assert "healthcheck" not in svc, name
            continue
        hc = svc["healthcheck"]
        assert hc["test"][:3] == ["CMD", "bash", "-c"], name
        assert "python" not in " ".join(hc["test"]), name
        assert "$" not in hc["test"][-1], name  # Compose would interpolate it
        assert "start_interval" not in hc, name  # needs Docker 25+
        port = svc["command"][svc["command"].index("--port") + 1]
        assert f"/dev/tcp/127.0.0.1/{port} " in hc["test"][-1], name
        assert "GET /healthz HTTP/1.0" in hc["test"][-1], name


def test_the_old_python_probe_is_still_available_and_bad_probes_are_refused():
    scenario = load_scenario(EXAMPLES / "digits-pipeline.yaml")
    deployment = load_deployment(EXAMPLES / "digits-pipeline.deployment.yaml")
    scale = capacity(scenario, 16.0)
    doc = cf.render(scenario, deployment, scale, GATEWAY_PORT, health_probe="python")
    assert all(
        s["healthcheck"]["test"][:2] == ["CMD", cf.VENV_PYTHON] for s in doc["services"].values()
    )
    with pytest.raises(ValueError, match="health probe"):
        cf.render(scenario, deployment, scale, GATEWAY_PORT, health_probe="curl")


def test_cgroup_parent_puts_every_container_under_it_with_the_local_weight(case):
    _, doc = case
    assert not any("cgroup_parent" in s or "cpu_shares" in s for s in doc["services"].values())
    scenario = load_scenario(EXAMPLES / "digits-pipeline.yaml")
    deployment = load_deployment(EXAMPLES / "digits-pipeline.deployment.yaml")
    weighted = cf.render(
        scenario, deployment, capacity(scenario, 16.0), GATEWAY_PORT, cgroup_parent="/p"
    )
    for svc in weighted["services"].values():
        assert svc["cgroup_parent"] == "/p"
        assert svc["cpu_shares"] == cf.CPU_SHARES == 4096


def test_only_the_gateway_is_published_and_only_on_loopback(case):
    _, doc = case
    published = {k: v["ports"] for k, v in doc["services"].items() if "ports" in v}
    assert published == {"gateway": [f"127.0.0.1:{GATEWAY_PORT}:{cf.PORTS['gateway']}"]}
    assert not any("expose" in v or "network_mode" in v for v in doc["services"].values())


def test_backend_network_is_internal_and_gateway_bridges_it(case):
    _, doc = case
    assert doc["networks"]["backend"]["internal"] is True
    assert not doc["networks"]["frontend"].get("internal", False)
    for name, svc in doc["services"].items():
        expected = ["backend", "frontend"] if name == "gateway" else ["backend"]
        assert svc["networks"] == expected, name


def test_gateway_targets_every_node_and_the_platform(case):
    scenario, doc = case
    argv = doc["services"]["gateway"]["command"]
    targets = dict(t.split("=", 1) for t in argv[argv.index("--targets") + 1].split(","))
    assert set(targets) == set(scenario.server_instances()) | {"registry", "features"}
    for m in scenario.server_instances():
        assert targets[m] == f"http://{cf.service_key(m)}:{cf.PORTS['node']}"
    endpoints = cf.endpoints_for(scenario, GATEWAY_PORT)
    assert endpoints.gateway == f"http://127.0.0.1:{GATEWAY_PORT}"
    assert set(endpoints.nodes) == set(targets) - {"registry", "features"}
    assert all(u.startswith(f"{endpoints.gateway}/admin/proxy/") for u in endpoints.nodes.values())
    assert endpoints.instance_url(scenario.server_instances()[0], 9000).endswith(":9000")


def test_image_is_built_once_offline(case):
    _, doc = case
    builds = [svc["build"] for svc in doc["services"].values() if "build" in svc]
    assert len(builds) == 1
    assert builds[0]["network"] == "none"
    assert (Path(builds[0]["context"]) / builds[0]["dockerfile"]).is_file()


def test_clashing_machine_names_are_refused():
    scenario = load_scenario(EXAMPLES / "edge-cloud.yaml")
    deployment = load_deployment(EXAMPLES / "edge-cloud.deployment.yaml")
    data = scenario.model_dump()
    data["servers"][0]["name"] = "Gateway"
    data["servers"][0]["count"] = 1
    bad = Scenario.model_validate(data)
    with pytest.raises(ValueError, match="clash"):
        cf.render(bad, deployment, capacity(bad, 16.0), GATEWAY_PORT)


def test_project_name_is_stable_per_state_dir_and_valid(tmp_path):
    a, b = cf.project_name(tmp_path / "a"), cf.project_name(tmp_path / "b")
    assert a != b and a == cf.project_name(tmp_path / "a")
    assert a.isalnum() and a.islower()


def test_installed_compose_accepts_the_file(case, tmp_path):
    """`docker compose config -q` / `docker-compose config -q` validate against the
    compose-spec schema of the installed version."""
    try:
        command = compose_command()
    except BackendUnavailable as e:
        pytest.skip(f"no Compose tool installed: {e}")
    _, doc = case
    path = tmp_path / "docker-cf.yml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    done = subprocess.run(
        [*command, "-p", "validate", "-f", str(path), "config", "-q"],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr


def _fake_tools(tmp_path: Path, docker_compose_v2: bool, v1: bool) -> str:
    """A PATH with stand-in ``docker`` (answering ``compose version`` or not) and
    optionally ``docker-compose``."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    rc = 0 if docker_compose_v2 else 1
    (bin_dir / "docker").write_text(f'#!/bin/sh\n[ "$1" = compose ] && exit {rc}\nexit 0\n')
    if v1:
        (bin_dir / "docker-compose").write_text("#!/bin/sh\nexit 0\n")
    for f in bin_dir.iterdir():
        f.chmod(0o755)
    return str(bin_dir)


@pytest.mark.parametrize(
    ("v2", "v1", "expected"),
    [
        (True, True, ["docker", "compose"]),
        (True, False, ["docker", "compose"]),
        (False, True, ["docker-compose"]),
        (False, False, None),
    ],
)
def test_compose_command_prefers_v2(tmp_path, monkeypatch, v2, v1, expected):
    monkeypatch.setenv("PATH", _fake_tools(tmp_path, v2, v1))
    if expected is None:
        with pytest.raises(BackendUnavailable, match="ensure-docker"):
            compose_command()
    else:
        assert compose_command() == expected


FAKE_DOCKER = r"""#!/bin/sh
# A stand-in engine: containers and networks listed in files; rm deletes them
# unless STUCK is set. Every call is appended to calls.log.
S={state}
echo "$*" >> $S/calls.log
case "$1 $2" in
  "ps -a") cat $S/containers ;;
  "inspect "*) printf '[{{"Id": "c1", "Name": "/p_node-1_1"}}]' ;;
  "rm -f") [ -n "$STUCK" ] || : > $S/containers ;;
  "network ls") cat $S/networks ;;
  "network rm") [ -n "$STUCK" ] || : > $S/networks ;;
esac
exit 0
"""


@pytest.mark.parametrize("stuck", [False, True])
def test_down_removes_leftovers_by_label_and_verifies(tmp_path, monkeypatch, stuck):
    from testbed.backends.compose import ComposeBackend

    state = tmp_path / "engine"
    state.mkdir()
    (state / "containers").write_text("c1\n")
    (state / "networks").write_text("p_backend\np_frontend\n")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "docker").write_text(FAKE_DOCKER.format(state=state))
    (bin_dir / "docker").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:/usr/bin:/bin")  # the fake first; cat from /bin
    monkeypatch.setenv("STUCK", "1" if stuck else "")
    backend = ComposeBackend(state_dir=tmp_path / "tb")  # no compose file: a half-made project
    if stuck:
        with pytest.raises(RuntimeError, match="left"):
            backend.down()
    else:
        backend.down()
    calls = (state / "calls.log").read_text()
    label = f"label=com.docker.compose.project={backend.project}"
    assert f"ps -a -q --filter {label}" in calls
    assert "rm -f -v c1" in calls
    assert "network rm p_backend p_frontend" in calls
