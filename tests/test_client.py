"""ecs_protection against a fake sidecar on port 0: busy() in every form, errors, unreachable.

Runs on every Python the client supports (see noxfile.py): stdlib fakes only.
"""

from __future__ import annotations

import asyncio
import logging
import threading

import pytest

import ecs_protection
from ecs_protection import (
    AsyncClient,
    Client,
    ProtectionUnavailableError,
    SidecarUnavailableError,
    TaskDrainingError,
    TooManyLeasesError,
    busy,
)
from ecs_protection import _protocol as protocol
from tests.client_support import NOWHERE
from tests.support import wait_until

# ---- the shared protocol -------------------------------------------------------------


def test_busy_request_carries_the_lease_ttl_and_wait():
    request = protocol.busy_request("job-1", 30.0, 2.5)
    assert (request.method, request.path) == ("POST", "/busy")
    assert request.body == {"lease": "job-1", "ttl_seconds": 30.0, "wait_seconds": 2.5}
    assert request.timeout > 2.5  # never gives up before the sidecar answers


def test_lease_ids_are_unique_and_valid():
    ids = {protocol.new_lease_id("worker") for _ in range(1000)}
    assert len(ids) == 1000
    assert all(i.startswith("worker-") and len(i) <= 128 for i in ids)


@pytest.mark.parametrize(
    ("code", "error"),
    [
        ("Draining", TaskDrainingError),
        ("TooManyLeases", TooManyLeasesError),
        ("ProtectionUnavailable", ProtectionUnavailableError),
    ],
)
def test_error_codes_map_to_exceptions(code, error):
    payload = f'{{"error": {{"code": "{code}", "message": "m"}}}}'.encode()
    with pytest.raises(error) as caught:
        protocol.parse_busy(503, payload, lease="j", require_protection=True)
    assert (caught.value.code, caught.value.message) == (code, "m")


def test_protection_unavailable_is_an_outcome_unless_required():
    payload = (
        b'{"error": {"code": "ProtectionUnavailable", "message": "slow"}, "lease": "j", '
        b'"protected": false, "leases": 1}'
    )
    lease = protocol.parse_busy(503, payload, lease="j", require_protection=False)
    assert (lease.lease, lease.protected, lease.reason, lease.leases) == ("j", False, "slow", 1)


def test_settings_from_the_environment():
    settings = protocol.Settings.from_environ(
        {
            "TASK_PROTECTION_URL": "http://side:1/",
            "TASK_PROTECTION_STRICT": "1",
            "TASK_PROTECTION_TOKEN": "tok",
        }
    )
    assert (settings.url, settings.strict, settings.token) == ("http://side:1", True, "tok")
    assert protocol.Settings.from_environ({}).url == "http://127.0.0.1:31680"
    assert protocol.Settings.from_environ({"TASK_PROTECTION_STRICT": "0"}).strict is False


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("TASK_PROTECTION_URL", "127.0.0.1:31680"),  # no scheme: was taken as unreachable
        ("TASK_PROTECTION_URL", "ftp://127.0.0.1:31680"),
        ("TASK_PROTECTION_URL", "http://"),
        ("TASK_PROTECTION_URL", "http://127.0.0.1:99999"),
        ("TASK_PROTECTION_STRICT", "2"),  # was read as false
        ("TASK_PROTECTION_TOKEN", "t\u00f6ken"),  # no HTTP header can carry it
    ],
)
def test_a_bad_setting_is_a_clear_error_naming_it(name, value):
    with pytest.raises(protocol.ConfigurationError, match=name) as error:
        protocol.Settings.from_environ({name: value})
    assert isinstance(error.value, ecs_protection.ProtectionError)
    assert isinstance(error.value, ValueError)


def test_a_bad_url_argument_is_refused_by_the_client():
    with pytest.raises(protocol.ConfigurationError, match="url"):
        Client("localhost:31680")


# ---- sync --------------------------------------------------------------------------------


def test_with_busy_takes_a_unique_lease_and_releases_it(fake, client):
    with busy(client=client) as first:
        assert first.protected
        assert fake.leases == {first.lease}
    with busy(client=client) as second:
        assert second.lease != first.lease
    assert fake.leases == set()
    assert [b["lease"] for b in fake.posts("/idle")] == [first.lease, second.lease]


