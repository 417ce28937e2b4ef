"""Everything that does no network I/O: settings, request building, answer parsing, errors.

The sync and async clients only send what this module builds and hand back what
they receive; the behaviour is written once, here. Parsing is strict: an answer
that is not the API's (a proxy's page, a truncated body, another request's answer)
raises InvalidAnswerError, never KeyError or TypeError.
"""

from __future__ import annotations

import json
import logging
import os
import re
import stat
import urllib.parse
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from ecs_protection import _fork
from ecs_protection._errors import (
    ConfigurationError,
    InvalidAnswerError,
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
# The sidecar's own default wait for confirmation (POST /busy `wait_seconds`).
DEFAULT_WAIT_SECONDS = 10.0
# The sidecar's own limit on `wait_seconds`: it answers 400 beyond.
MAX_WAIT_SECONDS = 300.0
# A token file holds one short line; a larger file is a wrong path (a log, a device).
MAX_TOKEN_FILE_BYTES = 4096
# Each call as a whole (connecting, sending, every byte of the answer) ends within the
# sidecar's wait for confirmation (wait_seconds) plus this margin.
REQUEST_MARGIN_SECONDS = 5.0
# A request whose connection closed before a byte of its answer came is sent again, on a
# new connection, this many times (within the call's deadline). The sidecar never cuts a
# request it has begun to handle for a client that reads its answers; it closes
# connections whose request it has not read yet to stay within its connection bounds (a
# neighbour flooding it, or a kept-alive connection idle between jobs), and the request
# was not handled. Every request is one that may be repeated: /busy takes or refreshes a
# named lease, /drain is idempotent, a repeated /idle answers as for a lease already
# released.
UNANSWERED_RETRIES = 2
# A lease without a TTL outlives a killed worker for as long as its container runs
# (protection with nobody busy); 60 s with a heartbeat every 20 s bounds that to a minute.
DEFAULT_TTL_SECONDS = 60.0
# The sidecar's own limit on `ttl_seconds` (7 days): it answers 400 beyond.
MAX_TTL_SECONDS = 7 * 86400.0
# The longest duration any setting may name: the sidecar's longest TTL. Far beyond any
# job's stop, and within what the clock calls take (select() and sigtimedwait() overflow
# past about 9e9 s, in the thread that waits: a traceback instead of a wait).
MAX_SECONDS = MAX_TTL_SECONDS
# Below this a lease may expire before the sidecar's answer or the first heartbeat
# (every ttl/3) reaches it: the job would be told "protected" for a lease already gone.
MIN_TTL_SECONDS = 1.0
# The sidecar's largest answer (/state, which lists at most 100 leases) is about 10 KB.
# Anything larger is not the sidecar's (a wrong URL, a file server, a broken proxy), and
# read whole it would cost memory without end, or for as long as its bytes flow.
MAX_ANSWER_BYTES = 1 << 20


@dataclass(frozen=True)
class Settings:
    url: str = DEFAULT_URL
    token: str | None = None
    strict: bool = False

    @classmethod
    def from_environ(
        cls,
        environ: Mapping[str, str] | None = None,
        *,
        url: str | None = None,
        token: str | None = None,
        strict: bool | None = None,
    ) -> Settings:
        """Arguments first, then the environment. A value the client cannot work with
        raises ConfigurationError: a URL it would only fail to reach, or a STRICT it
        would read as false, must not pass for "no sidecar" and run jobs unprotected."""
        env = os.environ if environ is None else environ
        return cls(
            url=_checked_url(
                "url" if url else "TASK_PROTECTION_URL",
                url or env.get("TASK_PROTECTION_URL") or DEFAULT_URL,
            ),
            token=_checked_token("token", token) if token else _token_from(env),
            strict=strict if strict is not None else _flag(env.get("TASK_PROTECTION_STRICT")),
        )


def _checked_url(name: str, url: str) -> str:
    try:
        parts = urllib.parse.urlsplit(url.strip())
        _ = parts.port  # raises on a port that is not a number in range
    except ValueError as exc:
        raise ConfigurationError(f"{name}: not a URL ({exc}): {url!r}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigurationError(
            f"{name} must be an http:// URL with a host, such as {DEFAULT_URL}; not {url!r}"
        )
    return url.strip().rstrip("/")


def _read_small_file(path: str, limit: int) -> bytes:
    """At most `limit` bytes of the regular file `path`; OSError for anything else.

    Opened without blocking and checked before reading: a FIFO (or a device) named by
    mistake would block the open or the read for good.
    """
    descriptor = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    try:
        if not stat.S_ISREG(os.fstat(descriptor).st_mode):
            raise OSError(0, "not a regular file")
        os.set_blocking(descriptor, True)
        with os.fdopen(descriptor, "rb", closefd=False) as file:
            return file.read(limit)
    finally:
        os.close(descriptor)


def _token_from(env: Mapping[str, str]) -> str | None:
    """TASK_PROTECTION_TOKEN, or the content of the file TASK_PROTECTION_TOKEN_FILE names.

    The file is what a mounted secret looks like; its one trailing newline (an editor's
    or `echo`'s) is not part of the token.
    """
    token = env.get("TASK_PROTECTION_TOKEN") or None
    path = env.get("TASK_PROTECTION_TOKEN_FILE") or None
    if path is None:
        return _checked_token("TASK_PROTECTION_TOKEN", token)
    name = "TASK_PROTECTION_TOKEN_FILE"
    if token is not None:
        raise ConfigurationError(f"set TASK_PROTECTION_TOKEN or {name}, not both")
    try:
        raw = _read_small_file(path, MAX_TOKEN_FILE_BYTES + 1)
    except OSError as exc:
        raise ConfigurationError(f"{name}: cannot read {path!r}: {exc.strerror or exc}") from None
    if len(raw) > MAX_TOKEN_FILE_BYTES:
        raise ConfigurationError(f"{name}: {path!r} is longer than any token")
    for newline in (b"\r\n", b"\n"):
        if raw.endswith(newline):
            raw = raw[: -len(newline)]
            break
    if not raw:
        raise ConfigurationError(f"{name}: {path!r} is empty")
    try:
        text = raw.decode("ascii")
    except UnicodeDecodeError:
        text = "\ufffd"  # refused just below, with the same message as any other byte
    return _checked_token(f"the token in {name}", text)


def _checked_token(name: str, token: str | None) -> str | None:
    # What an HTTP header can carry, and what the sidecar accepts.
    if token is not None and not (token.isascii() and token.isprintable()):
        raise ConfigurationError(f"{name} must be printable ASCII")
    return token


def _flag(value: str | None) -> bool:
    text = (value or "").strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("", "0", "false", "no", "off"):
        return False
    raise ConfigurationError(
        f"TASK_PROTECTION_STRICT must be 1/true/yes/on or 0/false/no/off, not {value!r}"
    )


def in_seconds_range(value: float, *, positive: bool = False) -> bool:
    """0 (or, if `positive`, more) up to MAX_SECONDS: no NaN, no infinity."""
    return 0 <= value <= MAX_SECONDS and not (positive and value == 0)


def check_seconds(name: str, value: float | None, *, positive: bool = False) -> None:
    """Refuse NaN, infinities, negative (or, if `positive`, zero) durations up front, and
    any beyond MAX_SECONDS."""
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number of seconds, not {value!r}")
    if not in_seconds_range(value, positive=positive):
        kind = "positive" if positive else "zero or positive"
        raise ValueError(
            f"{name} must be a {kind} number of seconds up to {MAX_SECONDS:g}, not {value!r}"
        )


def check_ttl(ttl: float | None) -> None:
    """Refuse a TTL the sidecar cannot keep: see MIN_TTL_SECONDS and MAX_TTL_SECONDS."""
    check_seconds("ttl", ttl, positive=True)
    if ttl is not None and not MIN_TTL_SECONDS <= ttl <= MAX_TTL_SECONDS:
        raise ValueError(
            f"ttl must be from {MIN_TTL_SECONDS:g} s (a shorter lease may expire before it is "
            f"answered or refreshed) to {MAX_TTL_SECONDS:g} s (7 days, the sidecar's maximum), "
            f"not {ttl!r}"
        )


def check_wait(wait_seconds: float | None) -> None:
    """Refuse a wait the sidecar would refuse (more than MAX_WAIT_SECONDS)."""
    check_seconds("wait_seconds", wait_seconds)
    if wait_seconds is not None and wait_seconds > MAX_WAIT_SECONDS:
        raise ValueError(
            f"wait_seconds must be at most {MAX_WAIT_SECONDS:g} s (the sidecar's maximum), "
            f"not {wait_seconds!r}"
        )


# A lease id is what the sidecar accepts ([A-Za-z0-9._:-], 1 to 128 characters); the
# prefix leaves room for the "-" and 16 hex digits each use adds.
_LEASE_PREFIX = re.compile(r"[A-Za-z0-9._:-]{1,111}")


def check_lease_prefix(prefix: object) -> str:
    """`prefix` if the sidecar will accept the lease ids made from it, else ValueError."""
    if not isinstance(prefix, str) or not _LEASE_PREFIX.fullmatch(prefix):
        raise ValueError(
            f"lease prefix {prefix!r}: 1 to 111 of the characters A-Z a-z 0-9 . _ : - "
            "(the sidecar refuses any other lease id)"
        )
    return prefix


def new_lease_id(prefix: str = "job") -> str:
    """A lease id unique to one use of busy(): the prefix plus 16 random hex digits."""
    return f"{check_lease_prefix(prefix)}-{uuid.uuid4().hex[:16]}"


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    body: dict[str, Any] | None
    timeout: float


@dataclass(frozen=True)
class Lease:
    """The sidecar's answer to a busy request."""

    lease: str
    protected: bool
    expires_at: str | None = None
    leases: int = 0
    reason: str | None = None  # why not protected, when not


@dataclass(frozen=True)
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


def drain_request() -> Request:
    return Request("POST", "/drain", None, REQUEST_MARGIN_SECONDS)


def headers(settings: Settings) -> dict[str, str]:
    if settings.token:
        return {"Authorization": f"Bearer {settings.token}"}
    return {}


def parse_busy(status: int, payload: bytes, *, lease: str, require_protection: bool) -> Lease:
    """The answer to POST /busy for `lease`; an answer about another lease is invalid."""
    doc = _document(status, payload)
    if status == 200:
        if doc.get("lease") != lease or doc.get("protected") is not True:
            raise InvalidAnswerError(status, f"not a protected answer for {lease}: {_cut(doc)}")
        return Lease(
            lease,
            protected=True,
            expires_at=_optional_str(status, doc, "expires_at"),
            leases=_count(status, doc, "leases"),
        )
    error = _error(status, doc)
    if error.code == "ProtectionUnavailable" and not require_protection:
        if doc.get("lease", lease) != lease:
            raise InvalidAnswerError(status, f"an answer about another lease: {_cut(doc)}")
        return Lease(
            lease, protected=False, leases=_count(status, doc, "leases"), reason=error.message
        )
    raise error


def lease_answer(
    lease: str, answer: tuple[int, bytes] | None, *, require_protection: bool
) -> Lease:
    """The outcome of a busy request; None (unreachable, not strict) runs unprotected.

    A required lease never gets here unanswered: its request raises instead (see
    unreachable_policy).
    """
    if answer is None:
        return Lease(lease, protected=False, reason="sidecar unreachable")
    return parse_busy(*answer, lease=lease, require_protection=require_protection)


# What a request does when the sidecar does not answer: "settings" raises in strict
# mode and otherwise warns once; "raise" always raises (protection is required);
# "quiet" says nothing (the release after a request that got no answer either).
OnUnreachable = Literal["settings", "raise", "quiet"]


def unreachable_policy(*, require_protection: bool) -> OnUnreachable:
    return "raise" if require_protection else "settings"


def parse_idle(status: int, payload: bytes) -> bool:
    doc = _document(status, payload)
    if status != 200:
        raise _error(status, doc)
    released = doc.get("released")
    if not isinstance(released, bool):
        raise InvalidAnswerError(status, f"'released' is not a boolean: {_cut(doc)}")
    return released


def parse_drain(status: int, payload: bytes) -> int:
    """The answer to POST /drain: the number of leases still held."""
    doc = _document(status, payload)
    if status != 200:
        raise _error(status, doc)
    if doc.get("draining") is not True:
        raise InvalidAnswerError(status, f"not a draining answer: {_cut(doc)}")
    return _count(status, doc, "leases")


def parse_state(status: int, payload: bytes) -> State:
    doc = _document(status, payload)
    if status != 200:
        raise _error(status, doc)
    leases, protection = doc.get("leases"), doc.get("protection")
    busy, draining = doc.get("busy"), doc.get("draining")
    if not (
        isinstance(leases, list)
        and isinstance(protection, dict)
        and isinstance(protection.get("enabled"), bool)
        and isinstance(busy, bool)
        and isinstance(draining, bool)
    ):
        raise InvalidAnswerError(status, f"not a state document: {_cut(doc)}")
    count = doc.get("lease_count")  # the list shows at most 100 (sidecar 0.2.0 and newer)
    held = count if isinstance(count, int) and not isinstance(count, bool) and count >= 0 else None
    return State(
        busy=busy,
        draining=draining,
        leases=len(leases) if held is None else held,
        protected=protection["enabled"],
        raw=doc,
    )


_ERRORS: dict[str, type[SidecarError]] = {
    "Draining": TaskDrainingError,
    "ProtectionUnavailable": ProtectionUnavailableError,
    "TooManyLeases": TooManyLeasesError,
}


class AnswerBody:
    """The bytes of one answer, as they come; refused once past MAX_ANSWER_BYTES."""

    def __init__(self, status: int, content_length: str | None) -> None:
        self._status = status
        self._chunks: list[bytes] = []
        self._size = 0
        # A declared length says at once what the bytes would only show later.
        declared = (content_length or "").strip()
        if declared.isascii() and declared.isdigit():  # not "²", which int() refuses
            self._check(int(declared))

    def _check(self, size: int) -> None:
        if size > MAX_ANSWER_BYTES:
            message = f"the answer is larger than {MAX_ANSWER_BYTES} bytes: not the sidecar's"
            raise InvalidAnswerError(self._status, message)

    def add(self, chunk: bytes) -> None:
        self._size += len(chunk)
        self._check(self._size)
        self._chunks.append(chunk)

    def payload(self) -> bytes:
        return b"".join(self._chunks)


def _document(status: int, payload: bytes) -> dict[str, Any]:
    try:
        doc = json.loads(payload)
    except (ValueError, RecursionError):  # RecursionError: absurdly nested JSON
        doc = None
    if not isinstance(doc, dict):
        text = payload[:200].decode("utf-8", "replace")
        raise InvalidAnswerError(status, f"not a JSON object: {text!r}")
    return doc


def _cut(doc: dict[str, Any]) -> str:
    return repr(doc)[:200]


def _count(status: int, doc: dict[str, Any], name: str) -> int:
    value = doc.get(name, 0)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise InvalidAnswerError(status, f"{name!r} is not a count: {_cut(doc)}")
    return int(value)


def _optional_str(status: int, doc: dict[str, Any], name: str) -> str | None:
    value = doc.get(name)
    if value is not None and not isinstance(value, str):
        raise InvalidAnswerError(status, f"{name!r} is not a string: {_cut(doc)}")
    return value


def _error(status: int, doc: dict[str, Any]) -> SidecarError:
    raw = doc.get("error")
    error: dict[str, Any] = raw if isinstance(raw, dict) else {}
    code = str(error.get("code") or f"HTTP{status}")[:100]
    message = str(error.get("message") or "")[:500]
    if code == "InvalidAnswer":  # only this client says that; keep the class consistent
        return InvalidAnswerError(status, message)
    return _ERRORS.get(code, SidecarError)(status, code, message)


def may_hold_lease(exc: BaseException) -> bool:
    """Whether a busy request that ended with `exc` may have left a lease on the sidecar.

    Only a clear error answer (Draining, TooManyLeases, 400, 401, ...) proves the lease
    was not created; after anything else (no answer, an interruption, a cancellation,
    an answer that is not the API's, ProtectionUnavailable) it may exist.
    """
    if isinstance(exc, (InvalidAnswerError, ProtectionUnavailableError)):
        return True
    return not isinstance(exc, SidecarError)


class BaseClient:
    """What both clients hold without doing I/O: settings and the unreachable policy."""

    def __init__(
        self, url: str | None = None, *, token: str | None = None, strict: bool | None = None
    ) -> None:
        self.settings = Settings.from_environ(url=url, token=token, strict=strict)
        self._unreachable = Unreachable(self.settings)
        _fork.track(self)

    def _busy_request(self, lease: str, ttl: float | None, wait_seconds: float | None) -> Request:
        wait = DEFAULT_WAIT_SECONDS if wait_seconds is None else wait_seconds
        return busy_request(lease, ttl, wait)

    def _after_fork(self) -> None:
        """Called in a forked child: drop whatever is shared with the parent."""


# Sidecar addresses already warned about: once per process, not once per client (async
# busy() makes a client per use).
_warned_urls: set[str] = set()


class Unreachable:
    """What to do when the sidecar does not answer: raise (strict, or protection required)
    or warn once and go on."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings

    def handle(self, exc: Exception, policy: OnUnreachable = "settings") -> None:
        if policy == "quiet":
            log.debug("the sidecar at %s is unreachable: %s", self._settings.url, exc)
            return
        if policy == "raise" or self._settings.strict:
            raise SidecarUnavailableError(
                f"the ecs-protection sidecar at {self._settings.url} is unreachable: {exc}"
            ) from exc
        if self._settings.url not in _warned_urls:
            _warned_urls.add(self._settings.url)
            log.warning(
                "the ecs-protection sidecar at %s is unreachable (%s); carrying on without "
                "task protection (set TASK_PROTECTION_STRICT=1 to fail instead)",
                self._settings.url,
                exc,
            )

    def reset(self) -> None:
        """The sidecar answered again: warn again if it goes away later."""
        _warned_urls.discard(self._settings.url)
