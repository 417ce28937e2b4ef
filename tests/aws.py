"""moto with the task-protection shim: an ECS cluster with service and standalone tasks."""

from __future__ import annotations

import logging
import os
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import boto3
from moto.server import ThreadedMotoServer

from tests.fakes import moto_ecs

if TYPE_CHECKING:
    from collections.abc import Iterator

REGION = "us-east-1"
CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SESSION_TOKEN": "testing",
    "AWS_DEFAULT_REGION": REGION,
}


def use_fake_credentials() -> None:
    """Never let a test reach for real credentials (or a real account)."""
    os.environ.update(CREDENTIALS)
    for name in ("AWS_PROFILE", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_ECS"):
        os.environ.pop(name, None)


@dataclass
class Cluster:
    ecs: Any  # a boto3 ECS client
    name: str = "workers"

    def __post_init__(self) -> None:
        self.ecs.create_cluster(clusterName=self.name)
        # No awsvpc here: moto would want real subnets, and protection does not care.
        self.ecs.register_task_definition(
            family="queue-worker",
            containerDefinitions=[{"name": "app", "image": "worker:1", "memory": 256}],
        )

    def run_task(self, *, service: str | None = "queue-worker") -> str:
        """A task started by a service (protectable) or, with service=None, standalone."""
        extra = {"group": f"service:{service}", "startedBy": "ecs-svc/1234"} if service else {}
        tasks = self.ecs.run_task(
            cluster=self.name, taskDefinition="queue-worker", launchType="FARGATE", **extra
        )
        return str(tasks["tasks"][0]["taskArn"])

    def protected(self, task_arn: str) -> bool:
        answer = self.ecs.get_task_protection(cluster=self.name, tasks=[task_arn])
        return bool(answer["protectedTasks"][0]["protectionEnabled"])


@contextmanager
def moto_server() -> Iterator[str]:
    """A ThreadedMotoServer on a loopback port 0, shim installed; yields its URL."""
    use_fake_credentials()
    moto_ecs.install()
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()


def ecs_client(endpoint_url: str | None = None) -> Any:
    return boto3.client("ecs", region_name=REGION, endpoint_url=endpoint_url)
