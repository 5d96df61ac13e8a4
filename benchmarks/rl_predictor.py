"""Train the LSTM load predictor and report SMAPE on held-out traces (issue 7, item 2).

Training data: generated traces of the three workload kinds (steady,
fluctuating, step; ``optimizer.rl.traces``) plus the first 70 % of
``examples/traces/sample.csv``. Held out: traces from another seed and the
last 30 % of the sample trace. The paper reports SMAPE 6 %. A naive
predictor ("the peak of the last 20 s") and the window mean are reported
next to the LSTM for scale. Saves the weights (a torch state_dict) to
``optimizer/rl/weights/lstm.pt``, which ``mlops-twin rl`` uses by default.

Usage::

    .venv/bin/python benchmarks/rl_predictor.py [--quick]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks._report import machine_line, markdown_table, write_result  # noqa: E402
from optimizer.rl import predictor as P  # noqa: E402
from optimizer.rl import traces as T  # noqa: E402

WEIGHTS = ROOT / "optimizer" / "rl" / "weights" / "lstm.pt"


def naive(x: np.ndarray) -> np.ndarray:
    return x[:, -P.HORIZON_S :].max(axis=1)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="few traces and epochs (smoke run)")
    ap.add_argument("--epochs", type=int, default=15)
    args = ap.parse_args()
    torch.set_num_threads(1)
    n_train, n_test, epochs = (3, 2, 3) if args.quick else (30, 10, args.epochs)
    sample = T.sample_trace(ROOT / "examples" / "traces" / "sample.csv", seed=0, scale=3.0)
    cut = int(0.7 * len(sample))
    train = [t for _, t in T.generate(n_train, 1200, seed=0)] + [sample[:cut]]
    held = [*T.generate(n_test, 1200, seed=1), ("sample (last 30 %)", sample[cut:])]
    started = time.perf_counter()
    pred, losses = P.train(train, epochs=epochs, seed=0, stride=5, batch_size=64, lr=3e-3)
    train_s = time.perf_counter() - started
    rows = []
    kinds = [*T.KINDS, "sample (last 30 %)"]
    for kind in kinds:
        traces = [t for k, t in held if k == kind]
        parts = [P.windows(t, stride=5) for t in traces]
        x = np.concatenate([p[0] for p in parts])
        y = np.concatenate([p[1] for p in parts])
        rows.append(
            [
                kind,
                len(y),
                P.smape(y, pred.predict_many(x)),
                P.smape(y, naive(x)),
                P.smape(y, x.mean(axis=1)),
            ]
        )
    all_x = np.concatenate([P.windows(t, 5)[0] for _, t in held])
    all_y = np.concatenate([P.windows(t, 5)[1] for _, t in held])
    rows.append(
        [
            "all held-out",
            len(all_y),
            P.smape(all_y, pred.predict_many(all_x)),
            P.smape(all_y, naive(all_x)),
            P.smape(all_y, all_x.mean(axis=1)),
        ]
    )
    started = time.perf_counter()
    for _ in range(200):
        pred.predict(all_x[0])
    predict_ms = (time.perf_counter() - started) / 200 * 1e3
    if not args.quick:
        WEIGHTS.parent.mkdir(parents=True, exist_ok=True)
        pred.save(WEIGHTS)
    text = "\n".join(
        [
            "# RL load predictor: LSTM(25) + dense, peak of the next 20 s from the last 120 s",
            "",
            machine_line(),
            "",
            f"Training: {len(train)} traces ({n_train} per kind × 3 kinds of 1200 s, plus "
            f"the first 70 % of the sample trace ×3), {epochs} epochs, {train_s:.0f} s. "
            f"Final training loss (mean |e|/(|y|+|ŷ|), half a SMAPE): {losses[-1]:.4f}. "
            f"One prediction: {predict_ms:.2f} ms.",
            "",
            "SMAPE (%) on held-out traces (other seed), windows every 5 s:",
            "",
            markdown_table(
                ["held-out traces", "windows", "LSTM", "last-20-s peak", "window mean"], rows
            ),
            "",
            "Loads are observed per-second Poisson counts around each curve, so the peak of",
            "the next 20 s carries irreducible counting noise (≈ 2√λ above the rate); the",
            "paper's 6 % is on smoother, aggregated loads. Compare the LSTM with the naive",
            "columns measured on the same windows.",
            "",
            "Reproduce: `.venv/bin/python benchmarks/rl_predictor.py`",
        ]
    )
    write_result("rl_predictor" + ("_quick" if args.quick else ""), text)


if __name__ == "__main__":
    main()
