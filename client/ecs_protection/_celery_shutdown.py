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

The other side of the same race: a child starts a task just before the flag is set,
and the main process, stopping, never reads that child's word that it accepted it, so
the message would be restored although the task ran. Each child therefore notes the
delivery it runs (the task id and its retry count: a retry is a new message with the
same id) in a slot of the shared page once its lease is held, and at the end of a warm
shutdown, before the connection closes, the main process acknowledges the messages
still unacknowledged of deliveries that a child ran (see acknowledge_started). Never
for `acks_late` tasks: their message is acknowledged by the task's end, and one cut
off (a cold shutdown) must stay on the broker to run again.
"""

from __future__ import annotations

import hashlib
import logging
import mmap
from typing import TYPE_CHECKING, Any

import billiard.process
from celery import signals
from celery.exceptions import Reject

if TYPE_CHECKING:
    from collections.abc import Callable

    from celery.worker.request import Request

log = logging.getLogger("ecs_protection")

# The pool's process (its `index` is the child's place in the pool). Looked up by name:
# celery-types' billiard stubs declare it in some versions only.
current_process: Callable[[], object] = vars(billiard.process)["current_process"]


class NotStarted(Reject):
    """Raised instead of running a task that a warm shutdown found not started."""


_DIGEST = 16  # bytes of a delivery's hash: a slot's size
_SLOTS = 1024  # pool children (by index) that can note their task: -c 1024 at most
_FIRST_SLOT = 64


# The flag's values: which shutdown began (a cold one may follow a warm one).
_RUNNING, _WARM, _COLD = 0, 1, 2


def _digest(task_id: str, retries: int) -> bytes:
    key = f"{task_id}\0{retries}".encode()
    return hashlib.blake2b(key, digest_size=_DIGEST).digest()


class _SharedFlag:
    """Anonymous shared memory: the flag the main process sets, and per pool child the
    delivery it ran last (a hash of the task id and retry count), which the main
    process reads.

    Made before the pool forks (at protect()), so that every child, including those
    forked later to replace others, maps the same pages.
    """

    def __init__(self) -> None:
        # MAP_SHARED: a write is seen by every fork.
        self._page = mmap.mmap(-1, _FIRST_SLOT + _SLOTS * _DIGEST)

    def set(self, *, cold: bool = False) -> None:
        # One byte: safe to write from a signal handler. Cold stays cold.
        self._page[0] = _COLD if cold or self._page[0] == _COLD else _WARM

    def is_set(self) -> bool:
        return self._page[0] != _RUNNING

    def is_warm(self) -> bool:
        return self._page[0] == _WARM

    def note_start(self, slot: int, task_id: str, retries: int) -> None:
        at = _FIRST_SLOT + slot * _DIGEST
        self._page[at : at + _DIGEST] = _digest(task_id, retries)

    def started(self, task_id: str, retries: int) -> bool:
        wanted = _digest(task_id, retries)
        page = self._page
        return any(
            page[at : at + _DIGEST] == wanted
            for at in range(_FIRST_SLOT, _FIRST_SLOT + _SLOTS * _DIGEST, _DIGEST)
        )


_shutting_down: _SharedFlag | None = None


def install() -> None:
    """Share the flag with the pool children to come; set it when a shutdown begins."""
    global _shutting_down  # noqa: PLW0603  (one flag per process, made once)
    if _shutting_down is None:
        _shutting_down = _SharedFlag()
        signals.worker_shutting_down.connect(_on_worker_shutting_down, weak=False)


def _on_worker_shutting_down(how: object = "Warm", **_: object) -> None:
    if _shutting_down is not None:
        _shutting_down.set(cold=how == "Cold")


def began() -> bool:
    """Whether this worker (main process or pool child) is in a shutdown."""
    return _shutting_down is not None and _shutting_down.is_set()


def note_start(task_id: str, retries: int) -> None:
    """In a pool child: this delivery runs now, its lease held (only prefork children
    have an index). Not for acks_late tasks (see the module's docstring)."""
    index = getattr(current_process(), "index", None)
    if _shutting_down is not None and isinstance(index, int) and 0 <= index < _SLOTS:
        _shutting_down.note_start(index, task_id, retries)


def acknowledge_started(channel: object) -> None:
    """At the end of a warm shutdown: acknowledge what a child ran but nobody acknowledged.

    `channel` is the task consumer's; kombu's virtual transports (Redis, SQS) keep the
    messages delivered and not acknowledged in `qos._delivered`, which the connection's
    close puts back on the queue. Other transports: nothing to do here (nothing read).
    After a cold shutdown nothing is acknowledged: its tasks were cut off, and a message
    still unacknowledged is better run again than lost.
    """
    if _shutting_down is None or not _shutting_down.is_warm():
        return
    delivered = getattr(getattr(channel, "qos", None), "_delivered", None)
    if not isinstance(delivered, dict):
        return
    for message in list(delivered.values()):
        headers = getattr(message, "headers", None) or {}
        task_id, retries = headers.get("id"), headers.get("retries") or 0
        if not isinstance(task_id, str) or not isinstance(retries, int):
            continue
        if message.acknowledged:
            continue
        if _shutting_down.started(task_id, retries):
            message.ack()
            log.info("task %s ran during the shutdown: its message is acknowledged", task_id)


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
