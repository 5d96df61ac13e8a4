"""Gateway: the pipeline's entry (implements :mod:`testbed.api`).

Each request goes through the stages in order; at every stage the gateway picks
the replica with the fewest outstanding requests, and when a replica cannot be
reached (dead, reset) it marks it dead for a moment and retries the item on
another replica — inference is idempotent, so an item that was lost inside a
killed replica is retried too. Only when no replica of a stage answers does the
request fail (503); a stage timeout is 504.

Control API (JSON):
    POST /admin/routes   {"stages": [{"name", "batch"?, "replicas": [{"name", "url"}, ...]}]}
                         replaces the pipeline atomically; replicas keep their counters
    GET  /admin/routes   the same, with outstanding counts and failures
    V2 (Open Inference Protocol): model "pipeline", see :mod:`testbed.services.v2`
    *    /admin/proxy/{target}/{path}  forwards to a ``--targets`` service (node agents,
                         registry, feature store) for backends whose services are only
                         reachable through the gateway
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from typing import Any

import aiohttp
import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from testbed.api import IMAGE_SIZE, INFER_PATH, TIMINGS_HEADER, StageTiming, encode_timings
from testbed.services.common import base_parser, common_routes, error, serve
from testbed.services.guard import (
    MAX_MODEL_BYTES,
    AdminGuard,
    BadRequest,
    BodyLimit,
    admin_token,
    finite_vector,
    overloaded,
    parse_json,
    strict_int,
)
from testbed.services.routing import Picker, Replica, StageRoute
from testbed.services.stage_client import ReplicaClient, ReplicaUnreachable, StageError
from testbed.services.v2 import gateway_routes

POOL_KEEPALIVE_S = 30  # s the gateway keeps an idle stage connection (services keep theirs longer)
BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0)


class NoReplica(RuntimeError):
    """Every replica of a stage failed or none is configured."""


class Gateway:
    """Routes, replica clients, metrics; the part of the gateway tests drive directly."""

    def __init__(
        self,
        features_url: str | None = None,
        targets: dict[str, str] | None = None,
        stage_timeout_s: float = 10.0,
        dead_s: float = 1.0,
        max_inflight: int = 256,
        max_pending: int = 4096,
    ):
        self.features_url = features_url
        self.features_api: str | None = None  # "feast" or "builtin", asked on first lookup
        self.max_inflight = max_inflight  # calls outstanding per replica
        self.max_pending = max_pending  # requests in the gateway before it answers 503
        self.pending = 0
        self.targets = dict(targets or {})
        self.stage_timeout_s = stage_timeout_s
        self.picker = Picker(dead_s=dead_s)
        self.routes: list[StageRoute] = []
        self.clients: dict[str, ReplicaClient] = {}
        self.warming: set[asyncio.Task] = set()  # pre-opens of new replicas' connections
        self.session: aiohttp.ClientSession | None = None
        self.reg = CollectorRegistry()
        self.m_latency = Histogram(
            "gateway_request_latency_seconds",
            "End-to-end latency",
            buckets=BUCKETS,
            registry=self.reg,
        )
        self.m_requests = Counter(
            "gateway_requests", "Requests by status", ["code"], registry=self.reg
        )
        self.m_retries = Counter(
            "gateway_retries", "Items retried on another replica", ["stage"], registry=self.reg
        )
        self.m_hop = Histogram(
            "gateway_stage_seconds",
            "Round trip to a stage",
            ["stage"],
            buckets=BUCKETS,
            registry=self.reg,
        )
        self.m_inflight = Gauge("gateway_inflight", "Requests in progress", registry=self.reg)
        self.m_replicas = Gauge(
            "gateway_replicas", "Replicas per stage", ["stage"], registry=self.reg
        )

    async def open(self) -> None:
        if self.session is None:
            conn = aiohttp.TCPConnector(limit=0, keepalive_timeout=POOL_KEEPALIVE_S)
            self.session = aiohttp.ClientSession(connector=conn)

    async def close(self) -> None:
        if self.session is not None:
            await self.session.close()
            self.session = None

    def set_routes(self, stages: list[dict[str, Any]]) -> None:
        """Replace the pipeline; replicas already known keep their counters."""
        assert self.session is not None
        old = {(r.name, r.url): r for s in self.routes for r in s.replicas}
        routes = []
        for s in stages:
            reps = []
            for r in s["replicas"]:
                rep = old.get((r["name"], r["url"])) or Replica(r["name"], r["url"])
                reps.append(rep)
                if rep.url not in self.clients:
                    self.clients[rep.url] = ReplicaClient(
                        self.session,
                        rep.url,
                        self.stage_timeout_s,
                        max_inflight=self.max_inflight,
                    )
                    self._preopen(self.clients[rep.url])
                self.clients[rep.url].batch = max(int(s.get("batch", 1)), 1)
            routes.append(StageRoute(s["name"], reps))
            self.m_replicas.labels(s["name"]).set(len(reps))
        self.routes = routes  # one assignment: a request sees the old or the new pipeline

    def _preopen(self, client: ReplicaClient) -> None:
        """Connect to a replica new to the routes in the background (its first request
        then reuses the connection); nothing without a running loop (tests, startup)."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        task = loop.create_task(client.preopen())
        self.warming.add(task)  # keep a reference until done (tasks are weakly held)
        task.add_done_callback(self.warming.discard)

    def routes_json(self) -> dict[str, Any]:
        return {
            "stages": [
                {
                    "name": s.name,
                    "replicas": [
                        {
                            "name": r.name,
                            "url": r.url,
                            "outstanding": r.outstanding,
                            "failures": r.failures,
                        }
                        for r in s.replicas
                    ],
                }
                for s in self.routes
            ]
        }

    async def run_stage(self, route: StageRoute, row: np.ndarray) -> tuple[np.ndarray, StageTiming]:
        """Send ``row`` through one stage, retrying on other replicas when one is unreachable."""
        tried: set[str] = set()
        while True:
            rep = self.picker.pick(route, tried)
            if rep is None:
                raise NoReplica(f"no replica of stage {route.name!r} answered")
            tried.add(rep.name)
            rep.outstanding += 1
            t0 = time.perf_counter()
            try:
                res = await self.clients[rep.url].call(row)
            except ReplicaUnreachable:
                self.picker.mark_dead(rep)
                self.m_retries.labels(route.name).inc()
                continue
            except StageError as e:
                if e.status != 503:
                    raise
                # that replica's queue is full: another replica may have room
                self.m_retries.labels(route.name).inc()
                continue
            finally:
                rep.outstanding -= 1
            rt_ms = (time.perf_counter() - t0) * 1000
            self.picker.mark_alive(rep)
            self.m_hop.labels(route.name).observe(rt_ms / 1000)
            hop = max(rt_ms - res.queue_ms - res.service_ms, 0.0)
            timing = StageTiming(
                route.name,
                rep.name,
                res.variant,
                res.batch,
                res.queue_ms,
                res.service_ms,
                hop,
                res.received_unix,
            )
            return res.output, timing

    async def infer(self, image: np.ndarray) -> tuple[int, list[StageTiming]]:
        """Run the pipeline on one image; the label is the argmax of the last output."""
        x = image
        timings = []
        for route in self.routes:
            x, t = await self.run_stage(route, x)
            timings.append(t)
        return int(np.argmax(x)), timings

    async def lookup(self, entity_id: int) -> np.ndarray:
        """The entity's image from the feature store (KeyError if unknown)."""
        if not self.features_url or self.session is None:
            raise KeyError("no feature store configured")
        if self.features_api is None:  # which store answers (Feast or the builtin one)
            async with self.session.get(f"{self.features_url}/healthz") as r:
                self.features_api = str((await r.json()).get("api", "builtin"))
        if self.features_api == "feast":
            body = {"features": ["digits:pixels"], "entities": {"entity_id": [entity_id]}}
            async with self.session.post(
                f"{self.features_url}/get-online-features", json=body
            ) as r:
                r.raise_for_status()
                data = await r.json()
            col = data["results"][data["metadata"]["feature_names"].index("pixels")]
            if col["statuses"][0] != "PRESENT":
                raise KeyError(f"unknown entity {entity_id}")
            return np.asarray(col["values"][0], dtype=np.float32)
        async with self.session.get(f"{self.features_url}/entities/{entity_id}") as r:
            if r.status == 404:
                raise KeyError(f"unknown entity {entity_id}")
            r.raise_for_status()
            data = await r.json()
        return np.asarray(data["features"], dtype=np.float32)


