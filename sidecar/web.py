"""The HTTP API (sidecar/openapi.json; docs/http-api.md): routes, validation, errors, auth.

Each handler parses its body (validation.py), calls one verb of the service
(service.py) and maps the outcome to an answer. To add an endpoint: a handler here, its
route in build_app(), its entry in sidecar/openapi.json (tests/test_openapi.py checks
that every route is documented and fuzzes it).
"""

from __future__ import annotations

import asyncio
import hmac
import logging
from importlib import resources
from typing import TYPE_CHECKING, Any

from aiohttp import web
from aiohttp.web_protocol import RequestPayloadError
from aiohttp.web_urldispatcher import _default_expect_handler
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from sidecar.clock import rfc3339
from sidecar.errors import ApiError, error_response
from sidecar.metrics import StateCollector
from sidecar.server import handling_begins
from sidecar.validation import InvalidRequestError, parse_busy, parse_empty, parse_idle

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from sidecar.service import ProtectionService, View

log = logging.getLogger("sidecar.web")

MAX_BODY_BYTES = 64 * 1024
# Bodies are tiny; one that trickles in for longer is a stuck or hostile client.
BODY_TIMEOUT_SECONDS = 10.0
STATE_LEASES = 100  # leases listed in GET /state (the oldest); lease_count counts them all
# The API's description, kept beside the code it describes and tested against it.
OPENAPI = (resources.files("sidecar") / "openapi.json").read_bytes()

# aiohttp's own HTTP errors, under the codes the API documents.
_HTTP_CODES = {
    400: "BadRequest",
    401: "Unauthorized",
    404: "NotFound",
    405: "MethodNotAllowed",
    413: "PayloadTooLarge",
}


def _http_error(request: web.Request, exc: web.HTTPException) -> web.Response:
    """aiohttp's routing and size errors, in the API's JSON shape with a useful message."""
    allow = exc.headers.get("Allow")
    message = {
        404: f"no endpoint {request.path}; the API has {_endpoints(request.app)}",
        405: f"{request.method} is not allowed on {request.path}; use {allow}",
        413: f"request body is larger than {MAX_BODY_BYTES} bytes",
    }.get(exc.status, exc.reason)
    code = _HTTP_CODES.get(exc.status, exc.reason.replace(" ", ""))
    return error_response(exc.status, code, message, headers={"Allow": allow} if allow else None)


def _endpoints(app: web.Application) -> str:
    """The routes the app serves, as `METHOD /path`, in the order build_app() adds them."""
    return ", ".join(
        f"{route.method} {route.resource.canonical}"
        for route in app.router.routes()
        if route.method != "HEAD" and route.resource is not None
    )


