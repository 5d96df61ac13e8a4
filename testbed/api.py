"""The testbed's wire contract, shared by the gateway, loadgen and calibrate.

Kept dependency-free so Locust workers and the twin side can import it.

Inference request  ``POST /v1/infer`` (JSON):
    {"id": "<client request id>", "image": [64 floats, 0..16]}      # an 8×8 digit
 or {"id": "<client request id>", "entity_id": <int>}              # looked up in the feature store

Response 200 (JSON):
    {"id": ..., "label": <int>, "stages": [StageTiming, ...], "gateway_ms": <float>}
and the same stage timings, compact, in the header ``x-mlops-timings``:
    "<stage>:<replica>:<variant>:<batch>:<queue_ms>:<service_ms>:<hop_ms>[:<received_unix>];..."
where queue_ms is time waiting for a batch (inside the stage server, plus any
wait for a call slot in the gateway's per-replica queue under load),
service_ms the in-server compute time of the batch, hop_ms the gateway-side
round trip minus the two (HTTP + serialisation). Times are milliseconds;
received_unix (optional; Unix s) is when the stage server took the call off the
wire and queued it, on the server's own clock: with it a visit's instants need not
be rebuilt from durations.

Errors: 4xx for a bad request (message in {"error": ...}), 503 when no
replica of a stage is healthy, 504 on a stage timeout.

Every service exposes ``GET /healthz`` (200 when ready) and ``GET /metrics``
(Prometheus text format).
"""

from __future__ import annotations

from dataclasses import dataclass

INFER_PATH = "/v1/infer"
HEALTH_PATH = "/healthz"
METRICS_PATH = "/metrics"
TIMINGS_HEADER = "x-mlops-timings"
IMAGE_SIZE = 64


@dataclass(frozen=True)
class StageTiming:
    """One stage visit of one request, as the gateway saw it (ms)."""

    stage: str
    replica: str
    variant: str
    batch: int
    queue_ms: float
    service_ms: float
    hop_ms: float
    received_unix: float | None = None  # the server's own clock (s); None if not reported

    def encode(self) -> str:
        text = (
            f"{self.stage}:{self.replica}:{self.variant}:{self.batch}:"
            f"{self.queue_ms:.4f}:{self.service_ms:.4f}:{self.hop_ms:.4f}"
        )
        return text if self.received_unix is None else f"{text}:{self.received_unix:.6f}"


def encode_timings(timings: list[StageTiming]) -> str:
    """The ``x-mlops-timings`` header value."""
    return ";".join(t.encode() for t in timings)


def decode_timings(header: str) -> list[StageTiming]:
    """Parse the ``x-mlops-timings`` header; malformed entries raise ValueError."""
    out = []
    for part in filter(None, header.split(";")):
        fields = part.split(":")
        if len(fields) not in (7, 8):
            raise ValueError(f"malformed stage timing {part!r}")
        stage, replica, variant, batch, q, s, h = fields[:7]
        received = float(fields[7]) if len(fields) == 8 else None
        out.append(
            StageTiming(stage, replica, variant, int(batch), float(q), float(s), float(h), received)
        )
    return out
