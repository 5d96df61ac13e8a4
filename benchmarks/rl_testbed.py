"""PPO vs Greedy controlling the real testbed for 5 minutes of fluctuating load (issue 7, item 6).

Runs ``mlops-twin rl control`` once per policy on ``examples/digits-pipeline.yaml``
(testbed up with the local backend → Locust offers the fluctuating workload →
every 10 s: gateway metrics → LSTM → policy → ``testbed apply`` → testbed
down) and puts the measured means side by side. The PPO policy must have been
trained on the digits scenario first (``mlops-twin rl train
examples/digits-pipeline.yaml --steps 21600 --gamma 0.99 --out runs/rl-train-digits``,
the policy of the committed result).

Usage::

    .venv/bin/python benchmarks/rl_testbed.py [--duration 300] [--policy-file PATH]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks._report import machine_line, markdown_table, write_result  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--duration", type=float, default=300.0)
    ap.add_argument(
        "--policy-file", type=Path, default=ROOT / "runs" / "rl-train-digits" / "policy.zip"
    )
    ap.add_argument("--policies", default="ppo,greedy")
    ap.add_argument("--reuse", action="store_true", help="reuse finished run folders")
    args = ap.parse_args()
    rows, loads = [], []
    for policy in args.policies.split(","):
        out = ROOT / "runs" / f"rl-control-digits-{policy}"
        cmd = [
            sys.executable,
            "-m",
            "mlops_twin",
            "rl",
            "control",
            str(ROOT / "examples" / "digits-pipeline.yaml"),
            "--policy",
            policy,
            "--duration",
            str(args.duration),
            "--out",
            str(out),
            "--json",
        ]
        if policy == "ppo":
            cmd += ["--policy-file", str(args.policy_file)]
        if args.reuse and (out / "summary.json").is_file():
            s = json.loads((out / "summary.json").read_text())
        else:
            res = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
            if res.returncode != 0:
                print(res.stderr[-2000:], file=sys.stderr)
                raise SystemExit(f"rl control --policy {policy} failed")
            s = json.loads(res.stdout.strip().splitlines()[-1])
        load = json.loads(s["load_run"]) if s["load_run"].startswith("{") else {}
        rows.append(
            [
                policy,
                s["decisions"],
                s["reconfigurations"],
                s["Q_mean"],
                s["C_mean"],
                s["reward_mean"],
                s["T_mean"],
                s["L_mean"],
                load.get("p95_s", float("nan")),
                load.get("accuracy", float("nan")),
                load.get("achieved_over_offered", float("nan")),
            ]
        )
        loads.append(f"`runs/rl-control-digits-{policy}/` (intervals, plot, load run)")
    headers = [
        "policy",
        "decisions",
        "reconfigurations",
        "Q mean",
        "C mean (cores)",
        "reward mean",
        "T (req/s)",
        "L (s, Σ stage round trips)",
        "p95 latency (s)",
        "measured accuracy",
        "achieved/offered",
    ]
    text = "\n".join(
        [
            "# PPO vs Greedy controlling the testbed (digits pipeline, fluctuating load)",
            "",
            machine_line(),
            "",
            f"{args.duration:g} s of the scenario's fluctuating workload offered by Locust; every "
            "10 s the controller scrapes the gateway, predicts the 20-s peak with the LSTM, "
            "decides and applies the configuration with `mlops-twin testbed apply`. Q and C per "
            "interval are measured as in the twin (T = completed req/s, L = Σ per-stage mean "
            "round trip at the gateway, E = offered − the configuration's modelled capacity).",
            "",
            markdown_table(headers, rows),
            "",
            "Run folders: " + "; ".join(loads),
            "",
            "Reproduce: train `mlops-twin rl train examples/digits-pipeline.yaml --steps 21600 "
            "--gamma 0.99 --out runs/rl-train-digits`, then `.venv/bin/python "
            "benchmarks/rl_testbed.py`",
        ]
    )
    write_result("rl_testbed", text)


if __name__ == "__main__":
    main()
