"""Configuration: one typed, frozen object built from the environment and CLI flags.

Flags override variables. Every problem is collected and reported together, so an
operator fixes a task definition in one round trip instead of one per typo.
"""

from __future__ import annotations

import argparse
import importlib.util
import ipaddress
import math
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping, Sequence

BackendName = Literal["agent", "api", "local"]
LogFormat = Literal["json", "text"]

BACKENDS = ("auto", "agent", "api", "local")
LOG_FORMATS = ("json", "text")
LOG_LEVELS = ("debug", "info", "warning", "error")


class ConfigError(Exception):
    """One or more configuration values are invalid; the message names each of them."""

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems = list(problems)
        super().__init__("; ".join(self.problems))


@dataclass(frozen=True, slots=True)
class Config:
    host: str = "127.0.0.1"
    port: int = 31680
    backend: BackendName = "local"
    expires_minutes: int = 60
    idle_grace_seconds: float = 10.0
    drain_timeout_seconds: float = 120.0
    token: str | None = None
    log_format: LogFormat = "json"
    log_level: str = "info"
    max_protected_seconds: float | None = None
    max_leases: int = 10000
    agent_uri: str | None = None
    metadata_uri: str | None = None
    cluster: str | None = None
    task_arn: str | None = None
    metadata_poll_seconds: float = 5.0
    backend_reason: str = "default"

    @classmethod
    def from_environ(
        cls,
        environ: Mapping[str, str],
        argv: Sequence[str] = (),
        api_available: Callable[[], bool] = lambda: _installed("boto3"),
    ) -> Config:
        """Build the configuration; raise ConfigError naming every invalid value.

        `api_available` tells whether the `api` backend can be used (boto3 installed).
        """
        raw = _merge(environ, argv)
        problems: list[str] = []
        p = _Parser(raw, problems)

        host = p.text("HOST", "127.0.0.1")
        port = p.integer("PORT", 31680, 0, 65535)  # 0: any free port, logged at start
        backend_choice = p.choice("BACKEND", "auto", BACKENDS)
        expires_minutes = p.integer("EXPIRES_MINUTES", 60, 1, 2880)
        grace = p.number("IDLE_GRACE_SECONDS", 10.0, 0.0, 86400.0)
        drain = p.number("DRAIN_TIMEOUT_SECONDS", 120.0, 0.0, 86400.0)
        token = p.text("TOKEN", "") or None
        log_format = p.choice("LOG_FORMAT", "json", LOG_FORMATS)
        log_level = p.choice("LOG_LEVEL", "info", LOG_LEVELS)
        cap = p.optional_number("MAX_PROTECTED_SECONDS", 60.0, 31_536_000.0)
        max_leases = p.integer("MAX_LEASES", 10000, 1, 1_000_000)
        cluster = p.text("CLUSTER", "") or None
        task_arn = p.text("TASK_ARN", "") or None
        # 0 turns stop detection off; otherwise at least a second: the metadata endpoint
        # is shared with the agent's other work and the drain needs no more.
        metadata_poll = p.number("METADATA_POLL_SECONDS", 5.0, 1.0, 3600.0, off=0.0)

        agent_uri = environ.get("ECS_AGENT_URI") or None
        metadata_uri = environ.get("ECS_CONTAINER_METADATA_URI_V4") or None

        backend: BackendName = "local"
        reason = f"TASK_PROTECTION_BACKEND={backend_choice}"
        if backend_choice == "auto":
            backend = _auto_backend(agent_uri, metadata_uri, api_available, problems)
            reason = {
                "agent": "auto: ECS_AGENT_URI is set",
                "api": "auto: on ECS without ECS_AGENT_URI (ECS agent older than 1.65.0)",
                "local": "auto: not on ECS (no ECS_AGENT_URI, no ECS_CONTAINER_METADATA_URI_V4)",
            }[backend]
        elif backend_choice == "agent" and not agent_uri:
            problems.append(
                "TASK_PROTECTION_BACKEND=agent needs ECS_AGENT_URI, which the ECS agent sets "
                "in every container of a task (agent 1.65.0 or newer)"
            )
        elif backend_choice == "local" and metadata_uri:
            problems.append(
                "TASK_PROTECTION_BACKEND=local only simulates protection, but "
                "ECS_CONTAINER_METADATA_URI_V4 is set: this runs on ECS, where the simulation "
                "would tell the app it is protected while ECS is not. Use agent or api"
            )
        elif backend_choice in ("agent", "api", "local"):
            backend = backend_choice  # type: ignore[assignment]

        if backend == "api" and not (cluster and task_arn) and not metadata_uri:
            problems.append(
                "TASK_PROTECTION_BACKEND=api needs the task's identity: "
                "ECS_CONTAINER_METADATA_URI_V4 (set by ECS) or both TASK_PROTECTION_CLUSTER "
                "and TASK_PROTECTION_TASK_ARN"
            )
        if not _is_loopback(host) and not token:
            problems.append(
                f"TASK_PROTECTION_HOST={host!r} is not a loopback address: set "
                "TASK_PROTECTION_TOKEN so that only holders of the token can change protection"
            )
        if token is not None and (
            len(token) < 16 or not token.isascii() or not token.isprintable() or " " in token
        ):
            problems.append(
                "TASK_PROTECTION_TOKEN: must be at least 16 printable ASCII characters without "
                "spaces (it travels in an HTTP header)"
            )

        if problems:
            raise ConfigError(problems)
        return cls(
            host=host,
            port=port,
            backend=backend,
            expires_minutes=expires_minutes,
            idle_grace_seconds=grace,
            drain_timeout_seconds=drain,
            token=token,
            log_format=log_format,  # type: ignore[arg-type]
            log_level=log_level,
            max_protected_seconds=cap,
            max_leases=max_leases,
            agent_uri=agent_uri,
            metadata_uri=metadata_uri,
            cluster=cluster,
            task_arn=task_arn,
            metadata_poll_seconds=metadata_poll,
            backend_reason=reason,
        )

    def describe(self) -> dict[str, object]:
        """The effective configuration for the start-up log line; the token is never shown."""
        return {
            "host": self.host,
            "port": self.port,
            "backend": self.backend,
            "backend_reason": self.backend_reason,
            "expires_minutes": self.expires_minutes,
            "idle_grace_seconds": self.idle_grace_seconds,
            "drain_timeout_seconds": self.drain_timeout_seconds,
            "token": "set" if self.token else "unset",
            "log_format": self.log_format,
            "max_protected_seconds": self.max_protected_seconds,
            "max_leases": self.max_leases,
            "agent_uri": self.agent_uri,
            "metadata_uri": self.metadata_uri,
            "stop_detection": bool(self.metadata_uri and self.metadata_poll_seconds),
            "cluster": self.cluster,
            "task_arn": self.task_arn,
        }


