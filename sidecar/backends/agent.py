"""The ECS agent's task protection endpoint: `$ECS_AGENT_URI/task-protection/v1/state`."""

from __future__ import annotations

import asyncio
from datetime import datetime
from typing import Any, Literal

import aiohttp

from sidecar.backends.base import (
    BackendError,
    Protection,
    ProtectionRefusedError,
    http_date,
    remaining_seconds,
    switched,
)
from sidecar.bodies import TooLargeError, json_object, read_capped

# The agent gives ECS 4 s and its own server answers within 5 s; waiting a little
# longer than that turns a hung agent into a retryable timeout, never a lost answer.
AGENT_TIMEOUT_SECONDS = 10.0


class AgentBackend:
    def __init__(self, agent_uri: str, timeout: float = AGENT_TIMEOUT_SECONDS) -> None:
        self.url = agent_uri.rstrip("/") + "/task-protection/v1/state"
        self._timeout = timeout
        self._session: aiohttp.ClientSession | None = None

    @property
    def name(self) -> Literal["agent"]:
        return "agent"

    async def get(self) -> Protection:
        return await self._request("GET", None)

    async def set(self, enabled: bool, expires_minutes: int) -> Protection:
        body: dict[str, object] = {"ProtectionEnabled": enabled}
        if enabled:
            body["ExpiresInMinutes"] = expires_minutes
        return switched(enabled, await self._request("PUT", body))

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def _request(self, method: str, body: dict[str, object] | None) -> Protection:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self._timeout),
                raise_for_status=False,
            )
        try:
            async with self._session.request(method, self.url, json=body) as response:
                payload = await read_capped(response)
                status = response.status
                date = response.headers.get("Date")
        except TooLargeError as exc:
            raise BackendError(
                "InvalidResponse", f"the agent's {exc}", retryable=True, uncertain=True
            ) from exc
        except TimeoutError as exc:
            raise BackendError(
                "Timeout",
                f"no answer from the ECS agent within {self._timeout:g}s",
                retryable=True,
                uncertain=True,
            ) from exc
        except aiohttp.ClientConnectorError as exc:
            # Not connected at all: the request never left, nothing can have changed.
            raise BackendError(
                "ConnectionError", f"{type(exc).__name__}: {exc}".rstrip(": "), retryable=True
            ) from exc
        except (aiohttp.ClientError, OSError, asyncio.IncompleteReadError) as exc:
            # Sent, but the answer was lost: the agent may have called ECS already.
            raise BackendError(
                "ConnectionError",
                f"{type(exc).__name__}: {exc}".rstrip(": "),
                retryable=True,
                uncertain=True,
            ) from exc
        return parse_answer(status, payload, date)


def parse_answer(status: int, payload: bytes, date: str | None = None) -> Protection:
    """Map one agent answer to a Protection or a BackendError (the agent's answers, one row each).

    `date` is the answer's Date header: the agent's own clock, against which the
    remaining protection is measured.
    """
    doc = json_object(payload)
    if status == 200:
        if doc is None:
            raise BackendError(
                "InvalidResponse",
                "the agent's answer is not a JSON object",
                retryable=True,
                status=status,
                uncertain=True,
            )
        if isinstance(doc.get("protection"), dict):
            return _protection(doc["protection"], http_date(date))
        if isinstance(doc.get("failure"), dict):
            failure = doc["failure"]
            raise ProtectionRefusedError.from_answer(failure.get("Reason"), failure.get("Detail"))
        raise BackendError(
            "InvalidResponse",
            "the agent's answer has neither protection nor failure",
            retryable=True,
            status=status,
            uncertain=True,
        )

    error = doc.get("error") if doc else None
    code = f"HTTP{status}"
    message = payload[:200].decode("utf-8", "replace").strip() or f"HTTP {status}"
    if isinstance(error, dict):
        code = str(error.get("Code") or code)[:100]
        message = str(error.get("Message") or message)[:500]
    if status == 403 and code == "AccessDeniedException":
        # The agent's own 403 (no requestID: ECS was not called). Either the task has no
        # task role, or the agent restarted and has not re-fetched its credentials yet.
        raise BackendError(
            code,
            f"{message} (either the task has no task role, or the ECS agent restarted and "
            "has not fetched the task's credentials yet: that clears within seconds)",
            retryable=False,
            status=status,
            maybe_transient=True,
        )
    retryable = status == 429 or status >= 500 or (status == 400 and code == "ThrottlingException")
    # A 5xx (ECS 500, the agent's 504 deadline) may come after ECS applied the change;
    # a 429 or a 4xx means it was refused before.
    raise BackendError(code, message, retryable=retryable, status=status, uncertain=status >= 500)


def _protection(doc: dict[str, Any], server_time: datetime | None) -> Protection:
    enabled = doc.get("ProtectionEnabled")
    raw_date = doc.get("ExpirationDate")
    if not isinstance(enabled, bool) or not (raw_date is None or isinstance(raw_date, str)):
        raise BackendError(
            "InvalidResponse",
            f"unexpected protection object: {doc!r:.200}",
            retryable=True,
            status=200,
            uncertain=True,
        )
    expires_at = None
    if raw_date is not None:
        try:
            expires_at = datetime.fromisoformat(raw_date)
        except ValueError as exc:
            raise BackendError(
                "InvalidResponse",
                f"unreadable ExpirationDate {raw_date[:100]!r}",
                retryable=True,
                status=200,
                uncertain=True,
            ) from exc
        if expires_at.tzinfo is None:
            raise BackendError(
                "InvalidResponse",
                f"ExpirationDate without zone {raw_date[:100]!r}",
                retryable=True,
                status=200,
                uncertain=True,
            )
    if not enabled:
        return Protection(enabled=False, expires_at=None)
    return Protection(
        enabled=True, expires_at=expires_at, remaining=remaining_seconds(expires_at, server_time)
    )
