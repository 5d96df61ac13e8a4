"""What every service checks before it works on a request.

One small module so the gateway, stage servers, node agents and the platform
services refuse bad input the same way: a 4xx with a JSON ``{"error": ...}``
naming the field, never a 500 and never a dead worker.

- :class:`BodyLimit` caps request bodies (413), from ``content-length`` and
  from what actually arrives, so a chunked upload cannot grow without bound.
- :func:`parse_json` refuses NaN/Infinity, numbers that overflow, deep
  nesting and oversized integers (400).
- :func:`finite_vector`, :func:`strict_int`, :func:`bounded_number` check
  shapes, types and ranges of values (bools and number-strings are refused).
- :class:`AdminGuard` puts every ``/admin`` route behind the token that
  ``testbed up`` generates (``MLOPS_TWIN_ADMIN_TOKEN`` in the services'
  environment; compared in constant time, never logged).
- :func:`overloaded` is the answer of a full queue: 503 with ``Retry-After``.
"""

from __future__ import annotations

import hmac
import json
import math
import os
import secrets
from pathlib import Path
from typing import Any

import numpy as np
from starlette.types import ASGIApp, Message, Receive, Scope, Send

TOKEN_ENV = "MLOPS_TWIN_ADMIN_TOKEN"
TOKEN_HEADER = "x-admin-token"
# JSON requests (inference, admin) are small; a stage batch carries rows.
MAX_JSON_BYTES = 1 << 20
# model files pass through the admin routes (registry upload, via the gateway proxy on Compose)
MAX_MODEL_BYTES = 1 << 30
MAX_BATCH_BYTES = 64 << 20
MAX_JSON_DEPTH = 32
MAX_ROWS = 4096
FLOAT32_MAX = float(np.finfo(np.float32).max)


