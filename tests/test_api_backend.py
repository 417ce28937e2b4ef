"""ApiBackend: boto3 against moto (with the shim), identity from the metadata endpoint."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from botocore.exceptions import ClientError, EndpointConnectionError
from moto import mock_aws

from sidecar.backends.api import ApiBackend, parse_answer
from sidecar.backends.base import BackendError, ProtectionRefusedError
from sidecar.metadata import TaskIdentity
from tests.aws import Cluster, ecs_client, use_fake_credentials
from tests.fakes import moto_ecs
from tests.fakes.metadata import FakeMetadata


@pytest.fixture
def cluster():
    use_fake_credentials()
    moto_ecs.install()
    with mock_aws():
        yield Cluster(ecs_client())


async def test_enable_get_disable(cluster):
    task = cluster.run_task()
    backend = ApiBackend(cluster=cluster.name, task_arn=task)
    try:
        before = datetime.now(UTC)
        enabled = await backend.set(True, 30)
        after = datetime.now(UTC)
        assert enabled.enabled
        assert enabled.expires_at is not None
        # 30 minutes from the call, whenever it was answered (whole seconds: 1 s less).
        lifetime = timedelta(minutes=30)
        assert before + lifetime - timedelta(seconds=1) <= enabled.expires_at <= after + lifetime
        assert cluster.protected(task)
        assert (await backend.get()).enabled
        disabled = await backend.set(False, 30)
        assert (disabled.enabled, disabled.expires_at) == (False, None)
        assert not cluster.protected(task)
    finally:
        await backend.close()


async def test_a_standalone_task_is_refused(cluster):
    task = cluster.run_task(service=None)
    backend = ApiBackend(cluster=cluster.name, task_arn=task)
    with pytest.raises(ProtectionRefusedError) as caught:
        await backend.set(True, 30)
    assert (caught.value.reason, caught.value.retryable) == ("TASK_NOT_VALID", False)
    assert "started by a service" in caught.value.message


async def test_identity_comes_from_the_metadata_endpoint(cluster):
    task = cluster.run_task()
    metadata = FakeMetadata(cluster=cluster.name, task_arn=task)
    await metadata.start()
    try:
        backend = ApiBackend(metadata_uri=metadata.url)
        assert (await backend.set(True, 10)).enabled
        assert cluster.protected(task)
        assert metadata.requests == 1
        await backend.get()
        assert metadata.requests == 1  # read once
    finally:
        await metadata.close()


async def test_unreadable_metadata_is_retryable():
    metadata = FakeMetadata()
    metadata.fail_with = 500
    await metadata.start()
    try:
        with pytest.raises(BackendError) as caught:
            await ApiBackend(metadata_uri=metadata.url).get()
    finally:
        await metadata.close()
    assert (caught.value.code, caught.value.retryable) == ("MetadataError", True)


def client_error(code: str, status: int):
    def operation(**_params):
        raise ClientError(
            {
                "Error": {"Code": code, "Message": "m"},
                "ResponseMetadata": {"HTTPStatusCode": status},
            },
            "UpdateTaskProtection",
        )

    return operation


IDENTITY = TaskIdentity("c", "arn:aws:ecs:us-east-1:1:task/c/abc")


@pytest.mark.parametrize(
    ("operation", "code", "retryable"),
    [
        (client_error("ThrottlingException", 400), "ThrottlingException", True),
        (client_error("ServerException", 500), "ServerException", True),
        (client_error("AccessDeniedException", 400), "AccessDeniedException", False),
        (client_error("ClusterNotFoundException", 400), "ClusterNotFoundException", False),
        (client_error("InvalidParameterException", 400), "InvalidParameterException", False),
    ],
)
def test_client_errors_are_classified_like_the_agents(operation, code, retryable):
    with pytest.raises(BackendError) as caught:
        ApiBackend._call(operation, IDENTITY)
    assert (caught.value.code, caught.value.retryable) == (code, retryable)


def test_connection_errors_are_retryable():
    def down(**_params):
        raise EndpointConnectionError(endpoint_url="http://127.0.0.1:9")

    with pytest.raises(BackendError) as caught:
        ApiBackend._call(down, IDENTITY)
    assert (caught.value.code, caught.value.retryable) == ("ConnectionError", True)


def test_an_answer_without_our_task_is_retryable():
    with pytest.raises(BackendError, match="does not mention"):
        parse_answer({"protectedTasks": [], "failures": []}, IDENTITY)


def test_region_comes_from_the_task_arn():
    assert IDENTITY.region == "us-east-1"
    assert TaskIdentity("c", "abc").region is None


def test_the_backend_needs_an_identity():
    with pytest.raises(ValueError, match="cluster and task ARN"):
        ApiBackend()


def test_client_timeouts_and_retries_are_bounded():
    from sidecar.backends.api import CLIENT_CONFIG  # noqa: PLC0415

    assert CLIENT_CONFIG.connect_timeout <= 5
    assert CLIENT_CONFIG.read_timeout <= 10
    assert CLIENT_CONFIG.retries == {"total_max_attempts": 2, "mode": "standard"}
