"""The public lease handle: Client.hold(), AsyncClient.hold(), ecs_protection.hold()."""

from __future__ import annotations

import asyncio
import logging
import threading

import pytest

import ecs_protection
from ecs_protection import (
    AsyncClient,
    AsyncHold,
    Client,
    Hold,
    TaskDrainingError,
    _busy,
    busy,
)
from tests.client_support import FakeSidecar
from tests.support import wait_until


def test_hold_takes_a_lease_until_release(fake, client):
    hold = client.hold(lease_prefix="celery")
    assert isinstance(hold, Hold)
    assert hold.lease.protected
    assert hold.lease.lease.startswith("celery-")
    assert fake.leases == {hold.lease.lease}
    hold.release()
    assert hold.released
    assert fake.leases == set()


def test_release_is_idempotent_and_thread_safe(fake, client):
    hold = client.hold()
    barrier = threading.Barrier(8)

    def release() -> None:
        barrier.wait(10)
        hold.release()

    threads = [threading.Thread(target=release) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    hold.release()
    assert len(fake.posts("/idle")) == 1


def test_hold_is_a_context_manager(fake, client):
    with client.hold() as hold:
        assert fake.leases == {hold.lease.lease}
    assert fake.leases == set()


def test_hold_heartbeats_stop_before_the_release(fake, client):
    hold = client.hold(ttl=1.0)
    wait_until(lambda: len(fake.posts("/busy")) >= 3)
    hold.release()
    count = len(fake.posts("/busy"))
    assert not [t for t in threading.enumerate() if t.name.startswith("ecs-protection-heart")]
    assert fake.leases == set()
    assert len(fake.posts("/busy")) == count  # no heartbeat after the release


def test_hold_refuses_before_any_lease_while_draining(fake, client):
    fake.draining = True
    with pytest.raises(TaskDrainingError):
        client.hold()
    assert fake.leases == set()
    assert fake.posts("/idle") == []


def test_release_never_raises_on_a_sidecar_problem(caplog):
    with FakeSidecar() as fake:
        client = Client(fake.url, strict=True)
        hold = client.hold(ttl=60)
    # The sidecar is gone now: the release warns and returns.
    with caplog.at_level(logging.WARNING, "ecs_protection"):
        hold.release()
    assert "could not release" in caplog.text


@pytest.mark.parametrize(("ttl", "wait"), [(0, None), (-1, None), (float("nan"), None), (None, -1)])
def test_bad_options_are_refused_before_any_request(fake, client, ttl, wait):
    with pytest.raises(ValueError, match="seconds"):
        client.hold(ttl=ttl, wait_seconds=wait)
    with pytest.raises(ValueError, match="seconds"):
        busy(client=client, ttl=ttl, wait_seconds=wait)
    assert fake.seen == []


def test_module_level_hold_uses_the_default_client(fake, monkeypatch):
    monkeypatch.setenv("TASK_PROTECTION_URL", fake.url)
    monkeypatch.setattr(_busy, "_default_client", None)
    hold = ecs_protection.hold(ttl=30)
    assert fake.leases == {hold.lease.lease}
    assert ecs_protection.default_client().settings.url == fake.url
    hold.release()
    assert fake.leases == set()


def test_drain_enters_draining_and_new_holds_are_refused(fake, client):
    with client.hold():
        assert client.drain() == 1
        assert client.drain() == 1  # idempotent
        assert client.draining
        with pytest.raises(TaskDrainingError):
            client.hold()
    assert fake.leases == set()


def test_drain_sends_the_token(fake):
    fake.token = "t" * 16
    with Client(fake.url, token="t" * 16) as c:
        assert c.drain() == 0
    assert fake.seen[-1].authorization == "Bearer " + "t" * 16


async def test_async_hold_release_and_context_manager(fake):
    async with AsyncClient(fake.url) as client:
        hold = await client.hold(ttl=1.0)
        assert isinstance(hold, AsyncHold)
        assert fake.leases == {hold.lease.lease}
        await asyncio.to_thread(wait_until, lambda: len(fake.posts("/busy")) >= 3)
        await hold.release()
        await hold.release()
        count = len(fake.posts("/busy"))
        async with await client.hold() as second:
            assert fake.leases == {second.lease.lease}
        assert await client.drain() == 0
    assert fake.leases == set()
    assert len(fake.posts("/idle")) == 2
    assert len(fake.posts("/busy")) == count + 1
