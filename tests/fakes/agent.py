"""A fake ECS agent task-protection endpoint, faithful to the real agent's handler
(aws/amazon-ecs-agent, ecs-agent/tmds/handlers/taskprotection/v1/handlers/handlers.go).

A real aiohttp server on a loopback port 0, in two layers like the real agent:

- the agent itself: routing, strict decoding, the rate limiter (40/s, burst 60, per
  client address and path), 403 without a task role (and for a while after a
  restart), the answers it makes without calling ECS;
- the ECS call behind it, made as the agent's AWS SDK makes it: up to 3 attempts with
  back-off inside a 4 s deadline, so one throttle or 5xx is only latency, a persistent
  one surfaces after 1.8-3.5 s, and a slow ECS becomes a 504 `RequestCanceled` (while
  the change may still land). Each attempt is counted in `ecs_calls`.

Faults are injected per request or until healed: agent-level ones change what the agent
answers, ECS-level ones (`ecs_error`, `ecs_unreachable`, `ecs_slow`) what ECS does on
one attempt. Every wait (latency, back-off, deadline) runs on the injected clock, so a
test with a fake clock decides when time passes. Every answer carries a `Date` header
from the agent's own wall clock, as Go's server does.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import re
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Protocol

from aiohttp import web

if TYPE_CHECKING:
    from collections.abc import Callable, Coroutine

# (ProtectionEnabled, ExpiresInMinutes) of a PUT; None for a GET.
Update = tuple[bool, int | None]

STATE_PATH = re.compile(r"^/api/(?P<endpoint>[^/]+)/task-protection/v1/state$")
DEFAULT_EXPIRES_MINUTES = 120  # ECS's default when ExpiresInMinutes is absent
DECODE_ERROR = "UpdateTaskProtection: failed to decode request"
ECS_DEADLINE_SECONDS = 4.0  # the agent's deadline for one ECS call, SDK retries included
SDK_MAX_ATTEMPTS = 3
# The SDK's jittered back-off before attempts 2 and 3, fixed here so the latencies the
# agent shows are reproducible: with ECS_LATENCY a persistent throttle answers after
# about 1.8 s, a persistent 5xx after about 3.5 s, an unreachable ECS after about 2.4 s.
SDK_BACKOFF = {"throttle": (0.8, 0.85), "server": (1.2, 2.1), "unreachable": (0.5, 0.7)}
ECS_LATENCY = 0.05  # one ECS call's round trip as the agent sees it
DIAL_TIMEOUT = 0.4  # one failed attempt to reach ECS
SDK_RETRYABLE_CODES = frozenset({"ThrottlingException", "ServerException", "ServiceUnavailable"})


class AgentClock(Protocol):
    def monotonic(self) -> float: ...

    def wall(self) -> float: ...

    async def sleep(self, seconds: float) -> None: ...


class RealTime:
    """The real clocks, for a fake agent that serves real processes."""

    def monotonic(self) -> float:
        return time.monotonic()

    def wall(self) -> float:
        return time.time()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


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
class EcsAnswer:
    """What one ECS API call answered for one task."""

    status: int = 200
    enabled: bool = False
    expires_wall: float | None = None
    failure: tuple[str, str | None] | None = None  # (Reason, Detail)
    code: str = ""
    message: str = ""

    @property
    def sdk_retryable(self) -> bool:
        return self.status >= 500 or self.code in SDK_RETRYABLE_CODES


class Ecs(Protocol):
    """The ECS control plane the agent calls: UpdateTaskProtection / GetTaskProtection."""

    async def __call__(self, task: Task, update: Update | None) -> EcsAnswer: ...


class InMemoryEcs:
    """ECS's protection state for each task, kept on the task itself."""

    def __init__(self, wall: Callable[[], float]) -> None:
        self.wall = wall

    async def __call__(self, task: Task, update: Update | None) -> EcsAnswer:
        if update is not None:
            enabled, minutes = update
            if enabled:
                minutes = DEFAULT_EXPIRES_MINUTES if minutes is None else minutes
                if not 1 <= minutes <= 2880:
                    return EcsAnswer(
                        400,
                        code="InvalidParameterException",
                        message="expiresInMinutes must be between 1 and 2880",
                    )
                task.enabled, task.expires_wall = True, self.wall() + minutes * 60
            else:
                task.enabled, task.expires_wall = False, None
        if task.enabled and task.expires_wall is not None and task.expires_wall <= self.wall():
            task.enabled, task.expires_wall = False, None
        return EcsAnswer(enabled=task.enabled, expires_wall=task.expires_wall)


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

    @property
    def at_ecs(self) -> bool:
        """Applies to one ECS attempt (behind the SDK's retries), not to the agent's answer."""
        return self.kind.startswith("ecs_")


