#!/bin/bash
# session 5: three more pairs of deploy-back runs (chosen vs greedy), each its own locked command (<= 6 min),
# from a snapshot of the worktree (/tmp/platform-snap5, d84b792: main 003c72d + jobs confined from their start), /proc/stat sampled every second beside each
W=/work/wt/platform
cd /tmp/platform-snap5
export PYTHONPATH=/tmp/platform-snap5 ORT_DISABLE_TELEMETRY=1 MLOPS_TWIN_PLATFORM_VENV=$W/.venv-platform
for k in ${PAIRS:-0 1 2}; do
  setsid flock /work/bench.lock bash -c "echo -10 > /proc/self/autogroup; echo pair $k lock \$(date -u +%T); (while true; do echo \$(date +%s.%N) \$(head -1 /proc/stat); sleep 1; done) > $W/runs/db5/logs/procstat-$k.log & S=\$!; timeout -s INT 355 /work/main/.venv/bin/python -m lab.mlops_deploy_back $W/runs/db/mlops-lab-testbed.yaml --testbed-scenario examples/mlops-lab.yaml --deployment chosen=$W/runs/db/opt/ga/chosen.yaml --deployment greedy=$W/runs/db/greedy.yaml --pairs 3 --only-pair $k --horizon 35 --runs-only --model-dir $W/data/models --out $W/runs/db5/deploy-back; echo rc=\$? pair $k unlock \$(date -u +%T); kill \$S"
done
