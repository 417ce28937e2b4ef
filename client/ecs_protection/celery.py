"""Celery: every task runs inside a lease, in one line (`pip install 'ecs-protection[celery]'`).

    app = Celery("jobs", broker=...)
    ecs_protection.celery.protect(app)

What it does (docs/frameworks.md says it for operators):

- Each task of the app takes its own lease right before its body runs, in the process
  or thread that runs it (a prefork child, a thread of the threads pool, the solo
  worker), with a TTL and heartbeats, and gives it back when the body ends. The client
  is fork-safe, so the worker's main process may use it before the pool forks.
- When the ECS task drains (the sidecar refuses new leases), a task about to start
  does not run, is not marked failed, and goes back to the broker:
    * with `acks_late` its message is not acknowledged yet: it is rejected with
      requeue (Celery's own `Reject(requeue=True)`);
    * otherwise the pool acknowledged the message when it accepted the task, before
      any task code runs: the same task (same id, arguments and options, as `retry()`
      sends it, without counting a retry) is published again first, then this
      delivery ends as ignored (Celery's `Ignore`), which stores no result.
- The worker stops taking tasks: its main process cancels its consumers (as
  `celery control cancel_consumer` does), so tasks sent afterwards stay on the broker
  untouched; messages it had prefetched are put back as above, or by the broker when
  the worker stops. It learns of the drain the moment any of its tasks is refused a
  lease (a pipe from the pool's children wakes its event loop), or from a GET /state
  every `drain_poll_seconds` when no task starts meanwhile: the sidecar is asked
  nothing more than before, and no task is handed back for long.
- SIGTERM is Celery's own warm shutdown: running tasks finish (and release their
  leases), then the worker exits 0. A task whose body has not started when the
  shutdown begins (`worker_shutting_down`) takes no lease and goes back to the broker
  instead of running (see _celery_shutdown: otherwise it could run twice).
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import logging
import os
import threading
import weakref
from typing import TYPE_CHECKING, Any, NoReturn, Protocol

from celery import bootsteps, signals
from celery.exceptions import Ignore, Reject

from ecs_protection import _celery_shutdown
from ecs_protection._busy import default_client
from ecs_protection._errors import TaskDrainingError
from ecs_protection._frameworks import DEFAULT_TTL_SECONDS, LeaseOptions
from ecs_protection._protocol import check_seconds

if TYPE_CHECKING:
    from collections.abc import Callable

    from celery import Celery, Task
    from kombu import Queue

    from ecs_protection._sync import Client

__all__ = ["protect"]

log = logging.getLogger("ecs_protection")

DEFAULT_DRAIN_POLL_SECONDS = 1.0
_WRAPPED = "__ecs_protection__"


class _DrainNotice:
    """A pipe made before the pool forks: whoever learns of the drain writes to it, and
    the worker's event loop, which watches its read end, wakes up at once.

    Writers: a task refused its lease (in a pool child, a thread or the main process)
    and the main process's GET /state poller. Writes never block: one byte unread is
    enough.
    """

    def __init__(self) -> None:
        self.fileno, self._write_end = os.pipe()
        os.set_blocking(self.fileno, False)
        os.set_blocking(self._write_end, False)
        self.heard = False

    def tell(self) -> None:
        with contextlib.suppress(OSError):  # full (already told) or closed: nothing to add
            os.write(self._write_end, b"d")

    def listen(self) -> bool:
        """Empty the pipe; whether the drain was ever told (main process)."""
        with contextlib.suppress(OSError):
            while os.read(self.fileno, 4096):
                self.heard = True
        return self.heard


class _Protection:
    def __init__(self, lease: LeaseOptions, drain_poll_seconds: float) -> None:
        self.lease = lease
        self.drain_poll_seconds = drain_poll_seconds
        self.notice = _DrainNotice()

    def client(self) -> Client:
        return self.lease.client or default_client()


_protections: weakref.WeakKeyDictionary[Celery, _Protection] = weakref.WeakKeyDictionary()


def protect(  # noqa: PLR0913  (all keyword options)
    app: Celery,
    *,
    ttl: float | None = DEFAULT_TTL_SECONDS,
    wait_seconds: float | None = None,
    require_protection: bool = False,
    client: Client | None = None,
    drain_poll_seconds: float = DEFAULT_DRAIN_POLL_SECONDS,
) -> Celery:
    """Run every task of `app` inside a lease, and stop taking tasks when the ECS task drains.

    Call it once, where the app is created (before the worker starts). `ttl`,
    `wait_seconds` and `require_protection` are busy()'s options for each task's
    lease; `client` defaults to the process's default client (TASK_PROTECTION_URL).
    Celery's own tasks (`celery.*`, such as `celery.chord_unlock`) take no lease.
    """
    lease = LeaseOptions(ttl, wait_seconds, require_protection, client)
    check_seconds("drain_poll_seconds", drain_poll_seconds, positive=True)
    if app in _protections:
        raise RuntimeError(f"ecs_protection.celery.protect() was already called for {app!r}")
    protection = _Protection(lease, drain_poll_seconds)
    _protections[app] = protection
    _celery_shutdown.install()  # before the pool forks: its children share the flag

    def on_finalize(sender: Celery, **_: object) -> None:
        _wrap_tasks(sender, protection)

    # Tasks exist once the app is finalized (the worker does that before its pool forks
    # and before it builds its tracers, which keep a reference to each task's `run`).
    app.on_after_finalize.connect(on_finalize, weak=False)
    if getattr(app, "finalized", False):  # (missing from celery-types' stubs)
        _wrap_tasks(app, protection)
    # An app finalized early (anything that read app.tasks) registers the tasks of the
    # modules the worker imports (`include`, `imports`) afterwards: the worker's init,
    # after those imports and before its pool starts, wraps them too.
    protected_app = weakref.ref(app)

    def on_worker_init(sender: object, **_: object) -> None:
        current = protected_app()
        starting: object = getattr(sender, "app", None)
        if current is not None and starting is current:  # not another app's worker
            _wrap_tasks(current, protection)

    signals.worker_init.connect(on_worker_init, weak=False)
    app.steps["consumer"].add(DrainWatch)
    return app


def _wrap_tasks(app: Celery, protection: _Protection) -> None:
    for name, task in list(app.tasks.items()):
        if not name.startswith("celery.") and not getattr(task.run, _WRAPPED, False):
            _wrap(task, protection)


def _wrap(task: Task[Any, Any], protection: _Protection) -> None:
    # An instance attribute: the tracer calls `task.run` (or `task.__call__`, which calls
    # `self.run`), so every base class and custom __call__ goes through it.
    task.run = _protected(task, task.run, protection)  # type: ignore[method-assign]
    # The worker's main process builds each task's requests from this class (read when
    # its consumer starts, after the tasks are wrapped). Set by name: celery-types'
    # stubs declare Task.Request in some versions only.
    setattr(task, "Request", _celery_shutdown.request_class(_request_base(task)))  # noqa: B010


def _request_base(task: Task[Any, Any]) -> type[Any]:
    """The task's Request class: Celery takes the class or its name (`module:Class`)."""
    named: object = getattr(task, "Request", "celery.worker.request:Request")
    if not isinstance(named, str):
        return named  # type: ignore[return-value]
    module, colon, name = named.partition(":")
    if not colon:
        module, _, name = named.rpartition(".")
    return getattr(importlib.import_module(module), name)  # type: ignore[no-any-return]


