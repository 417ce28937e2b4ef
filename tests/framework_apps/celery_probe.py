"""The Celery app of the framework tests: `celery -A tests.framework_apps.celery_probe worker`."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from celery import Celery

import ecs_protection
import ecs_protection.celery
from tests.framework_apps.probe import job

if TYPE_CHECKING:
    from celery import Task

URL = os.environ["PROBE_REDIS_URL"]

app = Celery("probe", broker=URL, backend=URL)
app.conf.update(
    task_acks_late=os.environ.get("PROBE_ACKS_LATE") == "1",
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=True,
)
ecs_protection.celery.protect(
    app,
    ttl=float(os.environ.get("PROBE_TTL", "60")),
    drain_poll_seconds=float(os.environ.get("PROBE_DRAIN_POLL", "0.2")),
)

# The worker's main process uses the client before its pool forks (and its drain watch
# goes on using it while children are forked again): children must not share its socket.
ecs_protection.default_client().state()


@app.task
def work(seconds: float = 0.0, ticks: int = 0) -> str:
    return job(URL, work.request.id or "", seconds, ticks)


@app.task(bind=True, max_retries=3)
def retried(self: Task[[], str]) -> str:
    """Its first delivery asks for a retry in 30 s: an ETA message the worker then holds,
    delivered and not acknowledged, until the countdown ends."""
    if not self.request.retries:
        job(URL, self.request.id or "", 0, 0)  # a "start" record: the first delivery ran
        raise self.retry(countdown=30)
    return job(URL, self.request.id or "", 0, 0)
