"""The moto extension for task protection: ECS's semantics, and the guard."""

from __future__ import annotations

import pytest
from botocore.exceptions import ClientError
from moto import mock_aws

from tests.aws import Cluster, ecs_client, use_fake_credentials
from tests.fakes import moto_ecs


@pytest.fixture
def cluster(monkeypatch):
    use_fake_credentials()
    moto_ecs.install()
    now = [1_800_000_000.0]
    monkeypatch.setattr(moto_ecs, "clock", lambda: now[0])
    with mock_aws():
        c = Cluster(ecs_client())
        c.now = now  # type: ignore[attr-defined]
        yield c


def test_enable_expire_and_disable(cluster):
    task = cluster.run_task()
    answer = cluster.ecs.update_task_protection(
        cluster=cluster.name, tasks=[task], protectionEnabled=True, expiresInMinutes=5
    )
    entry = answer["protectedTasks"][0]
    assert (entry["taskArn"], entry["protectionEnabled"], answer["failures"]) == (task, True, [])
    assert entry["expirationDate"].timestamp() == 1_800_000_300.0
    cluster.now[0] += 299
    assert cluster.protected(task)
    cluster.now[0] += 2
    assert not cluster.protected(task)
    cluster.ecs.update_task_protection(cluster=cluster.name, tasks=[task], protectionEnabled=True)
    got = cluster.ecs.get_task_protection(cluster=cluster.name, tasks=[task])
    assert got["protectedTasks"][0]["expirationDate"].timestamp() == cluster.now[0] + 120 * 60
    cluster.ecs.update_task_protection(cluster=cluster.name, tasks=[task], protectionEnabled=False)
    assert not cluster.protected(task)


def test_each_enable_resets_the_expiry(cluster):
    task = cluster.run_task()
    for _ in range(2):
        answer = cluster.ecs.update_task_protection(
            cluster=cluster.name, tasks=[task], protectionEnabled=True, expiresInMinutes=1
        )
        cluster.now[0] += 30
    assert answer["protectedTasks"][0]["expirationDate"].timestamp() == cluster.now[0] + 30


@pytest.mark.parametrize("minutes", [0, 2881])
def test_minutes_out_of_range_are_rejected(cluster, minutes):
    task = cluster.run_task()
    with pytest.raises(ClientError) as caught:
        cluster.ecs.update_task_protection(
            cluster=cluster.name, tasks=[task], protectionEnabled=True, expiresInMinutes=minutes
        )
    assert caught.value.response["Error"]["Code"] == "InvalidParameterException"


def test_task_count_limits(cluster):
    task = cluster.run_task()
    with pytest.raises(ClientError):
        cluster.ecs.update_task_protection(
            cluster=cluster.name, tasks=[task] * 11, protectionEnabled=True
        )
    cluster.ecs.update_task_protection(
        cluster=cluster.name, tasks=[task] * 10, protectionEnabled=True
    )
    assert (
        len(
            cluster.ecs.get_task_protection(cluster=cluster.name, tasks=[task] * 100)[
                "protectedTasks"
            ]
        )
        == 100
    )
    with pytest.raises(ClientError):
        cluster.ecs.get_task_protection(cluster=cluster.name, tasks=[task] * 101)


def test_standalone_and_unknown_tasks_are_failures(cluster):
    standalone = cluster.run_task(service=None)
    answer = cluster.ecs.update_task_protection(
        cluster=cluster.name, tasks=[standalone, "no-such-task"], protectionEnabled=True
    )
    assert answer["protectedTasks"] == []
    assert [(f["arn"], f["reason"]) for f in answer["failures"]] == [
        (standalone, "TASK_NOT_VALID"),
        ("no-such-task", "MISSING"),
    ]


def test_tasks_can_be_named_by_id(cluster):
    task = cluster.run_task()
    cluster.ecs.update_task_protection(
        cluster=cluster.name, tasks=[task.rsplit("/", 1)[-1]], protectionEnabled=True
    )
    assert cluster.protected(task)


def test_unknown_cluster_is_an_error(cluster):
    with pytest.raises(ClientError) as caught:
        cluster.ecs.get_task_protection(cluster="nope", tasks=["x"])
    assert caught.value.response["Error"]["Code"] == "ClusterNotFoundException"


def test_the_guard_refuses_to_hide_a_real_implementation():
    class ImplementedUpstream:
        def update_task_protection(self) -> None: ...

    with pytest.raises(moto_ecs.ShimConflictError, match="moto now implements"):
        moto_ecs.install(ImplementedUpstream)


def test_installing_twice_is_fine():
    moto_ecs.install()
    moto_ecs.install()