# Flag name -> variable suffix. Flags are spelled like the variables, lower case with dashes.
_FLAGS = {
    "host": "HOST",
    "port": "PORT",
    "backend": "BACKEND",
    "expires_minutes": "EXPIRES_MINUTES",
    "idle_grace_seconds": "IDLE_GRACE_SECONDS",
    "drain_timeout_seconds": "DRAIN_TIMEOUT_SECONDS",
    "token": "TOKEN",
    "log_format": "LOG_FORMAT",
    "log_level": "LOG_LEVEL",
    "max_protected_seconds": "MAX_PROTECTED_SECONDS",
    "max_leases": "MAX_LEASES",
    "cluster": "CLUSTER",
    "task_arn": "TASK_ARN",
    "metadata_poll_seconds": "METADATA_POLL_SECONDS",
}


def build_arg_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ecs-protection-sidecar",
        allow_abbrev=False,  # `--po 5` must not quietly mean --port
        description=(
            "Keep this ECS task's scale-in protection on while the app holds a lease; "
            "drain on SIGTERM. Every flag mirrors a TASK_PROTECTION_* variable and wins over it."
        ),
    )
    for dest, suffix in _FLAGS.items():
        parser.add_argument(
            "--" + dest.replace("_", "-"),
            dest=dest,
            metavar=suffix,
            help=f"overrides TASK_PROTECTION_{suffix}",
        )
    return parser