# ---- ECS-level faults: one attempt of the agent's call to ECS --------------------


def ecs_error(
    code: str = "ThrottlingException", status: int = 400, message: str = "Rate exceeded"
) -> Fault:
    """ECS answers an error. Throttling and 5xx are retried by the agent's SDK: once is
    only latency, persistent (`fail_always` or times=3) surfaces after 1.8-3.5 s."""
    return Fault("ecs_error", status=status, code=code, message=message)


def ecs_server_error(status: int = 500) -> Fault:
    code = "ServerException" if status == 500 else "ServiceUnavailableException"
    return ecs_error(code, status, "Service encountered an unexpected error")


def ecs_unreachable() -> Fault:
    """The agent cannot reach ECS: a 500 with the dial error after about 2.4 s."""
    return Fault("ecs_unreachable")


def ecs_slow(seconds: float = 5.0) -> Fault:
    """ECS takes `seconds` to answer; past the agent's 4 s deadline the agent answers 504,
    although the change has landed at ECS."""
    return Fault("ecs_slow", seconds=seconds)


def ecs_lands_late(seconds: float = 5.0) -> Fault:
    """ECS applies the change only after `seconds`: past the agent's 4 s deadline the
    agent answers 504, and the change lands later still, whatever came in between."""
    return Fault("ecs_late", seconds=seconds)


def timeout_504() -> Fault:
    """The agent's 504 RequestCanceled: ECS too slow for its deadline (the change lands)."""
    return ecs_slow(ECS_DEADLINE_SECONDS + 1.0)


# ---- agent-level faults: what the agent answers ------------------------------------


def failure(
    reason: str = "TASK_NOT_VALID",
    detail: str | None = None,
    methods: tuple[str, ...] = ("GET", "PUT"),
) -> Fault:
    return Fault("failure", reason=reason, detail=detail, methods=methods)


def server_error(message: str = "Failed to find a task for the request") -> Fault:
    """The agent's own 500 (it cannot read its task metadata), without calling ECS."""
    return Fault("server_error", message=message)


def two_failures() -> Fault:
    """ECS answered more than one failure: the agent's 500 'Unexpected error occurred'."""
    return Fault("two_failures")


def rate_limited() -> Fault:
    return Fault("rate_limit")


def delay(seconds: float, methods: tuple[str, ...] = ("GET", "PUT")) -> Fault:
    """Answer normally, but only after `seconds` (on the agent's clock), ECS applied last."""
    return Fault("delay", seconds=seconds, methods=methods)


def hang() -> Fault:
    """Never answer (until the client gives up or the server closes)."""
    return Fault("hang")


def reset() -> Fault:
    """Drop the connection without an answer, before calling ECS."""
    return Fault("reset")


def lost_answer(methods: tuple[str, ...] = ("PUT",)) -> Fault:
    """Call ECS (the change lands), then drop the connection without answering: the
    handler's 'neither a task nor a failure' row, or a connection lost on the way back."""
    return Fault("lost_answer", methods=methods)


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
    ecs_calls: int = 0  # ECS API calls the agent made for this request (SDK retries included)


