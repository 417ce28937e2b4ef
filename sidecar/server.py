"""The HTTP server around the app: aiohttp's own errors in the API's shape, bounded waits.

aiohttp answers requests it cannot parse (a malformed header, a bad Content-Length, a
body that is not the gzip it claims) itself, in text/plain, and logs a traceback for
each. A sidecar that any process of the task can talk to must not fill its log with
tracebacks on hostile input, and every answer keeps the JSON error body.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from aiohttp import web
from aiohttp.web_protocol import RequestHandler

from sidecar.errors import error_response

if TYPE_CHECKING:
    from aiohttp.web_request import BaseRequest

log = logging.getLogger("sidecar.server")

# How long a connection may go without sending a complete request (its headers): aiohttp
# arms this from the moment the connection opens and after every answer, so a client
# that trickles headers in, or holds an idle socket, is cut off after it.
HEADER_TIMEOUT_SECONDS = 75.0


class _JsonErrorHandler(RequestHandler):
    """aiohttp's protocol handler, answering its own errors as the API does."""

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


class _JsonErrorServer(web.Server):
    def __call__(self) -> RequestHandler:
        return _JsonErrorHandler(self, loop=self._loop, **self._kwargs)


class Runner(web.AppRunner):
    """An AppRunner whose connections use _JsonErrorHandler."""

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        # Same state, one overridden method: the handler class its connections use.
        server.__class__ = _JsonErrorServer
        return server


def make_runner(
    app: web.Application,
    *,
    shutdown_timeout: float = 1.0,
    header_timeout: float = HEADER_TIMEOUT_SECONDS,
) -> web.AppRunner:
    return Runner(
        app,
        access_log=None,
        shutdown_timeout=shutdown_timeout,
        keepalive_timeout=header_timeout,
        # A client that hangs up stops its handler: an abandoned /busy does not go on
        # waiting (and holding memory) for its whole wait_seconds.
        handler_cancellation=True,
    )
