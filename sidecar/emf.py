"""CloudWatch metrics without a scraper: Embedded Metric Format records on stdout.

With TASK_PROTECTION_EMF_NAMESPACE set, one JSON record per protection change and one
every TASK_PROTECTION_EMF_INTERVAL_SECONDS; the awslogs driver ships stdout to CloudWatch
Logs, which turns the records into metrics (no agent, no scraper). Gauges are the value
now; counters are what happened since the previous record, so CloudWatch's sums over a
period are right. Dimensions: the cluster and the service (or the task definition
family) from the task metadata on ECS; none elsewhere.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
from typing import TYPE_CHECKING, Any

from sidecar.backends.base import BackendError
from sidecar.metadata import fetch_task
from sidecar.output import LineWriter, stream_fd

if TYPE_CHECKING:
    from collections.abc import Callable

    from sidecar.clock import Clock
    from sidecar.service import ProtectionService, View

log = logging.getLogger("sidecar.emf")

OUTCOMES = ("ok", "retryable", "error", "refused")
GAUGES = (("Leases", "Count"), ("Protected", "None"), ("Draining", "None"))
COUNTERS = (
    *((f"BackendCalls{outcome.capitalize()}", "Count") for outcome in OUTCOMES),
    ("Retries", "Count"),
    ("RefusedDraining", "Count"),
    ("UnprotectedBusySeconds", "Seconds"),
)


def dimensions_from(task: dict[str, Any]) -> dict[str, str]:
    """Cluster and Service (or TaskDefinitionFamily when not started by a service)."""
    found: dict[str, str] = {}
    cluster = task.get("Cluster")
    if isinstance(cluster, str) and cluster:
        found["Cluster"] = cluster.rsplit("/", 1)[-1]  # an ARN or a short name
    service, family = task.get("ServiceName"), task.get("Family")
    if isinstance(service, str) and service:
        found["Service"] = service
    elif isinstance(family, str) and family:
        found["TaskDefinitionFamily"] = family
    return found


class EmfRecords:
    """Builds the records: pure, so the shape and the counter deltas are tested alone."""

    def __init__(self, namespace: str, dimensions: dict[str, str]) -> None:
        self.namespace = namespace
        self.dimensions = dimensions
        self._last: dict[str, float] = {}

    def record(self, view: View, wall: float, reason: str) -> dict[str, Any]:
        totals: dict[str, float] = {
            f"BackendCalls{outcome.capitalize()}": sum(
                count for (_, result), count in view.calls.items() if result == outcome
            )
            for outcome in OUTCOMES
        }
        totals["Retries"] = view.retries
        totals["RefusedDraining"] = view.refused_draining
        totals["UnprotectedBusySeconds"] = view.unprotected_busy_seconds
        values: dict[str, float] = {
            "Leases": view.lease_count,
            "Protected": int(view.protected),
            "Draining": int(view.draining),
        }
        for name, total in totals.items():
            delta = total - self._last.get(name, 0.0)
            values[name] = round(delta, 3) if isinstance(delta, float) else delta
        self._last = totals
        return {
            "_aws": {
                "Timestamp": int(wall * 1000),
                "CloudWatchMetrics": [
                    {
                        "Namespace": self.namespace,
                        "Dimensions": [list(self.dimensions)],
                        "Metrics": [
                            {"Name": name, "Unit": unit} for name, unit in (*GAUGES, *COUNTERS)
                        ],
                    }
                ],
            },
            **self.dimensions,
            **values,
            "state": view.state,
            "backend": view.backend,
            "reason": reason,  # "change" or "interval"
        }


class EmfReporter:
    """Writes a record at every protection change and at a fixed interval."""

    def __init__(  # noqa: PLR0913  (the parts of one reporter, wired by app.py and tests)
        self,
        service: ProtectionService,
        clock: Clock,
        *,
        namespace: str,
        interval: float,
        metadata_uri: str | None,
        write: Callable[[str], None] | None = None,
    ) -> None:
        self._service = service
        self._clock = clock
        self._namespace = namespace
        self._interval = interval
        self._metadata_uri = metadata_uri
        self._write = write or _stdout

    async def run(self) -> None:
        # One EmfRecords for the whole run: its counters' last totals must survive a
        # failed write, or the next record would count everything since start again.
        records = EmfRecords(self._namespace, await self._dimensions())
        last: tuple[object, ...] | None = None
        due = self._clock.monotonic()
        while True:
            now = self._clock.monotonic()
            try:
                view = self._service.snapshot(lease_limit=0)
                key = (view.state, view.draining)
                if key != last or now >= due:
                    reason = "change" if key != last else "interval"
                    record = records.record(view, self._clock.wall(), reason)
                    last, due = key, now + self._interval  # a failed write is not retried
                    self._write(json.dumps(record, separators=(",", ":")) + "\n")
            except Exception:
                # Metrics must not stop for good on a surprise (stdout gone, a bug): log
                # it and carry on at the next change or interval.
                log.exception("EMF records: unexpected error", extra={"event": "emf_failed"})
                due = max(due, now + self._interval)
            await self._service.wait_changed(max(0.0, due - self._clock.monotonic()))

    async def _dimensions(self) -> dict[str, str]:
        """From the task metadata on ECS (a few tries: it answers within a second)."""
        if not self._metadata_uri:
            return {}
        for attempt in range(5):
            try:
                return dimensions_from(await fetch_task(self._metadata_uri))
            except BackendError as exc:
                if attempt == 4:
                    log.warning(
                        "EMF records go without dimensions: %s",
                        exc.message,
                        extra={"event": "emf_no_dimensions"},
                    )
                    return {}
                await asyncio.sleep(1.0)
        return {}  # pragma: no cover - the loop returns


def _dropped(why: str) -> None:
    log.warning(
        "EMF records are dropped while stdout cannot take them (%s)",
        why,
        extra={"event": "emf_dropped"},
    )


def _recovered(count: int) -> None:
    log.warning(
        "%d EMF record(s) dropped while stdout could not take them",
        count,
        extra={"event": "emf_recovered", "dropped": count},
    )


_writer: LineWriter | None = None


def _stdout(text: str) -> None:
    """Through a LineWriter: a stdout nobody reads must not block the event loop."""
    global _writer  # noqa: PLW0603  (one writer for the process's stdout)
    if _writer is None:
        # Started without a stdout, its number may be a socket's now: never written to;
        # a writer with nowhere to write drops every record, said once.
        fd = stream_fd(sys.stdout)
        _writer = LineWriter(-1 if fd is None else fd, on_dropped=_dropped, on_recovered=_recovered)
    _writer.write(text)


def flush(timeout: float) -> bool:
    """Write out the records still queued, for at most `timeout` seconds (at exit)."""
    return _writer is None or _writer.flush(timeout)
