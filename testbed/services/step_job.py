"""One step of an MLOps batch process, run as a job on an emulated server.

The node agent starts it like any instance (so it runs under that server's CPU
quota and memory limit); it does the step's real work, writes its output file
and a JSON record, and exits. Kinds (``--kind``):

    ingest          new labelled digits (scikit-learn's, shifted by a pixel at random)
                    pushed into Feast (online and offline store); output: the rows
    materialize     Feast ``materialize-incremental`` (offline → online store)
    load-features   the offline store's parquet over HTTP; output: the training rows
    prepare         part ``--part`` of ``--parts`` of the rows: ``--augment`` shifted
                    copies of each digit, rescaled; output: the prepared part
    train           torch training on every prepared part (``--steps`` Adam steps),
                    exported to ONNX and checked against torch; output: the model
    evaluate        the model on scikit-learn's digits with onnxruntime; output: model +
                    accuracy
    register        a run of MLflow's ``retrain`` experiment and a new version of
                    ``--model``; output: the version
    rollout         moves ``--model``'s alias ``champion`` to that version and makes the
                    serving instance (``--serving-url``) load it

Inputs made on another server cross a link of ``--link-mbps`` (the slower side's
bandwidth; 0 = same server): the job reads them at that rate (an application-level
throttle; see the note in :mod:`lab.mlops_run`). Record (``--record``): ``kind``,
``t_start``/``t_end`` (epoch s), ``transfer_s``, ``compute_s`` (= wall − transfer),
``cpu_s`` (this process's CPU time), ``bytes_in``, ``bytes_out``, ``detail``.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import resource
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")

import numpy as np

KINDS = (
    "ingest",
    "materialize",
    "load-features",
    "prepare",
    "train",
    "evaluate",
    "register",
    "rollout",
)
CHAMPION = "champion"


class Link:
    """Reads input files at the emulated link's rate; keeps the time it waited."""

    def __init__(self, mbps: float):
        self.mbps = mbps
        self.waited_s = 0.0
        self.bytes = 0

    def read(self, path: Path) -> bytes:
        data = Path(path).read_bytes()
        self.bytes += len(data)
        if self.mbps > 0:
            t = len(data) * 8 / (self.mbps * 1e6)
            time.sleep(t)
            self.waited_s += t
        return data


