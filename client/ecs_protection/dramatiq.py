"""Dramatiq: a middleware that holds a lease per message (`pip install 'ecs-protection[dramatiq]'`).

    broker.add_middleware(ecs_protection.dramatiq.EcsProtection())

What it does (docs/frameworks.md says it for operators):

- Each message takes its own lease right before its actor runs, in the worker thread
  that runs it, with a TTL and heartbeats, and gives it back when the actor ends.
- When the ECS task drains (the sidecar refuses new leases), this worker process stops
  taking messages: its worker threads are paused (as `Worker.pause()` pauses them;
  the consumers go on, so the broker keeps hearing from the process). Messages it
  prefetched are never acknowledged: Dramatiq puts them back on the queue when the
  worker stops, for another worker.
- The message that met the drain does not run and is not failed. A worker thread
  acknowledges every message it has taken, even a skipped one (`SkipMessage`), so the
  same message (same id, actor, arguments and options) is enqueued again first, and
  only then is the taken one skipped, without a result stored for it.
- SIGTERM is Dramatiq's own shutdown: running actors finish (and release their
  leases), unstarted messages go back, the process exits 0.
"""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING, Any

from dramatiq.middleware import Middleware, MiddlewareError, SkipMessage

from ecs_protection._errors import ProtectionError, TaskDrainingError
from ecs_protection._frameworks import DEFAULT_TTL_SECONDS, LeaseOptions

if TYPE_CHECKING:
    from collections.abc import Callable

    from dramatiq.broker import Broker, MessageProxy
    from dramatiq.message import Message
    from dramatiq.worker import Worker

    from ecs_protection._hold import Hold
    from ecs_protection._sync import Client

__all__ = ["EcsProtection", "LeaseRefusedError"]

log = logging.getLogger("ecs_protection")


class LeaseRefusedError(MiddlewareError):
    """The message cannot run protected, and cannot be put back either.

    The sidecar refused its lease for another reason than a drain (strict mode and
    unreachable, `require_protection` and unconfirmed, a full lease table, a wrong
    token), or the task drains and enqueueing the message again failed. The message
    fails with it, so Dramatiq's Retries applies.
    """


class EcsProtection(Middleware):
    """A lease for every message while its actor runs; no new messages once the task drains.

    `ttl`, `wait_seconds` and `require_protection` are busy()'s options for each
    message's lease; `client` defaults to the process's default client
    (TASK_PROTECTION_URL).
    """

    def __init__(
        self,
        *,
        ttl: float | None = DEFAULT_TTL_SECONDS,
        wait_seconds: float | None = None,
        require_protection: bool = False,
        client: Client | None = None,
    ) -> None:
        self.options = LeaseOptions(ttl, wait_seconds, require_protection, client)
        self._held = threading.local()  # before and after a message run in one worker thread
        self._worker: Worker | None = None
        self._pausing = threading.Lock()

    # Dramatiq's hook signatures: not every hook needs every argument.

    def after_worker_boot(self, broker: Broker, worker: Worker) -> None:  # noqa: ARG002
        self._worker = worker

    def before_process_message(self, broker: Broker, message: MessageProxy) -> None:
        try:
            held = self.options.hold("dramatiq", message.message_id)
        except TaskDrainingError:
            self._stop_taking_messages()
            self._hand_back(broker, message)
            raise SkipMessage("the ECS task is draining") from None
        except ProtectionError as exc:
            raise LeaseRefusedError(str(exc)) from exc
        self._held.hold = held

    def after_process_message(
        self,
        broker: Broker,  # noqa: ARG002
        message: MessageProxy,  # noqa: ARG002
        *,
        result: Any = None,  # noqa: ANN401, ARG002  (the actor's)
        exception: BaseException | None = None,  # noqa: ARG002
    ) -> None:
        self._release()

    def after_skip_message(self, broker: Broker, message: MessageProxy) -> None:  # noqa: ARG002
        self._release()  # another middleware may skip it after this one took the lease

    def _release(self) -> None:
        held: Hold | None = getattr(self._held, "hold", None)
        self._held.hold = None
        if held is not None:
            held.release()

    def _stop_taking_messages(self) -> None:
        worker = self._worker
        if worker is None:
            return
        with self._pausing:  # several threads may meet the drain at once: log it once
            running = [thread for thread in worker.workers if not thread.paused]
            # Flags only (Worker.pause() would wait for this very thread): each thread
            # finishes the message it has, then takes no other.
            for thread in running:
                thread.pause()
        if running:
            log.info(
                "the ECS task is draining: this worker takes no more messages; "
                "the ones it fetched go back to the broker when it stops"
            )

    def _hand_back(self, broker: Broker, message: MessageProxy) -> None:
        # Enqueued before the taken one is acknowledged: the message is never off the
        # broker (if the process dies in between, it runs twice rather than never).
        enqueue: Callable[[Message[Any]], object] = broker.enqueue  # (untyped in dramatiq 1.x)
        try:
            enqueue(message.copy())
        except Exception as exc:
            # Not a MiddlewareError, Dramatiq would log it and run the actor, unprotected.
            raise LeaseRefusedError(f"draining, and not enqueued again: {exc}") from exc
        # The Results middleware stores None for a skipped message; the copy will run.
        message.options["store_results"] = False
        log.info("message %s not started: the ECS task is draining; enqueued again", message)
