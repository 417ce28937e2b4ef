"""Configuration: one typed, frozen object built from the environment and CLI flags.

Each setting is declared once, as a field of `Config` (name, type, default, bounds,
help); the environment parser, the CLI flags, `--help`, the start-up description and
docs/configuration.md's table (`settings_table()`) are all derived from that
declaration. Flags override variables. Every problem is collected and reported
together, so an operator fixes a task definition in one round trip instead of one per
typo. To add a setting: add one field below, then use it.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.metadata
import importlib.util
import ipaddress
import os
import re
import stat
import urllib.parse
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, get_args

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Mapping, Sequence

BackendName = Literal["agent", "api", "local"]

PREFIX = "TASK_PROTECTION_"
BACKEND_NAMES: tuple[BackendName, ...] = get_args(BackendName)
BACKENDS = ("auto", *BACKEND_NAMES)
# A token file holds a few dozen bytes; anything much larger is the wrong file.
MAX_TOKEN_FILE_BYTES = 4096
LOG_FORMATS = ("json", "text")
LOG_LEVELS = ("debug", "info", "warning", "error")
Kind = Literal["text", "integer", "seconds", "choice"]


class ConfigError(Exception):
    """One or more configuration values are invalid; the message names each of them."""

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems = list(problems)
        super().__init__("; ".join(self.problems))


@dataclass(frozen=True, slots=True)
class Setting:
    """How one field of Config is read: `TASK_PROTECTION_<name>` and `--<name>` (a secret
    has no flag: a command line shows in every process listing)."""

    name: str  # the variable's suffix
    kind: Kind
    help: str
    low: float = 0
    high: float = 0
    choices: tuple[str, ...] = ()
    off: float | None = None  # a value outside [low, high] that means "off"
    optional: bool = False  # empty or unset: None
    secret: bool = False  # never shown, never a flag

    @property
    def env(self) -> str:
        return PREFIX + self.name

    @property
    def flag(self) -> str | None:
        return None if self.secret else _flag(self.name)

    def allowed(self) -> str:
        """The values it accepts, in words, for --help, errors and the docs."""
        if self.kind == "choice":
            return "one of " + ", ".join(self.choices)
        if self.kind == "text":
            return "text"
        unit = "an integer" if self.kind == "integer" else "seconds"
        text = f"{unit} from {_plain(self.low)} to {_plain(self.high)}"
        if self.off is not None:
            text += f", or {_plain(self.off)} for off"
        return text


def setting(  # noqa: PLR0913  (the declaration of one setting, all keywords)
    default: object,
    kind: Kind,
    help: str,  # noqa: A002  (argparse's own word for it)
    *,
    name: str = "",
    low: float = 0,
    high: float = 0,
    choices: tuple[str, ...] = (),
    off: float | None = None,
    secret: bool = False,
) -> Any:  # noqa: ANN401  (a dataclass field, typed by its annotation)
    """Declare a field of Config as a setting (name: the field's name, upper case)."""
    spec = {
        "kind": kind,
        "help": help,
        "low": low,
        "high": high,
        "choices": choices,
        "off": off,
        "secret": secret,
        "name": name,
        "optional": default is None,
    }
    return dataclasses.field(default=default, metadata={"setting": spec})


@dataclass(frozen=True, slots=True)
class Config:
    host: str = setting(
        "127.0.0.1",
        "text",
        "address to listen on; a non-loopback address requires TASK_PROTECTION_TOKEN",
    )
    port: int = setting(31680, "integer", "port to listen on; 0 picks a free one", high=65535)
    backend_choice: str = setting(
        "auto",
        "choice",
        "agent when ECS_AGENT_URI is set; on ECS without it (agent older than 1.65.0) api, "
        "or exit 2 without boto3; local (simulated) only off ECS",
        name="BACKEND",
        choices=BACKENDS,
    )
    expires_minutes: int = setting(
        60, "integer", "ExpiresInMinutes of each enable", low=1, high=2880
    )
    idle_grace_seconds: float = setting(
        10.0, "seconds", "not busy this long: protection is turned off", high=86400
    )
    drain_timeout_seconds: float = setting(
        120.0,
        "seconds",
        "after SIGTERM, exit this long after the drain began even with leases held (exit 3)",
        high=86400,
    )
    token: str | None = setting(
        None,
        "text",
        "at least 16 printable ASCII characters; POSTs then need 'Authorization: Bearer <token>'. "
        "Never a flag; on ECS fill it from Secrets Manager or Parameter Store (`secrets`)",
        secret=True,
    )
    token_file: str | None = setting(
        None,
        "text",
        "a file holding the token instead (one trailing newline is stripped), "
        "e.g. a mounted secret; not together with TASK_PROTECTION_TOKEN",
    )
    log_format: str = setting(
        "json", "choice", "one JSON object per line, or text", choices=LOG_FORMATS
    )
    log_level: str = setting("info", "choice", "the least severe level logged", choices=LOG_LEVELS)
    max_protected_seconds: float | None = setting(
        None,
        "seconds",
        "stop renewing after this long continuously protected (unset: no cap)",
        low=60,
        high=31_536_000,
    )
    max_leases: int = setting(
        10000, "integer", "leases held at most; past it 429 TooManyLeases", low=1, high=1_000_000
    )
    metadata_poll_seconds: float = setting(
        5.0,
        "seconds",
        "stop detection on ECS: how often the task metadata is read",
        low=1,
        high=3600,
        off=0,
    )
    emf_namespace: str | None = setting(
        None,
        "text",
        "CloudWatch namespace: write Embedded Metric Format records to stdout (unset: none)",
    )
    emf_interval_seconds: float = setting(
        60.0,
        "seconds",
        "an EMF record at least this often, besides one at every protection change",
        low=1,
        high=3600,
    )
    cluster: str | None = setting(
        None, "text", "the api backend's cluster, when not read from the task metadata"
    )
    task_arn: str | None = setting(
        None, "text", "the api backend's task ARN, when not read from the task metadata"
    )

    # Derived: from ECS's own variables and the settings above, not settings themselves.
    backend: BackendName = "local"
    backend_reason: str = "default"
    agent_uri: str | None = None
    metadata_uri: str | None = None

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
        problems: list[str] = []
        raw = _merge(environ, argv, problems)
        values: dict[str, Any] = {
            field: _parse(spec, raw.get(spec.name), default, problems)
            for field, spec, default in declared()
        }
        values["token"] = _token(values["token"], values["token_file"], problems)
        agent_uri = _ecs_uri(environ, "ECS_AGENT_URI", problems)
        metadata_uri = _ecs_uri(environ, "ECS_CONTAINER_METADATA_URI_V4", problems)
        backend, reason = _resolve_backend(
            values["backend_choice"], agent_uri, metadata_uri, api_available, problems
        )
        config = cls(
            **values,
            backend=backend,
            backend_reason=reason,
            agent_uri=agent_uri,
            metadata_uri=metadata_uri,
        )
        problems.extend(config._conflicts())
        if problems:
            raise ConfigError(problems)
        return config

    def _conflicts(self) -> Iterator[str]:
        """Problems of settings taken together."""
        if self.backend == "api" and not (self.cluster and self.task_arn) and not self.metadata_uri:
            yield (
                "TASK_PROTECTION_BACKEND=api needs the task's identity: "
                "ECS_CONTAINER_METADATA_URI_V4 (set by ECS) or both TASK_PROTECTION_CLUSTER "
                "and TASK_PROTECTION_TASK_ARN"
            )
        if not _is_loopback(self.host) and not self.token:
            yield (
                f"TASK_PROTECTION_HOST={self.host!r} is not a loopback address: set "
                "TASK_PROTECTION_TOKEN so that only holders of the token can change protection"
            )
        token = self.token
        if token is not None and (
            len(token) < 16 or not token.isascii() or not token.isprintable() or " " in token
        ):
            source = (
                f"the token in TASK_PROTECTION_TOKEN_FILE={self.token_file!r}"
                if self.token_file
                else "TASK_PROTECTION_TOKEN"
            )
            yield (
                f"{source}: must be at least 16 printable ASCII characters without "
                "spaces (it travels in an HTTP header)"
            )

    def describe(self) -> dict[str, object]:
        """The effective configuration for the start-up log line; secrets are never shown."""
        described: dict[str, object] = {}
        for field, spec, _ in declared():
            value = getattr(self, field)
            if spec.secret:
                value = "set" if value else "unset"
            described[spec.name.lower()] = value
        described.update(
            backend=self.backend,
            backend_reason=self.backend_reason,
            agent_uri=self.agent_uri,
            metadata_uri=self.metadata_uri,
            stop_detection=bool(self.metadata_uri and self.metadata_poll_seconds),
        )
        return described


def declared() -> Iterator[tuple[str, Setting, Any]]:
    """(field name, Setting, default) for every setting of Config, in declaration order."""
    for field in dataclasses.fields(Config):
        spec = field.metadata.get("setting")
        if spec is not None:
            name = spec["name"] or field.name.upper()
            yield field.name, Setting(**{**spec, "name": name}), field.default


def build_arg_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ecs-protection-sidecar",
        description=(
            "Keep this ECS task's scale-in protection on while the app holds a lease; "
            "drain on SIGTERM. Every flag mirrors a TASK_PROTECTION_* variable and wins over it."
        ),
        allow_abbrev=False,  # `--po 5` must not quietly mean --port
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {version()}")
    secrets = []
    for _, spec, default in declared():
        if spec.flag is None:
            secrets.append(spec.env)
            continue
        parser.add_argument(
            spec.flag,
            dest=spec.name,
            metavar=spec.name,
            help=f"{spec.help}. {spec.allowed()}; default {_shown(default)} ({spec.env})",
        )
    parser.epilog = (
        "Secrets are never flags (a command line shows in every process listing): set "
        f"{', '.join(secrets)} in the environment."
        if secrets
        else None
    )
    return parser


def settings_table() -> str:
    """docs/configuration.md's settings table, from the declarations."""
    rows = ["| variable | flag | default | allowed | what |", "|---|---|---|---|---|"]
    for _, spec, default in declared():
        shown = _shown(default)
        shown = shown if default is None else f"`{shown}`"
        flag = "none (a secret)" if spec.flag is None else f"`{spec.flag}`"
        rows.append(f"| `{spec.env}` | {flag} | {shown} | {spec.allowed()} | {spec.help} |")
    return "\n".join(rows)


def _shown(default: object) -> str:
    if default is None:
        return "unset"
    return _plain(default) if isinstance(default, float) else str(default)


def _plain(number: float) -> str:
    """31536000, not 3.1536e+07; 0.5 stays 0.5."""
    return str(int(number)) if number == int(number) else f"{number}"


def version() -> str:
    try:
        return importlib.metadata.version("ecs-protection-sidecar")
    except importlib.metadata.PackageNotFoundError:  # pragma: no cover - not installed
        return "unknown"


def _flag(name: str) -> str:
    return "--" + name.lower().replace("_", "-")


def _merge(environ: Mapping[str, str], argv: Sequence[str], problems: list[str]) -> dict[str, str]:
    """Raw values by setting name: the variables, then the flags over them."""
    names = [spec.name for _, spec, _ in declared()]
    raw = {name: environ[PREFIX + name] for name in names if PREFIX + name in environ}
    flags = vars(build_arg_parser().parse_args(_without_secret_flags(argv, problems)))
    raw.update({name: value for name, value in flags.items() if value is not None})
    return raw


def _without_secret_flags(argv: Sequence[str], problems: list[str]) -> list[str]:
    """argv less any flag a secret would have (and its value), each one a problem that
    points at the variable instead; the value itself is never repeated."""
    secret = {_flag(spec.name): spec for _, spec, _ in declared() if spec.flag is None}
    variables = {spec.env for _, spec, _ in declared()}
    kept: list[str] = []
    skip_value = False
    for arg in argv:
        if skip_value:
            skip_value = False
            if not arg.startswith("-"):
                continue
        name = arg.split("=", 1)[0]
        spec = secret.get(name)
        if spec is None:
            kept.append(arg)
            continue
        skip_value = "=" not in arg
        from_file = f"{spec.env}_FILE"
        alternatives = f"{spec.env} or {from_file}" if from_file in variables else spec.env
        problems.append(
            f"{name}: a secret is never a flag (a command line shows in every process "
            f"listing); set {alternatives} in the environment instead"
        )
    return kept


def _token(token: str | None, path: str | None, problems: list[str]) -> str | None:
    """The token, from TASK_PROTECTION_TOKEN or the file TASK_PROTECTION_TOKEN_FILE names."""
    if path is None:
        return token
    if token is not None:
        problems.append(
            "TASK_PROTECTION_TOKEN and TASK_PROTECTION_TOKEN_FILE are both set: set one of them"
        )
        return token
    try:
        data = read_small_file(path, MAX_TOKEN_FILE_BYTES + 1)
    except OSError as exc:
        problems.append(f"TASK_PROTECTION_TOKEN_FILE={path!r} cannot be read: {exc.strerror}")
        return None
    if len(data) > MAX_TOKEN_FILE_BYTES:
        problems.append(
            f"TASK_PROTECTION_TOKEN_FILE={path!r} is larger than {MAX_TOKEN_FILE_BYTES} bytes: "
            "not a token"
        )
        return None
    # One trailing line end (LF, or CRLF from an editor on Windows), as the client reads
    # the same file; anything else is kept, so that a stray character fails the token
    # check instead of changing the token.
    for line_end in (b"\r\n", b"\n"):
        if data.endswith(line_end):
            data = data[: -len(line_end)]
            break
    text = data.decode("utf-8", errors="replace")
    if not text:
        problems.append(f"TASK_PROTECTION_TOKEN_FILE={path!r} is empty")
        return None
    return text


# Decimal notation only: int() and float() would also take `1_000`, ` +5`, `inf`, `1e400`.
_INTEGER = re.compile(r"[0-9]{1,12}")
_NUMBER = re.compile(r"[0-9]{1,12}(\.[0-9]{1,9})?")


def _parse(spec: Setting, raw: str | None, default: object, problems: list[str]) -> object:
    """One setting's value; a problem recorded (and the default kept) when it is bad."""
    if raw is None:
        return default
    value = raw.strip()
    if spec.optional and not value:
        return None
    if spec.kind == "text":
        return value or default
    converted = _convert(spec, value)
    if converted is None:
        problems.append(f"{spec.env}={value!r}: expected {spec.allowed()}")
        return default
    return converted


def _convert(spec: Setting, value: str) -> str | float | None:
    """A choice, integer or number of seconds within its bounds, or None."""
    if spec.kind == "choice":
        return value.lower() if value.lower() in spec.choices else None
    if spec.kind == "integer":
        number: float = int(value) if _INTEGER.fullmatch(value) else -1
        return int(number) if spec.low <= number <= spec.high else None
    number = float(value) if _NUMBER.fullmatch(value) else -1.0
    return number if number == spec.off or spec.low <= number <= spec.high else None


def _resolve_backend(
    choice: str,
    agent_uri: str | None,
    metadata_uri: str | None,
    api_available: Callable[[], bool],
    problems: list[str],
) -> tuple[BackendName, str]:
    """The backend to use and why. Never the simulation on ECS."""
    if choice == "auto":
        return _auto_backend(agent_uri, metadata_uri, api_available, problems)
    if choice == "agent" and not agent_uri:
        problems.append(
            "TASK_PROTECTION_BACKEND=agent needs ECS_AGENT_URI, which the ECS agent sets "
            "in every container of a task (agent 1.65.0 or newer)"
        )
        return "local", "unusable"
    if choice == "local" and metadata_uri:
        problems.append(
            "TASK_PROTECTION_BACKEND=local only simulates protection, but "
            "ECS_CONTAINER_METADATA_URI_V4 is set: this runs on ECS, where the simulation "
            "would tell the app it is protected while ECS is not. Use agent or api"
        )
        return "local", "unusable"
    return _backend_named(choice), f"TASK_PROTECTION_BACKEND={choice}"


def _backend_named(choice: str) -> BackendName:
    """The backend `choice` names; the choices were checked against BACKENDS on parsing."""
    for name in BACKEND_NAMES:
        if name == choice:
            return name
    raise ValueError(f"TASK_PROTECTION_BACKEND={choice!r}: not a backend")


def _auto_backend(
    agent_uri: str | None,
    metadata_uri: str | None,
    api_available: Callable[[], bool],
    problems: list[str],
) -> tuple[BackendName, str]:
    if agent_uri:
        return "agent", "auto: ECS_AGENT_URI is set"
    if not metadata_uri:
        return "local", "auto: not on ECS (no ECS_AGENT_URI, no ECS_CONTAINER_METADATA_URI_V4)"
    # On ECS (the metadata endpoint is set) without ECS_AGENT_URI: an agent older than
    # 1.65.0. The ECS API works there too, with the same task role permissions.
    if api_available():
        return "api", "auto: on ECS without ECS_AGENT_URI (ECS agent older than 1.65.0)"
    problems.append(
        "TASK_PROTECTION_BACKEND=auto: this runs on ECS (ECS_CONTAINER_METADATA_URI_V4 is "
        "set) but ECS_AGENT_URI is not, so the ECS agent is older than 1.65.0 and has no "
        "task protection endpoint, and boto3 for the api backend is not installed: update "
        "the ECS agent, or use the image with the api backend (ecs-protection-sidecar[api])"
    )
    return "local", "unusable"


def _ecs_uri(environ: Mapping[str, str], name: str, problems: list[str]) -> str | None:
    """A URL ECS sets (http://169.254.170.2/...): checked, so a mangled one (a task
    definition overriding it, say) fails at start instead of at every call."""
    value = environ.get(name, "").strip()
    if not value:
        return None
    try:
        url = urllib.parse.urlsplit(value)
        valid = url.scheme in ("http", "https") and bool(url.hostname) and url.port != 0
    except ValueError:
        valid = False
    if not valid or url.query or url.fragment:
        problems.append(f"{name}={value!r}: expected an http:// URL without query or fragment")
        return None
    return value


def _installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def read_small_file(path: str, limit: int) -> bytes:
    """At most `limit` bytes of the regular file `path`; OSError for anything else.

    Opened without blocking and checked before reading: a FIFO (or a device) named by
    mistake would block the open or the read for good, before the signal handlers can
    end the process.
    """
    descriptor = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        if not stat.S_ISREG(os.fstat(descriptor).st_mode):
            raise OSError(0, "not a regular file")
        os.set_blocking(descriptor, True)
        with os.fdopen(descriptor, "rb", closefd=False) as file:
            return file.read(limit)
    finally:
        os.close(descriptor)
