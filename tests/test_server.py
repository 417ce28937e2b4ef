"""The HTTP server itself, on a real socket: what aiohttp answers on its own (malformed
requests) keeps the API's JSON shape without a traceback in the log, and a client that
never finishes its headers is cut off."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
from typing import TYPE_CHECKING

import pytest
from aiohttp import web

from sidecar.backends.local import LocalBackend
from sidecar.clock import SystemClock
from sidecar.connections import Bounds
from sidecar.machine import Policy
from sidecar.server import listen, make_runner
from sidecar.service import ProtectionService
from sidecar.web import Api, build_app
from tests.fakes.clock import FakeClock

if TYPE_CHECKING:
    from collections.abc import Callable

    from aiohttp.web_protocol import RequestHandler

    from sidecar.backends.base import Protection


@pytest.fixture
async def served():
    service = ProtectionService(Policy(), LocalBackend(FakeClock()), SystemClock(), max_leases=10)
    api = Api(service, "0123456789abcdef-token")
    runner = make_runner(build_app(api), header_timeout=0.5)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    yield runner.addresses[0][1]
    await runner.cleanup()


async def exchange(port: int, request: bytes) -> tuple[int, dict]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(request)
    await writer.drain()
    raw = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    status = int(head.split(b" ")[1])
    assert b"application/json" in head
    return status, json.loads(body)


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"POST /busy HTTP/1.1\r\nHost: x\r\nBad Header: y\r\nContent-Length: 0\r\n\r\n",
        b"POST /busy HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n",
        b"POST /busy HTTP/1.1\r\nHost: x\r\nX: " + b"a" * 9000 + b"\r\n\r\n",
        b"GARBAGE\r\n\r\n",
    ],
)
async def test_malformed_requests_get_the_json_error_body_and_no_traceback(
    served, caplog, request_bytes
):
    caplog.set_level(logging.DEBUG)
    status, body = await exchange(served, request_bytes)
    assert 400 <= status < 500
    assert set(body["error"]) == {"code", "message"}
    assert all(record.exc_info is None for record in caplog.records)
    assert not any("Traceback" in record.getMessage() for record in caplog.records)


@pytest.mark.parametrize("path", ["/busy", "/state"])
async def test_an_expectation_the_server_cannot_meet_is_a_json_417(served, path):
    """Every non-2xx answer has the API's error body, aiohttp's own 417 included."""
    method = "POST" if path == "/busy" else "GET"
    request = f"{method} {path} HTTP/1.1\r\nHost: x\r\nExpect: 999-nope\r\n"
    status, body = await exchange(served, (request + "Connection: close\r\n\r\n").encode())
    assert status == 417
    assert body["error"]["code"] == "ExpectationFailed"
    assert "999-nope" in body["error"]["message"]


async def test_expect_100_continue_still_gets_its_interim_answer(served):
    reader, writer = await asyncio.open_connection("127.0.0.1", served)
    writer.write(
        b"POST /busy HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n"
        b"Content-Type: application/json\r\nContent-Length: 2\r\n\r\n"
    )
    await writer.drain()
    assert await asyncio.wait_for(reader.readline(), 10) == b"HTTP/1.1 100 Continue\r\n"
    writer.close()


async def test_a_client_that_never_finishes_its_headers_is_cut_off(served):
    reader, writer = await asyncio.open_connection("127.0.0.1", served)
    writer.write(b"POST /busy HTTP/1.1\r\nHost: x\r\n")  # and nothing more
    await writer.drain()
    closed = await asyncio.wait_for(reader.read(), 10)  # EOF within the header timeout
    assert closed == b""
    writer.close()


class HeldBackend(LocalBackend):
    """Protection that answers only once `release` is set: a /busy waits meanwhile."""

    def __init__(self) -> None:
        super().__init__(FakeClock())
        self.release = asyncio.Event()

    async def get(self) -> Protection:
        await self.release.wait()
        return await super().get()

    async def set(self, enabled: bool, expires_minutes: int) -> Protection:
        await self.release.wait()
        return await super().set(enabled, expires_minutes)


async def lease_taken(service: ProtectionService) -> None:
    while not service.lease_count:  # noqa: ASYNC110  (no event marks a lease taken)
        await asyncio.sleep(0.01)


async def test_past_the_bound_for_one_address_its_oldest_idle_connection_goes_never_a_request():
    backend = HeldBackend()
    service = ProtectionService(Policy(), backend, SystemClock(), max_leases=10)
    runner = make_runner(
        build_app(Api(service, None)), bounds=Bounds(total=10, per_peer=2, backlog=4)
    )
    await runner.setup()
    await listen(runner, "127.0.0.1", 0)
    port = runner.addresses[0][1]
    run = asyncio.create_task(service.run())
    try:
        waiting_r, waiting_w = await asyncio.open_connection("127.0.0.1", port)
        body = b'{"lease": "job", "wait_seconds": 30}'
        waiting_w.write(
            b"POST /busy HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
        )
        await asyncio.wait_for(lease_taken(service), 10)  # the /busy is being handled
        silent_r, silent_w = await asyncio.open_connection("127.0.0.1", port)
        _, third_w = await asyncio.open_connection("127.0.0.1", port)  # the third: one too many
        assert await asyncio.wait_for(silent_r.read(), 10) == b""  # the idle one was closed
        backend.release.set()
        answer = await asyncio.wait_for(waiting_r.readuntil(b"\r\n\r\n"), 10)
        assert answer.startswith(b"HTTP/1.1 200")  # the waiting request was never cut
        for writer in (waiting_w, silent_w, third_w):
            writer.close()
    finally:
        run.cancel()
        await runner.cleanup()


async def test_pipelined_requests_get_the_first_answer_then_the_connection_closes(served):
    """No client of the API pipelines; a neighbour that does would keep its connections,
    and the event loop, busy for good."""
    reader, writer = await asyncio.open_connection("127.0.0.1", served)
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n" * 3)
    await writer.drain()
    raw = await asyncio.wait_for(reader.read(), 10)  # up to the close
    writer.close()
    assert raw.startswith(b"HTTP/1.1 200")
    assert raw.count(b"HTTP/1.1 ") == 1


async def test_a_kept_alive_connection_answers_one_request_after_another(served):
    reader, writer = await asyncio.open_connection("127.0.0.1", served)
    for _ in range(3):
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        await writer.drain()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        assert head.startswith(b"HTTP/1.1 200")
        length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
        await reader.readexactly(length)
    writer.close()


async def until(condition: Callable[[], bool]) -> None:
    """Until `condition()` holds, checked on each turn of the loop (at most 30 s)."""
    async with asyncio.timeout(30):
        while not condition():  # noqa: ASYNC110  (no event marks these states)
            await asyncio.sleep(0.005)


async def test_a_peer_that_never_reads_its_answers_is_shed_first_and_its_descriptor_freed():
    """A neighbour asks for /openapi.json (20 KB) again and again, one request after the
    other's answer, and never reads: once the socket's buffers are full the answer's
    write waits for good. That is no request being handled. It used to be: never shed,
    so such connections held an address's every place and the app's were shed; and a
    plain close would have kept the descriptor, waiting to send what nobody reads."""
    service = ProtectionService(Policy(), LocalBackend(FakeClock()), SystemClock(), max_leases=10)
    runner = make_runner(build_app(Api(service, None)), bounds=Bounds(2, per_peer=2, backlog=4))
    await runner.setup()
    await listen(runner, "127.0.0.1", 0)
    port = runner.addresses[0][1]
    server = runner.server
    assert server is not None
    stuck = socket.socket()
    stuck.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1024)
    stuck.setblocking(False)
    await asyncio.get_running_loop().sock_connect(stuck, ("127.0.0.1", port))

    def handler() -> RequestHandler | None:
        return next(
            (
                h
                for h in server.connections
                if h.transport is not None
                and h.transport.get_extra_info("peername")[1] == stuck.getsockname()[1]
            ),
            None,
        )

    try:
        # One request at a time: the next once the handler waits for it (not pipelined),
        # until the answers' write waits for the peer, or the peer can send no more.
        await until(lambda: handler() is not None)
        with contextlib.suppress(BlockingIOError):
            while not handler().writing_paused:
                begun = handler().connection.requests
                stuck.send(b"GET /openapi.json HTTP/1.1\r\nHost: x\r\n\r\n")
                await until(
                    lambda begun=begun: (
                        handler().connection.requests > begun
                        and (handler().writing_paused or handler()._waiter is not None)
                    )
                )
        await until(lambda: handler().writing_paused)
        stuck_handler = handler()
        _, fresh = await asyncio.open_connection("127.0.0.1", port)
        fresh.write(b"POST /busy HTTP/1.1\r\nHost: x\r\n")  # its headers are still to come
        _, third = await asyncio.open_connection("127.0.0.1", port)  # one past the bound
        await until(lambda: stuck_handler not in server.connections)  # shed, its socket closed
        assert len(server.connections) == 2  # the other two stay
        for writer in (fresh, third):
            writer.close()
    finally:
        stuck.close()
        await runner.cleanup()
