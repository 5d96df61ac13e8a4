"""HTTP fuzz against a running testbed: malformed requests mixed into valid load.

Run: flock /work/bench.lock .venv/bin/python benchmarks/hardening_http.py [--bad 10000]

Starts the digits pipeline on the local backend, then for the length of the
fuzz sends valid inference requests open-loop (``--rate`` per second, entity
ids and raw images) while ``--workers`` clients send malformed requests as fast
as the services answer: broken, NaN, overflowing, deeply nested and oversized
JSON to the gateway; wrong shapes, widths, dtypes, NaN rows and short bodies to
a stage server's ``/v1/batch``; bad ids to the feature store; and calls to
every admin or write route (gateway routes and proxy, stage config, node agent
instances, registry upload, feature ingestion) without the testbed's token.

Reported, all of which must hold: every malformed request got a 4xx, every
valid one a 200, no service process was restarted (same PIDs before and after,
every instance still listed, no stage batch worker restarted).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import re
import sys
import tempfile
import time
import warnings
from collections import Counter
from pathlib import Path

import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import machine_line, markdown_table, write_result
from testbed_load import ensure_zoo

from testbed.backends.local import LocalBackend
from testbed.capacity import plan_capacity
from testbed.controller import Controller
from testbed.services.guard import TOKEN_HEADER, token_headers
from testbed.zoo.manifest import DEFAULT_DIR, load_testset
from twin.load import load_deployment, load_scenario

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def bad_requests(urls: dict[str, str], width: int, rnd: random.Random) -> list[tuple]:
    """(target, method, url, headers, body) of one round of malformed requests."""
    gw, stage, fs, reg, node = (
        urls[k] for k in ("gateway", "stage", "features", "registry", "node")
    )
    infer = gw + "/v1/infer"
    js = {"content-type": "application/json"}
    good_row = np.ones((1, width), np.float32)

    def batch(shape: str, body: bytes, dtype: str = "float32") -> tuple:
        h = {"x-shape": shape, "x-dtype": dtype, "content-type": "application/octet-stream"}
        return ("stage /v1/batch", "POST", stage + "/v1/batch", h, body)

    wrong = TOKEN_HEADER
    return [
        ("gateway /v1/infer", "POST", infer, js, bytes(rnd.randrange(256) for _ in range(64))),
        ("gateway /v1/infer", "POST", infer, js, b'{"entity_id": NaN}'),
        ("gateway /v1/infer", "POST", infer, js, b'{"entity_id": 1e400}'),
        ("gateway /v1/infer", "POST", infer, js, b'{"entity_id": "5"}'),
        ("gateway /v1/infer", "POST", infer, js, b'{"entity_id": -1}'),
        ("gateway /v1/infer", "POST", infer, js, b'{"entity_id": true}'),
        ("gateway /v1/infer", "POST", infer, js, b'{"entity_id": ' + b"9" * 5000 + b"}"),
        ("gateway /v1/infer", "POST", infer, js, b"[" * 20000 + b"]" * 20000),
        ("gateway /v1/infer", "POST", infer, js, json.dumps({"image": [1.0] * 63}).encode()),
        ("gateway /v1/infer", "POST", infer, js, json.dumps({"image": ["1"] * 64}).encode()),
        ("gateway /v1/infer", "POST", infer, js, json.dumps({"image": [1e39] * 64}).encode()),
        ("gateway /v1/infer", "POST", infer, js, b'{"image": [' + b"NaN," * 63 + b"NaN]}"),
        ("gateway /v1/infer", "POST", infer, js, b'{"id": {"x": 1}, "entity_id": 1}'),
        ("gateway /v1/infer", "POST", infer, js, b"[]"),
        ("gateway /v1/infer", "POST", infer, js, b'{"nothing": 1}'),
        ("gateway /v1/infer", "POST", infer, js, b'{"image": "' + b"A" * (2 << 20) + b'"}'),
        ("gateway /v1/infer", "GET", infer, {}, b""),
        ("gateway admin", "GET", gw + "/admin/routes", {}, b""),
        ("gateway admin", "POST", gw + "/admin/routes", {wrong: "nope"}, b'{"stages": []}'),
        ("gateway admin", "GET", gw + "/admin/proxy/registry/models", {}, b""),
        batch(f"1,{width}", np.full((1, width), np.nan, np.float32).tobytes()),
        batch(f"1,{width + 1}", np.ones((1, width + 1), np.float32).tobytes()),
        batch(f"2,{width}", good_row.tobytes()),
        batch("x", good_row.tobytes()),
        batch(f"100000,{width}", good_row.tobytes()),
        batch(f"1,{width}", good_row.tobytes(), "int64"),
        batch(f"-1,{width}", b""),
        ("stage admin", "POST", stage + "/admin/config", js, b'{"batch": 4}'),
        ("feature store", "POST", fs + "/lookup", js, b'{"ids": [1e400]}'),
        ("feature store", "POST", fs + "/lookup", js, b'{"ids": ["x"]}'),
        ("feature store", "GET", fs + "/entities/abc", {}, b""),
        ("feature store", "GET", fs + "/export?limit=x", {}, b""),
        ("feature store", "POST", fs + "/ingest", js, b'{"entities": []}'),
        ("registry", "PUT", reg + "/models/evil/1", {"x-sha256": "0" * 64}, b"\x00" * 100),
        ("node agent", "POST", node + "/instances", js, b'{"name": "x", "service": "stage"}'),
        ("node agent", "DELETE", node + "/instances/whatever", {}, b""),
    ]


async def fuzz(urls: dict[str, str], width: int, images: np.ndarray, a: argparse.Namespace):
    rnd = random.Random(a.seed)
    bad_codes: Counter = Counter()
    not_4xx: list[str] = []
    valid_codes: Counter = Counter()
    sent_bad = 0
    stop = asyncio.Event()
    limits = httpx.Limits(max_connections=a.workers + 64)
    async with httpx.AsyncClient(timeout=30.0, limits=limits) as client:

        async def bad_worker() -> None:
            nonlocal sent_bad
            while sent_bad < a.bad:
                for target, method, url, headers, body in bad_requests(urls, width, rnd):
                    if sent_bad >= a.bad:
                        break
                    sent_bad += 1
                    try:
                        r = await client.request(method, url, headers=headers, content=body)
                        code = r.status_code
                    except httpx.HTTPError as e:
                        code = type(e).__name__
                    bad_codes[(target, code)] += 1
                    if not (isinstance(code, int) and 400 <= code < 500):
                        not_4xx.append(f"{target} {method} {url.split('/', 3)[-1][:40]}: {code}")

        async def one_valid(i: int) -> None:
            if i % 2:
                body = {"id": str(i), "entity_id": int(i % len(images))}
            else:
                body = {"id": str(i), "image": images[i % len(images)].tolist()}
            try:
                r = await client.post(urls["gateway"] + "/v1/infer", json=body)
                valid_codes[r.status_code] += 1
            except httpx.HTTPError as e:
                valid_codes[type(e).__name__] += 1

        async def valid_load() -> None:
            tasks = []
            t0 = time.monotonic()
            i = 0
            while not stop.is_set():
                tasks.append(asyncio.create_task(one_valid(i)))
                i += 1
                await asyncio.sleep(max(t0 + i / a.rate - time.monotonic(), 0))
            await asyncio.gather(*tasks)

        loader = asyncio.create_task(valid_load())
        t0 = time.monotonic()
        await asyncio.gather(*(bad_worker() for _ in range(a.workers)))
        elapsed = time.monotonic() - t0
        stop.set()
        await loader
    return bad_codes, not_4xx, valid_codes, sent_bad, elapsed


def pids(backend: LocalBackend, ctl: Controller, endpoints) -> dict[str, int]:
    out = {p.name: p.pid for p in backend.procs}
    for url in endpoints.nodes.values():
        for inst in httpx.get(f"{url}/instances").json():
            out[inst["name"]] = inst["pid"]
    return out


def worker_restarts(ctl: Controller) -> float:
    total = 0.0
    for inst in ctl.instances.values():
        text = httpx.get(f"http://127.0.0.1:{inst.port}/metrics").text
        total += sum(float(v) for v in re.findall(r"^stage_worker_restarts (\S+)", text, re.M))
    return total


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bad", type=int, default=10_000, help="malformed requests to send")
    ap.add_argument("--rate", type=float, default=20.0, help="valid requests per second")
    ap.add_argument("--workers", type=int, default=8, help="clients sending malformed requests")
    ap.add_argument("--seed", type=int, default=16)
    a = ap.parse_args()
    ensure_zoo(DEFAULT_DIR)
    sc = load_scenario(EXAMPLES / "digits-pipeline.yaml")
    dep = load_deployment(EXAMPLES / "digits-pipeline.deployment.yaml")
    x, _ = load_testset(DEFAULT_DIR)
    with tempfile.TemporaryDirectory() as tmp:
        backend = LocalBackend(state_dir=Path(tmp) / "tb", model_dir=DEFAULT_DIR)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            endpoints = backend.up(sc, dep, plan_capacity(sc))
        try:
            ctl = Controller.load(backend.state_dir)
            first = ctl.pipeline()[0]
            inst = next(i for i in ctl.instances.values() if i.component == first)
            urls = {
                "gateway": endpoints.gateway,
                "stage": f"http://127.0.0.1:{inst.port}",
                "features": endpoints.features,
                "registry": endpoints.registry,
                "node": endpoints.nodes[inst.node],
            }
            token_set = bool(token_headers())
            before = pids(backend, ctl, endpoints)
            bad_codes, not_4xx, valid_codes, sent, elapsed = asyncio.run(
                fuzz(urls, x.shape[1], x, a)
            )
            after = pids(backend, ctl, endpoints)
            restarts = worker_restarts(ctl)
            healthy = all(
                httpx.get(u + "/healthz").status_code == 200
                for u in [endpoints.gateway, endpoints.features, endpoints.registry, urls["stage"]]
            )
        finally:
            backend.down()
    changed = sorted(k for k in before if after.get(k) != before[k])
    valid_total = sum(valid_codes.values())
    valid_ok = valid_codes.get(200, 0)
    by_target: dict[str, Counter] = {}
    for (target, code), n in bad_codes.items():
        by_target.setdefault(target, Counter())[code] += n
    rows = [
        [t, sum(c.values()), ", ".join(f"{k}: {v}" for k, v in sorted(c.items(), key=str))]
        for t, c in sorted(by_target.items())
    ]
    text = "\n".join(
        [
            "# Hardening: HTTP fuzz against a running testbed",
            "",
            f"Machine: {machine_line()}",
            f"Command: `flock /work/bench.lock .venv/bin/python benchmarks/hardening_http.py "
            f"--bad {a.bad} --rate {a.rate:g} --workers {a.workers} --seed {a.seed}`",
            "",
            f"Digits pipeline on the local backend (admin token set: {token_set}). "
            f"{sent} malformed requests from {a.workers} clients in {elapsed:.1f} s, mixed "
            f"with {valid_total} valid requests at {a.rate:g}/s (half entity ids, half images).",
            "",
            markdown_table(["malformed, sent to", "requests", "answers (status: count)"], rows),
            "",
            markdown_table(
                ["check", "result", "must be"],
                [
                    ["malformed requests answered outside 4xx", len(not_4xx), 0],
                    ["valid requests answered 200", f"{valid_ok} of {valid_total}", "all"],
                    ["service processes restarted (PID changed or gone)", len(changed), 0],
                    ["stage batch workers restarted", int(restarts), 0],
                    ["all services healthy afterwards", healthy, True],
                ],
            ),
            "",
            "Valid answers: " + ", ".join(f"{k}: {v}" for k, v in valid_codes.items()),
        ]
        + (["", "Outside 4xx (first 20):", *(f"- {s}" for s in not_4xx[:20])] if not_4xx else [])
        + (["", f"Restarted: {', '.join(changed)}"] if changed else [])
    )
    write_result("hardening_http", text)


if __name__ == "__main__":
    main()
