"""The ECS side of the fleet simulation: one account's throttling, and each task's agent.

What is modelled, and from where (the real agent, as tests/fakes/agent.py; README, "Fleet scale"):

- `TokenBucket`: ECS throttles every account per Region with a token bucket (a burst, the
  bucket's size, and a sustained refill rate). One bucket is shared by every task's
  UpdateTaskProtection and GetTaskProtection calls. A throttled call takes no token.
- `Agent`: per task, the agent's own rate limiter (40 requests/s, burst 60: a 429 before
  ECS is asked) and the AWS SDK standard retryer around the ECS call: up to 3 attempts,
  a back-off of `random() * 2**attempt` seconds between them (the SDK's exponential
  jitter), all inside the agent's 4 s deadline, past which the agent answers 504
  RequestCanceled. A single throttle or 5xx is therefore invisible except for about a
  second of latency; a persistent one surfaces as the ECS error after the third attempt.
- Latencies: a successful ECS call 0.1-0.4 s, a throttle rejected in 20-100 ms.

Answers are the agent's HTTP status and JSON body, which the simulation hands to the
sidecar's own `parse_answer`, so the sidecar's classification is the one exercised.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import random

AGENT_RATE = 40.0  # requests per second, per client address and path
AGENT_BURST = 60.0
SDK_MAX_ATTEMPTS = 3
AGENT_DEADLINE = 4.0  # seconds, SDK retries included
AGENT_HOP = 0.002  # sidecar -> agent -> ECS front door, and back
OK_LATENCY = (0.1, 0.4)
THROTTLE_LATENCY = (0.02, 0.1)
SERVER_ERROR_LATENCY = (0.1, 0.4)
TASK_ARN = "arn:aws:ecs:us-east-1:123456789012:task/fleet/{}"


class TokenBucket:
    """`burst` tokens at most, `rate` added per second; a request takes one or is refused."""

    __slots__ = ("burst", "last", "rate", "tokens")

    def __init__(self, burst: float, rate: float, now: float = 0.0) -> None:
        self.burst = burst
        self.rate = rate
        self.tokens = burst
        self.last = now

    def take(self, now: float) -> bool:
        tokens = self.tokens + (now - self.last) * self.rate
        self.tokens = min(self.burst, tokens)
        self.last = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False


@dataclass(frozen=True, slots=True)
class Answer:
    """What the agent sends back to the sidecar, at `at`."""

    at: float
    status: int
    body: bytes


@dataclass(frozen=True, slots=True)
class Retry:
    """The SDK retries: the next ECS attempt happens at `at`."""

    at: float


@dataclass(slots=True)
class Outcome:
    """One ECS attempt as ECS saw it: for counting and plotting."""

    throttled: bool = False
    server_error: bool = False


class Ecs:
    """The account: the shared bucket, scripted storms, and each task's protection."""

    def __init__(
        self,
        burst: float,
        refill: float,
        storms: tuple[tuple[float, float], ...] = (),
        server_error_rate: float = 0.0,
    ) -> None:
        self.bucket = TokenBucket(burst, refill)
        self.storms = storms  # [start, end) windows in which every call is throttled
        self.server_error_rate = server_error_rate
        self.calls = 0
        self.throttled = 0
        self.server_errors = 0

    def storm_at(self, now: float) -> bool:
        return any(start <= now < end for start, end in self.storms)

    def admit(self, now: float, rng: random.Random) -> Outcome:
        """One ECS call arrives: is it throttled, failed, or served?"""
        self.calls += 1
        if self.storm_at(now) or not self.bucket.take(now):
            self.throttled += 1
            return Outcome(throttled=True)
        if self.server_error_rate and rng.random() < self.server_error_rate:
            self.server_errors += 1
            return Outcome(server_error=True)
        return Outcome()


class Agent:
    """One task's ECS agent endpoint: rate limiter, SDK retries, deadline, answer bodies."""

    __slots__ = ("arn", "attempts", "deadline", "limiter", "rng")

    def __init__(self, task_id: str, rng: random.Random) -> None:
        self.arn = TASK_ARN.format(task_id)
        self.limiter = TokenBucket(AGENT_BURST, AGENT_RATE)
        self.rng = rng
        self.attempts = 0
        self.deadline = 0.0

    def begin(self, now: float) -> Answer | Retry:
        """A request reaches the agent: refused by its limiter, or sent on to ECS."""
        if not self.limiter.take(now):
            return Answer(now + AGENT_HOP, 429, b"You have reached maximum request limit.")
        self.attempts = 0
        self.deadline = now + AGENT_DEADLINE
        return Retry(now + AGENT_HOP)

    def after_attempt(self, now: float, outcome: Outcome, protection: bytes) -> Answer | Retry:
        """ECS answered one attempt; `protection` is the success body (unused on errors)."""
        self.attempts += 1
        uniform = self.rng.uniform
        if outcome.throttled or outcome.server_error:
            done = now + uniform(*(THROTTLE_LATENCY if outcome.throttled else SERVER_ERROR_LATENCY))
            if self.attempts < SDK_MAX_ATTEMPTS:
                retry_at = done + self.rng.random() * 2**self.attempts
                return self._canceled() if retry_at > self.deadline else Retry(retry_at)
            if outcome.throttled:
                answer = Answer(
                    done + AGENT_HOP, 400, self._error("ThrottlingException", "Rate exceeded")
                )
            else:
                answer = Answer(
                    done + AGENT_HOP, 500, self._error("ServerException", "Internal error")
                )
        else:
            done = now + uniform(*OK_LATENCY)
            answer = Answer(done + AGENT_HOP, 200, protection)
        return self._canceled() if done > self.deadline else answer

    def _canceled(self) -> Answer:
        body = self._error("RequestCanceled", "Timed out calling ECS Task Protection API")
        return Answer(self.deadline + AGENT_HOP, 504, body)

    def _error(self, code: str, message: str) -> bytes:
        doc = {"requestID": "fleet", "error": {"Arn": self.arn, "Code": code, "Message": message}}
        return json.dumps(doc, separators=(",", ":")).encode()

    def protection_body(self, expires_wall: float | None) -> bytes:
        """The agent's success body; the date as it prints it, milliseconds trimmed."""
        date = None if expires_wall is None else format_expiration(expires_wall)
        doc = {
            "protection": {
                "ExpirationDate": date,
                "ProtectionEnabled": expires_wall is not None,
                "TaskArn": self.arn,
            }
        }
        return json.dumps(doc, separators=(",", ":")).encode()


def format_expiration(wall: float) -> str:
    moment = datetime.fromtimestamp(wall, UTC)
    millis = f"{moment.microsecond // 1000:03d}".rstrip("0")
    text = moment.strftime("%Y-%m-%dT%H:%M:%S")
    return f"{text}.{millis}Z" if millis else f"{text}Z"