def _protected(
    task: Task[Any, Any], run: Callable[..., Any], protection: _Protection
) -> Callable[..., Any]:
    @functools.wraps(run)
    def run_protected(*args: Any, **kwargs: Any) -> Any:  # noqa: ANN401
        request = task.request
        if request.called_directly or request.is_eager:
            return run(*args, **kwargs)  # not a worker's delivery: nothing to put back
        if _celery_shutdown.began():
            log.info(
                "task %s[%s] not started: the worker is shutting down; requeued",
                task.name,
                request.id,
            )
            raise _celery_shutdown.NotStarted("the worker is shutting down", requeue=True)
        try:
            held = protection.lease.hold("celery", request.id or "")
        except TaskDrainingError:
            protection.notice.tell()  # the worker stops taking tasks now
            _hand_back(task)
        with held:
            # Noted only once it runs: a task handed back above never ran.
            if not task.acks_late:
                _celery_shutdown.note_start(request.id or "", request.retries or 0)
            return run(*args, **kwargs)

    setattr(run_protected, _WRAPPED, True)
    return run_protected


def _hand_back(task: Task[Any, Any]) -> NoReturn:
    """Give the task that was about to start back to the broker, unrun and not failed."""
    request = task.request
    name = f"{task.name}[{request.id}]"
    if task.acks_late:
        log.info("task %s not started: the ECS task is draining; requeued", name)
        raise Reject("the ECS task is draining", requeue=True) from None
    # Acknowledged already: publish it again first, so it is never off the broker. If the
    # publish fails, the error fails the task, which is visible, rather than lost quietly.
    task.signature_from_request(request).apply_async()
    log.info("task %s not started: the ECS task is draining; sent again", name)
    raise Ignore


