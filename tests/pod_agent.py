"""The ECS side of an emulated task, run as one more container of it (tests/ecs_task.py).

    python -m tests.pod_agent RECORD_DIR [--host 127.0.0.1]

Serves the fake agent's task-protection endpoint (tests/fakes/agent.py) and the task
metadata endpoint v4 (tests/fakes/metadata.py) for one task, each on a port 0 of HOST:
127.0.0.1 of the pod in awsvpc mode, as `169.254.170.2` is for a task on ECS; 0.0.0.0 of
its own namespace in bridge mode. It runs in the sidecar image (which has aiohttp) with
the repository's tests/ mounted read-only, and keeps its record in RECORD_DIR, a folder
the test mounted:

- `ready.json`: `{"agent_port": N, "metadata_port": N, "endpoint": ..., "task_arn": ...}`,
  written (atomically) once both serve;
- `record.jsonl`: one JSON object per line, appended as things happen (`at` = Unix time):
  `{"event": "protection", "enabled", "expires"}` at every change of the task's
  protection as ECS holds it (so the record is the whole history, not samples of it),
  `{"event": "call", "received", "method", "path", "status", "body"}` for every request
  the agent answered (`received`: when it came in), `{"event": "stopping"}` when ECS
  began to stop the task.

Signals: SIGUSR1 is ECS stopping the task: the metadata's `DesiredStatus` becomes
`STOPPED` (what ECS does before it signals any container). SIGTERM: exit 0.
Environment: `AGENT_ECS_LATENCY`, seconds each ECS call takes behind the agent
(the real one takes 0.1-4 s per call).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import time
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from tests.fakes.agent import EcsAnswer, FakeAgent, InMemoryEcs, Task, Update
from tests.fakes.metadata import FakeMetadata

if TYPE_CHECKING:
    from aiohttp import web

ENDPOINT = "task-1"
CLUSTER = "emulated"


class Record:
    """record.jsonl, one line per event, flushed at once: the test reads it while we run."""

    def __init__(self, path: Path) -> None:
        self._file: IO[str] = path.open("a", buffering=1)

    def write(self, event: str, **fields: Any) -> None:
        self._file.write(json.dumps({"at": time.time(), "event": event, **fields}) + "\n")


class RecordedEcs(InMemoryEcs):
    """ECS's protection state, with every change written to the record."""

    def __init__(self, record: Record) -> None:
        super().__init__(time.time)
        self._record = record

    async def __call__(self, task: Task, update: Update | None) -> EcsAnswer:
        before = (task.enabled, task.expires_wall)
        answer = await super().__call__(task, update)
        if (task.enabled, task.expires_wall) != before:
            self._record.write("protection", enabled=task.enabled, expires=task.expires_wall)
        return answer


class RecordedAgent(FakeAgent):
    """The fake agent, with every answered request written to the record."""

    def __init__(self, record: Record) -> None:
        super().__init__()
        self._record = record
        self._written = 0

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        response = await super()._handle(request)
        for call in self.calls[self._written :]:
            self._record.write(
                "call",
                received=call.at,
                method=call.method,
                path=call.path,
                status=call.status,
                body=call.body.decode(errors="replace"),
            )
        self._written = len(self.calls)
        return response


async def serve(record_dir: Path, host: str) -> None:
    record = Record(record_dir / "record.jsonl")
    agent = RecordedAgent(record)
    agent.ecs = RecordedEcs(record)
    agent.ecs_latency = float(os.environ.get("AGENT_ECS_LATENCY", "0"))
    task = agent.add_task(ENDPOINT)
    metadata = FakeMetadata(cluster=CLUSTER, task_arn=task.arn, service="queue-worker")
    await agent.start(host)
    await metadata.start(host)
    agent_port = int(agent.base_url.rsplit(":", 1)[1])
    metadata_port = int(metadata.url.split(":")[2].split("/")[0])

    stopped = asyncio.Event()
    loop = asyncio.get_running_loop()

    def stop_task() -> None:
        metadata.stop_task()
        record.write("stopping")

    loop.add_signal_handler(signal.SIGUSR1, stop_task)
    loop.add_signal_handler(signal.SIGTERM, stopped.set)
    ready = {
        "agent_port": agent_port,
        "metadata_port": metadata_port,
        "endpoint": ENDPOINT,
        "task_arn": task.arn,
    }
    partial = record_dir / "ready.json.partial"
    partial.write_text(json.dumps(ready))
    partial.rename(record_dir / "ready.json")
    await stopped.wait()
    await metadata.close()
    await agent.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("record_dir", type=Path)
    parser.add_argument("--host", default="127.0.0.1")
    args = parser.parse_args()
    asyncio.run(serve(args.record_dir, args.host))


if __name__ == "__main__":
    main()