def _merge(environ: Mapping[str, str], argv: Sequence[str]) -> dict[str, str]:
    raw = {
        suffix: environ[f"TASK_PROTECTION_{suffix}"]
        for suffix in _FLAGS.values()
        if f"TASK_PROTECTION_{suffix}" in environ
    }
    flags = vars(build_arg_parser().parse_args(list(argv)))
    raw.update({_FLAGS[k]: v for k, v in flags.items() if v is not None})
    return raw


def _auto_backend(
    agent_uri: str | None,
    metadata_uri: str | None,
    api_available: Callable[[], bool],
    problems: list[str],
) -> BackendName:
    """`auto`: the agent when it offers the endpoint; never the simulation on ECS."""
    if agent_uri:
        return "agent"
    if not metadata_uri:
        return "local"
    # On ECS (the metadata endpoint is set) without ECS_AGENT_URI: an agent older than
    # 1.65.0. The ECS API works there too, with the same task role permissions.
    if api_available():
        return "api"
    problems.append(
        "TASK_PROTECTION_BACKEND=auto: this runs on ECS (ECS_CONTAINER_METADATA_URI_V4 is "
        "set) but ECS_AGENT_URI is not, so the ECS agent is older than 1.65.0 and has no "
        "task protection endpoint, and boto3 for the api backend is not installed: update "
        "the ECS agent, or use the image with the api backend (ecs-protection-sidecar[api])"
    )
    return "local"


def _installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


_INTEGER = re.compile(r"[0-9]{1,12}")
_NUMBER = re.compile(r"[0-9]{1,12}(\.[0-9]{1,9})?")


class _Parser:
    """Reads raw strings, records a problem per bad value, returns the default for it."""

    def __init__(self, raw: Mapping[str, str], problems: list[str]) -> None:
        self._raw = raw
        self._problems = problems

    def _bad(self, suffix: str, value: str, expected: str) -> None:
        self._problems.append(f"TASK_PROTECTION_{suffix}={value!r}: expected {expected}")

    def text(self, suffix: str, default: str) -> str:
        return self._raw.get(suffix, default).strip()

    def choice(self, suffix: str, default: str, allowed: Sequence[str]) -> str:
        value = self._raw.get(suffix, default).strip().lower()
        if value not in allowed:
            self._bad(suffix, value, "one of " + ", ".join(allowed))
            return default
        return value

    def integer(self, suffix: str, default: int, low: int, high: int) -> int:
        if suffix not in self._raw:
            return default
        value = self._raw[suffix].strip()
        # Plain digits only: int() would also take `1_000` and ` +5`.
        parsed = int(value) if _INTEGER.fullmatch(value) else low - 1
        if not low <= parsed <= high:
            self._bad(suffix, value, f"an integer from {low} to {high}")
            return default
        return parsed

    def number(
        self,
        suffix: str,
        default: float,
        low: float,
        high: float,
        *,
        off: float | None = None,
    ) -> float:
        if suffix not in self._raw:
            return default
        value = self._raw[suffix].strip()
        # Decimal notation only: float() would also take `1_000`, `inf` and `1e400`.
        parsed = float(value) if _NUMBER.fullmatch(value) else math.nan
        if off is not None and parsed == off:
            return parsed
        if not low <= parsed <= high:  # also rejects nan
            allowed = f"from {low:g} to {high:g}" + (
                f", or {off:g} for off" if off is not None else ""
            )
            self._bad(suffix, value, f"a number of seconds {allowed}")
            return default
        return parsed

    def optional_number(self, suffix: str, low: float, high: float) -> float | None:
        if not self._raw.get(suffix, "").strip():
            return None
        return self.number(suffix, low, low, high)