class _TaskConsumer(Protocol):
    queues: list[Queue]


class _Consumer(Protocol):
    """What DrainWatch uses of Celery's worker consumer (its bootsteps' parent)."""

    app: Celery
    hub: Any  # the worker's event loop (kombu's Hub), or None: add_reader(), call_soon()
    timer: Any  # the worker's timer (kombu's, in the event loop): call_repeatedly()
    task_consumer: _TaskConsumer

    def cancel_task_queue(self, queue: str) -> None: ...


class DrainWatch(bootsteps.StartStopStep):
    """A consumer step: when the ECS task drains, cancel the worker's consumers.

    The worker's event loop watches the drain notice (see _DrainNotice) and cancels the
    consumers in the loop, as Celery's `cancel_consumer` control command does. A thread
    asks the sidecar (GET /state) every `drain_poll_seconds`, for a drain that no task
    has met yet. Without an event loop (a worker on a synchronous transport) the
    worker's timer checks the notice every `drain_poll_seconds` instead.
    """

    requires = ("celery.worker.consumer.tasks:Tasks",)

    def __init__(self, parent: _Consumer, **kwargs: Any) -> None:  # noqa: ANN401
        super().__init__(parent, **kwargs)
        self._watcher: _DrainWatcher | None = None
        self._timer: Any = None
        self._hub: Any = None
        self._notice: _DrainNotice | None = None

    def start(self, parent: _Consumer) -> None:
        protection = _protections.get(parent.app)
        if protection is None:
            return
        notice = self._notice = protection.notice
        self._watcher = _DrainWatcher(protection.client, protection.drain_poll_seconds, notice)
        if parent.hub is not None:
            self._hub = parent.hub
            self._hub.add_reader(notice.fileno, self._stop_consuming_if_draining, parent)
            # Heard before a reconnect re-created the consumers: cancel them again.
            self._hub.call_soon(self._stop_consuming_if_draining, parent)
        else:
            self._timer = parent.timer.call_repeatedly(
                protection.drain_poll_seconds, self._stop_consuming_if_draining, (parent,)
            )

    def shutdown(self, parent: _Consumer) -> None:
        self.stop(parent)
        # The pool has finished by now; the broker connection closes next (and puts
        # back what is not acknowledged).
        task_consumer: Any = parent.task_consumer
        if task_consumer is not None:
            _celery_shutdown.acknowledge_started(task_consumer.channel)

    def stop(self, parent: _Consumer) -> None:  # noqa: ARG002  (a bootstep's signature)
        if self._hub is not None and self._notice is not None:
            self._hub.remove_reader(self._notice.fileno)
            self._hub = None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._watcher is not None:
            self._watcher.stop()
            self._watcher = None

    def _stop_consuming_if_draining(self, consumer: _Consumer) -> None:
        if self._notice is None or not self._notice.listen():
            return
        queues = [queue.name for queue in consumer.task_consumer.queues]
        if not queues:
            return  # cancelled already (checked again: a reconnect re-creates consumers)
        log.info(
            "the ECS task is draining: not taking tasks from %s any more; running tasks finish",
            ", ".join(queues),
        )
        for name in queues:
            consumer.cancel_task_queue(name)


class _DrainWatcher:
    """Polls the sidecar from a daemon thread until it drains, or until stopped."""

    def __init__(
        self, client: Callable[[], Client], poll_seconds: float, notice: _DrainNotice
    ) -> None:
        self._stopped = threading.Event()
        self._client = client
        self._poll_seconds = poll_seconds
        self._notice = notice
        threading.Thread(target=self._watch, name="ecs-protection-drain-watch", daemon=True).start()

    def _watch(self) -> None:
        while not self._stopped.is_set():
            try:
                if self._client().draining:
                    self._notice.tell()
                    return
            except Exception as exc:  # noqa: BLE001  (strict mode raises when unreachable: keep watching)
                log.debug("could not ask the sidecar whether the task drains: %s", exc)
            self._stopped.wait(self._poll_seconds)

    def stop(self) -> None:
        self._stopped.set()
