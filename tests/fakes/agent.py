"""A fake ECS agent task-protection endpoint, faithful to ../shared/ECS-AGENT.md.

A real aiohttp server on a loopback port 0. Every row of the agent's table can be
produced: success, 200-with-failure, decode errors, missing ProtectionEnabled,
unknown endpoint id, no task role, ECS errors (ThrottlingException as 400), the
504 deadline, 500, the 429 text/plain rate limiter, 405 with an empty body, the
trailing-slash 404 and the `//` redirect. Faults are injected per request or until
healed, and every request is recorded.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from aiohttp import web

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    # (task, (ProtectionEnabled, ExpiresInMinutes) for a PUT or None for a GET) -> answer
    EcsCall = Callable[["Task", "tuple[bool | None, int | None] | None"], Awaitable[web.Response]]

STATE_PATH = re.compile(r"^/api/(?P<endpoint>[^/]+)/task-protection/v1/state$")
DEFAULT_EXPIRES_MINUTES = 120  # ECS's default when ExpiresInMinutes is absent
DECODE_ERROR = "UpdateTaskProtection: failed to decode request"


def format_expiration(wall: float) -> str:
    """Milliseconds with trailing zeros trimmed, as the agent prints them (`.89Z`, `Z`)."""
    moment = datetime.fromtimestamp(wall, UTC)
    text = moment.strftime("%Y-%m-%dT%H:%M:%S")
    millis = f"{moment.microsecond // 1000:03d}".rstrip("0")
    return f"{text}.{millis}Z" if millis else f"{text}Z"


@dataclass
class Task:
    arn: str
    has_role: bool = True
    enabled: bool = False
    expires_wall: float | None = None


@dataclass(frozen=True)
class Fault:
    """One way the agent (or ECS behind it) answers badly. Build with the helpers below."""

    kind: str
    status: int = 0
    code: str = ""
    message: str = ""
    reason: str = ""
    detail: str | None = None
    seconds: float = 0.0
    methods: tuple[str, ...] = ("GET", "PUT")


def ecs_error(
    code: str = "ThrottlingException", status: int = 400, message: str = "Rate exceeded"
) -> Fault:
    return Fault("ecs_error", status=status, code=code, message=message)


def failure(
    reason: str = "TASK_NOT_VALID",
    detail: str | None = None,
    methods: tuple[str, ...] = ("GET", "PUT"),
) -> Fault:
    return Fault("failure", reason=reason, detail=detail, methods=methods)


def timeout_504() -> Fault:
    return Fault("timeout")


def server_error(message: str = "internal error") -> Fault:
    return Fault("server_error", message=message)


def rate_limited() -> Fault:
    return Fault("rate_limit")


def delay(seconds: float, methods: tuple[str, ...] = ("GET", "PUT")) -> Fault:
    """Answer normally, but only after `seconds`."""
    return Fault("delay", seconds=seconds, methods=methods)


def hang() -> Fault:
    """Never answer (until the client gives up or the server closes)."""
    return Fault("hang")


def reset() -> Fault:
    """Drop the connection without an answer."""
    return Fault("reset")


def truncated() -> Fault:
    """A 200 whose JSON body is cut in half, the connection dropped mid-answer."""
    return Fault("truncated")


def garbled() -> Fault:
    """A complete 200 answer whose body is truncated JSON (Content-Length matches)."""
    return Fault("garbled")


def answer(status: int, body: str, content_type: str = "application/json") -> Fault:
    """Any answer at all: for rows the agent produces only on requests we never send."""
    return Fault("answer", status=status, message=body, code=content_type)


@dataclass
class Recorded:
    method: str
    path: str
    body: bytes
    status: int
    endpoint: str | None
    at: float = field(default_factory=time.time)


@dataclass
class _Bucket:
    """The agent's rate limiter: 40 requests/s, burst 60."""

    rate: float = 40.0
    burst: float = 60.0
    tokens: float = 60.0
    last: float = field(default_factory=time.monotonic)

    def take(self) -> bool:
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.last) * self.rate)
        self.last = now
        if self.tokens < 1:
            return False
        self.tokens -= 1
        return True


