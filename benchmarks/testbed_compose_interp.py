"""The serving image's interpreter against the host venv's: same work, CPU per call.

The Compose backend runs the stage servers in the serving image (Debian's python3.11,
``/opt/venv``); the local backend runs them in the host's venv. Their CPU per item
differs in the knee sweeps (``testbed_knee_noise.md``), so this asks whether the
interpreter or onnxruntime is the cause, with no container and no network in the way:
the image's layers are mounted read-only (overlay, a throw-away upper dir) and both
interpreters run the same script, alternately, pinned to one CPU:

* pure-Python work like a stage call's envelope (JSON parse, build, serialise, headers),
  µs of thread CPU per call;
* e-large inference on one item, onnxruntime with one thread, ms of thread CPU per item.

Needs root and a Docker engine with the image built (``testbed up --backend compose``
builds it). A timing measurement: run it under the lock::

    flock /work/bench.lock python benchmarks/testbed_compose_interp.py

The result: ``benchmarks/results/testbed_compose_interp.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

ROOT = Path(__file__).resolve().parents[1]
IMAGE = "mlops-twin-node"
MODEL = ROOT / "data" / "models" / "encoder" / "e-large.onnx"
CPU = "1"  # the CPU both interpreters are pinned to


def py_call_us(n: int = 20000) -> float:
    """Thread CPU (µs) of one stage-call-like envelope in pure Python."""
    body = json.dumps({"inputs": [[0.1] * 64], "id": "x", "meta": {"a": 1, "b": [1, 2, 3]}})
    t0 = time.thread_time()
    for i in range(n):
        d = json.loads(body)
        d["id"] = f"r{i}"
        out = json.dumps({"outputs": d["inputs"], "id": d["id"], "ok": True, "t": 0.1 * i})
        pairs = (("Content-Type", "application/json"), ("X-Id", d["id"]), ("Length", len(out)))
        {k.lower(): v for k, v in pairs}
    return (time.thread_time() - t0) / n * 1e6


def ort_item_ms(model: str, n: int = 300) -> float:
    """Thread CPU (ms) of one e-large inference of one item, one onnxruntime thread."""
    import numpy as np
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = so.inter_op_num_threads = 1
    sess = ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])
    inp = sess.get_inputs()[0]
    shape = [1] + [d if isinstance(d, int) else 1 for d in inp.shape[1:]]
    x = np.random.default_rng(0).random(shape, dtype=np.float32)
    for _ in range(20):  # warm-up: allocations and caches
        sess.run(None, {inp.name: x})
    t0 = time.thread_time()
    for _ in range(n):
        sess.run(None, {inp.name: x})
    return (time.thread_time() - t0) / n * 1e3


def worker(label: str, model: str) -> None:
    """Print one JSON line: this interpreter's figures (3 repeats each)."""
    os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")
    print(
        json.dumps(
            {
                "label": label,
                "python": sys.version.split()[0],
                "py_us": [py_call_us() for _ in range(3)],
                "ort_ms": [ort_item_ms(model) for _ in range(3)],
            }
        )
    )


def _layers() -> str:
    fmt = "{{.GraphDriver.Data.UpperDir}}:{{.GraphDriver.Data.LowerDir}}"
    res = subprocess.run(
        ["docker", "image", "inspect", IMAGE, "-f", fmt], capture_output=True, text=True
    )
    if res.returncode != 0:
        sys.exit(
            f"image {IMAGE}: {res.stderr.strip()} (build it with testbed up --backend compose)"
        )
    return res.stdout.strip()


def measure(rounds: int) -> list[dict]:
    """Both interpreters, alternately, ``rounds`` times; the image's in a chroot."""
    if os.geteuid() != 0:
        sys.exit("testbed_compose_interp: needs root (overlay mount, chroot)")
    tmp = Path(tempfile.mkdtemp(prefix="mlops-twin-interp-"))
    root, upper, work = tmp / "root", tmp / "upper", tmp / "work"
    for d in (root, upper, work):
        d.mkdir()
    opts = f"lowerdir={_layers()},upperdir={upper},workdir={work}"
    subprocess.run(["mount", "-t", "overlay", "overlay", "-o", opts, str(root)], check=True)
    mounted = [root]
    try:
        for sub in ("proc", "sys"):
            subprocess.run(["mount", "--bind", f"/{sub}", str(root / sub)], check=True)
            mounted.append(root / sub)
        inside = root / "tmp" / "interp"
        inside.mkdir(parents=True, exist_ok=True)
        shutil.copy(__file__, inside / "bench.py")
        shutil.copy(MODEL, inside / MODEL.name)
        host = ["taskset", "-c", CPU, sys.executable, __file__, "--worker", "host venv", str(MODEL)]
        image = ["taskset", "-c", CPU, "chroot", str(root), "/opt/venv/bin/python"]
        image += ["/tmp/interp/bench.py", "--worker", "image", f"/tmp/interp/{MODEL.name}"]
        rows = []
        for _ in range(rounds):
            for argv in (host, image):
                out = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
                rows.append(json.loads(out.strip().splitlines()[-1]))
        return rows
    finally:
        for m in reversed(mounted):
            subprocess.run(["umount", str(m)], check=False)
        shutil.rmtree(tmp, ignore_errors=True)


def report(rows: list[dict], rounds: int) -> None:
    from _report import machine_line, markdown_table, write_result

    by: dict[str, dict[str, list[float]]] = {}
    version = {}
    for r in rows:
        b = by.setdefault(r["label"], {"py_us": [], "ort_ms": []})
        b["py_us"] += r["py_us"]
        b["ort_ms"] += r["ort_ms"]
        version[r["label"]] = r["python"]
    med = {k: {m: sorted(v)[len(v) // 2] for m, v in b.items()} for k, b in by.items()}
    table = [
        [
            k,
            version[k],
            f"{med[k]['py_us']:.1f} ({min(b['py_us']):.1f}–{max(b['py_us']):.1f})",
            f"{med[k]['ort_ms']:.3f} ({min(b['ort_ms']):.3f}–{max(b['ort_ms']):.3f})",
        ]
        for k, b in by.items()
    ]
    h, i = med.get("host venv"), med.get("image")
    ratio = (
        [
            f"- image / host venv: pure-Python call {i['py_us'] / h['py_us']:.2f}×, "
            f"e-large item {i['ort_ms'] / h['ort_ms']:.3f}×"
        ]
        if h and i
        else []
    )
    text = [
        "# The serving image's interpreter against the host venv's (CPU per call)",
        "",
        f"- {machine_line()}",
        "- command: `flock /work/bench.lock python benchmarks/testbed_compose_interp.py` "
        f"({rounds} rounds, interpreters alternating, pinned to CPU {CPU}; the image's "
        "layers mounted read-only, chroot, no container)",
        "- median (min–max) over rounds × 3 repeats; thread CPU time",
        "",
        markdown_table(
            ["interpreter", "Python", "pure-Python call µs", "e-large item ms (onnxruntime)"],
            table,
        ),
        "",
        *ratio,
    ]
    write_result("testbed_compose_interp", "\n".join(text))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--worker", nargs=2, metavar=("LABEL", "MODEL"), help=argparse.SUPPRESS)
    ap.add_argument("--rounds", type=int, default=2)
    a = ap.parse_args()
    if a.worker:
        worker(*a.worker)
        return
    report(measure(a.rounds), a.rounds)


if __name__ == "__main__":
    main()