def _npz(data: bytes) -> dict[str, np.ndarray]:
    with np.load(io.BytesIO(data), allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def _write_npz(path: Path, **arrays: Any) -> int:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(buf.getvalue())
    tmp.replace(path)
    return len(buf.getvalue())


def _shifted(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Each 8×8 digit shifted by up to one pixel in each direction (zeros shifted in)."""
    img = x.reshape(-1, 8, 8)
    out = np.zeros_like(img)
    for i, (dy, dx) in enumerate(rng.integers(-1, 2, size=(len(img), 2))):
        out[i] = np.roll(np.roll(img[i], dy, 0), dx, 1)
    return out.reshape(len(x), 64)


def work(a: argparse.Namespace, link: Link) -> tuple[int, dict[str, Any]]:
    """Do the step; returns (bytes written, detail)."""
    from testbed.services import platform_clients as pc

    out = Path(a.out) if a.out else None
    inputs = [Path(p) for p in a.inputs.split(",") if p] if a.inputs else []
    rng = np.random.default_rng(a.seed)
    if a.kind == "ingest":
        from sklearn.datasets import load_digits

        x, y = load_digits(return_X_y=True)
        pick = rng.integers(0, len(y), a.rows)
        xs, ys = _shifted(x[pick].astype(np.float32), rng), y[pick]
        ids = np.int64(a.seed) * 100_000 + np.arange(a.rows)
        pc.ingest(a.features, ids, xs, ys)
        return _write_npz(out, ids=ids, x=xs, y=ys) if out else 0, {"rows": a.rows}
    if a.kind == "materialize":
        pc.materialize(a.features)
        return 0, {}
    if a.kind == "load-features":
        x, y, nbytes = pc.training_set(a.features)
        link.bytes += nbytes
        return _write_npz(out, x=x, y=y), {"rows": len(y)}
    if a.kind == "prepare":
        rows = _npz(link.read(inputs[0]))
        x, y = rows["x"][a.part :: a.parts], rows["y"][a.part :: a.parts]
        copies = [x] + [_shifted(x, rng) for _ in range(a.augment)]
        xp = np.concatenate(copies).astype(np.float32)
        xp = np.clip(xp * (16.0 / np.maximum(xp.max(axis=1, keepdims=True), 1e-6)), 0, 16)
        yp = np.tile(y, a.augment + 1)
        return _write_npz(out, x=xp, y=yp), {"rows": len(yp)}
    if a.kind == "train":
        from testbed.services.trainer import train

        parts = [_npz(link.read(p)) for p in inputs]
        x = np.concatenate([p["x"] for p in parts])
        y = np.concatenate([p["y"] for p in parts])
        res = train(x, y, a.steps, a.seed)
        out.write_bytes(res["onnx"])
        return len(res["onnx"]), {"rows": len(y), "accuracy": res["accuracy"]}
    if a.kind == "evaluate":
        from sklearn.datasets import load_digits

        from testbed.zoo.manifest import ort_session

        onnx = link.read(inputs[0])
        x, y = load_digits(return_X_y=True)
        got = ort_session(onnx).run(None, {"x": x.astype(np.float32)})[0].argmax(1)
        acc = float((got == y).mean())
        n = _write_npz(out, onnx=np.frombuffer(onnx, np.uint8), accuracy=np.float64(acc))
        return n, {"accuracy": acc}
    if a.kind == "register":
        z = _npz(link.read(inputs[0]))
        meta = pc.register_model(
            a.registry,
            a.model,
            z["onnx"].tobytes(),
            experiment="retrain",
            metrics={"accuracy": float(z["accuracy"])},
            params={"seed": a.seed},
        )
        out.write_text(json.dumps(meta))
        return out.stat().st_size, {"version": meta["version"]}
    if a.kind == "rollout":
        import httpx

        from testbed.services.guard import token_headers

        version = json.loads(link.read(inputs[0]))["version"]
        pc.set_alias(a.registry, a.model, CHAMPION, version)
        r = httpx.post(
            f"{a.serving_url}/admin/config",
            json={"model": a.model, "version": str(version)},
            headers=token_headers(),
            timeout=120,
        )
        if r.status_code != 200:
            raise RuntimeError(f"serving instance refused version {version}: {r.text[:200]}")
        return 0, {"version": version}
    raise ValueError(f"unknown kind {a.kind!r} (known: {', '.join(KINDS)})")


def main() -> None:
    p = argparse.ArgumentParser(description="One step of an MLOps batch process (a job).")
    p.add_argument("--port", type=int, default=0, help="unused (uniform service interface)")
    p.add_argument("--host", default="127.0.0.1", help="unused")
    p.add_argument("--kind", required=True, choices=KINDS)
    p.add_argument("--record", required=True, help="JSON record written here")
    p.add_argument("--out", default=None, help="output file of the step")
    p.add_argument("--inputs", default="", help="input files, comma-separated")
    p.add_argument("--link-mbps", type=float, default=0.0)
    p.add_argument("--features", default="")
    p.add_argument("--registry", default="")
    p.add_argument("--model", default="digits-retrain")
    p.add_argument("--serving-url", default="")
    p.add_argument("--part", type=int, default=0)
    p.add_argument("--parts", type=int, default=1)
    p.add_argument("--rows", type=int, default=300)
    p.add_argument("--augment", type=int, default=3)
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    link = Link(a.link_mbps)
    t0, w0 = time.time(), time.perf_counter()
    record: dict[str, Any] = {"kind": a.kind, "part": a.part, "parts": a.parts}
    try:
        bytes_out, detail = work(a, link)
        record["ok"] = True
    except Exception as e:  # the runner reads the reason from the record
        bytes_out, detail = 0, {"error": f"{type(e).__name__}: {e}"}
        record["ok"] = False
    wall = time.perf_counter() - w0
    ru = resource.getrusage(resource.RUSAGE_SELF)
    record.update(
        t_start=t0,
        t_end=t0 + wall,
        transfer_s=link.waited_s,
        compute_s=wall - link.waited_s,
        cpu_s=ru.ru_utime + ru.ru_stime,
        bytes_in=link.bytes,
        bytes_out=bytes_out,
        detail=detail,
    )
    tmp = Path(a.record).with_suffix(".tmp")
    tmp.write_text(json.dumps(record))
    tmp.replace(a.record)
    sys.exit(0 if record["ok"] else 1)


if __name__ == "__main__":
    main()
