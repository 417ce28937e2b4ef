"""Prometheus metrics, read from the service's view at scrape time: nothing per request."""

from __future__ import annotations

from typing import TYPE_CHECKING

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    from prometheus_client.metrics_core import Metric

    from sidecar.service import View


class StateCollector(Collector):
    def __init__(self, view: Callable[[], View]) -> None:
        self._view = view

    def describe(self) -> list[Metric]:
        return []  # collected on demand; nothing to check for duplicates

    def collect(self) -> Iterator[Metric]:
        view = self._view()
        yield GaugeMetricFamily(
            "task_protection_leases", "Leases currently held.", value=view.lease_count
        )
        yield GaugeMetricFamily(
            "task_protection_protected",
            "1 while scale-in protection is confirmed on.",
            value=int(view.protected),
        )
        yield GaugeMetricFamily(
            "task_protection_state_unknown",
            "1 while ECS's protection is not known: never read yet, an answer was lost, or a "
            "disable is in flight.",
            value=int(view.state == "unknown"),
        )
        yield GaugeMetricFamily(
            "task_protection_expiry_seconds",
            "Seconds until the confirmed protection expires.",
            value=view.seconds_left,
        )
        calls = CounterMetricFamily(
            "task_protection_backend_calls",
            "Backend calls by operation and outcome.",
            labels=["op", "outcome"],
        )
        for (op, outcome), count in sorted(view.calls.items()):
            calls.add_metric([op, outcome], count)
        yield calls
        yield CounterMetricFamily(
            "task_protection_retries",
            "Backend calls that repeated a failed one.",
            value=view.retries,
        )
        yield CounterMetricFamily(
            "task_protection_leases_expired",
            "Leases dropped because their TTL passed.",
            value=view.leases_expired,
        )
        yield CounterMetricFamily(
            "task_protection_unprotected_busy_seconds",
            "Seconds during which a lease was held without confirmed protection.",
            value=view.unprotected_busy_seconds,
        )
        yield CounterMetricFamily(
            "task_protection_refused_draining",
            "New leases refused because the task is stopping.",
            value=view.refused_draining,
        )
        yield GaugeMetricFamily(
            "task_protection_draining",
            "1 once the task is stopping.",
            value=int(view.draining),
        )
