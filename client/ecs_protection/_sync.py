"""The synchronous client: a keep-alive requests.Session that sends what _protocol builds."""

from __future__ import annotations

import http.client
import time
from typing import TYPE_CHECKING

import requests
from requests.exceptions import ChunkedEncodingError, ContentDecodingError

from ecs_protection import _protocol as p
from ecs_protection._deadline import bounded, mount
from ecs_protection._errors import InvalidAnswerError
from ecs_protection._hold import Hold

if TYPE_CHECKING:
    from types import TracebackType


def _session() -> requests.Session:
    session = requests.Session()
    # The sidecar is on localhost (or a link in the task): never ask a proxy. With
    # trust_env, HTTP_PROXY/ALL_PROXY would send 127.0.0.1 to the proxy, as the usual
    # NO_PROXY lists only the ECS link-local addresses.
    session.trust_env = False
    return session


class Client(p.BaseClient):
    """Talks to the sidecar; thread-safe for the requests it makes, and fork-safe.

    A forked child gets a new session on its first request (the parent's keep-alive
    connection stays the parent's). A `session` passed in is used with `trust_env`
    turned off, so that no proxy is ever asked; after a fork the child uses a new
    default session instead. Each call ends within its wait plus a margin, however
    slowly the answer comes (the session's adapter for the sidecar's URL sees to that).
    """

    def __init__(
        self,
        url: str | None = None,
        *,
        token: str | None = None,
        strict: bool | None = None,
        session: requests.Session | None = None,
    ) -> None:
        super().__init__(url, token=token, strict=strict)
        if session is not None:
            session.trust_env = False
        self._session = session if session is not None else _session()
        mount(self._session, self.settings.url)

    def __enter__(self) -> Client:  # noqa: PYI034  (typing.Self is 3.11+; the client supports 3.9)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        self._session.close()

    def _after_fork(self) -> None:
        # Not closed: another thread of the parent may have held the pool's lock at
        # the fork. Dropping it closes only this process's copies of the sockets.
        self._session = _session()
        mount(self._session, self.settings.url)

    def _send(
        self, request: p.Request, unreachable: p.OnUnreachable = "settings"
    ) -> tuple[int, bytes] | None:
        """(status, body), or None when no answer came in time (see p.Unreachable)."""
        try:
            with bounded(request.timeout):
                answer = self._exchange(request)
        except requests.RequestException as exc:
            self._unreachable.handle(exc, unreachable)
            return None
        self._unreachable.reset()
        return answer

    def _exchange(self, request: p.Request) -> tuple[int, bytes]:
        # Streamed, so that an answer cut short (its head came, its body did not) is
        # told apart from no answer at all.
        try:
            response = self._session.request(
                request.method,
                self.settings.url + request.path,
                json=request.body,
                headers=p.headers(self.settings),
                timeout=request.timeout,
                allow_redirects=False,
                stream=True,
            )
        except requests.ConnectionError as exc:
            garbled = _not_http(exc)
            if garbled is not None:
                raise InvalidAnswerError(0, f"not an HTTP answer: {garbled!r}") from None
            raise
        with response:
            body = p.AnswerBody(response.status_code, response.headers.get("Content-Length"))
            try:
                for chunk in response.iter_content(chunk_size=1 << 16):
                    body.add(chunk)
            except (ChunkedEncodingError, ContentDecodingError) as exc:
                # requests' names for a body that broke off (IncompleteRead, a reset).
                message = f"the answer was cut short: {exc}"
                raise InvalidAnswerError(response.status_code, message) from None
        return response.status_code, body.payload()

    def acquire(
        self,
        lease: str,
        ttl: float | None = None,
        wait_seconds: float | None = None,
        *,
        require_protection: bool = False,
    ) -> p.Lease:
        """POST /busy: take or refresh `lease`; see hold() and busy() for the usual ways."""
        answer = self._send(
            self._busy_request(lease, ttl, wait_seconds),
            p.unreachable_policy(require_protection=require_protection),
        )
        return p.lease_answer(lease, answer, require_protection=require_protection)

    def release(self, lease: str) -> bool:
        """POST /idle; False when the lease was unknown or the sidecar unreachable."""
        answer = self._send(p.idle_request(lease))
        return False if answer is None else p.parse_idle(*answer)

    def _discard(self, lease: str) -> None:
        """POST /idle after a busy request that failed: silent when unreachable too."""
        answer = self._send(p.idle_request(lease), "quiet")
        if answer is not None:
            p.parse_idle(*answer)

    def hold(
        self,
        *,
        ttl: float | None = p.DEFAULT_TTL_SECONDS,
        lease_prefix: str = "job",
        wait_seconds: float | None = None,
        require_protection: bool = False,
    ) -> Hold:
        """Take a new lease now and hold it until `release()` (or the end of a `with`).

        For code that cannot wrap the job in one block, such as a framework's
        before-task and after-task signals. See Hold.
        """
        return Hold(
            self,
            ttl=ttl,
            lease_prefix=lease_prefix,
            wait_seconds=wait_seconds,
            require_protection=require_protection,
        )

    def drain(self) -> int | None:
        """POST /drain: the sidecar refuses new leases from now on (the task is stopping).

        Returns the number of leases still held, or None when the sidecar is
        unreachable (and not strict).
        """
        answer = self._send(p.drain_request())
        return None if answer is None else p.parse_drain(*answer)

    def state(self) -> p.State | None:
        """GET /state, or None when the sidecar is unreachable (and not strict)."""
        answer = self._send(p.state_request())
        return None if answer is None else p.parse_state(*answer)

    @property
    def draining(self) -> bool:
        """Whether the sidecar says the task is stopping."""
        state = self.state()
        return bool(state and state.draining)

    def wait_for_drain(self, timeout: float | None = None, poll_seconds: float = 1.0) -> bool:
        """Block until the task is draining (True) or `timeout` passes (False)."""
        p.check_seconds("timeout", timeout)
        p.check_seconds("poll_seconds", poll_seconds, positive=True)
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            if self.draining:
                return True
            if deadline is not None and time.monotonic() >= deadline:
                return False
            pause = poll_seconds
            if deadline is not None:
                pause = max(0.0, min(pause, deadline - time.monotonic()))
            time.sleep(pause)


def _not_http(exc: BaseException) -> http.client.HTTPException | None:
    """The http.client error under `exc` when the peer answered with something that is
    not HTTP (a bad status line, bad headers); None for no answer at all (nothing
    listens, or it closed without a byte: RemoteDisconnected)."""
    pending: list[BaseException] = [exc]
    seen: set[int] = set()
    while pending:
        error = pending.pop()
        if id(error) in seen:
            continue
        seen.add(id(error))
        if isinstance(error, http.client.HTTPException) and not isinstance(
            error, http.client.RemoteDisconnected
        ):
            return error
        # requests and urllib3 wrap the cause in their exceptions' args.
        pending.extend(arg for arg in error.args if isinstance(arg, BaseException))
        pending.extend(e for e in (error.__cause__, error.__context__) if e is not None)
    return None
