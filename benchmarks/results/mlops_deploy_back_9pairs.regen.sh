#!/bin/bash
# (copied from runs/db5/regen.sh; the per-rule twin comes from mlops_deploy_back_9pairs.calib.sh)
# session 5: re-calibrate the twin of the testbed from session 2's base run (wait rule x part rule) and
# re-report every deploy-back pair: session 3 (3 pairs, with base), session 4 (3), session 5 (runs/db5) -- no testbed, no lock
cd /work/wt/platform
export PYTHONPATH=/work/wt/platform ORT_DISABLE_TELEMETRY=1
PY="nice -n 19 /work/main/.venv/bin/python"
RULES=${RULES:-"unthrottled-each unthrottled-share none-each"}
# every pair in one folder (symlinks): 0-2 session 3, 3-5 session 4, 6-8 session 5
all=runs/db5/all; rm -rf $all; mkdir -p $all/runs
for k in 0 1 2; do for l in chosen greedy; do
  ln -s $PWD/runs/db4/old/runs/$l-$k $all/runs/$l-$k
  ln -s $PWD/runs/db4/deploy-back/runs/$l-$k $all/runs/$l-$((k + 3))
  [ -f runs/db5/deploy-back/runs/$l-$k/criteria.json ] && ln -s $PWD/runs/db5/deploy-back/runs/$l-$k $all/runs/$l-$((k + 6))
done; done
n=$(ls $all/runs | grep -c '^chosen-')
for rule in $RULES; do
  w=${rule%-*}; pr=${rule#*-}
  [ -f runs/db5/mlops-lab-testbed-$rule.yaml ] || WAITS=$w PARTS=$pr bash benchmarks/results/mlops_deploy_back_9pairs.calib.sh > /dev/null
  deps="--deployment chosen=runs/db/opt/ga/chosen.yaml --deployment greedy=runs/db/greedy.yaml"
  out=runs/db5/all-$rule; rm -rf $out; mkdir -p $out; cp -a $all/runs $out/
  $PY -m lab.mlops_deploy_back runs/db5/mlops-lab-testbed-$rule.yaml --testbed-scenario examples/mlops-lab.yaml $deps --pairs $n --horizon 35 --report-only --out $out > runs/db5/logs/all-$rule.log 2>&1
  out=runs/db5/base-$rule; rm -rf $out; mkdir -p $out; cp -r runs/db4/old/runs $out/
  $PY -m lab.mlops_deploy_back runs/db5/mlops-lab-testbed-$rule.yaml --testbed-scenario examples/mlops-lab.yaml $deps --deployment base=examples/mlops-lab.deployment.yaml --pairs 3 --horizon 35 --report-only --out $out > runs/db5/logs/base-$rule.log 2>&1
  echo "=== rule $rule ($n pairs)"; sed -n 5,9p runs/db5/base-run-$rule/report.md
  sed -n 7,30p runs/db5/all-$rule/report.md
  grep "error on the difference" runs/db5/base-$rule/report.md
done
# session 4's twin (runs/db4/mlops-lab-testbed.yaml: parts shared, exit as a wait) on the same 9 pairs
out=runs/db5/all-session4-twin; rm -rf $out; mkdir -p $out; cp -a runs/db5/all/runs $out/
$PY -m lab.mlops_deploy_back runs/db4/mlops-lab-testbed.yaml --testbed-scenario examples/mlops-lab.yaml --deployment chosen=runs/db/opt/ga/chosen.yaml --deployment greedy=runs/db/greedy.yaml --pairs 9 --horizon 35 --report-only --out $out > runs/db5/logs/all-session4-twin.log 2>&1
