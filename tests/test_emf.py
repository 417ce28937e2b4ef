"""CloudWatch Embedded Metric Format records, and the `event` field of every log line.

The records are parsed from the stdout of a real sidecar process: valid EMF (every metric
declared is a number at the top level, the dimensions are keys of the record), one at
start, one at every protection change, one per interval; counters are deltas that add up.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
from typing import TYPE_CHECKING

import pytest

from sidecar.backends.local import LocalBackend
from sidecar.clock import SystemClock
from sidecar.emf import EmfRecords, EmfReporter, dimensions_from
from sidecar.machine import Policy
from sidecar.service import ProtectionService
from tests.fakes.metadata import FakeMetadata
from tests.fakes.threaded import ThreadedServer
from tests.processes import SidecarProcess

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

UNITS = {"Count", "None", "Seconds"}


def check_emf(record: dict, namespace: str) -> list[str]:
    """Assert the EMF spec's rules for one record; return its dimension names."""
    meta = record["_aws"]
    assert isinstance(meta["Timestamp"], int)
    [directive] = meta["CloudWatchMetrics"]
    assert directive["Namespace"] == namespace
    [dimensions] = directive["Dimensions"]
    for name in dimensions:
        assert isinstance(record[name], str)
    for metric in directive["Metrics"]:
        assert metric["Unit"] in UNITS
        assert isinstance(record[metric["Name"]], int | float)
    return dimensions


def emf_records(sidecar: SidecarProcess, count: int) -> list[dict]:
    return [json.loads(sidecar.next_stdout(timeout=30)) for _ in range(count)]


@pytest.fixture
def emf_sidecar():
    sidecar = SidecarProcess(
        {
            "TASK_PROTECTION_EMF_NAMESPACE": "ECSProtection/Test",
            "TASK_PROTECTION_EMF_INTERVAL_SECONDS": "1",
            "TASK_PROTECTION_IDLE_GRACE_SECONDS": "0",
        },
        stdout=True,
    ).start()
    yield sidecar
    sidecar.stop()


def test_records_at_start_at_each_change_and_per_interval(emf_sidecar):
    [first] = emf_records(emf_sidecar, 1)
    assert check_emf(first, "ECSProtection/Test") == []  # not on ECS: no dimensions
    assert (first["Protected"], first["Leases"], first["reason"]) == (0, 0, "change")

    assert emf_sidecar.post("/busy", {"lease": "job"}).status_code == 200
    records = []
    while not records or records[-1]["Protected"] != 1:
        records += emf_records(emf_sidecar, 1)
    assert records[-1]["Leases"] == 1
    emf_sidecar.post("/idle", {"lease": "job"})
    # Off, known (a record may show the disable in flight as "unknown" on the way).
    while records[-1]["state"] != "off":
        records += emf_records(emf_sidecar, 1)
    assert records[-1]["Protected"] == 0
    records += emf_records(emf_sidecar, 2)  # nothing changes now: interval records
    assert [r["reason"] for r in records[-2:]] == ["interval", "interval"]
    assert records[-1]["_aws"]["Timestamp"] - records[-2]["_aws"]["Timestamp"] >= 900

    every = [first, *records]
    state = emf_sidecar.get("/state").json()
    calls = sum(r["BackendCallsOk"] for r in every)
    assert calls == state["protection"]["calls"]  # deltas add up to the total
    assert all(check_emf(r, "ECSProtection/Test") == [] for r in every)


def test_every_json_log_line_names_its_event(emf_sidecar):
    emf_sidecar.post("/busy", {"lease": "job"})
    emf_sidecar.post("/idle", {"lease": "job"})
    emf_sidecar.post("/drain")
    emf_sidecar.wait_for_log("protection disabled")
    emf_sidecar.wait_for_log("POST /drain")  # the two may come in either order
    events = [entry["event"] for entry in emf_sidecar.logs]
    assert "listening" in events
    assert "protection_enabled" in events
    assert "protection_disabled" in events
    assert "drain_started" in events
    assert all(isinstance(e, str) and e for e in events)


def test_on_ecs_the_dimensions_are_cluster_and_service(agent_in_thread):
    metadata = FakeMetadata(
        cluster="arn:aws:ecs:us-east-1:123456789012:cluster/workers", service="queue-worker-svc"
    )
    with ThreadedServer(metadata.start, metadata.close):
        sidecar = SidecarProcess(
            {
                "ECS_AGENT_URI": agent_in_thread.uri("task-1"),
                "ECS_CONTAINER_METADATA_URI_V4": metadata.url,
                "TASK_PROTECTION_EMF_NAMESPACE": "ECSProtection/Test",
            },
            stdout=True,
        ).start()
        try:
            [record] = emf_records(sidecar, 1)
        finally:
            sidecar.stop()
    assert check_emf(record, "ECSProtection/Test") == ["Cluster", "Service"]
    assert (record["Cluster"], record["Service"]) == ("workers", "queue-worker-svc")


def test_without_a_service_the_family_is_the_dimension():
    assert dimensions_from({"Cluster": "c", "Family": "queue-worker"}) == {
        "Cluster": "c",
        "TaskDefinitionFamily": "queue-worker",
    }
    assert dimensions_from({"Cluster": 5, "Family": None}) == {}


