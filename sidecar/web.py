"""The HTTP API (DESIGN.md, "Sidecar HTTP API v1"): routes, validation, errors, auth."""

from __future__ import annotations

import asyncio
import heapq
import hmac
import logging
from importlib import resources
from typing import TYPE_CHECKING, Any

from aiohttp import web
from aiohttp.web_protocol import RequestPayloadError
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from sidecar.clock import rfc3339
from sidecar.errors import ApiError, error_response
from sidecar.leases import TooManyLeasesError
from sidecar.machine import DrainingError
from sidecar.metrics import MachineCollector
from sidecar.validation import InvalidRequestError, parse_busy, parse_empty, parse_idle

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from sidecar.clock import Clock
    from sidecar.reconciler import Reconciler

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
        404: f"no endpoint {request.path}; the API has POST /busy, POST /idle, "
        "POST /release, POST /drain, GET /state, GET /healthz, GET /metrics, GET /openapi.json",
        405: f"{request.method} is not allowed on {request.path}; use {allow}",
        413: f"request body is larger than {MAX_BODY_BYTES} bytes",
    }.get(exc.status, exc.reason)
    code = _HTTP_CODES.get(exc.status, exc.reason.replace(" ", ""))
    return error_response(exc.status, code, message, headers={"Allow": allow} if allow else None)


