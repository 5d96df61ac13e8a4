#!/bin/bash
# session 5: the twin of the testbed from session 2's base run, per wait rule and part rule (no testbed, no lock)
cd /work/wt/platform
export PYTHONPATH=/work/wt/platform ORT_DISABLE_TELEMETRY=1
PY="nice -n 19 /work/main/.venv/bin/python"
for w in ${WAITS:-unthrottled none}; do for pr in ${PARTS:-each share}; do
  sfx=-$w-$pr
  d=runs/db5/base-run$sfx; rm -rf $d; mkdir -p $d; cp runs/mlops-lab-default/{visits.parquet,executions.parquet,meta.json} $d/
  $PY -m lab.mlops_run examples/mlops-lab.yaml -d examples/mlops-lab.deployment.yaml --horizon 180 --out $d --report-only --waits $w --parts $pr > runs/db5/logs/base$sfx.log 2>&1
  $PY - "$d" "runs/db5/mlops-lab-testbed$sfx.yaml" "$w" "$pr" <<'PYEOF'
import sys
from pathlib import Path
from twin.load import load_scenario, dump_yaml
from twin.spec import SteadyWorkload, Scenario
src, dst, rule, parts = sys.argv[1:]
sc = load_scenario(Path(src) / "calibrated-scenario.yaml")
wl = list(sc.workloads) + [SteadyWorkload(kind="steady", name="lab-10", rate_per_s=10.0)]
sc = sc.model_copy(update={"name": "mlops-lab-testbed", "workloads": wl, "description":
    "examples/mlops-lab.yaml as the testbed runs it (schedule and deadlines x0.1, servers at "
    f"host speed under their quotas), cpu_work, wait (rule '{rule}') and part work (rule '{parts}') "
    "calibrated on runs/mlops-lab-default (session 2, even executions) with lab.mlops_run.calibrate."})
Path(dst).write_text(dump_yaml(Scenario.model_validate(sc.model_dump())))
PYEOF
  echo "=== waits $w parts $pr"; sed -n 5,9p $d/report.md
done; done
