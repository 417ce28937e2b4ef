"""Everything that does no I/O: settings, request building, answer parsing, error mapping.

The sync and async clients only send what this module builds and hand back what
they receive; the behaviour is written once, here.
"""

from __future__ import annotations

import json
import logging
import os
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ecs_protection._errors import (
    ProtectionUnavailableError,
    SidecarError,
    SidecarUnavailableError,
    TaskDrainingError,
    TooManyLeasesError,
)

if TYPE_CHECKING:
    from collections.abc import Mapping

log = logging.getLogger("ecs_protection")

DEFAULT_URL = "http://127.0.0.1:31680"
# Long enough for the sidecar's own wait for confirmation (wait_seconds) plus a margin.
REQUEST_MARGIN_SECONDS = 5.0


@dataclass(frozen=True, slots=True)
class Settings:
    url: str = DEFAULT_URL
    token: str | None = None
    strict: bool = False
    wait_seconds: float = 10.0

    @classmethod
    def from_environ(
        cls,
        environ: Mapping[str, str] | None = None,
        *,
        url: str | None = None,
        token: str | None = None,
        strict: bool | None = None,
    ) -> Settings:
        env = os.environ if environ is None else environ
        return cls(
            url=(url or env.get("TASK_PROTECTION_URL") or DEFAULT_URL).rstrip("/"),
            token=token or env.get("TASK_PROTECTION_TOKEN") or None,
            strict=strict if strict is not None else _truthy(env.get("TASK_PROTECTION_STRICT")),
        )


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in ("1", "true", "yes", "on")


def new_lease_id(prefix: str = "job") -> str:
    """A lease id unique to one use of busy(): the prefix plus 16 random hex digits."""
    return f"{prefix}-{uuid.uuid4().hex[:16]}"


@dataclass(frozen=True, slots=True)
class Request:
    method: str
    path: str
    body: dict[str, Any] | None
    timeout: float


@dataclass(frozen=True, slots=True)
class Lease:
    """The sidecar's answer to a busy request."""

    lease: str
    protected: bool
    expires_at: str | None = None
    leases: int = 0
    reason: str | None = None  # why not protected, when not


@dataclass(frozen=True, slots=True)
class State:
    """GET /state; `raw` holds the full document."""

    busy: bool
    draining: bool
    leases: int
    protected: bool
    raw: dict[str, Any] = field(default_factory=dict)


def busy_request(lease: str, ttl: float | None, wait: float) -> Request:
    body: dict[str, Any] = {"lease": lease, "wait_seconds": wait}

    if ttl is not None:
        body["ttl_seconds"] = ttl
    return Request("POST", "/busy", body, wait + REQUEST_MARGIN_SECONDS)


def idle_request(lease: str) -> Request:
    return Request("POST", "/idle", {"lease": lease}, REQUEST_MARGIN_SECONDS)


def state_request() -> Request:
    return Request("GET", "/state", None, REQUEST_MARGIN_SECONDS)


def headers(settings: Settings) -> dict[str, str]:
    if settings.token:
        return {"Authorization": f"Bearer {settings.token}"}
    return {}


def parse_busy(status: int, payload: bytes, *, require_protection: bool) -> Lease:
    doc = _document(status, payload)
    if status == 200:
        return Lease(
            doc["lease"],
            protected=True,
            expires_at=doc.get("expires_at"),
            leases=int(doc.get("leases", 0)),
        )
    error = _error(status, doc)
    if error.code == "ProtectionUnavailable" and not require_protection:
        return Lease(
            str(doc.get("lease", "")),
            protected=False,
            leases=int(doc.get("leases", 0)),
            reason=error.message,
        )
    raise error


def lease_answer(
    lease: str, answer: tuple[int, bytes] | None, *, require_protection: bool
) -> Lease:
    """The outcome of a busy request; None (unreachable, not strict) runs unprotected."""
    if answer is None:
        return Lease(lease, protected=False, reason="sidecar unreachable")
    return parse_busy(*answer, require_protection=require_protection)


def parse_idle(status: int, payload: bytes) -> bool:
    doc = _document(status, payload)
    if status != 200:
        raise _error(status, doc)
    return bool(doc.get("released"))


def parse_state(status: int, payload: bytes) -> State:
    doc = _document(status, payload)
    if status != 200:
        raise _error(status, doc)
    return State(
        busy=bool(doc.get("busy")),
        draining=bool(doc.get("draining")),
        leases=len(doc.get("leases") or []),
        protected=bool((doc.get("protection") or {}).get("enabled")),
        raw=doc,
    )


_ERRORS: dict[str, type[SidecarError]] = {
    "Draining": TaskDrainingError,
    "ProtectionUnavailable": ProtectionUnavailableError,
    "TooManyLeases": TooManyLeasesError,
}


def _document(status: int, payload: bytes) -> dict[str, Any]:
    try:
        doc = json.loads(payload)
    except ValueError:
        doc = None
    if not isinstance(doc, dict):
        text = payload[:200].decode("utf-8", "replace")
        raise SidecarError(status, "InvalidAnswer", f"not a JSON object: {text!r}")
    return doc


def _error(status: int, doc: dict[str, Any]) -> SidecarError:
    raw = doc.get("error")
    error: dict[str, Any] = raw if isinstance(raw, dict) else {}
    code = str(error.get("code") or f"HTTP{status}")
    message = str(error.get("message") or "")
    return _ERRORS.get(code, SidecarError)(status, code, message)


class BaseClient:
    """What both clients hold without doing I/O: settings and the unreachable policy."""

    def __init__(
        self, url: str | None = None, *, token: str | None = None, strict: bool | None = None
    ) -> None:
        self.settings = Settings.from_environ(url=url, token=token, strict=strict)
        self._unreachable = Unreachable(self.settings)

    def _busy_request(self, lease: str, ttl: float | None, wait_seconds: float | None) -> Request:
        wait = self.settings.wait_seconds if wait_seconds is None else wait_seconds
        return busy_request(lease, ttl, wait)


class Unreachable:
    """What to do when the sidecar does not answer: raise (strict) or warn once and go on."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._warned = False

    def handle(self, exc: Exception) -> None:
        if self._settings.strict:
            raise SidecarUnavailableError(
                f"the ecs-protection sidecar at {self._settings.url} is unreachable: {exc}"
            ) from exc
        if not self._warned:
            self._warned = True
            log.warning(
                "the ecs-protection sidecar at %s is unreachable (%s); carrying on without "
                "task protection (set TASK_PROTECTION_STRICT=1 to fail instead)",
                self._settings.url,
                exc,
            )

    def reset(self) -> None:
        """The sidecar answered again: warn again if it goes away later."""
        self._warned = False
