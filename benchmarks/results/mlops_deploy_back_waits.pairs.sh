#!/bin/bash
# session 4: three pairs of deploy-back runs (chosen vs greedy), each its own locked command (≤ 6 min),
# from a snapshot of the worktree (/tmp/platform-snap) so edits during the wait cannot touch the runs
W=/work/wt/platform
cd /tmp/platform-snap
export PYTHONPATH=/tmp/platform-snap ORT_DISABLE_TELEMETRY=1
for k in 0 1 2; do
  flock /work/bench.lock bash -c "echo pair $k lock \$(date -u +%T); timeout -s INT 355 /work/main/.venv/bin/python -m lab.mlops_deploy_back $W/runs/db/mlops-lab-testbed.yaml --testbed-scenario examples/mlops-lab.yaml --deployment chosen=$W/runs/db/opt/ga/chosen.yaml --deployment greedy=$W/runs/db/greedy.yaml --pairs 3 --only-pair $k --horizon 35 --runs-only --model-dir $W/data/models --out $W/runs/db4/deploy-back; echo rc=\$? pair $k unlock \$(date -u +%T)"
done
