"""The HTTP server around the app: aiohttp's own errors in the API's shape, bounded waits,
bounded connections (connections.py).

aiohttp answers requests it cannot parse (a malformed header, a bad Content-Length, a
body that is not the gzip it claims) itself, in text/plain, and logs a traceback for
each. A sidecar that any process of the task can talk to must not fill its log with
tracebacks on hostile input, and every answer keeps the JSON error body.
"""

from __future__ import annotations

import asyncio
import logging
import resource
import socket
import time
from typing import TYPE_CHECKING, Any

from aiohttp import StreamReader, web
from aiohttp.web_protocol import RequestHandler

from sidecar.connections import Bounds, Connection, ConnectionGuard, bounds_for
from sidecar.errors import error_response

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from aiohttp.web_request import BaseRequest
    from aiohttp.web_response import StreamResponse
    from aiohttp.web_server import Server

log = logging.getLogger("sidecar.server")

# How long a new connection may take to send its first request's headers: an honest
# client sends them at once; one that trickles them in, or says nothing, holds a file
# descriptor for nothing and is cut off.
HEADER_TIMEOUT_SECONDS = 10.0
# How long a connection may stay open between requests (and take over the next request's
# headers): longer, so that clients reusing pooled connections rarely race a close.
# Idle kept-alive connections are the first shed when the bounds are reached.
KEEPALIVE_SECONDS = 75.0
# Connections the kernel queues for accept() (capped by net.core.somaxconn).
LISTEN_QUEUE = 1024