class BadRequest(ValueError):
    """A request the service refuses; ``status`` is the HTTP status to answer."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


def _reject_constant(name: str) -> Any:
    raise BadRequest(f"{name} is not a number JSON allows")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise BadRequest(f"number {text[:20]} is out of range")
    return value


def _depth(text: str, limit: int) -> int:
    """Deepest bracket nesting of a JSON text (strings skipped), stopping past ``limit``."""
    depth = deepest = 0
    in_str = escaped = False
    for ch in text:
        if in_str:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_str = False
        elif ch == '"':
            in_str = True
        elif ch in "[{":
            depth += 1
            if depth > deepest:
                deepest = depth
                if deepest > limit:
                    return deepest
        elif ch in "]}":
            depth -= 1
    return deepest


def parse_json(
    body: bytes, max_bytes: int = MAX_JSON_BYTES, max_depth: int = MAX_JSON_DEPTH
) -> Any:
    """A request body as JSON, or :class:`BadRequest` saying why not (never its text)."""
    if len(body) > max_bytes:
        raise BadRequest(f"body is larger than {max_bytes} bytes", 413)
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise BadRequest("body is not UTF-8") from None
    if _depth(text, max_depth) > max_depth:
        raise BadRequest(f"JSON is nested more than {max_depth} levels deep")
    try:
        return json.loads(text, parse_constant=_reject_constant, parse_float=_finite_float)
    except BadRequest:
        raise
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, int digit limit
        raise BadRequest(f"body is not valid JSON ({type(exc).__name__})") from None


def is_number(value: Any) -> bool:
    """A JSON number: int or float, not a bool and not a string."""
    return isinstance(value, int | float) and not isinstance(value, bool)


def finite_vector(value: Any, size: int, field: str) -> np.ndarray:
    """``value`` as a float32 vector of ``size`` finite numbers; BadRequest otherwise."""
    if not isinstance(value, list) or len(value) != size:
        raise BadRequest(f"{field} must be a list of {size} numbers")
    if not all(is_number(v) for v in value):
        raise BadRequest(f"{field} must hold numbers only (no strings, booleans or null)")
    arr = np.asarray(value, dtype=np.float64)
    if not np.all(np.isfinite(arr)) or np.any(np.abs(arr) > FLOAT32_MAX):
        raise BadRequest(f"{field} must hold finite float32 numbers")
    return arr.astype(np.float32)


def strict_int(value: Any, field: str, lo: int, hi: int) -> int:
    """An integer in ``[lo, hi]`` (a float with an integral value is accepted)."""
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi:
        raise BadRequest(f"{field} must be an integer in [{lo}, {hi}]")
    return value


def bounded_number(value: Any, field: str, lo: float, hi: float) -> float:
    """A finite number in ``[lo, hi]``."""
    if not is_number(value) or not math.isfinite(value) or not lo <= value <= hi:
        raise BadRequest(f"{field} must be a number in [{lo:g}, {hi:g}]")
    return float(value)


def error_body(message: str) -> bytes:
    return json.dumps({"error": message}).encode()


def overloaded(
    what: str, retry_after_s: float = 1.0
) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    """503 with ``Retry-After`` (whole seconds, at least 1): the queue is full."""
    headers = [
        (b"content-type", b"application/json"),
        (b"retry-after", str(max(1, math.ceil(retry_after_s))).encode()),
    ]
    return 503, headers, error_body(f"{what} is full; retry later")


DRAIN_BYTES = 16 << 20  # most of a refused body read (and dropped) before answering


async def _drain(receive: Receive, budget: int = DRAIN_BYTES) -> None:
    """Read and drop the rest of a refused request's body, up to ``budget`` bytes.

    A server that closes a connection with request bytes still unread makes the
    kernel send a reset, and the client loses the 4xx it was about to read (the
    HTTP fuzz saw 266 resets instead of 413s). Reading the body first lets the
    client see its answer; a body above the budget still gets the reset.
    """
    seen = 0
    while seen <= budget:
        message = await receive()
        if message["type"] != "http.request":
            return
        seen += len(message.get("body", b""))
        if not message.get("more_body", False):
            return


async def _send_error(send: Send, status: int, message: str) -> None:
    body = error_body(message)
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


class BodyLimit:
    """ASGI middleware: 413 for a body above ``max_bytes`` (declared or received).

    ``path_limits`` gives other caps to path prefixes (first match wins), e.g. the
    gateway's admin proxy, which carries model uploads to the registry.
    """

    def __init__(
        self,
        app: ASGIApp,
        max_bytes: int = MAX_JSON_BYTES,
        path_limits: tuple[tuple[str, int], ...] = (),
    ):
        self.app = app
        self.max_bytes = max_bytes
        self.path_limits = path_limits

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope.get("path", "")
        limit = next((n for p, n in self.path_limits if path.startswith(p)), self.max_bytes)
        for name, value in scope.get("headers", []):
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    await _send_error(send, 400, "bad content-length")
                    return
                if declared > limit:
                    await _drain(receive)
                    await _send_error(send, 413, f"body is larger than {limit} bytes")
                    return
        # The whole body is read here, before the app runs (every app of ours reads it
        # whole anyway): a body without content-length that grows past the limit must
        # get its 413 from here, since an exception raised inside the app's receive()
        # turns into Starlette's 500.
        chunks: list[bytes] = []
        seen = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                break  # the client left: the app sees the disconnect
            chunk = message.get("body", b"")
            seen += len(chunk)
            if seen > limit:
                await _drain(receive)
                await _send_error(send, 413, f"body is larger than {limit} bytes")
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                message = {"type": "http.request", "body": b"".join(chunks), "more_body": False}
                break
        first: Message | None = message

        async def replay() -> Message:
            nonlocal first
            if first is not None:
                out, first = first, None
                return out
            return await receive()

        await self.app(scope, replay, send)


TOKEN_FILE = "admin.token"


def use_token(state_dir: Path) -> str:
    """The admin token of the testbed in ``state_dir``, created on first use.

    Kept in ``state_dir/admin.token`` (mode 0600) and put into this process's
    environment, so the services it starts and the clients it runs (controller,
    registry upload, profiling) all carry it. Never printed or logged.
    """
    path = Path(state_dir) / TOKEN_FILE
    try:
        token = path.read_text().strip()
    except FileNotFoundError:
        token = ""
    if not token:
        path.parent.mkdir(parents=True, exist_ok=True)
        token = secrets.token_urlsafe(32)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(token)
    os.environ[TOKEN_ENV] = token
    return token


def token_headers() -> dict[str, str]:
    """The header that opens admin routes, when a token is set."""
    token = admin_token()
    return {TOKEN_HEADER: token} if token else {}


def admin_token() -> str | None:
    """The admin token of this testbed, from the environment (None: admin routes open)."""
    return os.environ.get(TOKEN_ENV) or None


def token_ok(presented: bytes | str | None, token: str | None) -> bool:
    """True when no token is set, or ``presented`` equals it (constant time)."""
    if token is None:
        return True
    if presented is None:
        return False
    if isinstance(presented, str):
        presented = presented.encode()
    return hmac.compare_digest(presented, token.encode())


class AdminGuard:
    """ASGI middleware: paths under ``prefixes`` need the ``x-admin-token`` header (401);
    with ``methods``, only requests of those methods do."""

    def __init__(
        self,
        app: ASGIApp,
        token: str | None,
        prefixes: tuple[str, ...] = ("/admin",),
        methods: tuple[str, ...] | None = None,
    ):
        self.app = app
        self.token = token
        self.prefixes = prefixes
        self.methods = methods

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            self.token is not None
            and scope["type"] == "http"
            and scope["path"].startswith(self.prefixes)
            and (self.methods is None or scope["method"] in self.methods)
        ):
            presented = dict(scope.get("headers", [])).get(TOKEN_HEADER.encode())
            if not token_ok(presented, self.token):
                await _drain(receive)
                await _send_error(send, 401, f"admin route: missing or wrong {TOKEN_HEADER}")
                return
        await self.app(scope, receive, send)
