"""What every backend promises, and the two ways a call can go wrong."""

from __future__ import annotations

import email.utils
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from datetime import datetime

    from sidecar.config import BackendName


@dataclass(frozen=True, slots=True)
class Protection:
    """The task's protection as the backend reported it."""

    enabled: bool
    expires_at: datetime | None  # timezone-aware; None when not protected
    # Seconds of protection left when the answer was made, by the server's own clock
    # (its Date header against expires_at): immune to a wrong local clock. None when
    # the server gave no time; the local wall clock is used then.
    remaining: float | None = None


class BackendError(Exception):
    """A call that did not confirm protection either way.

    `retryable` separates transient trouble (connection errors, timeouts, 429, 5xx,
    throttling), retried quickly with back-off, from answers that will not change by
    themselves (404, bad requests, refusals), retried slowly. `maybe_transient` marks
    an answer that is usually permanent but sometimes clears within seconds (the
    agent's 403 right after it restarted): retried from about a second, slowing down
    to the slow period.

    `uncertain` says the call may have reached ECS although no answer says so (a
    timeout, a dropped connection, a 5xx or 504 after ECS was called): protection may
    have changed, so the caller must not assume the state it had before.
    """

    def __init__(  # noqa: PLR0913  (keyword-only facts about one failure)
        self,
        code: str,
        message: str,
        *,
        retryable: bool,
        status: int | None = None,
        uncertain: bool = False,
        maybe_transient: bool = False,
    ) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.retryable = retryable
        self.status = status
        self.uncertain = uncertain
        self.maybe_transient = maybe_transient


class ProtectionRefusedError(BackendError):
    """ECS answered for this task with a `failure` (TASK_NOT_VALID, DEPLOYMENT_BLOCKED, ...)."""

    @classmethod
    def from_answer(cls, reason: object, detail: object) -> ProtectionRefusedError:
        """From a backend's failure entry: text only, and short (it reaches logs and /state)."""
        return cls(
            reason[:100] if isinstance(reason, str) and reason else "UNKNOWN",
            detail[:500] if isinstance(detail, str) and detail else None,
        )

    def __init__(self, reason: str, detail: str | None) -> None:
        hint = REFUSAL_HINTS.get(reason, "ECS refused protection for this task")
        message = f"{hint}" + (f" ({detail})" if detail else "")
        super().__init__(reason, message, retryable=False, status=200)
        self.reason = reason
        self.detail = detail


REFUSAL_HINTS = {
    "TASK_NOT_VALID": ("ECS refused protection: only tasks started by a service can be protected"),
    "DEPLOYMENT_BLOCKED": (
        "ECS refused protection because a deployment is in progress; the task may be replaced soon"
    ),
    "MISSING": "ECS does not know this task",
}


class Backend(Protocol):
    """Reads and switches this task's scale-in protection.

    An answer is only returned when it is what was asked for: `set(True, ...)` returns
    protection on or raises (see `switched`); the state machine trusts it.
    """

    @property
    def name(self) -> BackendName: ...

    async def get(self) -> Protection: ...

    async def set(self, enabled: bool, expires_minutes: int) -> Protection: ...

    async def close(self) -> None: ...


def http_date(value: str | None) -> datetime | None:
    """An HTTP Date header as an aware datetime, or None when absent or unreadable."""
    if not value:
        return None
    try:
        moment = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    return moment if moment.tzinfo is not None else None


def remaining_seconds(expires_at: datetime | None, server_time: datetime | None) -> float | None:
    """Protection left by the server's own clock. Date headers have whole seconds, so the
    server's true time may be up to a second later: count one second less."""
    if expires_at is None or server_time is None:
        return None
    return (expires_at - server_time).total_seconds() - 1.0


def switched(enabled: bool, protection: Protection) -> Protection:
    """The answer to set(enabled): raise unless it says what was asked for.

    An enable answered "off" (ECS granted an expiry already gone), or a disable answered
    "on", must not count as success, or the machine would call again at once, in a loop.
    """
    if enabled and not protection.enabled:
        raise BackendError(
            "NotProtected", "the backend answered an enable with protection off", retryable=False
        )
    if not enabled and protection.enabled:
        # The same the other way round: a disable answered "still on" is not done.
        raise BackendError(
            "NotDisabled", "the backend answered a disable with protection on", retryable=False
        )
    return protection