@dataclass
class _Bucket:
    """The agent's rate limiter: 40 requests/s, burst 60."""

    last: float
    rate: float = 40.0
    burst: float = 60.0
    tokens: float = 60.0

    def take(self, now: float) -> bool:
        self.tokens = min(self.burst, self.tokens + (now - self.last) * self.rate)
        self.last = now
        if self.tokens < 1:
            return False
        self.tokens -= 1
        return True


class _Faults:
    """A queue of one-shot faults and one sticky fault, matched by method."""

    def __init__(self) -> None:
        self.queue: deque[Fault] = deque()
        self.sticky: Fault | None = None

    def next(self, method: str) -> Fault | None:
        if self.queue and method in self.queue[0].methods:
            return self.queue.popleft()
        if self.sticky is not None and method in self.sticky.methods:
            return self.sticky
        return None

    def clear(self) -> None:
        self.queue.clear()
        self.sticky = None


class FakeAgent:
    def __init__(self, clock: AgentClock | None = None, *, rate_limit: bool = True) -> None:
        self.clock: AgentClock = clock or RealTime()
        self.tasks: dict[str, Task] = {}
        self.calls: list[Recorded] = []
        self.ecs_calls = 0  # every ECS API attempt behind every agent call
        self._faults = _Faults()
        self._ecs_faults = _Faults()
        self._rate_limit = rate_limit
        # Keyed by client address and URL path, as the agent's limiter is.
        self._buckets: dict[tuple[str, str], _Bucket] = {}
        self._credentials_at: float | None = None  # after a restart: 403 until then
        # Latency of every ECS call (seconds on the agent's clock): the real one takes
        # 0.1-4 s per agent call; race tests raise it.
        self.ecs_latency = 0.0
        # Where protection lives: in memory by default; the drill plugs in moto, so that
        # the agent calls the ECS API as the real one does.
        self.ecs: Ecs = InMemoryEcs(self.clock.wall)
        self._late: set[asyncio.Future[EcsAnswer]] = set()  # calls past the deadline
        self._closing = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self.base_url = ""
        self.app = web.Application()
        self.app.router.add_route("*", "/{tail:.*}", self._handle)
        self.app.on_response_prepare.append(self._date_header)

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
        """Answer the next `times` matching requests (ECS attempts, for ECS faults) badly."""
        (self._ecs_faults if fault.at_ecs else self._faults).queue.extend([fault] * times)

    def fail_always(self, fault: Fault) -> None:
        (self._ecs_faults if fault.at_ecs else self._faults).sticky = fault

    def heal(self) -> None:
        self._faults.clear()
        self._ecs_faults.clear()
        self._credentials_at = None

    def restart(self, credentials_after: float) -> None:
        """The agent restarted: 403 'no task IAM role credentials' for `credentials_after`
        seconds, until it has fetched the tasks' credentials again."""
        self._credentials_at = self.clock.monotonic() + credentials_after
        self._buckets.clear()

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
        self._closing.set()
        for late in list(self._late):
            late.cancel()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    # ---- the endpoint ---------------------------------------------------------

    async def _date_header(self, _request: web.Request, response: web.StreamResponse) -> None:
        response.headers["Date"] = email.utils.formatdate(self.clock.wall(), usegmt=True)

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        endpoint: str | None = None
        match = STATE_PATH.match(request.path)
        if match:
            endpoint = match["endpoint"]
        recorded = Recorded(request.method, request.path, body, 0, endpoint, at=self.clock.wall())
        response = await self._answer(request, body, endpoint, recorded)
        recorded.status = response.status
        self.calls.append(recorded)
        return response

    async def _answer(
        self, request: web.Request, body: bytes, endpoint: str | None, recorded: Recorded
    ) -> web.StreamResponse:
        if self._rate_limit:
            key = (request.remote or "", request.path)
            now = self.clock.monotonic()
            bucket = self._buckets.setdefault(key, _Bucket(last=now))
            if not bucket.take(now):
                return web.Response(status=429, text="You have reached maximum request limit.")
        if "//" in request.path:
            cleaned = re.sub("/+", "/", request.path)
            return web.Response(status=301, headers={"Location": cleaned})
        if endpoint is None:
            return web.Response(status=404, text="404 page not found")
        if request.method not in ("GET", "PUT"):
            return web.Response(status=405)

        update: Update | None = None
        if request.method == "PUT":
            decoded = _decode_put(body)
            if isinstance(decoded, web.Response):
                return decoded
            if decoded[0] is None:
                task = self.tasks.get(endpoint)
                if task is None:
                    return _not_found()
                return _error(
                    400,
                    "InvalidParameterException",
                    "Invalid request: does not contain 'ProtectionEnabled' field",
                    task.arn,
                )
            update = (decoded[0], decoded[1])

        task = self.tasks.get(endpoint)
        if task is None:
            return _not_found()
        restarting = (
            self._credentials_at is not None and self.clock.monotonic() < self._credentials_at
        )
        if not task.has_role or restarting:
            return _error(
                403,
                "AccessDeniedException",
                "Invalid Request: no task IAM role credentials available for task",
                task.arn,
            )

        fault = self._faults.next(request.method)
        if fault is not None:
            faulty = await self._fault_answer(fault, request, task, update, recorded)
            if faulty is not None:
                return faulty
        return self._respond(task, await self._call_ecs(task, update, recorded))

    def _respond(self, task: Task, result: EcsAnswer) -> web.Response:
        if result.failure is not None:
            reason, detail = result.failure
            return web.json_response(
                {"failure": {"Arn": task.arn, "Detail": detail, "Reason": reason}}
            )
        if result.status != 200:
            return _ecs_error(task, result.status, result.code, result.message)
        return protection_response(task, result.enabled, result.expires_wall)

    async def _call_ecs(self, task: Task, update: Update | None, recorded: Recorded) -> EcsAnswer:
        """One ECS call as the agent's SDK makes it: retries and back-off inside a deadline."""
        clock = self.clock
        deadline = clock.monotonic() + ECS_DEADLINE_SECONDS
        method = "GET" if update is None else "PUT"
        for attempt in range(1, SDK_MAX_ATTEMPTS + 1):
            self.ecs_calls += 1
            recorded.ecs_calls += 1
            fault = self._ecs_faults.next(method)
            result, kind = await self._ecs_attempt(task, update, fault, deadline)
            if result is None:
                return _canceled()
            if not result.sdk_retryable or attempt == SDK_MAX_ATTEMPTS:
                return result
            pause = SDK_BACKOFF[kind][attempt - 1]
            if clock.monotonic() + pause >= deadline:
                await clock.sleep(max(0.0, deadline - clock.monotonic()))
                return _canceled()
            await clock.sleep(pause)
        raise AssertionError("unreachable")  # pragma: no cover

    async def _ecs_attempt(
        self, task: Task, update: Update | None, fault: Fault | None, deadline: float
    ) -> tuple[EcsAnswer | None, str]:
        """One attempt; (None, _) when the deadline passed first. The kind picks the back-off."""
        clock = self.clock
        if fault is not None and fault.kind == "ecs_unreachable":
            await clock.sleep(DIAL_TIMEOUT)
            return EcsAnswer(
                500,
                code="ServerException",
                message="dial tcp 10.0.0.1:443: i/o timeout",
            ), "unreachable"
        if fault is not None and fault.kind == "ecs_error":
            await clock.sleep(self.ecs_latency + ECS_LATENCY)
            kind = "throttle" if fault.status < 500 else "server"
            return EcsAnswer(fault.status, code=fault.code, message=fault.message), kind
        slow = fault.seconds if fault is not None and fault.kind == "ecs_slow" else 0.0
        late = fault.seconds if fault is not None and fault.kind == "ecs_late" else 0.0
        work = self._ecs_call(task, update, slow, late)
        return await self._before_deadline(work, deadline), "server"

    async def _ecs_call(
        self, task: Task, update: Update | None, slow: float, late: float = 0.0
    ) -> EcsAnswer:
        if self.ecs_latency or late:
            await self.clock.sleep(self.ecs_latency + late)
        result = await self.ecs(task, update)
        if slow:
            await self.clock.sleep(slow)  # applied at once, answered late
        return result

    async def _before_deadline(
        self, work: Coroutine[Any, Any, EcsAnswer], deadline: float
    ) -> EcsAnswer | None:
        """The ECS call's answer, or None if the agent's deadline passes first. The call
        then goes on: its change can still land, as at ECS."""
        call = asyncio.ensure_future(work)
        timer = asyncio.ensure_future(self.clock.sleep(max(0.0, deadline - self.clock.monotonic())))
        done, _ = await asyncio.wait({call, timer}, return_when=asyncio.FIRST_COMPLETED)
        if call in done:
            timer.cancel()
            return call.result()
        self._late.add(call)
        call.add_done_callback(self._late.discard)
        return None

    async def _fault_answer(
        self,
        fault: Fault,
        request: web.Request,
        task: Task,
        update: Update | None,
        recorded: Recorded,
    ) -> web.StreamResponse | None:
        kind = fault.kind
        if kind == "failure":
            return web.json_response(
                {"failure": {"Arn": task.arn, "Detail": fault.detail, "Reason": fault.reason}}
            )
        if kind == "server_error":
            return _error(500, "ServerException", fault.message)
        if kind == "two_failures":
            return _error(500, "ServerException", "Unexpected error occurred", task.arn)
        if kind == "rate_limit":
            return web.Response(status=429, text="You have reached maximum request limit.")
        if kind == "delay":
            await self.clock.sleep(fault.seconds)
            return None
        if kind == "hang":
            # Until close(): a hung call outlives its client, but not the fake agent.
            await self._closing.wait()
            return web.Response(status=503, text="the agent is stopping")
        if kind == "reset":
            assert request.transport is not None
            request.transport.abort()
            return web.Response(status=500)  # never reaches the client
        if kind == "lost_answer":
            await self._call_ecs(task, update, recorded)
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

    def _protection(self, task: Task) -> dict[str, Any]:
        enabled = task.enabled and (
            task.expires_wall is None or task.expires_wall > self.clock.wall()
        )
        return {
            "ExpirationDate": format_expiration(task.expires_wall)
            if enabled and task.expires_wall is not None
            else None,
            "ProtectionEnabled": enabled,
            "TaskArn": task.arn,
        }


def _error(status: int, code: str, message: str, arn: str | None = None) -> web.Response:
    error: dict[str, Any] = {"Code": code, "Message": message}
    if arn is not None:
        error = {"Arn": arn, **error}
    return web.json_response({"error": error}, status=status)


def _not_found() -> web.Response:
    return _error(404, "ResourceNotFoundException", "Failed to find a task for the request")


def _canceled() -> EcsAnswer:
    return EcsAnswer(
        504, code="RequestCanceled", message="Timed out calling ECS Task Protection API"
    )


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


def _ecs_error(task: Task, status: int, code: str, message: str) -> web.Response:
    """An ECS API error as the agent passes it on (the 504 deadline has no requestID)."""
    error = {"Arn": task.arn, "Code": code, "Message": message}
    if code == "RequestCanceled":
        return web.json_response({"error": error}, status=status)
    return web.json_response({"requestID": str(uuid.uuid4()), "error": error}, status=status)


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
            # Go decodes into an int32 field after range wrapping on 64-bit ints.
            minutes = ((value + 2**31) % 2**32) - 2**31 if value is not None else None
        else:
            return bad
    return (enabled, minutes)
