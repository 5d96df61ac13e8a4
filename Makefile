# The two commands of the README: `make testbed` (the main job) and `make test`.
# Both create or reuse .venv and install the project into it.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | sha1sum | cut -c1-12)
export ORT_DISABLE_TELEMETRY := 1
export PYTHONDONTWRITEBYTECODE := 1

.PHONY: mlserver-venv platform-venv testbed-mlops testbed-mlops-deploy-back venv test test-fast lint testbed benchmark clean

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check --upgrade pip
	# torch is pinned to 2.13.0 in pyproject: the CPU wheel that lies on disk here.
	$(PY) -m pip install -q --disable-pip-version-check -e '.[all,dev]'
	@rm -f $(VENV)/.installed-*
	@touch $@

venv: $(STAMP)

lint: venv
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

test: venv lint platform-venv
	$(PY) -m pytest -m "not benchmark" --timeout=900

test-fast: venv
	$(PY) -m pytest -m "not benchmark and not slow and not docker" -q

testbed: venv platform-venv  # the whole local experiment (≤ 10 min); make testbed ARGS=--quick for ≤ 3 min
	$(VENV)/bin/mlops-twin experiment $(ARGS)

benchmark: venv
	$(PY) benchmarks/twin_speed.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache

mlserver-venv:  # MLServer in its own venv (its pins clash with ours): tests and benchmarks/v2_mlserver.py
	$(PYTHON) -c 'from testbed.mlserver import ensure_venv; ensure_venv()'

platform-venv: venv  # Feast + MLflow in their own venv (their pins clash with ours): the local testbed's feature store and registry (~1.5 min once, ~1 GB)
	$(PY) -c 'from testbed.platform_venv import ensure_venv; ensure_venv()'

testbed-mlops: venv platform-venv  # the batch processes of examples/mlops-lab.yaml on the local testbed beside the calibrated twin (≈ 4 min)
	$(PY) -m lab.mlops_run examples/mlops-lab.yaml -d examples/mlops-lab.deployment.yaml --out runs/mlops-lab $(ARGS)

# deploy back two placements of mlops-lab.yaml (DEPLOYMENTS="a=fileA b=fileB") against the
# twin of the testbed calibrated by testbed-mlops (6 pairs of runs, ≈ 4 min a pair: the rank
# test that orders each criterion needs 6 pairs of one sign for 5 %)
DEPLOYMENTS ?= default=examples/mlops-lab.deployment.yaml edge=examples/mlops-lab.trainer-on-edge.deployment.yaml
testbed-mlops-deploy-back: venv platform-venv
	$(PY) -m lab.mlops_deploy_back runs/mlops-lab/calibrated-scenario.yaml --testbed-scenario examples/mlops-lab.yaml $(foreach d,$(DEPLOYMENTS),--deployment $(d)) --out runs/mlops-deploy-back $(ARGS)