class FakeAgent:
    def __init__(self, wall: Callable[[], float] = time.time, *, rate_limit: bool = True) -> None:
        self.wall = wall
        self.tasks: dict[str, Task] = {}
        self.calls: list[Recorded] = []
        self._faults: deque[Fault] = deque()
        self._sticky: Fault | None = None
        # The agent limits each task's requests (shared with its metadata calls).
        self._rate_limit = rate_limit
        self._buckets: dict[str, _Bucket] = {}
        # Where protection lives: None keeps it here; the drill plugs in moto, so that
        # the agent calls the ECS API as the real one does.
        self.ecs: EcsCall | None = None
        self._runner: web.AppRunner | None = None
        self.base_url = ""
        self.app = web.Application()
        self.app.router.add_route("*", "/{tail:.*}", self._handle)

    # ---- set-up -------------------------------------------------------------

    def add_task(
        self, endpoint: str = "task-1", *, has_role: bool = True, arn: str | None = None
    ) -> Task:
        arn = arn or f"arn:aws:ecs:us-east-1:123456789012:task/test-cluster/{uuid.uuid4().hex}"
        self.tasks[endpoint] = Task(arn=arn, has_role=has_role)
        return self.tasks[endpoint]

    def uri(self, endpoint: str = "task-1") -> str:
        """What the agent would put in ECS_AGENT_URI for that task."""
        return f"{self.base_url}/api/{endpoint}"

    def fail(self, fault: Fault, times: int = 1) -> None:
        """Answer the next `times` matching requests with `fault`."""
        self._faults.extend([fault] * times)

    def fail_always(self, fault: Fault) -> None:
        self._sticky = fault

    def heal(self) -> None:
        self._faults.clear()
        self._sticky = None

    def puts(self, endpoint: str | None = None) -> list[dict[str, Any]]:
        """Bodies of the successful PUTs, in order."""
        return [
            json.loads(c.body)
            for c in self.calls
            if c.method == "PUT"
            and c.status == 200
            and (endpoint is None or c.endpoint == endpoint)
        ]

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        self._runner = web.AppRunner(self.app, access_log=None, shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port)
        await site.start()
        port = self._runner.addresses[0][1]
        self.base_url = f"http://{host}:{port}"
        return self.base_url

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    # ---- the endpoint ---------------------------------------------------------

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        endpoint: str | None = None
        match = STATE_PATH.match(request.path)
        if match:
            endpoint = match["endpoint"]
        response = await self._answer(request, body, endpoint)
        self.calls.append(Recorded(request.method, request.path, body, response.status, endpoint))
        return response

    async def _answer(
        self, request: web.Request, body: bytes, endpoint: str | None
    ) -> web.StreamResponse:
        if self._rate_limit and endpoint is not None:
            bucket = self._buckets.setdefault(endpoint, _Bucket())
            if not bucket.take():
                return web.Response(status=429, text="You have reached maximum request limit.")
        if "//" in request.path:
            cleaned = re.sub("/+", "/", request.path)
            return web.Response(status=301, headers={"Location": cleaned})
        if endpoint is None:
            return web.Response(status=404, text="404 page not found")
        if request.method not in ("GET", "PUT"):
            return web.Response(status=405)

        update: tuple[bool, int | None] | None = None
        if request.method == "PUT":
            decoded = _decode_put(body)
            if isinstance(decoded, web.Response):
                return decoded
            update = decoded

        task = self.tasks.get(endpoint)
        if task is None:
            return _error(404, "ResourceNotFoundException", "Failed to find a task for the request")
        if update is not None and update[0] is None:
            return _error(
                400,
                "InvalidParameterException",
                "Invalid request: does not contain 'ProtectionEnabled' field",
                task.arn,
            )
        if not task.has_role:
            return _error(
                403,
                "AccessDeniedException",
                "Invalid Request: no task IAM role credentials available for task",
                task.arn,
            )

        fault = self._next_fault(request.method)
        if fault is not None:
            faulty = await self._fault_answer(fault, request, task)
            if faulty is not None:
                return faulty

        if self.ecs is not None:
            return await self.ecs(task, update)
        if update is not None:
            enabled, minutes = update
            if enabled:
                minutes = DEFAULT_EXPIRES_MINUTES if minutes is None else minutes
                if not 1 <= minutes <= 2880:
                    return _ecs_error(
                        task,
                        400,
                        "InvalidParameterException",
                        "expiresInMinutes must be between 1 and 2880",
                    )
                task.enabled, task.expires_wall = True, self.wall() + minutes * 60
            else:
                task.enabled, task.expires_wall = False, None
        return web.json_response({"protection": self._protection(task)})

    def _protection(self, task: Task) -> dict[str, Any]:
        if task.enabled and task.expires_wall is not None and task.expires_wall <= self.wall():
            task.enabled, task.expires_wall = False, None
        return {
            "ExpirationDate": format_expiration(task.expires_wall)
            if task.enabled and task.expires_wall is not None
            else None,
            "ProtectionEnabled": task.enabled,
            "TaskArn": task.arn,
        }

    def _next_fault(self, method: str) -> Fault | None:
        if self._faults and method in self._faults[0].methods:
            return self._faults.popleft()
        if self._sticky is not None and method in self._sticky.methods:
            return self._sticky
        return None

    async def _fault_answer(
        self, fault: Fault, request: web.Request, task: Task
    ) -> web.StreamResponse | None:
        kind = fault.kind
        if kind == "failure":
            return web.json_response(
                {
                    "failure": {
                        "Arn": task.arn,
                        "Detail": fault.detail,
                        "Reason": fault.reason,
                    }
                }
            )
        if kind == "ecs_error":
            return _ecs_error(task, fault.status, fault.code, fault.message)
        if kind == "timeout":
            return _error(504, "RequestCanceled", "Timed out calling ECS Task Protection API")
        if kind == "server_error":
            return _error(500, "ServerException", fault.message)
        if kind == "rate_limit":
            return web.Response(status=429, text="You have reached maximum request limit.")
        if kind == "delay":
            await asyncio.sleep(fault.seconds)
            return None
        if kind == "hang":
            await asyncio.Event().wait()
        if kind == "reset":
            assert request.transport is not None
            request.transport.abort()
            return web.Response(status=500)  # never reaches the client
        if kind == "garbled":
            whole = json.dumps({"protection": self._protection(task)})
            return web.Response(
                status=200, text=whole[: len(whole) // 2], content_type="application/json"
            )
        if kind == "answer":
            return web.Response(status=fault.status, text=fault.message, content_type=fault.code)
        if kind == "truncated":
            whole = json.dumps({"protection": self._protection(task)}).encode()
            response = web.StreamResponse(
                status=200,
                headers={
                    "Content-Type": "application/json",
                    "Content-Length": str(len(whole)),
                },
            )
            await response.prepare(request)
            await response.write(whole[: len(whole) // 2])
            assert request.transport is not None
            request.transport.abort()
            return response
        raise AssertionError(f"unknown fault {kind}")


def _error(status: int, code: str, message: str, arn: str | None = None) -> web.Response:
    error: dict[str, Any] = {"Code": code, "Message": message}
    if arn is not None:
        error = {"Arn": arn, **error}
    return web.json_response({"error": error}, status=status)


def ecs_error_response(task: Task, status: int, code: str, message: str) -> web.Response:
    """An ECS API error as the agent passes it on."""
    return _ecs_error(task, status, code, message)


def protection_response(task: Task, enabled: bool, expires_wall: float | None) -> web.Response:
    return web.json_response(
        {
            "protection": {
                "ExpirationDate": format_expiration(expires_wall)
                if enabled and expires_wall
                else None,
                "ProtectionEnabled": enabled,
                "TaskArn": task.arn,
            }
        }
    )


def failure_response(task: Task, reason: str, detail: str | None) -> web.Response:
    return web.json_response({"failure": {"Arn": task.arn, "Detail": detail, "Reason": reason}})


def _ecs_error(task: Task, status: int, code: str, message: str) -> web.Response:
    return web.json_response(
        {
            "requestID": str(uuid.uuid4()),
            "error": {"Arn": task.arn, "Code": code, "Message": message},
        },
        status=status,
    )


def _decode_put(body: bytes) -> tuple[bool | None, int | None] | web.Response:
    """Go's strict decoder: first JSON value only, case-insensitive keys, no unknown fields."""
    bad = _error(400, "InvalidParameterException", DECODE_ERROR)
    try:
        text = body.decode()
        doc, _ = json.JSONDecoder().raw_decode(text.lstrip())
    except (UnicodeDecodeError, ValueError):
        return bad
    if doc is None:
        return (None, None)  # Go leaves the struct empty for `null`
    if not isinstance(doc, dict):
        return bad
    enabled: bool | None = None
    minutes: int | None = None
    for key, value in doc.items():
        folded = key.lower()
        if folded == "protectionenabled":
            if value is not None and not isinstance(value, bool):
                return bad
            enabled = value
        elif folded == "expiresinminutes":
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
                return bad
            minutes = value
        else:
            return bad
    return (enabled, minutes)
