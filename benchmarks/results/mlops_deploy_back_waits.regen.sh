#!/bin/bash
# re-calibrate the twin of the testbed (three wait rules) from session 2's base run and
# re-report the deploy-back runs (session 3's, session 4's, all 6 pairs) — no testbed, no lock
cd /work/wt/platform
export PYTHONPATH=/work/wt/platform ORT_DISABLE_TELEMETRY=1
PY="nice -n 19 /work/main/.venv/bin/python"
for w in unthrottled every none; do
  sfx=$([ $w = unthrottled ] && echo "" || echo "-$w")
  d=runs/db4/base-run$sfx; rm -rf $d; mkdir -p $d; cp runs/mlops-lab-default/{visits.parquet,executions.parquet,meta.json} $d/
  $PY -m lab.mlops_run examples/mlops-lab.yaml -d examples/mlops-lab.deployment.yaml --horizon 180 --out $d --report-only --waits $w > /dev/null 2>&1
  $PY - "$d" "runs/db4/mlops-lab-testbed$sfx.yaml" "$w" <<'PYEOF'
import sys
from pathlib import Path
from twin.load import load_scenario, dump_yaml
from twin.spec import SteadyWorkload, Scenario
src, dst, rule = sys.argv[1:]
sc = load_scenario(Path(src) / "calibrated-scenario.yaml")
wl = list(sc.workloads) + [SteadyWorkload(kind="steady", name="lab-10", rate_per_s=10.0)]
sc = sc.model_copy(update={"name": "mlops-lab-testbed", "workloads": wl, "description":
    "examples/mlops-lab.yaml as the testbed runs it (schedule and deadlines x0.1, servers at "
    f"host speed under their quotas), cpu_work and wait (rule '{rule}') calibrated on "
    "runs/mlops-lab-default (session 2, even executions) with lab.mlops_run.calibrate."})
Path(dst).write_text(dump_yaml(Scenario.model_validate(sc.model_dump())))
PYEOF
  for set in old new six; do
    out=runs/db4/$set$sfx-rep; src=runs/db4/$set-rep
    [ $set = old ] && src=runs/db4/old; [ $set = new ] && src=runs/db4/deploy-back
    if [ $set != six ]; then rm -rf $out; mkdir -p $out; cp -r $src/runs $out/; fi
    deps="--deployment chosen=runs/db/opt/ga/chosen.yaml --deployment greedy=runs/db/greedy.yaml"
    [ $set = old ] && deps="$deps --deployment base=examples/mlops-lab.deployment.yaml"
    n=3; [ $set = six ] && n=6
    $PY -m lab.mlops_deploy_back runs/db4/mlops-lab-testbed$sfx.yaml --testbed-scenario examples/mlops-lab.yaml $deps --pairs $n --horizon 35 --report-only --out $out > runs/db4/logs/$set$sfx-rep.log 2>&1
  done
  echo "=== $w"; sed -n 5,9p $d/report.md
  for set in old new six; do out=runs/db4/$set$sfx-rep; echo "-- $set"; sed -n 5,10p $out/report.md; grep -A7 "^## chosen − greedy" $out/report.md | tail -4; grep "error on the difference" $out/report.md | sed 's/.*predicts/predicts/'; done
done
