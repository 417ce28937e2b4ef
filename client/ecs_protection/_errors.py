"""The exceptions of ecs_protection, all under one base:

ProtectionError
 +-- ConfigurationError        a bad TASK_PROTECTION_* value or argument (also a ValueError)
 +-- SidecarUnavailableError   the sidecar did not answer in time (raised in strict mode,
 |                            or when protection is required)
 +-- SidecarError              the sidecar answered with an error (status, code, message)
      +-- TaskDrainingError     503 Draining: the task is stopping, do not start the job
      +-- ProtectionUnavailableError
      |                         503 ProtectionUnavailable: not confirmed in time
      |                         (raised only with require_protection=True)
      +-- TooManyLeasesError    429: the sidecar's lease table is full
      +-- InvalidAnswerError    the answer is not what the API promises (code InvalidAnswer):
                                not JSON, a wrong field, cut short, not HTTP at all
"""

from __future__ import annotations

from typing import Any


class ProtectionError(Exception):
    """Base of every error this package raises."""


class ConfigurationError(ProtectionError, ValueError):
    """A setting the client cannot work with: a URL without http://, STRICT=2, ..."""


class SidecarUnavailableError(ProtectionError):
    """No answer from the sidecar: nothing listens, the connection closed before a byte
    of the answer, or the answer did not come in time.

    Raised in strict mode, and whenever protection is required; otherwise the client
    warns once and the job runs unprotected.
    """


class SidecarError(ProtectionError):
    """The sidecar answered with an error body."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message

    def __reduce__(self) -> tuple[Any, ...]:
        # Prefork pools and result backends pickle exceptions; the default rebuilds from
        # `args` (the one formatted string), which this __init__ does not take.
        return (_rebuild, (type(self), self.status, self.code, self.message))


class TaskDrainingError(SidecarError):
    """The task is stopping (SIGTERM or DesiredStatus STOPPED): do not start new work."""


class ProtectionUnavailableError(SidecarError):
    """Protection was not confirmed within the wait; raised when protection is required."""


class TooManyLeasesError(SidecarError):
    """The sidecar holds TASK_PROTECTION_MAX_LEASES leases already."""


class InvalidAnswerError(SidecarError):
    """The answer is not the API's: not JSON, a missing or mistyped field, another lease,
    an answer cut short, or bytes that are not HTTP (`status` 0: no status line).

    Something answers on the sidecar's address, wrongly: unlike no answer at all, that
    is an error in every mode, so that a broken sidecar (or another program on its
    port) is seen instead of passing for "no sidecar, run unprotected".

    Whether the request took effect is unknown, so a busy request that gets one is
    followed by a release of its lease.
    """

    def __init__(self, status: int, message: str) -> None:
        super().__init__(status, "InvalidAnswer", message)


def _rebuild(cls: type[SidecarError], status: int, code: str, message: str) -> SidecarError:
    error = cls.__new__(cls)
    SidecarError.__init__(error, status, code, message)  # subclasses may take fewer fields
    return error
