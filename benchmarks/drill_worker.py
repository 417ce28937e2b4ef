"""One simulated task's app container in the drill: polls SQS, works, deletes, journals.

    python benchmarks/drill_worker.py MODE QUEUE_URL JOURNAL

MODE none: no protection and no SIGTERM handling, like most workers.
MODE naive: PUT protection on and off around every job, as the common samples do.
MODE sidecar: busy() around every job, and GracefulShutdown for SIGTERM.
The journal gets "<time> start <job>" and "<time> done <job>" lines.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import boto3
import requests

from ecs_protection import Client, GracefulShutdown, busy


def main() -> None:
    mode, queue_url, journal_path = sys.argv[1:4]
    sqs = boto3.client("sqs", endpoint_url=os.environ["DRILL_MOTO_URL"])
    journal = Path(journal_path).open("a", buffering=1)  # noqa: SIM115  (lives as we do)
    shutdown = GracefulShutdown().install() if mode == "sidecar" else None
    client = Client() if mode == "sidecar" else None
    agent = requests.Session()
    agent_url = os.environ.get("ECS_AGENT_URI", "") + "/task-protection/v1/state"

    def note(event: str, job: str) -> None:
        journal.write(f"{time.time():.6f} {event} {job}\n")

    def work(message: dict[str, Any]) -> None:
        job = json.loads(message["Body"])
        note("start", job["id"])
        time.sleep(job["seconds"])
        # Journal first: a worker killed before the delete leaves the message to be
        # delivered again (done twice, counted once), never a finished job unrecorded.
        note("done", job["id"])
        sqs.delete_message(QueueUrl=queue_url, ReceiptHandle=message["ReceiptHandle"])

    def naive_protect(*, enabled: bool) -> None:
        body: dict[str, Any] = {"ProtectionEnabled": enabled}
        if enabled:
            body["ExpiresInMinutes"] = 60
        with contextlib.suppress(requests.RequestException):  # as the samples do: carry on
            agent.put(agent_url, json=body, timeout=10)

    while shutdown is None or not shutdown.requested:
        messages = sqs.receive_message(
            QueueUrl=queue_url, MaxNumberOfMessages=1, WaitTimeSeconds=1
        ).get("Messages", [])
        if not messages:
            continue
        if mode == "sidecar":
            with busy(client=client, ttl=30):
                work(messages[0])
        elif mode == "naive":
            naive_protect(enabled=True)
            try:
                work(messages[0])
            finally:
                naive_protect(enabled=False)
        else:
            work(messages[0])


if __name__ == "__main__":
    main()
