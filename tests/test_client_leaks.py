"""No lease is leaked and no stray exception escapes, whatever the sidecar answers.

- busy() interrupted or cancelled while it waits for protection releases the lease the
  sidecar already created (asyncio.wait_for, task.cancel(), KeyboardInterrupt, an
  answer that is not the API's);
- every answer that is not the API's is a ProtectionError (InvalidAnswerError), and a
  heartbeat survives any error;
- @busy() on a generator or an async generator holds the lease while it runs.
"""

from __future__ import annotations

import asyncio
import json
import threading
from typing import TYPE_CHECKING

import pytest
import requests

from ecs_protection import (
    AsyncClient,
    Client,
    InvalidAnswerError,
    ProtectionError,
    busy,
)
from tests.support import wait_until

if TYPE_CHECKING:
    from tests.client_support import FakeSidecar


def gated(fake: FakeSidecar) -> threading.Event:
    """/busy answers wait for the returned gate; the lease exists meanwhile."""
    fake.gate = threading.Event()
    return fake.gate


# ---- interrupted or cancelled while waiting for protection -------------------------------


@pytest.mark.parametrize("how", ["cancel", "wait_for"])
async def test_a_cancelled_async_busy_releases_the_lease_it_was_waiting_for(fake, how):
    gate = gated(fake)
    ran = []

    async def handler() -> None:
        async with busy(async_client=client):
            ran.append(True)

    async with AsyncClient(fake.url) as client:
        if how == "cancel":
            task = asyncio.ensure_future(handler())
            await asyncio.to_thread(wait_until, lambda: fake.leases)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
        else:
            with pytest.raises(asyncio.TimeoutError):
                await asyncio.wait_for(handler(), timeout=0.2)
        await asyncio.to_thread(wait_until, lambda: fake.posts("/idle"), 5)
        gate.set()
    assert ran == []
    assert fake.leases == set()


async def test_a_cancelled_async_busy_without_a_client_releases_too(fake, monkeypatch):
    monkeypatch.setenv("TASK_PROTECTION_URL", fake.url)
    gated(fake)

    async def handler() -> None:
        async with busy():
            pass

    with pytest.raises(asyncio.TimeoutError):
        await asyncio.wait_for(handler(), timeout=0.2)
    await asyncio.to_thread(wait_until, lambda: fake.posts("/idle"), 5)
    assert fake.leases == set()


class InterruptedSession(requests.Session):
    """Ctrl-C lands just after the sidecar answered /busy."""

    def request(self, method, url, *args, **kwargs):  # type: ignore[no-untyped-def]
        response = super().request(method, url, *args, **kwargs)
        if url.endswith("/busy"):
            raise KeyboardInterrupt
        return response


def test_an_interrupted_busy_releases_its_lease(fake):
    client = Client(fake.url, session=InterruptedSession())
    with pytest.raises(KeyboardInterrupt), busy(client=client):
        pytest.fail("the body must not run")
    assert fake.leases == set()
    assert len(fake.posts("/idle")) == 1


def test_an_invalid_answer_to_busy_releases_the_lease(fake, client):
    fake.script("/busy", (200, b"{}"))
    with pytest.raises(InvalidAnswerError), busy(client=client):
        pytest.fail("the body must not run")
    assert fake.leases == set()


def test_a_clear_refusal_sends_no_release(fake, client):
    fake.busy_error = (429, "TooManyLeases")
    with pytest.raises(ProtectionError), busy(client=client):
        pytest.fail("the body must not run")
    assert fake.posts("/idle") == []


# ---- answers that are not the API's --------------------------------------------------------


def _same_lease(**fields: object):
    def answer(body: dict) -> tuple[int, bytes]:
        return 200, json.dumps({"lease": body["lease"], "protected": True, **fields}).encode()

    return answer


GARBAGE_BUSY = {
    "not json": (200, b"<html>proxy error</html>"),
    "a list": (200, b"[1, 2]"),
    "empty object": (200, b"{}"),
    "lease not a string": (200, b'{"lease": 5, "protected": true}'),
    "another request's answer": (200, b'{"lease": "job-other", "protected": true, "leases": 1}'),
    "leases not a number": _same_lease(leases="many"),
    "leases infinite": _same_lease(leases=float("inf")),
    "leases a float": _same_lease(leases=1.5),
    "expires_at not a string": _same_lease(expires_at=7),
    "deeply nested": (200, b"[" * 100_000 + b"]" * 100_000),
    "not utf-8": (200, b'{"lease": "\xff"}'),
    "503 about another lease": (
        503,
        b'{"error": {"code": "ProtectionUnavailable", "message": "m"}, "lease": "x"}',
    ),
    "503 leases garbage": lambda body: (
        503,
        json.dumps(
            {
                "error": {"code": "ProtectionUnavailable", "message": "m"},
                "lease": body["lease"],
                "leases": [],
            }
        ).encode(),
    ),
}