def test_a_crash_inside_the_block_still_releases(fake, client):
    with pytest.raises(ZeroDivisionError), busy(client=client):
        1 / 0  # noqa: B018
    assert fake.leases == set()
    assert len(fake.posts("/idle")) == 1


def test_decorator_on_a_function_uses_a_lease_per_call(fake, client):
    @busy(client=client, lease_prefix="task")
    def work(x: int) -> int:
        assert len(fake.leases) == 1
        return x * 2

    assert work(2) == 4
    assert work(3) == 6
    leases = [b["lease"] for b in fake.posts("/busy")]
    assert len(set(leases)) == 2
    assert all(lease.startswith("task-") for lease in leases)
    assert work.__name__ == "work"


def test_concurrent_threads_ref_count(fake, client):
    """Eight threads in one decorated function: eight distinct leases held at once."""
    barrier = threading.Barrier(8)

    @busy(client=client)
    def job() -> None:
        barrier.wait(timeout=10)

    threads = [threading.Thread(target=job) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert fake.max_concurrent == 8
    assert fake.leases == set()


def test_ttl_heartbeats_refresh_the_lease_until_the_block_ends(fake, client):
    with busy(client=client, ttl=1.0) as lease:
        wait_until(lambda: len(fake.posts("/busy")) >= 3)
    count = len(fake.posts("/busy"))
    beats = fake.posts("/busy")[1:]
    assert all(b == {"lease": lease.lease, "ttl_seconds": 1.0, "wait_seconds": 0} for b in beats)
    assert fake.leases == set()
    assert not [t for t in threading.enumerate() if t.name.startswith("ecs-protection-heart")]
    assert len(fake.posts("/busy")) == count  # no heartbeat after the release


def test_draining_refuses_the_job(fake, client):
    fake.draining = True
    ran = False
    with pytest.raises(TaskDrainingError), busy(client=client):
        ran = True
    assert not ran
    assert client.draining is True


def test_protection_unavailable_runs_unprotected_by_default(fake, client, caplog):
    fake.busy_error = (503, "ProtectionUnavailable")
    with caplog.at_level(logging.WARNING, "ecs_protection"), busy(client=client) as lease:
        assert lease.protected is False
    assert "without confirmed task protection" in caplog.text
    assert fake.leases == set()


def test_require_protection_raises_and_gives_the_lease_back(fake, client):
    fake.busy_error = (503, "ProtectionUnavailable")
    with pytest.raises(ProtectionUnavailableError), busy(client=client, require_protection=True):
        pytest.fail("the body must not run")
    assert fake.leases == set()


def test_too_many_leases_raises(fake, client):
    fake.busy_error = (429, "TooManyLeases")
    with pytest.raises(TooManyLeasesError), busy(client=client):
        pytest.fail("the body must not run")


def test_unreachable_sidecar_warns_once_and_carries_on(caplog):
    client = Client(NOWHERE, strict=False)
    ran = 0
    with caplog.at_level(logging.WARNING, "ecs_protection"):
        for _ in range(3):
            with busy(client=client) as lease:
                ran += 1
                assert lease.protected is False
    assert ran == 3
    assert caplog.text.count("unreachable") == 1


def test_strict_mode_raises_when_unreachable():
    with (
        pytest.raises(SidecarUnavailableError, match="unreachable"),
        busy(client=Client(NOWHERE, strict=True)),
    ):
        pytest.fail("the body must not run")


def test_token_is_sent(fake):
    with Client(fake.url, token="tok-123") as c, busy(client=c):
        pass
    assert {s.authorization for s in fake.seen} == {"Bearer tok-123"}


def test_wait_for_drain(fake, client):
    assert client.wait_for_drain(timeout=0.05, poll_seconds=0.01) is False
    threading.Timer(0.1, lambda: setattr(fake, "draining", True)).start()
    assert client.wait_for_drain(timeout=10, poll_seconds=0.02) is True


def test_state(fake, client):
    with busy(client=client):
        state = client.state()
        assert state is not None
        assert (state.busy, state.leases, state.draining) == (True, 1, False)


# ---- async -------------------------------------------------------------------------------


async def test_async_with_busy_releases_even_on_error(fake):
    async with AsyncClient(fake.url) as client:
        async with busy(async_client=client) as lease:
            assert fake.leases == {lease.lease}
        with pytest.raises(KeyError):
            async with busy(async_client=client):
                raise KeyError("boom")
    assert fake.leases == set()
    assert len(fake.posts("/idle")) == 2


async def test_async_decorator_and_concurrent_tasks_ref_count(fake):
    async with AsyncClient(fake.url) as client:
        gate = asyncio.Event()

        @busy(async_client=client)
        async def job(n: int) -> int:
            await gate.wait()
            return n

        tasks = [asyncio.create_task(job(n)) for n in range(5)]
        await asyncio.to_thread(wait_until, lambda: len(fake.leases) == 5)
        gate.set()
        assert await asyncio.gather(*tasks) == [0, 1, 2, 3, 4]
    assert fake.max_concurrent == 5
    assert fake.leases == set()


async def test_async_busy_without_a_client_uses_the_environment(fake, monkeypatch):
    monkeypatch.setenv("TASK_PROTECTION_URL", fake.url)
    async with busy() as lease:
        assert lease.protected
    assert fake.leases == set()


async def test_async_heartbeat_stops_before_the_release(fake):
    async with AsyncClient(fake.url) as client:
        async with busy(async_client=client, ttl=1.0):
            await asyncio.to_thread(wait_until, lambda: len(fake.posts("/busy")) >= 3)
        count = len(fake.posts("/busy"))
        # No heartbeat task is left to post again after the release.
        assert not [t for t in asyncio.all_tasks() if t.get_name().startswith("heartbeat-")]
        assert len(fake.posts("/busy")) == count
    assert fake.leases == set()


async def test_async_draining_and_wait_for_drain(fake):
    async with AsyncClient(fake.url) as client:
        assert await client.wait_for_drain(timeout=0.05, poll_seconds=0.01) is False
        fake.draining = True
        assert await client.draining() is True
        assert await client.wait_for_drain(timeout=60) is True
        with pytest.raises(TaskDrainingError):
            async with busy(async_client=client):
                pytest.fail("the body must not run")


async def test_a_cancelled_wait_for_drain_stays_cancelled_when_its_answer_comes_too(fake):
    """The app's shutdown cancels the wait in the very step its answer arrives.

    asyncio.wait_for (before Python 3.12) polled in a task of its own and, finding it
    done, returned its answer: the cancellation was lost, and the app's shutdown waited
    on a task that went on as if nothing had asked it to stop.
    """
    fake.draining = True
    waiting: list[asyncio.Task[bool]] = []

    class CancelledWithTheAnswer(AsyncClient):
        async def draining(self) -> bool:
            answer = await super().draining()
            waiting[0].cancel()
            return answer

    async with CancelledWithTheAnswer(fake.url) as client:
        waiting.append(asyncio.create_task(client.wait_for_drain(timeout=60)))
        with pytest.raises(asyncio.CancelledError):
            await waiting[0]
        assert waiting[0].cancelled()


async def test_async_unreachable_carries_on_and_strict_raises():
    async with AsyncClient(NOWHERE, strict=False) as client, busy(async_client=client) as lease:
        assert lease.protected is False
    async with AsyncClient(NOWHERE, strict=True) as client:
        with pytest.raises(SidecarUnavailableError):
            async with busy(async_client=client):
                pytest.fail("the body must not run")


async def test_async_busy_warns_once_not_once_per_job(caplog, monkeypatch):
    """Each async busy() makes its own client; the warning is still given once."""
    monkeypatch.setenv("TASK_PROTECTION_URL", NOWHERE)
    monkeypatch.setattr(protocol, "_warned_urls", set())  # as in a fresh process
    for _ in range(3):
        async with busy():
            pass
    warnings = [r for r in caplog.records if "unreachable" in r.getMessage()]
    assert len(warnings) == 1


def test_state_counts_every_lease_not_only_those_listed(fake):
    fake.leases.update(f"job-{i}" for i in range(150))
    with Client(fake.url) as c:
        state = c.state()
    assert state is not None
    assert state.leases == 150
