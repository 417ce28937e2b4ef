"""The sidecar's own lifetime, in process: what serve() starts it also ends. Background
tasks are owned (a failure is seen, and ends the sidecar rather than leaving it half
alive) and the signal handlers are put back however serve() ends."""

from __future__ import annotations

import asyncio
import logging
import signal
import socket

import pytest

from sidecar import app
from sidecar.config import Config
from sidecar.drain import DRAIN_SIGNALS, STRAY_SIGNALS

CAUGHT = (*DRAIN_SIGNALS, *STRAY_SIGNALS)


def handlers() -> dict[int, object]:
    return {signum: signal.getsignal(signum) for signum in CAUGHT}


def listening_port(caplog: pytest.LogCaptureFixture) -> int:
    [line] = [r for r in caplog.records if getattr(r, "event", None) == "listening"]
    return int(line.port)  # type: ignore[attr-defined]


async def test_a_port_in_use_exits_one_with_one_line_and_puts_the_handlers_back(caplog):
    caplog.set_level(logging.INFO)
    before = handlers()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = Config.from_environ({"TASK_PROTECTION_PORT": str(port)})
        assert await asyncio.wait_for(app.serve(config), 30) == 1
    assert handlers() == before
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1
    assert errors[0].getMessage().startswith(f"cannot listen on 127.0.0.1:{port}: ")
    assert errors[0].event == "listen_failed"  # type: ignore[attr-defined]
    assert all(r.exc_info is None for r in caplog.records)


class FailingWatcher:
    """Stop detection that fails the way a bug would: not an error it handles itself."""

    def __init__(self, *_args: object) -> None:
        pass

    async def run(self) -> None:
        # Started after the sidecar listens (serve() starts background tasks then): one
        # turn of the loop, and it breaks.
        await asyncio.sleep(0)
        raise RuntimeError("the watcher broke")


async def test_a_failing_background_task_is_logged_and_ends_the_sidecar(agent, caplog, monkeypatch):
    caplog.set_level(logging.INFO)
    monkeypatch.setattr(app, "StopWatcher", FailingWatcher)
    before = handlers()
    config = Config.from_environ(
        {
            "ECS_AGENT_URI": agent.uri("task-1"),
            "ECS_CONTAINER_METADATA_URI_V4": "http://127.0.0.1:9/v4/none",
            "TASK_PROTECTION_PORT": "0",
        }
    )
    assert await asyncio.wait_for(app.serve(config), 30) == 1
    [failed] = [r for r in caplog.records if getattr(r, "event", None) == "background_failed"]
    assert failed.task == "stop detection"  # type: ignore[attr-defined]
    assert failed.exc_info is not None
    assert "the watcher broke" in str(failed.exc_info[1])
    exiting = [r for r in caplog.records if getattr(r, "event", None) == "exiting"]
    assert "stop detection failed: RuntimeError: the watcher broke" in exiting[-1].getMessage()
    # Nothing is left half alive: the server is closed, the handlers are back.
    with pytest.raises(ConnectionRefusedError):
        await asyncio.open_connection("127.0.0.1", listening_port(caplog))
    assert handlers() == before
    assert not [t for t in asyncio.all_tasks() if t.get_name() in ("stop detection", "EMF")]