class Api:
    def __init__(
        self, reconciler: Reconciler, clock: Clock, backend_name: str, token: str | None
    ) -> None:
        self.reconciler = reconciler
        self.machine = reconciler.machine
        self.clock = clock
        self.backend_name = backend_name
        self._token = token.encode() if token else None
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(MachineCollector(self.machine, clock))

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
            log.exception("request %s %s failed", request.method, request.path)
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
        machine = self.machine
        try:
            machine.acquire(req.lease, req.ttl_seconds)
        except DrainingError:
            raise ApiError(
                503,
                "Draining",
                "the task is stopping; do not start new work",
                self._lease_view(req.lease, protected=False),
            ) from None
        except TooManyLeasesError:
            raise ApiError(
                429,
                "TooManyLeases",
                f"{machine.leases.capacity} leases are held (TASK_PROTECTION_MAX_LEASES)",
                self._lease_view(req.lease, protected=False),
            ) from None

        protected = machine.protected()
        if req.ttl_seconds is not None or not protected:
            self.reconciler.wake()  # a new TTL timer, or protection to ask for
        if not protected and req.wait_seconds > 0:
            protected = await self.reconciler.wait_protected(req.lease, req.wait_seconds)
        if not protected:
            error = machine.last_error
            reason = (
                f"{error.code}: {error.message}"
                if error
                else "protection stopped at TASK_PROTECTION_MAX_PROTECTED_SECONDS"
                if machine.capped
                else f"not confirmed within {req.wait_seconds:g}s"
            )
            raise ApiError(
                503,
                "ProtectionUnavailable",
                f"task protection is not confirmed ({reason}); the lease is kept and "
                "the sidecar keeps trying",
                self._lease_view(req.lease, protected=False),
            )
        return web.json_response(self._lease_view(req.lease, protected=True))

    def _lease_view(self, lease: str, *, protected: bool) -> dict[str, Any]:
        view: dict[str, Any] = {"lease": lease, "protected": protected}
        if protected:
            view["expires_at"] = rfc3339(self.machine.confirmed_until_wall())
        view["leases"] = len(self.machine.leases)
        return view

    async def idle(self, request: web.Request) -> web.Response:
        req = parse_idle(await read_body(request))
        released = self.machine.release(req.lease)
        if released:
            self.reconciler.notify()  # a /busy may be waiting on this very lease
            if not self.machine.leases:
                self.reconciler.wake()  # start the idle grace timer
        return web.json_response({"released": released, "leases": len(self.machine.leases)})

    async def release(self, request: web.Request) -> web.Response:
        parse_empty(await read_body(request))
        count = self.machine.release_all()
        if count:
            log.warning(
                "operator released %d lease(s) with POST /release", count, extra={"released": count}
            )
            self.reconciler.notify()
            self.reconciler.wake()
        return web.json_response({"released": count})

    async def drain(self, request: web.Request) -> web.Response:
        parse_empty(await read_body(request))
        machine = self.machine
        if not machine.draining:
            log.warning(
                "POST /drain: draining; new leases are refused, the %d held keep working",
                len(machine.leases),
                extra={"leases": len(machine.leases)},
            )
        machine.start_drain(None, exit_when_idle=False)
        self.reconciler.wake()
        return web.json_response({"draining": True, "leases": len(machine.leases)})

    async def state(self, _request: web.Request) -> web.Response:
        return web.json_response(self.snapshot())

    async def healthz(self, _request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def openapi(self, _request: web.Request) -> web.Response:
        return web.Response(body=OPENAPI, content_type="application/json")

    async def metrics(self, _request: web.Request) -> web.Response:
        response = web.Response(body=generate_latest(self.registry))
        response.headers["Content-Type"] = CONTENT_TYPE_LATEST
        return response

    def snapshot(self) -> dict[str, Any]:
        machine = self.machine
        now, wall = self.clock.monotonic(), self.clock.wall()

        def wall_of(moment: float | None) -> str | None:
            return None if moment is None else rfc3339(wall + moment - now)

        live = [
            lease
            for lease in machine.leases.leases()
            if lease.expires is None or lease.expires > now
        ]
        # The oldest first, at most STATE_LEASES of them: with thousands of leases the
        # document (and 50 concurrent readers of it) stays small; `lease_count` has all.
        shown = heapq.nsmallest(STATE_LEASES, live, key=lambda lease: lease.since_wall)
        leases = [
            {
                "lease": lease.id,
                "since": rfc3339(lease.since_wall),
                "expires_at": rfc3339(lease.expires_wall),
                "ttl_seconds": lease.ttl,
            }
            for lease in shown
        ]
        error = machine.last_error
        protected = machine.protected()
        return {
            "busy": bool(live),
            "leases": leases,
            "lease_count": len(live),
            "protection": {
                "enabled": protected,
                "state": machine.state(),
                "expires_at": rfc3339(machine.confirmed_until_wall()) if protected else None,
                "backend": self.backend_name,
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
                "calls": machine.counters.total_calls,
                "in_flight": machine.inflight.op.value if machine.inflight else None,
                "renew_at": wall_of(machine.renew_at) if protected else None,
                "next_retry_at": wall_of(machine.retry_at),
                "capped": machine.capped,
            },
            "idle_since": wall_of(machine.idle_since),
            "draining": machine.draining,
            "drain_deadline": wall_of(machine.drain_deadline),
        }


async def read_body(request: web.Request) -> bytes:
    """The whole body, or an API error: too slow, or not decodable as it claims to be."""
    try:
        async with asyncio.timeout(BODY_TIMEOUT_SECONDS):
            return await request.read()
    except TimeoutError:
        raise ApiError(
            408, "RequestTimeout", f"the body did not arrive within {BODY_TIMEOUT_SECONDS:g}s"
        ) from None
    except RequestPayloadError as exc:
        cause = exc.__cause__ or exc
        reason = " ".join(str(getattr(cause, "message", cause)).split()) or "unreadable"
        raise InvalidRequestError(f"the body cannot be read: {reason}") from None


def build_app(api: Api) -> web.Application:
    app = web.Application(middlewares=[api.middleware], client_max_size=MAX_BODY_BYTES)
    app.router.add_post("/busy", api.busy)
    app.router.add_post("/idle", api.idle)
    app.router.add_post("/release", api.release)
    app.router.add_post("/drain", api.drain)
    app.router.add_get("/state", api.state)
    app.router.add_get("/healthz", api.healthz)
    app.router.add_get("/metrics", api.metrics)
    app.router.add_get("/openapi.json", api.openapi)
    return app