def parse_request(body: Any) -> tuple[str, np.ndarray | None, int | None]:
    """Validate an inference request; BadRequest (a ValueError) with the reason otherwise."""
    if not isinstance(body, dict):
        raise BadRequest("body must be a JSON object")
    rid = body.get("id", "")
    if not isinstance(rid, str | int) or isinstance(rid, bool) or len(str(rid)) > 200:
        raise BadRequest("id must be a string (at most 200 characters) or an integer")
    rid = str(rid)
    if "image" in body:
        return rid, finite_vector(body["image"], IMAGE_SIZE, "image"), None
    if "entity_id" in body:
        return rid, None, strict_int(body["entity_id"], "entity_id", 0, 2**31 - 1)
    raise BadRequest(f"give 'image' ({IMAGE_SIZE} numbers) or 'entity_id'")


def create_app(gw: Gateway) -> Starlette:
    async def infer(req: Request) -> Response:
        t0 = time.perf_counter()
        if gw.pending >= gw.max_pending:
            gw.m_requests.labels("503").inc()
            status, headers, body_ = overloaded("gateway")
            return Response(
                body_,
                status,
                headers={"retry-after": headers[1][1].decode()},
                media_type="application/json",
            )
        gw.m_inflight.inc()
        gw.pending += 1
        try:
            try:
                rid, image, entity = parse_request(parse_json(await req.body()))
            except BadRequest as e:
                gw.m_requests.labels(str(e.status)).inc()
                return error(str(e), e.status)
            if image is None:
                try:
                    image = await gw.lookup(entity)  # type: ignore[arg-type]
                except KeyError as e:
                    gw.m_requests.labels("404").inc()
                    return error(str(e), 404)
                except (aiohttp.ClientError, TimeoutError) as e:
                    # Feast refuses online reads while a materialization runs (the view is
                    # MATERIALIZING); a store that cannot answer is a 503, never a 500
                    gw.m_requests.labels("503").inc()
                    return JSONResponse(
                        {"error": f"feature store unavailable: {type(e).__name__}"},
                        503,
                        headers={"retry-after": "1"},
                    )
            try:
                label, timings = await gw.infer(image)
            except NoReplica as e:
                gw.m_requests.labels("503").inc()
                return JSONResponse({"error": str(e)}, 503, headers={"retry-after": "1"})
            except TimeoutError:
                gw.m_requests.labels("504").inc()
                return error("stage timeout", 504)
            except StageError as e:
                gw.m_requests.labels("502").inc()
                return error(str(e), 502)
            gw_ms = (time.perf_counter() - t0) * 1000
            body = {
                "id": rid,
                "label": label,
                "stages": [t.__dict__ for t in timings],
                "gateway_ms": gw_ms,
            }
            gw.m_requests.labels("200").inc()
            gw.m_latency.observe(gw_ms / 1000)
            return JSONResponse(body, headers={TIMINGS_HEADER: encode_timings(timings)})
        finally:
            gw.pending -= 1
            gw.m_inflight.dec()

    async def get_routes(_req: Request) -> Response:
        return JSONResponse(gw.routes_json())

    async def set_routes(req: Request) -> Response:
        try:
            body = parse_json(await req.body())
            if not isinstance(body, dict) or not isinstance(body.get("stages"), list):
                raise BadRequest('body must be {"stages": [...]}')
            gw.set_routes(body["stages"])
        except BadRequest as e:
            return error(f"bad routes: {e}", e.status)
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            return error(f"bad routes: {type(e).__name__}: {e}")
        return JSONResponse(gw.routes_json())

    async def proxy(req: Request) -> Response:
        target, path = req.path_params["target"], req.path_params["path"]
        base = gw.targets.get(target)
        if base is None or gw.session is None:
            return error(f"unknown proxy target {target!r}", 404)
        headers = {
            k: v
            for k, v in req.headers.items()
            if k.lower() == "content-type" or k.lower().startswith("x-")
        }
        try:
            async with gw.session.request(
                req.method,
                f"{base}/{path}",
                data=await req.body(),
                headers=headers,
                params=dict(req.query_params),
            ) as r:
                body = await r.read()
                out = {k: v for k, v in r.headers.items() if k.lower().startswith("x-")}
                return Response(
                    body,
                    status_code=r.status,
                    headers=out,
                    media_type=r.headers.get("content-type"),
                )
        except aiohttp.ClientError as e:
            return error(f"proxy to {target}: {e}", 502)

    @contextlib.asynccontextmanager
    async def lifespan(_app: Starlette):  # type: ignore[no-untyped-def]
        await gw.open()
        yield
        await gw.close()

    routes = [
        *common_routes(gw.reg, lambda: gw.session is not None),
        Route(INFER_PATH, infer, methods=["POST"]),
        Route("/admin/routes", get_routes, methods=["GET"]),
        Route("/admin/routes", set_routes, methods=["POST"]),
        Route("/admin/proxy/{target}/{path:path}", proxy, methods=["GET", "POST", "PUT", "DELETE"]),
        *gateway_routes(gw, IMAGE_SIZE, NoReplica),  # Open Inference Protocol (services.v2)
    ]
    # the admin proxy sits behind the token and carries model uploads to the registry
    middleware = [
        Middleware(AdminGuard, token=admin_token()),
        Middleware(BodyLimit, path_limits=(("/admin/proxy/", MAX_MODEL_BYTES),)),
    ]
    return Starlette(routes=routes, lifespan=lifespan, middleware=middleware)