class Api:
    """HTTP in, one service verb, the outcome mapped to an answer."""

    def __init__(self, service: ProtectionService, token: str | None) -> None:
        self.service = service
        self._token = token.encode() if token else None
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(StateCollector(lambda: service.snapshot(lease_limit=0)))

    @web.middleware
    async def middleware(
        self,
        request: web.Request,
        handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
    ) -> web.StreamResponse:
        try:
            if self._token is not None and request.method == "POST":
                self._authorize(request)
            return await handler(request)
        except ApiError as exc:
            return error_response(exc.status, exc.code, exc.message, exc.extra, field=exc.field)
        except InvalidRequestError as exc:
            message = str(exc) if exc.field is None else f"{exc} (field: {exc.field})"
            return error_response(400, "InvalidRequest", message, field=exc.field)
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            return _http_error(request, exc)
        except Exception:
            log.exception(
                "request %s %s failed",
                request.method,
                request.path,
                extra={"event": "request_failed"},
            )
            return error_response(500, "InternalError", "unexpected error; see the sidecar log")

    def _authorize(self, request: web.Request) -> None:
        header = request.headers.get("Authorization", "")
        scheme, _, presented = header.partition(" ")
        # Tokens are printable ASCII (checked at start): anything else cannot match, and
        # must not reach encode() (aiohttp keeps undecodable header bytes as surrogates).
        # compare_digest keeps the comparison time independent of where the strings differ.
        if (
            scheme.lower() != "bearer"
            or not presented.isascii()
            or not hmac.compare_digest(presented.strip().encode(), self._token or b"")
        ):
            raise ApiError(
                401,
                "Unauthorized",
                "missing or wrong 'Authorization: Bearer <TASK_PROTECTION_TOKEN>'",
            )

    async def busy(self, request: web.Request) -> web.Response:
        req = parse_busy(await read_body(request))
        outcome = await self.service.busy(req.lease, req.ttl_seconds, req.wait_seconds)
        lease_view = {"lease": outcome.lease, "protected": False, "leases": outcome.leases}
        if outcome.status == "protected":
            return web.json_response(
                {
                    "lease": outcome.lease,
                    "protected": True,
                    "expires_at": rfc3339(outcome.expires_wall),
                    "leases": outcome.leases,
                }
            )
        if outcome.status == "draining":
            raise ApiError(
                503, "Draining", "the task is stopping; do not start new work", lease_view
            )
        if outcome.status == "full":
            raise ApiError(
                429,
                "TooManyLeases",
                f"{outcome.leases} leases are held (TASK_PROTECTION_MAX_LEASES)",
                lease_view,
            )
        then = "the lease is kept and the sidecar keeps trying" if outcome.kept else "no lease held"
        raise ApiError(
            503,
            "ProtectionUnavailable",
            f"task protection is not confirmed ({outcome.reason}); {then}",
            lease_view,
        )

    async def idle(self, request: web.Request) -> web.Response:
        req = parse_idle(await read_body(request))
        released, leases = self.service.idle(req.lease)
        return web.json_response({"released": released, "leases": leases})

    async def release(self, request: web.Request) -> web.Response:
        parse_empty(await read_body(request))
        count = self.service.release_all()
        return web.json_response({"released": count})

    async def drain(self, request: web.Request) -> web.Response:
        parse_empty(await read_body(request))
        first = not self.service.draining
        leases = self.service.drain(exit_when_idle=False)
        if first:
            log.warning(
                "POST /drain: draining; new leases are refused, the %d held keep working",
                leases,
                extra={"event": "drain_started", "source": "api", "leases": leases},
            )
        return web.json_response({"draining": True, "leases": leases})

    async def state(self, _request: web.Request) -> web.Response:
        return web.json_response(state_document(self.service.snapshot(STATE_LEASES)))

    async def healthz(self, _request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def openapi(self, _request: web.Request) -> web.Response:
        return web.Response(body=OPENAPI, content_type="application/json")

    async def metrics(self, _request: web.Request) -> web.Response:
        response = web.Response(body=generate_latest(self.registry))
        response.headers["Content-Type"] = CONTENT_TYPE_LATEST
        return response


def state_document(view: View) -> dict[str, Any]:
    """GET /state: the view in the API's JSON."""
    error = view.last_error
    return {
        "busy": view.busy,
        "leases": [
            {
                "lease": lease.id,
                "since": rfc3339(lease.since_wall),
                "expires_at": rfc3339(lease.expires_wall),
                "ttl_seconds": lease.ttl,
            }
            for lease in view.leases
        ],
        "lease_count": view.lease_count,
        "protection": {
            "enabled": view.protected,
            "state": view.state,
            "expires_at": rfc3339(view.expires_wall),
            "backend": view.backend,
            "last_error": None
            if error is None
            else {
                "op": error.op,
                "code": error.code,
                "message": error.message,
                "retryable": error.retryable,
                "at": rfc3339(error.at_wall),
                "retry_in_seconds": error.retry_in,
            },
            "calls": sum(view.calls.values()),
            "in_flight": view.in_flight,
            "renew_at": rfc3339(view.renew_at_wall),
            "next_retry_at": rfc3339(view.next_retry_wall),
            "capped": view.capped,
        },
        "idle_since": rfc3339(view.idle_since_wall),
        "draining": view.draining,
        "drain_deadline": rfc3339(view.drain_deadline_wall),
    }


async def read_body(request: web.Request) -> bytes:
    """The whole body, or an API error: too slow, or not decodable as it claims to be."""
    try:
        async with asyncio.timeout(BODY_TIMEOUT_SECONDS):
            body = await request.read()
    except TimeoutError:
        raise ApiError(
            408, "RequestTimeout", f"the body did not arrive within {BODY_TIMEOUT_SECONDS:g}s"
        ) from None
    except RequestPayloadError as exc:
        cause = exc.__cause__ or exc
        reason = " ".join(str(getattr(cause, "message", cause)).split()) or "unreadable"
        raise InvalidRequestError(f"the body cannot be read: {reason}") from None
    except ConnectionError:
        # The client went away mid-body: nobody to answer, nothing to log at length.
        raise ApiError(400, "BadRequest", "the connection closed before the body arrived") from None
    except RuntimeError:
        if request.transport is not None and not request.transport.is_closing():
            raise
        # Shed while its body trickled in (aiohttp: "Connection closed."): the same.
        raise ApiError(400, "BadRequest", "the connection closed before the body arrived") from None
    handling_begins(request)
    return body


async def _expect(request: web.Request) -> web.StreamResponse | None:
    """An `Expect` header: `100-continue` as aiohttp answers it, anything else a 417 in
    the API's error shape (aiohttp's own is text, sent before any middleware runs)."""
    expect = request.headers.get("Expect", "")
    if expect.lower() == "100-continue":
        await _default_expect_handler(request)
        return None
    detail = " ".join(expect.split())[:100]
    return error_response(417, "ExpectationFailed", f"unsupported Expect: {detail}")


def build_app(api: Api) -> web.Application:
    app = web.Application(middlewares=[api.middleware], client_max_size=MAX_BODY_BYTES)
    for add, path, handler in (
        (app.router.add_post, "/busy", api.busy),
        (app.router.add_post, "/idle", api.idle),
        (app.router.add_post, "/release", api.release),
        (app.router.add_post, "/drain", api.drain),
        (app.router.add_get, "/state", api.state),
        (app.router.add_get, "/healthz", api.healthz),
        (app.router.add_get, "/metrics", api.metrics),
        (app.router.add_get, "/openapi.json", api.openapi),
    ):
        add(path, handler, expect_handler=_expect)
    return app
