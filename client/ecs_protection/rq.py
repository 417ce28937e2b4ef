"""RQ: a worker class that holds a lease around each job (`pip install 'ecs-protection[rq]'`).

    rq worker -w ecs_protection.rq.Worker            # forks a work horse per job
    rq worker -w ecs_protection.rq.SimpleWorker      # runs jobs in the worker itself

What it does (docs/frameworks.md says it for operators):

- The worker process takes the job's lease before the work horse is forked and gives
  it back after the horse has ended, with a TTL and heartbeats from a thread of the
  worker; so the lease ends with the worker, not with the horse (a horse whose worker
  died runs on unwatched).
- When the ECS task drains (the sidecar refuses new leases), the job it has just
  dequeued is not started: it goes back to the front of its queue, exactly as it was
  (its id moves back from RQ's intermediate queue in one transaction, so RQ's clean-up
  never finds it stranded there and fails it), and the worker stops as after SIGTERM.
- SIGTERM is RQ's own warm shutdown: the running job finishes, then the worker exits.
  One that arrives while the lease is being taken waits for it, and the job, not
  started yet, goes back to the front of its queue.

To change the lease's options, subclass and set the class attributes:

    class Worker(ecs_protection.rq.Worker):
        protection_ttl = 300
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

from rq.worker import BaseWorker, WorkerStatus
from rq.worker import SimpleWorker as _SimpleWorker
from rq.worker import Worker as _Worker

from ecs_protection._errors import ProtectionError, TaskDrainingError
from ecs_protection._frameworks import DEFAULT_TTL_SECONDS, LeaseOptions

if TYPE_CHECKING:
    from rq.job import Job
    from rq.queue import Queue

    from ecs_protection._sync import Client

__all__ = ["SimpleWorker", "Worker"]


class ProtectedWorker(BaseWorker):
    """What Worker and SimpleWorker add to RQ's: the lease around `execute_job`."""

    protection_ttl: ClassVar[float | None] = DEFAULT_TTL_SECONDS
    protection_wait_seconds: ClassVar[float | None] = None
    protection_require: ClassVar[bool] = False
    protection_client: ClassVar[Client | None] = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:  # noqa: ANN401  (RQ's own)
        super().__init__(*args, **kwargs)
        # Checked here: a bad option stops the worker before it dequeues any job.
        self._lease_options = LeaseOptions(
            self.protection_ttl,
            self.protection_wait_seconds,
            self.protection_require,
            self.protection_client,
        )

    def execute_job(self, job: Job, queue: Queue) -> None:
        # RQ's SIGTERM handler raises StopRequested wherever the worker is unless it is
        # busy, when it only asks the loop to stop (warm shutdown). So the worker is busy
        # while the lease is taken and while it is given back: neither request is cut
        # (an exception inside a release would be swallowed by it, and the lease left).
        self.set_state(WorkerStatus.BUSY)
        try:
            held = self._lease_options.hold("rq", job.id)
        except ProtectionError as exc:
            self._hand_back(job, queue)
            # RQ's own logger: `rq worker` shows it (and configures no other).
            if isinstance(exc, TaskDrainingError):
                self.log.info("job %s not started: the ECS task is draining; put back", job.id)
            else:  # the reason is the message: no traceback
                self.log.error("job %s not started: no lease (%s); put back", job.id, exc)  # noqa: TRY400
            self._stop_requested = True  # what RQ's SIGTERM handler sets: the loop ends
            self.set_state(WorkerStatus.IDLE)
            return
        try:
            if self._stop_requested:  # SIGTERM came while the lease was taken
                self._hand_back(job, queue)
                self.log.info("job %s not started: the worker is stopping; put back", job.id)
            else:
                super().execute_job(job, queue)
                self.set_state(WorkerStatus.BUSY)  # RQ's execute_job ends idle
        finally:
            held.release()
        self.set_state(WorkerStatus.IDLE)

    def _hand_back(self, job: Job, queue: Queue) -> None:
        """Undo the dequeue: the job's id back at the front of its queue, nothing else changed.

        RQ moved the id into the queue's intermediate queue (single-queue workers); a job
        left there is failed by RQ's clean-up a minute later, so it leaves it in the same
        transaction that puts it back.
        """
        with self.connection.pipeline() as pipeline:
            pipeline.lrem(queue.intermediate_queue_key, 1, job.id)
            queue.push_job_id(job.id, pipeline=pipeline, at_front=True)
            pipeline.execute()


class Worker(ProtectedWorker, _Worker):
    """RQ's forking Worker, with a lease held by the worker process around each job."""


class SimpleWorker(ProtectedWorker, _SimpleWorker):
    """RQ's SimpleWorker (jobs run in the worker process), with a lease around each job."""
