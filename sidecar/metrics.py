"""Prometheus metrics, read from the machine at scrape time: nothing to update per request."""

from __future__ import annotations

from typing import TYPE_CHECKING

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from collections.abc import Iterator

    from prometheus_client.metrics_core import Metric

    from sidecar.clock import Clock
    from sidecar.machine import Machine


class MachineCollector(Collector):
    def __init__(self, machine: Machine, clock: Clock) -> None:
        self._machine = machine
        self._clock = clock

    def describe(self) -> list[Metric]:
        return []  # collected on demand; nothing to check for duplicates

    def collect(self) -> Iterator[Metric]:
        machine = self._machine
        protected = machine.protected()
        yield GaugeMetricFamily(
            "task_protection_leases", "Leases currently held.", value=len(machine.leases)
        )
        yield GaugeMetricFamily(
            "task_protection_protected",
            "1 while scale-in protection is confirmed on.",
            value=int(protected),
        )
        yield GaugeMetricFamily(
            "task_protection_state_unknown",
            "1 while ECS's protection is not known: never read yet, an answer was lost, or a "
            "disable is in flight.",
            value=int(machine.state() == "unknown"),
        )
        remaining = 0.0
        until = machine.confirmed_until()
        if until is not None:
            remaining = max(0.0, until - self._clock.monotonic())
        yield GaugeMetricFamily(
            "task_protection_expiry_seconds",
            "Seconds until the current protection expires.",
            value=remaining,
        )
        calls = CounterMetricFamily(
            "task_protection_backend_calls",
            "Backend calls by operation and outcome.",
            labels=["op", "outcome"],
        )
        for (op, outcome), count in sorted(machine.counters.calls.items()):
            calls.add_metric([op, outcome], count)
        yield calls
        yield CounterMetricFamily(
            "task_protection_retries",
            "Backend calls that repeated a failed one.",
            value=machine.counters.retries,
        )
        yield CounterMetricFamily(
            "task_protection_leases_expired",
            "Leases dropped because their TTL passed.",
            value=machine.counters.leases_expired,
        )
        yield GaugeMetricFamily(
            "task_protection_draining",
            "1 once the task is stopping.",
            value=int(machine.draining),
        )
