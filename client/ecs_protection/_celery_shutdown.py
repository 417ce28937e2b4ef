"""Celery's warm shutdown: a task that has not started by then does not run; it goes back.

Why. Without `acks_late`, a prefork child tells the worker's main process that it
accepted a task, and the main process acknowledges the message when it reads that.
Once a warm shutdown begins, the main process stops reading: a task written to a
child just before is run by the child all the same, while its message, never
acknowledged, is restored to the queue when the worker closes its broker connection.
The task then runs twice (seen once in a few SIGTERMs to a busy worker).

So from `worker_shutting_down` (the main process, in its signal handler) a flag shared
with every pool child is set; a task whose body has not started by then takes no lease
and raises `NotStarted` (a requeueing `Reject`) instead of running:

- its message is not acknowledged yet (the usual case): the main process rejects it
  with requeue, or, if it no longer listens to that child, the broker connection's
  close restores it (Redis, and RabbitMQ, put back what was not acknowledged);
- it was acknowledged before the flag was set (the child took a moment between
  accepting and starting it): the main process publishes it again, as a drain does.
"""

from __future__ import annotations

import logging
import mmap
from typing import TYPE_CHECKING, Any

from celery import signals
from celery.exceptions import Reject

if TYPE_CHECKING:
    from celery.worker.request import Request

log = logging.getLogger("ecs_protection")


class NotStarted(Reject):
    """Raised instead of running a task that a warm shutdown found not started."""


class _SharedFlag:
    """One byte of anonymous shared memory: what the main process sets, pool children read.

    Made before the pool forks (at protect()), so that every child, including those
    forked later to replace others, maps the same page.
    """

    def __init__(self) -> None:
        self._page = mmap.mmap(-1, 1)  # MAP_SHARED: a write is seen by every fork

    def set(self) -> None:
        self._page[0] = 1  # one byte: safe to write from a signal handler

    def is_set(self) -> bool:
        return self._page[0] == 1


_shutting_down: _SharedFlag | None = None


def install() -> None:
    """Share the flag with the pool children to come; set it when a shutdown begins."""
    global _shutting_down  # noqa: PLW0603  (one flag per process, made once)
    if _shutting_down is None:
        _shutting_down = _SharedFlag()
        signals.worker_shutting_down.connect(_on_worker_shutting_down, weak=False)


def _on_worker_shutting_down(**_: object) -> None:
    if _shutting_down is not None:
        _shutting_down.set()


def began() -> bool:
    """Whether this worker (main process or pool child) is in a shutdown."""
    return _shutting_down is not None and _shutting_down.is_set()


def request_class(base: type[Request]) -> type[Request]:
    """`base` (the task's Request class) with a `NotStarted` task put back on the broker."""

    class ProtectedRequest(base):  # type: ignore[misc,valid-type]
        def on_failure(
            self,
            exc_info: Any,  # noqa: ANN401  (billiard's ExceptionInfo, untyped)
            send_failed_event: bool = True,
            return_ok: bool = False,
        ) -> Any:  # noqa: ANN401
            acknowledged_before = bool(self.acknowledged)
            # Celery's own handling of a Reject: task_ready, then a reject with requeue,
            # which does nothing once the message was acknowledged.
            result = super().on_failure(exc_info, send_failed_event, return_ok)
            if acknowledged_before and _raised_not_started(exc_info):
                self.task.signature_from_request(
                    self._context, args=self.args, kwargs=self.kwargs
                ).apply_async()
                log.info(
                    "task %s[%s] not started: the worker is shutting down; sent again",
                    self.task.name,
                    self.id,
                )
            return result

    ProtectedRequest.__name__ = ProtectedRequest.__qualname__ = f"Protected{base.__name__}"
    ProtectedRequest.__module__ = __name__
    return ProtectedRequest


def _raised_not_started(exc_info: Any) -> bool:  # noqa: ANN401
    exc = getattr(exc_info, "exception", None)
    exc = getattr(exc, "exc", exc)  # a child's exception comes wrapped with its traceback
    return isinstance(exc, NotStarted)
