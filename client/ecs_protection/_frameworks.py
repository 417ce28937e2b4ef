"""What the framework integrations (celery, rq, dramatiq) share: how a job's lease is taken."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ecs_protection._busy import default_client
from ecs_protection._hold import check_options
from ecs_protection._protocol import DEFAULT_TTL_SECONDS

if TYPE_CHECKING:
    from ecs_protection._hold import Hold
    from ecs_protection._sync import Client

# DEFAULT_TTL_SECONDS, busy()'s: a worker that dies (SIGKILL, OOM) holds protection at
# most this long, as its heartbeat, every third of it, stops with the process.
__all__ = ["DEFAULT_TTL_SECONDS", "LeaseOptions", "lease_prefix"]

_NOT_IN_LEASE_ID = re.compile(r"[^A-Za-z0-9._:-]")


@dataclass(frozen=True)
class LeaseOptions:
    """busy()'s options, for the lease an integration takes around each job."""

    ttl: float | None = DEFAULT_TTL_SECONDS
    wait_seconds: float | None = None
    require_protection: bool = False
    client: Client | None = None

    def __post_init__(self) -> None:
        check_options(self.ttl, self.wait_seconds)

    def hold(self, framework: str, job_id: str) -> Hold:
        """Take the lease for one job; raises what Hold raises (TaskDrainingError, ...)."""
        return (self.client or default_client()).hold(
            ttl=self.ttl,
            lease_prefix=lease_prefix(framework, job_id),
            wait_seconds=self.wait_seconds,
            require_protection=self.require_protection,
        )


def lease_prefix(framework: str, job_id: str) -> str:
    """`celery-<task id>`: /state then shows which job holds each lease.

    Job ids are the framework's (and may be the app's own): characters a lease id may
    not hold become `_`, and the id is cut so the lease id stays within 128 characters.
    """
    return f"{framework}-{_NOT_IN_LEASE_ID.sub('_', job_id)[:64]}"
