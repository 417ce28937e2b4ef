"""An overall deadline for each request of the sync client, and a request closed
unanswered sent again (UnansweredRetry).

requests' `timeout` bounds each socket read, not the answer as a whole: a sidecar (or
anything on its port) that sends one byte every 2 s keeps a call going for as long as
it likes. The sync client's sockets therefore shrink their timeout, before every read
and write, to what is left of the deadline of the call in progress in their thread
(a keep-alive connection is used by one thread at a time), and time out once it has
passed. The async client needs none of this: aiohttp's `total` timeout is one already.

Plain http:// only, which is all the sidecar serves: a TLS socket reads through its
own C object, so a sidecar behind a TLS proxy is bounded per read, as before.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from typing import TYPE_CHECKING, Any

import urllib3
import urllib3.connection
from requests.adapters import HTTPAdapter
from urllib3.exceptions import ProtocolError
from urllib3.util.retry import Retry

from ecs_protection._protocol import UNANSWERED_RETRIES

if TYPE_CHECKING:
    from collections.abc import Iterator

    import requests

_calls = threading.local()


@contextlib.contextmanager
def bounded(seconds: float) -> Iterator[None]:
    """Bound the requests this thread makes inside the block to `seconds` in all."""
    _calls.at = time.monotonic() + seconds
    try:
        yield
    finally:
        _calls.at = None


def _remaining() -> float | None:
    at: float | None = getattr(_calls, "at", None)
    return None if at is None else at - time.monotonic()


class _DeadlineSocket(socket.socket):
    """A socket whose every read and write ends by the deadline of the current call."""

    _per_read: float | None = None  # the timeout urllib3 set (per read)

    def settimeout(self, value: float | None) -> None:
        self._per_read = value
        super().settimeout(value)

    def _bound(self) -> None:
        remaining = _remaining()
        if remaining is None:
            super().settimeout(self._per_read)
            return
        if remaining <= 0:
            raise socket.timeout("timed out (the call's deadline has passed)")
        per_read = self._per_read
        super().settimeout(remaining if per_read is None else min(per_read, remaining))

    def recv(self, bufsize: int, flags: int = 0) -> bytes:
        self._bound()
        return super().recv(bufsize, flags)

    def recv_into(self, buffer: Any, nbytes: int = 0, flags: int = 0) -> int:  # noqa: ANN401  (a writable buffer)
        self._bound()
        return super().recv_into(buffer, nbytes, flags)

    def send(self, data: Any, flags: int = 0) -> int:  # noqa: ANN401  (a bytes-like object)
        self._bound()
        return super().send(data, flags)

    def sendall(self, data: Any, flags: int = 0) -> None:  # noqa: ANN401  (a bytes-like object)
        self._bound()
        super().sendall(data, flags)


# Named as urllib3's own, which error messages show ("HTTPConnectionPool(host=...").
class HTTPConnection(urllib3.connection.HTTPConnection):
    def _new_conn(self) -> socket.socket:
        # Connecting too ends by the deadline (a second attempt comes late in the call).
        remaining = _remaining()
        if remaining is not None and isinstance(self.timeout, (int, float)):
            self.timeout = max(0.001, min(self.timeout, remaining))
        plain = super()._new_conn()
        timeout = plain.gettimeout()
        bounded = _DeadlineSocket(plain.family, plain.type, plain.proto, fileno=plain.detach())
        bounded.settimeout(timeout)
        return bounded


class HTTPConnectionPool(urllib3.HTTPConnectionPool):
    ConnectionCls = HTTPConnection


def _unanswered(error: Exception | None) -> bool:
    """The connection closed (FIN or RST) before a byte of the answer: urllib3's
    ProtocolError('Connection aborted.', RemoteDisconnected | ConnectionResetError |
    BrokenPipeError). Not a refused connection, a timeout, or an answer that is not HTTP."""
    return isinstance(error, ProtocolError) and any(
        isinstance(arg, (ConnectionResetError, BrokenPipeError)) for arg in error.args
    )


class UnansweredRetry(Retry):
    """requests' own policy (no retries, a read error raised as it is), except that a
    request whose connection closed unanswered is sent again, up to `left` more times
    (_protocol.UNANSWERED_RETRIES says why that is safe). Each attempt is within the
    call's deadline (bounded())."""

    def __init__(self, left: int = UNANSWERED_RETRIES, **kw: Any) -> None:  # noqa: ANN401  (Retry's keywords)
        # Retry.new() passes every setting by keyword: requests' Retry(0, read=False)
        # unless told otherwise.
        super().__init__(**{"total": 0, "read": False, **kw})
        self.left = left

    def increment(
        self,
        method: str | None = None,
        url: str | None = None,
        response: Any = None,  # noqa: ANN401  (urllib3 1.26 and 2.x type these differently)
        error: Exception | None = None,
        _pool: Any = None,  # noqa: ANN401
        _stacktrace: Any = None,  # noqa: ANN401
    ) -> UnansweredRetry:
        remaining = _remaining()
        time_left = remaining is None or remaining > 0
        if self.left > 0 and response is None and _unanswered(error) and time_left:
            return UnansweredRetry(self.left - 1)
        # No retries left in requests' own policy: this raises.
        return super().increment(method, url, response, error, _pool, _stacktrace)


def mount(session: requests.Session, url: str) -> None:
    """Make `session` honour bounded() for the requests it sends to `url`, and send a
    request closed unanswered again (UnansweredRetry)."""
    adapter = HTTPAdapter(max_retries=UnansweredRetry())
    # Plain http:// pools make their connections with _DeadlineSocket.
    manager = adapter.poolmanager
    manager.pool_classes_by_scheme = {**manager.pool_classes_by_scheme, "http": HTTPConnectionPool}
    session.mount(url + "/", adapter)
