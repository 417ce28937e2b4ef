"""Request bodies: parsed and checked completely before anything changes."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

from sidecar.leases import DEFAULT_LEASE, LEASE_ID

MAX_TTL_SECONDS = 7 * 86400.0
# A TTL must outlive the answer that grants it: a lease that may expire before its
# 200 reaches the client would be "protected" for nobody.
MIN_TTL_SECONDS = 1.0
MAX_WAIT_SECONDS = 300.0
DEFAULT_WAIT_SECONDS = 10.0


class InvalidRequestError(Exception):
    """A body the API does not accept; `field` names the culprit when there is one."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


@dataclass(frozen=True, slots=True)
class BusyRequest:
    lease: str = DEFAULT_LEASE
    ttl_seconds: float | None = None
    wait_seconds: float = DEFAULT_WAIT_SECONDS


@dataclass(frozen=True, slots=True)
class IdleRequest:
    lease: str = DEFAULT_LEASE


def parse_busy(payload: bytes) -> BusyRequest:
    doc = _object(payload, ("lease", "ttl_seconds", "wait_seconds"))
    return BusyRequest(
        lease=_lease(doc),
        ttl_seconds=_number(doc, "ttl_seconds", None, low=MIN_TTL_SECONDS, high=MAX_TTL_SECONDS),
        wait_seconds=_number(
            doc, "wait_seconds", DEFAULT_WAIT_SECONDS, low=0.0, high=MAX_WAIT_SECONDS
        )
        or 0.0,
    )


def parse_idle(payload: bytes) -> IdleRequest:
    return IdleRequest(lease=_lease(_object(payload, ("lease",))))


def parse_empty(payload: bytes) -> None:
    _object(payload, ())


def _object(payload: bytes, allowed: tuple[str, ...]) -> dict[str, Any]:
    if not payload:  # no body at all; whitespace alone is not JSON
        return {}
    try:
        doc = json.loads(payload)
    except (ValueError, RecursionError) as exc:
        raise InvalidRequestError(f"body is not valid JSON: {exc}") from exc
    if not isinstance(doc, dict):
        raise InvalidRequestError(f"body must be a JSON object, not {_kind(doc)}")
    unknown = sorted(set(doc) - set(allowed))
    if unknown:
        hint = f"; allowed: {', '.join(allowed)}" if allowed else "; this endpoint takes none"
        raise InvalidRequestError(f"unknown field {unknown[0]!r}{hint}", unknown[0])
    return doc


def _lease(doc: dict[str, Any]) -> str:
    value = doc.get("lease", DEFAULT_LEASE)
    if not isinstance(value, str):
        raise InvalidRequestError(f"'lease' must be a string, not {_kind(value)}", "lease")
    if not LEASE_ID.fullmatch(value):
        raise InvalidRequestError(
            "'lease' must be 1-128 characters of A-Z a-z 0-9 . _ : -", "lease"
        )
    return value


def _number(
    doc: dict[str, Any],
    name: str,
    default: float | None,
    *,
    low: float,
    high: float,
) -> float | None:
    if name not in doc or doc[name] is None:
        return default
    raw = doc[name]
    if isinstance(raw, bool) or not isinstance(raw, int | float):
        raise InvalidRequestError(f"{name!r} must be a number, not {_kind(raw)}", name)
    try:
        value = float(raw)  # JSON integers have no size limit: 1 followed by 400 zeros
    except OverflowError:
        value = math.inf
    if not math.isfinite(value) or value < low or value > high:
        raise InvalidRequestError(f"{name!r} must be >= {low:g} and <= {high:g} seconds", name)
    return value


def _kind(value: object) -> str:
    return {
        type(None): "null",
        bool: "a boolean",
        int: "a number",
        float: "a number",
        str: "a string",
        list: "an array",
        dict: "an object",
    }.get(type(value), type(value).__name__)
