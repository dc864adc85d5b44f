"""The HTTP server the application runs in: aiohttp's, with what it does before any
middleware runs brought under the gateway's rules.

- A request aiohttp cannot parse (a request line or header over 8,190 bytes, a bad method,
  malformed headers) is answered in the JSON envelope, not aiohttp's text/plain.
- A connection must send a request's headers within `server.header_timeout_s` of opening, or
  of the end of its previous answer (aiohttp's keep-alive timer, which also closes idle
  connections after that time); else it is closed. The body has `server.body_timeout_s`.
- At most `server.max_connections` connections are served at once; one more is answered 503
  in the envelope at once and closed (what it sends is dropped unread), never served.
- A connection stops being read once READ_BUFSIZE * 2 bytes of its body wait unread (aiohttp's
  default: 128 KiB), so a crowd of uploads waiting for their turn (`turns`) costs the event loop
  a read each, not a quarter megabyte each: with 200 uploads opened at once, /healthz p99 went
  from 60-70 ms to 10 (bench/loop.py: docs/ARCHITECTURE.md).

`GatewayRunner` is what `transcribe-gateway serve` runs and what the tests' in-process
gateways run; `run()` serves until SIGTERM or SIGINT.
"""

from __future__ import annotations

import asyncio
import gc
import signal
import socket
from collections.abc import Sequence
from http import HTTPStatus

import structlog
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError, LineTooLong
from aiohttp.web_protocol import RequestHandler

from gateway import metrics
from gateway.appkeys import CONFIG
from gateway.envelope import error, error_for

log = structlog.get_logger(__name__)


def parse_error_message(exc: BaseException | None, status: int) -> str:
    """What to tell the client about a request aiohttp refused before routing it."""
    if isinstance(exc, LineTooLong):
        return f"the request line or a header is longer than {exc.args[1]} bytes"
    if isinstance(exc, HttpProcessingError):
        return f"malformed HTTP request: {exc.message}"
    if status == 500:
        return "internal error; see the gateway's log"
    return HTTPStatus(status).phrase


REFUSED_LINGER_S = 2.0  # how long a refused connection's request is read (and dropped) before closing


class _Handler(RequestHandler):
    """One connection: aiohttp's, answering its own errors in the envelope; or, when it would be
    one more than server.max_connections, a 503 and closed, never served."""

    def __init__(self, server: "_Server", **kwargs):
        super().__init__(server, **kwargs)
        self._limits = server
        self._refused: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if self._limits.admit():
            super().connection_made(transport)  # counted in server.connections until it closes
            return
        # Answered at once; what the client sends meanwhile is read and dropped (closing with
        # unread data would reset the connection, and the client might never see the 503).
        self._refused = transport
        transport.write(self._limits.refusal)
        transport.write_eof()
        asyncio.get_running_loop().call_later(REFUSED_LINGER_S, transport.close)

    def data_received(self, data: bytes) -> None:
        if self._refused is None:
            super().data_received(data)

    def eof_received(self) -> None:
        if self._refused is not None:
            self._refused.close()

    def connection_lost(self, exc: BaseException | None) -> None:
        if self._refused is None:
            super().connection_lost(exc)

    async def finish_response(self, request, resp, start_time):
        if isinstance(resp, web.HTTPException) and resp.status >= 400:  # raised before the middlewares
            resp = error_for(request.path, resp.status, resp.text or resp.reason)  # (aiohttp's Expect handling: 417)
        return await super().finish_response(request, resp, start_time)

    def handle_error(self, request, status: int = 500, exc: BaseException | None = None,
                     message: str | None = None) -> web.StreamResponse:
        msg = parse_error_message(exc, status)
        if status >= 500:
            log.error("http.unhandled", status=status, exc_info=exc)
        else:
            log.warning("http.malformed_request", status=status, error=msg, peer=request.remote)
        if request.writer.output_size > 0:  # as aiohttp: an answer was already started
            raise ConnectionError("the answer was already started; cannot send the error")
        response = error_for(request.path, status, msg)
        response.force_close()
        return response


def _refusal(limit: int) -> bytes:
    body = error(503, f"too many connections (server.max_connections is {limit}); try again later").body
    head = (f"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json; charset=utf-8\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\nRetry-After: 1\r\n\r\n")
    return head.encode() + body


class _Server(web.Server):
    """aiohttp's Server, making _Handler connections, at most `max_connections` open at once."""

    def __init__(self, *args, max_connections: int, **kwargs):
        super().__init__(*args, **kwargs)
        self.max_connections = max_connections
        self.refusal = _refusal(max_connections)
        self.full = False

    def __call__(self) -> _Handler:
        return _Handler(self, loop=self._loop, **self._kwargs)

    def admit(self) -> bool:
        """Whether one more connection may be served."""
        if len(self.connections) < self.max_connections:
            self.full = False
            return True
        metrics.CONNECTIONS_REFUSED.inc()
        if not self.full:  # once each time it fills up, not once per refused connection
            log.warning("http.connections_full", max_connections=self.max_connections)
        self.full = True
        return False


READ_BUFSIZE = 1 << 14  # a request body's buffer; its reading pauses at twice this


class GatewayRunner(web.AppRunner):
    """AppRunner with the rules above, read from the app's server config."""

    def __init__(self, app: web.Application, **kwargs):
        super().__init__(app, keepalive_timeout=app[CONFIG].server.header_timeout_s, read_bufsize=READ_BUFSIZE,
                         **kwargs)

    async def _make_server(self) -> web.Server:
        made = await super()._make_server()  # starts the app and builds aiohttp's own Server
        return _Server(made.request_handler, request_factory=made.request_factory,
                       handler_cancellation=made.handler_cancellation, loop=made._loop,
                       max_connections=self.app[CONFIG].server.max_connections, **made._kwargs)


GC_THRESHOLDS = (20_000, 20, 20)


def settle_memory() -> None:
    """Process-wide, so done by the process's entry point (`run`) once its app has started, never
    by an app (several apps in one process, as in the tests, would undo each other's): the objects
    that live as long as the process (modules, models, routes, plugins: some 100,000 to 300,000)
    are moved out of the garbage collector's sight (`gc.freeze`), and a collection waits for
    20,000 new objects instead of 700. Every full collection used to walk all of them with the
    event loop stopped (what it cost, measured with bench/ingest.py: docs/ARCHITECTURE.md)."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


async def run(app: web.Application, socks: Sequence[socket.socket] = ()) -> None:
    """Start `app` (its cleanup contexts: database, loops, ...), serve HTTP on the listening
    sockets `socks` (none: a worker), and stop cleanly on SIGTERM or SIGINT."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    runner = GatewayRunner(app, handle_signals=False, access_log=None, shutdown_timeout=10)
    await runner.setup()
    settle_memory()
    try:
        for sock in socks:
            await web.SockSite(runner, sock).start()
        await stop.wait()
    finally:
        log.info("stopping")
        await runner.cleanup()  # stops claiming, releases running tasks, closes connections
