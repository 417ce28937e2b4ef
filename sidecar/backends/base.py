"""What every backend promises, and the two ways a call can go wrong."""

from __future__ import annotations

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


class BackendError(Exception):
    """A call that did not change or read protection.

    `retryable` separates transient trouble (connection errors, timeouts, 429, 5xx,
    throttling), retried quickly with back-off, from answers that will not change by
    themselves (403, 404, bad requests, refusals), retried slowly.
    """

    def __init__(
        self, code: str, message: str, *, retryable: bool, status: int | None = None
    ) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.retryable = retryable
        self.status = status


class ProtectionRefusedError(BackendError):
    """ECS answered for this task with a `failure` (TASK_NOT_VALID, DEPLOYMENT_BLOCKED, ...)."""

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
    """Reads and switches this task's scale-in protection."""

    @property
    def name(self) -> BackendName: ...

    async def get(self) -> Protection: ...

    async def set(self, enabled: bool, expires_minutes: int) -> Protection: ...

    async def close(self) -> None: ...