def parse_targets(text: str | None) -> dict[str, str]:
    """``name=url,name=url`` → dict."""
    out = {}
    for part in filter(None, (text or "").split(",")):
        name, _, url = part.partition("=")
        if not url:
            raise ValueError(f"bad target {part!r}: expected name=url")
        out[name.strip()] = url.strip().rstrip("/")
    return out


def main() -> None:
    p = base_parser("Gateway: the pipeline's entry.")
    p.add_argument("--registry", default=None, help="(kept for the proxy; not used to route)")
    p.add_argument("--features", default=None)
    p.add_argument("--targets", default="")
    p.add_argument("--stage-timeout-s", type=float, default=10.0)
    p.add_argument(
        "--max-inflight",
        type=int,
        default=256,
        help="calls outstanding per replica (items queue in the stage server, not here)",
    )
    p.add_argument("--routes", default=None, help="initial routes as JSON (as POST /admin/routes)")
    a = p.parse_args()
    targets = parse_targets(a.targets)
    if a.registry:
        targets.setdefault("registry", a.registry.rstrip("/"))
    if a.features:
        targets.setdefault("features", a.features.rstrip("/"))
    gw = Gateway(a.features, targets, a.stage_timeout_s, max_inflight=a.max_inflight)
    app = create_app(gw)
    if a.routes:
        stages = json.loads(a.routes)["stages"]

        async def _init() -> None:
            gw.set_routes(stages)

        orig = app.router.lifespan_context

        @contextlib.asynccontextmanager
        async def with_routes(a_: Starlette):  # type: ignore[no-untyped-def]
            async with orig(a_):
                await _init()
                yield

        app.router.lifespan_context = with_routes
    serve(app, a.host, a.port)


if __name__ == "__main__":
    main()
