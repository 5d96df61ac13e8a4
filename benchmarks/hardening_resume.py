"""Crash and resume: an `optimize` killed mid-run and resumed gives the uninterrupted numbers.

Run: flock /work/bench.lock .venv/bin/python benchmarks/hardening_resume.py

Runs ``mlops-twin optimize`` on the edge-cloud example twice with the same seed:
once straight through, once killed with SIGKILL (no handler runs) right after
its checkpoint has been written ``--kill-after`` times, then continued with
``--resume``. Compared: the front (every criterion's mean and CI, the
allocations, the flags) and the per-generation history (hypervolume,
simulations, front size) — everything but wall-clock times, which must differ.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import machine_line, markdown_table, write_result

ROOT = Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-m", "mlops_twin.cli"]
TIMEISH = ("time", "wall", "elapsed", "_s_search")


def argv(out: Path, a: argparse.Namespace) -> list[str]:
    return [
        *CLI,
        "optimize",
        str(ROOT / "examples" / "edge-cloud.yaml"),
        "--out",
        str(out),
        "--gens",
        str(a.gens),
        "--pop",
        str(a.pop),
        "--seed",
        str(a.seed),
        "--horizon",
        str(a.horizon),
        "--final-horizon",
        str(a.horizon),
        "--final-replications",
        "1",
        "--final-max",
        "5",
        "--json",
    ]


def run_killed(out: Path, a: argparse.Namespace, env: dict[str, str]) -> tuple[int, float]:
    """Start the run, SIGKILL it after the checkpoint's ``kill_after``-th write; (writes, s)."""
    ck = out.parent / f".{out.name}.checkpoint.pkl"
    t0 = time.monotonic()
    proc = subprocess.Popen(argv(out, a), env=env, stdout=subprocess.DEVNULL)
    writes, last = 0, None
    while proc.poll() is None:
        try:
            st = ck.stat()
            stamp = (st.st_ino, st.st_mtime_ns, st.st_size)
        except FileNotFoundError:
            stamp = None
        if stamp is not None and stamp != last:
            writes, last = writes + 1, stamp
            if writes >= a.kill_after:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait()
                return writes, time.monotonic() - t0
        time.sleep(0.005)
    return -1, time.monotonic() - t0  # finished before the kill: no evidence


def comparable(df: pd.DataFrame) -> pd.DataFrame:
    keep = [c for c in df.columns if not any(t in c for t in TIMEISH)]
    return df[keep].reset_index(drop=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gens", type=int, default=8)
    ap.add_argument("--pop", type=int, default=8)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--horizon", type=float, default=60.0)
    ap.add_argument("--kill-after", type=int, default=3, help="checkpoint writes before SIGKILL")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        env = {
            **os.environ,
            "PYTHONPATH": str(ROOT),
            "ORT_DISABLE_TELEMETRY": "1",
            "MLOPS_TWIN_STATE": str(Path(tmp) / "state"),
        }
        whole, cut = Path(tmp) / "whole", Path(tmp) / "cut"
        t0 = time.monotonic()
        subprocess.run(argv(whole, a), env=env, check=True, stdout=subprocess.DEVNULL)
        t_whole = time.monotonic() - t0
        writes, t_cut = run_killed(cut, a, env)
        t0 = time.monotonic()
        resumed = subprocess.run(
            [*argv(cut, a), "--resume"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        t_resume = time.monotonic() - t0
        rows = []
        for name in ("pareto", "history", "evaluated"):
            x = comparable(pd.read_parquet(whole / f"{name}.parquet"))
            try:
                y = comparable(pd.read_parquet(cut / f"{name}.parquet"))
                same = x.shape == y.shape and x.equals(y)
                shape = f"{len(x)}×{x.shape[1]} vs {len(y)}×{y.shape[1]}"
            except (OSError, ValueError) as e:
                same, shape = False, f"missing after resume ({type(e).__name__})"
            rows.append([f"{name}.parquet", shape, ", ".join(x.columns)[:120], same])
    identical = all(r[-1] for r in rows) and writes > 0 and resumed.returncode == 0
    text = "\n".join(
        [
            "# Crash and resume: the same numbers as an uninterrupted run",
            "",
            f"Machine: {machine_line()}",
            f"Command: `flock /work/bench.lock .venv/bin/python benchmarks/hardening_resume.py "
            f"--gens {a.gens} --pop {a.pop} --seed {a.seed} --horizon {a.horizon:g} "
            f"--kill-after {a.kill_after}`",
            "",
            f"`mlops-twin optimize examples/edge-cloud.yaml` (NSGA-II, {a.gens} generations of "
            f"{a.pop}, search and final horizon {a.horizon:g} s, seed {a.seed}): straight through "
            f"in {t_whole:.1f} s; a second run SIGKILLed after its checkpoint's "
            f"{writes if writes > 0 else 'never reached'}-th write ({t_cut:.1f} s in), then "
            f"`--resume` (rc {resumed.returncode}, {t_resume:.1f} s).",
            "",
            markdown_table(
                ["file", "rows×columns (whole vs resumed)", "compared", "identical"], rows
            ),
            "",
            f"**Resumed run identical to the uninterrupted one: {identical}** (wall-clock columns "
            f"left out: {', '.join(TIMEISH)}).",
        ]
        + (["", f"Resume stderr: {resumed.stderr.decode()[-600:]}"] if resumed.returncode else [])
    )
    write_result("hardening_resume", text)
    if not identical:
        sys.exit(1)


if __name__ == "__main__":
    main()
