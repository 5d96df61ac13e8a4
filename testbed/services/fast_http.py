"""uvicorn's httptools protocol with a few POST routes answered without the ASGI layer.

A stage server spends its CPU quota on two things: the model, and everything
around it. Profiling the stage under the serving benchmark (thread CPU clock
around each part) put uvicorn's per-request ASGI machinery — building the
scope, a request-response cycle object with its event, a task per request,
receive/send messages, header checks, and two socket writes per answer (status
and headers, then body) — at roughly a quarter of the non-model CPU per call.

:func:`fast_protocol` returns a subclass of uvicorn's ``HttpToolsProtocol`` in
which a request to one of ``routes`` (exact path, POST, no ``Expect`` header)
is parsed by the same httptools parser and handed to a plain function with
``(headers, body, respond)``; it calls ``respond`` when the answer is ready
(the stage server: when its batcher has computed the rows), which writes the
status line, headers and body chunks with one ``writelines``. No task,
coroutine or future is made per request. Every other request
takes uvicorn's own path unchanged, as do keep-alive, timeouts, graceful
shutdown and connection accounting (it calls the base class for those).

One answer at a time per connection: reading pauses while a fast request is
being answered, as uvicorn does for pipelined requests. A client that
pipelines another request behind a fast one anyway (aiohttp and httpx do not)
gets a 400 and the connection is closed.
"""

from __future__ import annotations

import json
from collections.abc import Callable

Headers = list[tuple[bytes, bytes]]
Buffer = bytes | memoryview  # a byte buffer (a memoryview cast to bytes, "B")
# respond(status, response headers, body chunks): the chunks go out with the status line
# and headers in one writelines, without being joined first
Respond = Callable[[int, Headers, list[Buffer]], None]
# handler(request headers with lower-case names, body, respond): calls respond once,
# now or later on the loop
FastHandler = Callable[[Headers, bytes, Respond], None]


class PipelinedRequest(Exception):
    """A request arrived on a connection whose fast request is not answered yet."""


def fast_protocol(routes: dict[bytes, FastHandler], max_body_bytes: int = 64 << 20) -> type:
    """An ``HttpToolsProtocol`` subclass answering POSTs to ``routes`` itself (see module
    doc); pass it to uvicorn as ``http=``. A body above ``max_body_bytes`` is not kept:
    the request gets a 413 and the connection is closed."""
    from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

    class FastHttpToolsProtocol(HttpToolsProtocol):
        _fast: FastHandler | None = None  # handler of the request being parsed
        _fast_body: list[bytes]
        _fast_busy = False  # a fast request of this connection awaits its answer
        _fast_close = False  # close once it is answered (shutdown)

        def on_message_begin(self) -> None:
            if self._fast_busy:
                raise PipelinedRequest  # httptools reports it as a parser error: 400, close
            super().on_message_begin()

        def on_headers_complete(self) -> None:
            handler = routes.get(self.url)
            if (
                handler is None
                or self.expect_100_continue
                or self.parser.get_method() != b"POST"
                or self.parser.should_upgrade()
                or (self.cycle is not None and not self.cycle.response_complete)
            ):
                super().on_headers_complete()
                return
            self._fast = handler
            self._fast_body = []
            self._fast_size = 0
            self._fast_keep_alive = (
                self.parser.get_http_version() == "1.1" and self.parser.should_keep_alive()
            )

        def on_body(self, body: bytes) -> None:
            if self._fast is not None:
                self._fast_size += len(body)
                if self._fast_size <= max_body_bytes:
                    self._fast_body.append(body)
                else:
                    self._fast_body = []
            else:
                super().on_body(body)

        def on_message_complete(self) -> None:
            handler = self._fast
            if handler is None:
                super().on_message_complete()
                return
            self._fast = None
            body = self._fast_body[0] if len(self._fast_body) == 1 else b"".join(self._fast_body)
            self._fast_busy = True
            self.flow.pause_reading()  # one answer at a time, like uvicorn's pipelining
            keep_alive = self._fast_keep_alive
            if self._fast_size > max_body_bytes:
                message = json.dumps({"error": f"body is larger than {max_body_bytes} bytes"})
                self._respond(
                    False, 413, [(b"content-type", b"application/json")], [message.encode()]
                )
                return

            def respond(status: int, headers: Headers, chunks: list[Buffer]) -> None:
                self._respond(keep_alive, status, headers, chunks)

            try:
                handler(self.headers, body, respond)
            except Exception as e:  # what an ASGI server does for an app error: a 500
                message = json.dumps({"error": f"internal error: {type(e).__name__}: {e}"})
                respond(500, [(b"content-type", b"application/json")], [message.encode()])

        def _respond(
            self, keep_alive: bool, status: int, out_headers: Headers, chunks: list[Buffer]
        ) -> None:
            if not self._fast_busy:
                return  # answered already
            self._fast_busy = False
            if self.transport.is_closing():
                return
            keep_alive = keep_alive and not self._fast_close
            head = [STATUS_LINE[status]]
            for name, value in out_headers:
                head += [name, b": ", value, b"\r\n"]
            head.append(b"content-length: %d\r\n" % sum(len(c) for c in chunks))
            if not keep_alive:
                head.append(b"connection: close\r\n")
            head.append(b"\r\n")
            self.transport.writelines([b"".join(head), *chunks])
            if not keep_alive:
                self.transport.close()
                return
            self.on_response_complete()  # resume reading, arm the keep-alive timer

        def shutdown(self) -> None:
            if self._fast_busy:
                self._fast_close = True  # answer first, then close
            else:
                super().shutdown()

    return FastHttpToolsProtocol