@pytest.mark.parametrize("answer", GARBAGE_BUSY.values(), ids=GARBAGE_BUSY.keys())
def test_garbage_from_busy_is_a_protection_error(fake, client, answer):
    fake.script("/busy", answer)
    with pytest.raises(ProtectionError), busy(client=client):
        pytest.fail("the body must not run")
    assert fake.leases == set()


@pytest.mark.parametrize("answer", GARBAGE_BUSY.values(), ids=GARBAGE_BUSY.keys())
async def test_garbage_from_busy_is_a_protection_error_async(fake, answer):
    fake.script("/busy", answer)
    async with AsyncClient(fake.url) as client:
        with pytest.raises(ProtectionError):
            async with busy(async_client=client):
                pytest.fail("the body must not run")
    assert fake.leases == set()


GARBAGE_STATE = {
    "leases a number": (200, b'{"busy": true, "draining": false, "leases": 5, "protection": {}}'),
    "protection a list": (
        200,
        b'{"busy": true, "draining": false, "leases": [], "protection": []}',
    ),
    "missing fields": (200, b'{"leases": []}'),
    "not json": (200, b"nope"),
}


@pytest.mark.parametrize("answer", GARBAGE_STATE.values(), ids=GARBAGE_STATE.keys())
def test_garbage_from_state_is_a_protection_error(fake, client, answer):
    fake.script("/state", answer)
    with pytest.raises(ProtectionError):
        client.state()


@pytest.mark.parametrize("answer", GARBAGE_STATE.values(), ids=GARBAGE_STATE.keys())
async def test_garbage_from_state_is_a_protection_error_async(fake, answer):
    fake.script("/state", answer)
    async with AsyncClient(fake.url) as client:
        with pytest.raises(ProtectionError):
            await client.state()


def test_garbage_from_idle_does_not_escape_the_block(fake, client):
    """The job's outcome stands: a bad answer to the release is logged, not raised."""
    with busy(client=client):
        fake.script("/idle", (200, b'{"released": "maybe"}'))
    assert fake.posts("/idle")


def test_a_heartbeat_survives_answers_that_are_not_the_api(fake, client):
    with busy(client=client, ttl=1.0):
        for _ in range(2):
            fake.script("/busy", (200, b"{}"))
        fake.script("/busy", (200, b"[" * 100_000))
        wait_until(lambda: len(fake.posts("/busy")) >= 6)  # beats after the bad ones
    assert fake.leases == set()


async def test_an_async_heartbeat_survives_answers_that_are_not_the_api(fake):
    async with AsyncClient(fake.url) as client, busy(async_client=client, ttl=1.0):
        for _ in range(2):
            fake.script("/busy", (200, b"{}"))
        await asyncio.to_thread(wait_until, lambda: len(fake.posts("/busy")) >= 5)
    assert fake.leases == set()


# ---- generators ------------------------------------------------------------------------------


def test_a_decorated_generator_holds_the_lease_while_it_runs(fake, client):
    held = []

    @busy(client=client)
    def produce(n: int):
        for i in range(n):
            held.append(len(fake.leases))
            received = yield i
            if received is not None:
                held.append(received)
        return "done"

    assert list(produce(3)) == [0, 1, 2]
    assert held == [1, 1, 1]
    assert fake.leases == set()
    gen = produce(2)
    assert next(gen) == 0
    assert gen.send("x") == 1
    assert held[-2:] == ["x", 1]
    gen.close()  # closed early: released as well
    assert fake.leases == set()
    assert len(fake.posts("/busy")) == 2


def test_a_generator_that_raises_releases_and_throw_passes_through(fake, client):
    @busy(client=client)
    def produce():
        try:
            yield 1
        except KeyError:
            yield "caught"

    gen = produce()
    assert next(gen) == 1
    assert gen.throw(KeyError("k")) == "caught"
    assert len(fake.leases) == 1
    with pytest.raises(StopIteration):
        next(gen)
    assert fake.leases == set()


async def test_a_decorated_async_generator_holds_the_lease_while_it_runs(fake):
    held = []
    async with AsyncClient(fake.url) as client:

        @busy(async_client=client)
        async def produce(n: int):
            for i in range(n):
                held.append(len(fake.leases))
                received = yield i
                if received is not None:
                    held.append(received)

        assert [i async for i in produce(3)] == [0, 1, 2]
        assert held == [1, 1, 1]
        assert fake.leases == set()

        gen = produce(3)
        assert await gen.__anext__() == 0
        assert await gen.asend("x") == 1
        assert held[-2:] == ["x", 1]
        await gen.aclose()
        assert fake.leases == set()

        @busy(async_client=client)
        async def catcher():
            try:
                yield 1
            except KeyError:
                yield "caught"

        agen = catcher()
        assert await agen.__anext__() == 1
        assert await agen.athrow(KeyError("k")) == "caught"
        with pytest.raises(StopAsyncIteration):
            await agen.__anext__()
    assert fake.leases == set()