class _JsonErrorHandler(RequestHandler):
    """aiohttp's protocol handler, answering its own errors as the API does, each
    connection counted by the guard and given a deadline for its first headers."""

    guard: ConnectionGuard
    header_timeout: float
    connection: Connection | None = None
    _deadline: asyncio.TimerHandle | None = None
    # The body of the request in progress while it is still to come (see _idle).
    pending_body: StreamReader | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        peername = transport.get_extra_info("peername")
        peer = str(peername[0]) if isinstance(peername, tuple) and peername else "local"
        self.connection = Connection(peer, self._shed, self._idle, self._handling)
        self._deadline = asyncio.get_running_loop().call_later(
            self.header_timeout, self._headers_overdue
        )
        self.guard.admit(self.connection)  # may close this very connection

    def connection_lost(self, exc: BaseException | None) -> None:
        if self.connection is not None:
            self.guard.forget(self.connection)
        if self._deadline is not None:
            self._deadline.cancel()
        super().connection_lost(exc)

    def _idle(self) -> bool:
        """Not handling a request: waiting for one (its headers not all come), for the
        body of one whose headers came, or for the peer to read its answer. A request
        whose body trickles in, or whose answers pile up unread (a neighbour asking for
        /openapi.json again and again without reading, until the socket's buffers are
        full and the answer's write waits for good), is no request being handled:
        otherwise such connections would hold every place, and the app's connections
        would be the ones shed. The app reads its answers."""
        if self.writing_paused:
            return True
        if self.pending_body is not None:
            return not self.pending_body.is_eof()
        # aiohttp's own test of a handler waiting for its next message (_process_keepalive).
        waiter = self._waiter
        return waiter is not None and not waiter.done() and not self._messages

    def _shed(self) -> None:
        """Closed to keep the bounds: at once, its unsent answers dropped. A close would
        wait to send them, and a peer that does not read would keep the descriptor."""
        transport = self.transport
        self.force_close()
        if transport is not None:
            transport.abort()

    def _handling(self) -> bool:
        return self._request_in_progress  # aiohttp's, set around each request's handler

    def _headers_overdue(self) -> None:
        if self.connection is not None and not self.connection.requests:
            self.force_close()

    async def finish_response(
        self, request: BaseRequest, resp: StreamResponse, start_time: float | None
    ) -> tuple[StreamResponse, bool]:
        # Answered (a request may be answered without reading its body, a 401 or 404):
        # not idle while its answer is written, whatever became of the body.
        self.pending_body = None
        # A request that came before this answer went out was pipelined. No client of
        # the API pipelines (requests, aiohttp and curl do not), and a neighbour that
        # does keeps its connections busy for good, and the event loop with them: the
        # connection closes once this answer is out, the pipelined requests unanswered
        # (the client sends them again, on a new connection).
        pipelined = bool(self._messages)
        answered = await super().finish_response(request, resp, start_time)
        if pipelined:
            self.force_close()
        return answered

    def handle_error(
        self,
        request: BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        # aiohttp's parser errors carry the detail in .message; str() starts with the status.
        text = getattr(exc, "message", None) or message or str(exc or "")
        detail = " ".join(str(text).split())[:200] or "malformed request"
        log.warning(
            "rejected a malformed request from %s: %s",
            request.remote,
            detail,
            extra={"event": "bad_request", "status": status},
        )
        if status >= 500:
            response = error_response(500, "InternalError", "unexpected error; see the sidecar log")
        else:
            response = error_response(status, "BadRequest", f"malformed HTTP request: {detail}")
        response.force_close()
        return response

    def log_exception(self, *args: Any, **kw: Any) -> None:  # noqa: ANN401  (logging's signature)
        # One line, no traceback: these are a client's broken requests or connections.
        exc = kw.get("exc_info")
        text = args[0] % args[1:] if args else "connection error"
        if isinstance(exc, BaseException):
            first = (str(exc).strip().splitlines() or [""])[0]
            text = f"{text}: {type(exc).__name__}: {first}"
        log.warning("%s", text, extra={"event": "connection_error"})


@web.middleware
async def _request_begins(
    request: web.Request, handler: Callable[[web.Request], Awaitable[StreamResponse]]
) -> StreamResponse:
    protocol = request.protocol
    if isinstance(protocol, _JsonErrorHandler) and protocol.connection is not None:
        protocol.connection.requests += 1
        # Idle again while its body is still to come (handling_begins ends that).
        if request.body_exists:
            protocol.pending_body = request.content
    return await handler(request)


def handling_begins(request: web.BaseRequest) -> None:
    """The request's body has come: from now on its connection is never shed."""
    protocol = request.protocol
    if isinstance(protocol, _JsonErrorHandler):
        protocol.pending_body = None


class _JsonErrorServer(web.Server):
    guard: ConnectionGuard
    header_timeout: float

    def __call__(self) -> RequestHandler:
        handler = _JsonErrorHandler(self, loop=self._loop, **self._kwargs)
        handler.guard, handler.header_timeout = self.guard, self.header_timeout
        return handler


class Runner(web.AppRunner):
    """An AppRunner whose connections use _JsonErrorHandler."""

    def __init__(
        self,
        app: web.Application,
        *,
        guard: ConnectionGuard,
        header_timeout: float,
        backlog: int,
        **kwargs: Any,  # noqa: ANN401  (AppRunner's own keywords)
    ) -> None:
        super().__init__(app, **kwargs)
        self.guard, self.header_timeout, self.backlog = guard, header_timeout, backlog

    async def _make_server(self) -> Server:
        server = await super()._make_server()
        # Same state, one overridden method: the handler class its connections use.
        server.__class__ = _JsonErrorServer
        assert isinstance(server, _JsonErrorServer)  # noqa: S101  (narrowing for the type checker)
        server.guard, server.header_timeout = self.guard, self.header_timeout
        return server


async def listen(runner: Runner, host: str, port: int) -> None:
    """Serve `runner` on host:port; OSError when that cannot be done (port in use).

    The kernel's queue of connections waiting for accept() is long: a burst of a
    neighbour's connection attempts waits there instead of overflowing it, which would
    drop or reset the app's attempts with them. The event loop accepts `runner.backlog`
    of them per turn, so what is open at once stays within the descriptors planned for.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.create_server((host, port), family=family, backlog=LISTEN_QUEUE)
    try:
        await web.SockSite(runner, sock, backlog=runner.backlog).start()
    except BaseException:
        sock.close()
        raise
    # asyncio set the kernel's queue to its accept batch on start: make it long again.
    sock.listen(LISTEN_QUEUE)


def connection_bounds() -> Bounds:
    """Bounds for this process's limit on open files (raise it first)."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return bounds_for(soft if soft != resource.RLIM_INFINITY else 1 << 20)


def make_runner(
    app: web.Application,
    *,
    shutdown_timeout: float = 1.0,
    header_timeout: float = HEADER_TIMEOUT_SECONDS,
    keepalive_timeout: float = KEEPALIVE_SECONDS,
    bounds: Bounds | None = None,
) -> Runner:
    """The runner for `app`; `bounds` default to connection_bounds(). Its sites must
    listen with `bounds.backlog` (Runner.backlog)."""
    bounds = bounds or connection_bounds()
    guard = ConnectionGuard(
        bounds.total,
        bounds.per_peer,
        time.monotonic,
        # On the loop's next turn, after the reads of this one: call_soon would run
        # before them (see connections.py).
        defer=lambda shed: asyncio.get_running_loop().call_later(0, shed),
        batch=bounds.backlog,
    )
    # First, so that a request is counted, and a body still to come is watched, before
    # anything else runs on it (the guard reads both).
    app.middlewares.insert(0, _request_begins)
    return Runner(
        app,
        guard=guard,
        backlog=bounds.backlog,
        header_timeout=header_timeout,
        access_log=None,
        shutdown_timeout=shutdown_timeout,
        keepalive_timeout=keepalive_timeout,
        # A client that hangs up stops its handler: an abandoned /busy does not go on
        # waiting (and holding memory) for its whole wait_seconds.
        handler_cancellation=True,
    )
