"""Jobs for RQ workers in the framework tests, enqueued as `tests.framework_apps.rq_probe.work`."""

from __future__ import annotations

import os

from rq import get_current_job

import ecs_protection.rq
from tests.framework_apps.probe import job


def work(seconds: float = 0.0, ticks: int = 0) -> str:
    current = get_current_job()
    assert current is not None
    return job(os.environ["PROBE_REDIS_URL"], current.id, seconds, ticks)


class ShortTtlWorker(ecs_protection.rq.Worker):
    """The documented way to change the lease's options: a subclass."""

    protection_ttl = 2.0
