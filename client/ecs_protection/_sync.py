"""The synchronous client: a keep-alive requests.Session that sends what _protocol builds."""

from __future__ import annotations

import time
from typing import Self

import requests

from ecs_protection import _protocol as p


class Client(p.BaseClient):
    """Talks to the sidecar; thread-safe for the requests it makes."""

    def __init__(
        self,
        url: str | None = None,
        *,
        token: str | None = None,
        strict: bool | None = None,
        session: requests.Session | None = None,
    ) -> None:
        super().__init__(url, token=token, strict=strict)
        self._session = session or requests.Session()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._session.close()

    def _send(self, request: p.Request) -> tuple[int, bytes] | None:
        try:
            response = self._session.request(
                request.method,
                self.settings.url + request.path,
                json=request.body,
                headers=p.headers(self.settings),
                timeout=request.timeout,
            )
        except requests.RequestException as exc:
            self._unreachable.handle(exc)
            return None
        self._unreachable.reset()
        return response.status_code, response.content

    def acquire(
        self,
        lease: str,
        ttl: float | None = None,
        wait_seconds: float | None = None,
        *,
        require_protection: bool = False,
    ) -> p.Lease:
        """POST /busy: take or refresh `lease`; see busy() for the usual way."""
        answer = self._send(self._busy_request(lease, ttl, wait_seconds))
        return p.lease_answer(lease, answer, require_protection=require_protection)

    def release(self, lease: str) -> bool:
        """POST /idle; False when the lease was unknown or the sidecar unreachable."""
        answer = self._send(p.idle_request(lease))
        return False if answer is None else p.parse_idle(*answer)

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
