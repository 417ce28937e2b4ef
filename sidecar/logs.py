"""Logging: one JSON object per line (CloudWatch-friendly) or plain text for people."""

from __future__ import annotations

import logging
import sys
from typing import Any

from pythonjsonlogger.json import JsonFormatter

from sidecar.clock import rfc3339
from sidecar.output import LineWriter, stream_fd

# Attributes every LogRecord has; anything else on a record came in through `extra`.
_STANDARD = set(logging.makeLogRecord({}).__dict__) | {"message", "asctime", "taskName"}


class _Json(JsonFormatter):
    def add_fields(
        self, log_record: dict[str, Any], record: logging.LogRecord, message_dict: dict[str, Any]
    ) -> None:
        super().add_fields(log_record, record, message_dict)
        log_record["time"] = rfc3339(record.created)
        # A stable name for what happened, so CloudWatch Logs Insights queries need not
        # match message text; lines from libraries are plain "log".
        log_record.setdefault("event", "log")


class _Text(logging.Formatter):
    """Message first, then the structured fields as key=value, so nothing is lost."""

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        extras = {k: v for k, v in record.__dict__.items() if k not in _STANDARD}
        if extras:
            line += " " + " ".join(f"{k}={v}" for k, v in extras.items())
        return line


class _LineHandler(logging.Handler):
    """Each record as one line through a LineWriter: logging never blocks the event loop,
    even when nobody reads stderr (see output.py)."""

    def __init__(self, fd: int) -> None:
        super().__init__()
        self.writer = LineWriter(fd, on_recovered=self._recovered)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.writer.write(self.format(record))
        except Exception:  # noqa: BLE001  (logging's own rule: a log line never raises)
            self.handleError(record)

    def _recovered(self, dropped: int) -> None:
        record = logging.makeLogRecord(
            {
                "name": "sidecar.logs",
                "levelno": logging.WARNING,
                "levelname": "WARNING",
                "msg": "%d log line(s) dropped: stderr was not being read",
                "args": (dropped,),
                "event": "log_lines_dropped",
                "dropped": dropped,
            }
        )
        self.writer.write(self.format(record))


_handler: _LineHandler | None = None


def flush(timeout: float) -> bool:
    """Write out the lines still queued, for at most `timeout` seconds (at exit)."""
    return _handler is None or _handler.writer.flush(timeout)


def setup(log_format: str, level: str = "info") -> None:
    global _handler  # noqa: PLW0603  (one handler for the process, made at start)
    fd = stream_fd(sys.stderr)
    if fd is None:  # started without a stderr: nowhere to log
        logging.getLogger().handlers[:] = [logging.NullHandler()]
        return
    if _handler is None:
        _handler = _LineHandler(fd)
    handler: logging.Handler = _handler
    if log_format == "json":
        handler.setFormatter(
            _Json(
                "{levelname}{name}{message}",
                style="{",
                rename_fields={"levelname": "level", "name": "logger"},
            )
        )
    else:
        handler.setFormatter(_Text("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # aiohttp's access log would print a line per /busy and /idle: far too chatty here.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
