"""The ECS agent's task protection endpoint: `$ECS_AGENT_URI/task-protection/v1/state`."""

from __future__ import annotations

import asyncio
import json
from datetime import datetime
from typing import Any, Literal

import aiohttp

from sidecar.backends.base import BackendError, Protection, ProtectionRefusedError

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
        return await self._request("PUT", body)

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
                payload = await response.read()
                status = response.status
        except TimeoutError as exc:
            raise BackendError(
                "Timeout",
                f"no answer from the ECS agent within {self._timeout:g}s",
                retryable=True,
            ) from exc
        except (aiohttp.ClientError, OSError, asyncio.IncompleteReadError) as exc:
            raise BackendError(
                "ConnectionError", f"{type(exc).__name__}: {exc}".rstrip(": "), retryable=True
            ) from exc
        return parse_answer(status, payload)


def parse_answer(status: int, payload: bytes) -> Protection:
    """Map one agent answer to a Protection or a BackendError (see ECS-AGENT.md's table)."""
    doc = _json_object(payload)
    if status == 200:
        if doc is None:
            raise BackendError(
                "InvalidResponse",
                "the agent's answer is not a JSON object",
                retryable=True,
                status=status,
            )
        if isinstance(doc.get("protection"), dict):
            return _protection(doc["protection"])
        if isinstance(doc.get("failure"), dict):
            failure = doc["failure"]
            raise ProtectionRefusedError(
                str(failure.get("Reason") or "UNKNOWN"),
                failure.get("Detail") if isinstance(failure.get("Detail"), str) else None,
            )
        raise BackendError(
            "InvalidResponse",
            "the agent's answer has neither protection nor failure",
            retryable=True,
            status=status,
        )

    error = doc.get("error") if doc else None
    code = f"HTTP{status}"
    message = payload[:200].decode("utf-8", "replace").strip() or f"HTTP {status}"
    if isinstance(error, dict):
        code = str(error.get("Code") or code)
        message = str(error.get("Message") or message)
    retryable = status == 429 or status >= 500 or (status == 400 and code == "ThrottlingException")
    raise BackendError(code, message, retryable=retryable, status=status)


def _json_object(payload: bytes) -> dict[str, Any] | None:
    try:
        doc = json.loads(payload)
    except ValueError:
        return None
    return doc if isinstance(doc, dict) else None


def _protection(doc: dict[str, Any]) -> Protection:
    enabled = doc.get("ProtectionEnabled")
    raw_date = doc.get("ExpirationDate")
    if not isinstance(enabled, bool) or not (raw_date is None or isinstance(raw_date, str)):
        raise BackendError(
            "InvalidResponse",
            f"unexpected protection object: {doc!r:.200}",
            retryable=True,
            status=200,
        )
    expires_at = None
    if raw_date is not None:
        try:
            expires_at = datetime.fromisoformat(raw_date)
        except ValueError as exc:
            raise BackendError(
                "InvalidResponse",
                f"unreadable ExpirationDate {raw_date!r}",
                retryable=True,
                status=200,
            ) from exc
        if expires_at.tzinfo is None:
            raise BackendError(
                "InvalidResponse",
                f"ExpirationDate without zone {raw_date!r}",
                retryable=True,
                status=200,
            )
    return Protection(enabled=enabled, expires_at=expires_at if enabled else None)
