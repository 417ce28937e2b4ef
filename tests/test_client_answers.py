"""Answers that break HTTP: a slow drip is bounded as a whole, a cut or garbled answer is
a protocol error, and only no answer at all counts as "unreachable".

Against RawServer (tests/client_support.py): a real listener on port 0 that writes the
bytes each test chooses.
"""

from __future__ import annotations

import socket
import struct
import time
from typing import TYPE_CHECKING

import pytest

from ecs_protection import AsyncClient, Client, InvalidAnswerError, SidecarUnavailableError, busy
from tests.client_support import RawServer, http_answer

if TYPE_CHECKING:
    import threading

WAIT = 1.0
# Far below the 60 s the drip lasts, far above wait + margin (6 s): never flakes.
BOUND = 20.0


def drip(conn: socket.socket, path: str, stop: threading.Event) -> None:
    """/busy: a protected answer, its first 30 bytes one every 2 s (a minute); /idle: at once."""
    if path != "/busy":
        conn.sendall(http_answer(200, {"released": True, "leases": 0}))
        return
    answer = http_answer(200, {"lease": "x", "protected": True, "leases": 1})
    for index in range(30):
        if stop.wait(2):
            return
        conn.sendall(answer[index : index + 1])
    conn.sendall(answer[30:])


def drip_body(conn: socket.socket, path: str, stop: threading.Event) -> None:
    """The head at once, then the body one byte every 2 s (a minute and more)."""
    if path != "/busy":
        conn.sendall(http_answer(200, {"released": True, "leases": 0}))
        return
    answer = http_answer(200, {"lease": "x", "protected": True, "leases": 1})
    head, _, body = answer.partition(b"\r\n\r\n")
    conn.sendall(head + b"\r\n\r\n")
    for index in range(len(body)):
        if stop.wait(2):
            return
        conn.sendall(body[index : index + 1])


def cut(conn: socket.socket, path: str, stop: threading.Event) -> None:
    """Headers that promise 200 bytes, then a few, then the connection closes."""
    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n")
    conn.sendall(b'Content-Length: 200\r\n\r\n{"lease": "job-')


def garbage(conn: socket.socket, path: str, stop: threading.Event) -> None:
    """Something listens, and it does not speak HTTP."""
    conn.sendall(b"SSH-2.0-OpenSSH_9.6\r\n\r\n")


def silent(conn: socket.socket, path: str, stop: threading.Event) -> None:
    """Takes the request and closes without a byte: no answer, as from a restart."""


# A valid answer with 4 MiB of padding: a wrong URL (a file server, a proxy's error page)
# or a broken sidecar. The sidecar's largest answer, /state, is about 10 KB.
PADDED = http_answer(200, {"lease": "x", "protected": True, "leases": 1, "pad": "x" * (4 << 20)})


def huge(conn: socket.socket, path: str, stop: threading.Event) -> None:
    """A protected answer for /busy that is 4 MiB long, with its length declared."""
    if path != "/busy":
        conn.sendall(http_answer(200, {"released": True, "leases": 0}))
        return
    conn.sendall(PADDED)


def endless(conn: socket.socket, path: str, stop: threading.Event) -> None:
    """A chunked answer whose body never ends: blanks (valid JSON space) until stopped."""
    if path != "/busy":
        conn.sendall(http_answer(200, {"released": True, "leases": 0}))
        return
    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n")
    conn.sendall(b"Transfer-Encoding: chunked\r\n\r\n")
    chunk = b"%x\r\n%s\r\n" % (1 << 16, b" " * (1 << 16))
    try:
        while not stop.is_set():
            conn.sendall(chunk)
    except OSError:  # the client hung up: what a bounded reader does
        return


# ---- an overall deadline ---------------------------------------------------------------


@pytest.mark.parametrize("respond", [drip, drip_body])
def test_a_slow_drip_is_bounded_as_a_whole(respond):
    """Each byte comes within the read timeout; the call as a whole still ends in time."""
    with RawServer(respond) as server, Client(server.url) as client:
        started = time.monotonic()
        with busy(client=client, wait_seconds=WAIT) as lease:
            elapsed = time.monotonic() - started
            assert lease.protected is False  # no answer in time: unreachable, lenient
    assert elapsed < BOUND


def test_a_slow_drip_stops_a_required_block_in_time():
    with RawServer(drip) as server, Client(server.url) as client:
        started = time.monotonic()
        with (
            pytest.raises(SidecarUnavailableError),
            busy(client=client, wait_seconds=WAIT, require_protection=True),
        ):
            pytest.fail("the body must not run")
        assert time.monotonic() - started < BOUND


async def test_an_async_slow_drip_is_bounded_as_a_whole():
    with RawServer(drip) as server:
        async with AsyncClient(server.url) as client:
            started = time.monotonic()
            async with busy(async_client=client, wait_seconds=WAIT) as lease:
                elapsed = time.monotonic() - started
                assert lease.protected is False
    assert elapsed < BOUND


# ---- answers too large to be the sidecar's ------------------------------------------------


@pytest.mark.parametrize("respond", [huge, endless])
def test_an_answer_larger_than_any_of_the_apis_is_a_protocol_error(respond):
    """Read up to a cap, not into memory without end (nor for as long as the bytes flow)."""
    with (
        RawServer(respond) as server,
        Client(server.url, strict=False) as client,
        pytest.raises(InvalidAnswerError, match="larger than"),
    ):
        client.acquire("x")  # the lease the answers name