def test_counters_are_deltas_and_gauges_are_values():
    from sidecar.service import View  # noqa: PLC0415

    def view(ok: int, unprotected: float, leases: int) -> View:
        return View(
            leases=(),
            lease_count=leases,
            protected=True,
            state="on",
            expires_wall=None,
            seconds_left=0.0,
            backend="agent",
            last_error=None,
            calls={("enable", "ok"): ok, ("get", "ok"): 1, ("enable", "retryable"): 2},
            retries=2,
            failures=0,
            leases_expired=0,
            refused_draining=0,
            unprotected_busy_seconds=unprotected,
            in_flight=None,
            renew_at_wall=None,
            next_retry_wall=None,
            capped=False,
            idle_since_wall=None,
            draining=False,
            drain_deadline_wall=None,
        )

    records = EmfRecords("ns", {})
    first = records.record(view(3, 1.5, 4), 1.0, "change")
    second = records.record(view(5, 2.0, 2), 2.0, "interval")
    assert (first["BackendCallsOk"], first["BackendCallsRetryable"], first["Retries"]) == (4, 2, 2)
    assert (second["BackendCallsOk"], second["BackendCallsRetryable"], second["Retries"]) == (
        2,
        0,
        0,
    )
    assert (first["UnprotectedBusySeconds"], second["UnprotectedBusySeconds"]) == (1.5, 0.5)
    assert (first["Leases"], second["Leases"]) == (4, 2)


# ---- the reporter in process: what it writes when the state moves or a write fails ----------


class Stdout:
    """Collects the reporter's records; fails the writes it is told to."""

    def __init__(self, fail_on: set[int] | None = None) -> None:
        self.records: list[dict] = []
        self.fail_on = fail_on or set()
        self.writes = 0
        self.changed = asyncio.Event()

    def write(self, text: str) -> None:
        self.writes += 1
        self.changed.set()
        if self.writes in self.fail_on:
            raise OSError(32, "Broken pipe")
        self.records.append(json.loads(text))

    async def wait_for(self, writes: int) -> None:
        while self.writes < writes:
            self.changed.clear()
            await asyncio.wait_for(self.changed.wait(), 10)


@contextlib.asynccontextmanager
async def reporting(stdout: Stdout) -> AsyncIterator[ProtectionService]:
    clock = SystemClock()
    service = ProtectionService(Policy(idle_grace=0.0), LocalBackend(clock), clock, max_leases=10)
    reporter = EmfReporter(
        service, clock, namespace="ns", interval=3600.0, metadata_uri=None, write=stdout.write
    )
    tasks = [asyncio.create_task(service.run())]
    await asyncio.wait_for(service.wait_settled(), 10)  # protection read: off
    tasks.append(asyncio.create_task(reporter.run()))
    try:
        yield service
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def test_a_drain_writes_a_change_record_at_once():
    stdout = Stdout()
    async with reporting(stdout) as service:
        await stdout.wait_for(1)  # the record at start
        service.drain(exit_when_idle=False)
        await stdout.wait_for(2)  # not the interval's, an hour away
    assert [(r["reason"], r["Draining"]) for r in stdout.records] == [
        ("change", 0),
        ("change", 1),
    ]


async def test_a_failed_write_does_not_count_calls_twice():
    stdout = Stdout(fail_on={3})  # the drain's record
    async with reporting(stdout) as service:
        await stdout.wait_for(1)
        outcome = await service.busy("job", None, 5.0)
        assert outcome.status == "protected"
        await stdout.wait_for(2)  # protection went on: one enable
        service.drain(exit_when_idle=False)
        await stdout.wait_for(3)  # this write fails
        service.idle("job")
        while stdout.records[-1]["state"] != "off":
            await stdout.wait_for(stdout.writes + 1)
        total = service.snapshot(lease_limit=0).calls
    written = sum(r["BackendCallsOk"] for r in stdout.records)
    assert written == sum(n for (_, outcome), n in total.items() if outcome == "ok")
    states = [r["state"] for r in stdout.records]
    # The disable may be seen in flight ("unknown") before it is confirmed off.
    assert states[:2] == ["off", "on"]
    assert states[-1] == "off"
    assert set(states[2:-1]) <= {"unknown"}


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["TERM", "INT"])
def test_with_emf_on_a_drain_exits(emf_sidecar, signum):
    """The drain's state change wakes the EMF task as the supervisor cancels it: the
    cancellation must not be lost (it was, in asyncio.wait_for on 3.11, and the sidecar
    never exited)."""
    emf_records(emf_sidecar, 1)
    emf_sidecar.signal(signum)
    assert emf_sidecar.wait(timeout=60) == 0
    assert [e["exit_code"] for e in emf_sidecar.logs if e["event"] == "exiting"] == [0]


def test_a_stdout_nobody_reads_blocks_neither_the_api_nor_the_drain():
    """A stalled log driver stops reading stdout: the pipe is full. EMF records are then
    dropped (and said so on stderr), never written from the event loop, which would
    block with them: /healthz, /busy and the drain on SIGTERM all go on."""
    reader, writer = os.pipe()
    try:
        fill(writer)
        sidecar = SidecarProcess(
            {
                "TASK_PROTECTION_EMF_NAMESPACE": "ECSProtection/Test",
                "TASK_PROTECTION_IDLE_GRACE_SECONDS": "0",
            },
            stdout=writer,
        ).start()
        try:
            for n in range(5):  # changes, so records, well beyond what could be written
                assert sidecar.post("/busy", {"lease": f"job-{n}"}).status_code == 200
                assert sidecar.post("/idle", {"lease": f"job-{n}"}).status_code == 200
            assert sidecar.get("/healthz").status_code == 200
            sidecar.signal(signal.SIGTERM)
            assert sidecar.wait(timeout=60) == 0
        finally:
            sidecar.stop()
    finally:
        os.close(writer)
        os.close(reader)


def fill(fd: int) -> None:
    """Write into the pipe until it is full."""
    os.set_blocking(fd, False)
    try:
        while True:
            try:
                os.write(fd, b"\n" * 65536)
            except BlockingIOError:
                return
    finally:
        os.set_blocking(fd, True)
