"""The sidecar process with TASK_PROTECTION_BACKEND=api against ThreadedMotoServer."""

from __future__ import annotations

import time

import pytest

from tests.aws import CREDENTIALS, Cluster, ecs_client, moto_server
from tests.fakes.metadata import FakeMetadata
from tests.fakes.threaded import ThreadedServer
from tests.processes import SidecarProcess
from tests.support import wait_until


@pytest.fixture(scope="module")
def moto_url():
    with moto_server() as url:
        yield url


@pytest.fixture
def cluster(moto_url):
    return Cluster(ecs_client(moto_url), name=f"workers-{time.monotonic_ns()}")


def api_sidecar(moto_url: str, metadata: FakeMetadata) -> SidecarProcess:
    return SidecarProcess(
        {
            **CREDENTIALS,
            "AWS_ENDPOINT_URL_ECS": moto_url,
            "TASK_PROTECTION_BACKEND": "api",
            "ECS_CONTAINER_METADATA_URI_V4": metadata.url,
            "TASK_PROTECTION_IDLE_GRACE_SECONDS": "0",
            "TASK_PROTECTION_METADATA_POLL_SECONDS": "1",
        }
    ).start()


def served(metadata: FakeMetadata) -> ThreadedServer:
    return ThreadedServer(metadata.start, metadata.close)


def test_busy_protects_the_task_in_ecs_and_idle_unprotects_it(moto_url, cluster):
    task = cluster.run_task()
    metadata = FakeMetadata(cluster=cluster.name, task_arn=task)
    with served(metadata):
        sidecar = api_sidecar(moto_url, metadata)
        try:
            answer = sidecar.post("/busy", {"lease": "job"})
            assert answer.status_code == 200, answer.text
            assert cluster.protected(task)
            assert sidecar.get("/state").json()["protection"]["backend"] == "api"
            sidecar.post("/idle", {"lease": "job"})
            sidecar.wait_for_log("protection disabled")
            assert not cluster.protected(task)
        finally:
            sidecar.stop()


def test_a_standalone_task_gets_a_clear_task_not_valid(moto_url, cluster):
    task = cluster.run_task(service=None)
    metadata = FakeMetadata(cluster=cluster.name, task_arn=task)
    with served(metadata):
        sidecar = api_sidecar(moto_url, metadata)
        try:
            answer = sidecar.post("/busy", {"lease": "job"})
            assert answer.status_code == 503
            assert "TASK_NOT_VALID" in answer.json()["error"]["message"]
            error = sidecar.get("/state").json()["protection"]["last_error"]
            assert (error["code"], error["retryable"]) == ("TASK_NOT_VALID", False)
            assert "started by a service" in error["message"]
            assert sidecar.wait_for_log("TASK_NOT_VALID")["level"] == "ERROR"
        finally:
            sidecar.stop()


def test_stop_detection_drains_when_ecs_stops_the_task(moto_url, cluster):
    task = cluster.run_task()
    metadata = FakeMetadata(cluster=cluster.name, task_arn=task)
    with served(metadata):
        sidecar = api_sidecar(moto_url, metadata)
        try:
            assert sidecar.post("/busy", {"lease": "job"}).status_code == 200
            metadata.stop_task()
            wait_until(lambda: sidecar.get("/state").json()["draining"])
            refused = sidecar.post("/busy", {"lease": "next"})
            assert refused.json()["error"]["code"] == "Draining"
            assert sidecar.post("/idle", {"lease": "job"}).status_code == 200
            assert sidecar.get("/healthz").status_code == 200  # drained, still serving
            assert sidecar.proc.poll() is None
        finally:
            sidecar.stop()