@pytest.mark.parametrize("respond", [huge, endless])
async def test_an_async_answer_larger_than_any_of_the_apis_is_a_protocol_error(respond):
    with RawServer(respond) as server:
        async with AsyncClient(server.url, strict=False) as client:
            with pytest.raises(InvalidAnswerError, match="larger than"):
                await client.acquire("x")


# ---- cut and garbled answers -------------------------------------------------------------


@pytest.mark.parametrize("respond", [cut, garbage])
def test_a_cut_or_garbled_answer_is_a_protocol_error(respond):
    """Not "unreachable": something answered, wrongly; the block does not run."""
    with (
        RawServer(respond) as server,
        Client(server.url, strict=False) as client,
        pytest.raises(InvalidAnswerError),
        busy(client=client),
    ):
        pytest.fail("the body must not run")
    assert server.paths == ["/busy", "/idle"]  # and the lease it may have made is released


@pytest.mark.parametrize("respond", [cut, garbage])
async def test_an_async_cut_or_garbled_answer_is_a_protocol_error(respond):
    with RawServer(respond) as server:
        async with AsyncClient(server.url, strict=False) as client:
            with pytest.raises(InvalidAnswerError):
                async with busy(async_client=client):
                    pytest.fail("the body must not run")
    assert server.paths == ["/busy", "/idle"]


def test_a_cut_state_answer_is_a_protocol_error_too():
    with RawServer(cut) as server, Client(server.url) as client, pytest.raises(InvalidAnswerError):
        client.state()


def test_a_connection_closed_without_an_answer_is_unreachable():
    with (
        RawServer(silent) as server,
        Client(server.url, strict=False) as client,
        busy(client=client) as lease,
    ):
        assert lease.protected is False
    with (
        RawServer(silent) as server,
        Client(server.url, strict=True) as strict,
        pytest.raises(SidecarUnavailableError),
    ):
        strict.state()


async def test_an_async_connection_closed_without_an_answer_is_unreachable():
    with RawServer(silent) as server:
        async with (
            AsyncClient(server.url, strict=False) as client,
            busy(async_client=client) as lease,
        ):
            assert lease.protected is False


# ---- a connection closed before its request was answered ---------------------------------


class ClosesFirst:
    """Closes the first `count` connections without a byte of an answer, the way the
    sidecar sheds a connection to stay within its bounds (a kept-alive one the client
    reuses, or a new one among a neighbour's flood), by FIN or by RST; then answers."""

    def __init__(self, count: int, *, reset: bool = False) -> None:
        self.left, self.reset = count, reset

    def __call__(self, conn: socket.socket, path: str, _stop: threading.Event) -> None:
        if self.left > 0:
            self.left -= 1
            if self.reset:  # an RST: close with a zero linger
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            return
        if path == "/busy":
            conn.sendall(http_answer(200, {"lease": "x", "protected": True, "leases": 1}))
        else:
            conn.sendall(http_answer(200, {"released": True, "leases": 0}))


@pytest.mark.parametrize("reset", [False, True], ids=["fin", "rst"])
def test_a_request_closed_unanswered_is_sent_again(reset):
    with RawServer(ClosesFirst(2, reset=reset)) as server, Client(server.url) as client:
        assert client.acquire("x", require_protection=True).protected is True
        assert server.paths == ["/busy"] * 3


@pytest.mark.parametrize("reset", [False, True], ids=["fin", "rst"])
async def test_an_async_request_closed_unanswered_is_sent_again(reset):
    with RawServer(ClosesFirst(2, reset=reset)) as server:
        async with AsyncClient(server.url) as client:
            lease = await client.acquire("x", require_protection=True)
            assert lease.protected is True
        assert server.paths == ["/busy"] * 3


def test_a_request_closed_unanswered_three_times_is_unreachable():
    with (
        RawServer(ClosesFirst(3)) as server,
        Client(server.url, strict=True) as client,
        pytest.raises(SidecarUnavailableError),
    ):
        client.acquire("x")
    assert server.paths == ["/busy"] * 3


async def test_an_async_request_closed_unanswered_three_times_is_unreachable():
    with RawServer(ClosesFirst(3)) as server:
        async with AsyncClient(server.url, strict=True) as client:
            with pytest.raises(SidecarUnavailableError):
                await client.acquire("x")
    assert server.paths == ["/busy"] * 3


def test_a_request_aiohttp_could_not_write_is_unanswered_too():
    """aiohttp reports a connection closed before the request went out whole as "Can not
    write request body", with the reset's errno, or none when it had seen the close
    ("Cannot write to closing transport"): 2 and 4 of 20 async jobs under a neighbour's
    flood failed that way. Nothing else without an errno is sent again."""
    import aiohttp  # noqa: PLC0415  (the async extra, installed wherever these tests run)

    from ecs_protection._async import _unanswered  # noqa: PLC0415

    closing = aiohttp.ClientOSError(None, "Can not write request body for http://x/busy")
    closing.__cause__ = ConnectionResetError("Cannot write to closing transport")
    assert _unanswered(aiohttp, closing)
    assert not _unanswered(aiohttp, aiohttp.ClientOSError(None, "something else"))
    assert not _unanswered(aiohttp, aiohttp.ClientPayloadError("cut"))
