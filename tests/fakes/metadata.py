"""A fake task metadata endpoint v4 on port 0: `/task` (and `/`) as ECS serves them."""

from __future__ import annotations

from typing import Any

from aiohttp import web


def task_document(
    cluster: str, task_arn: str, desired: str = "RUNNING", service: str | None = None
) -> dict[str, Any]:
    document: dict[str, Any] = {
        "Cluster": cluster,
        "TaskARN": task_arn,
        "Family": "queue-worker",
        "Revision": "7",
        "DesiredStatus": desired,
        "KnownStatus": "RUNNING",
        "LaunchType": "FARGATE",
        "AvailabilityZone": "us-east-1a",
        "Containers": [
            {
                "Name": "app",
                "DockerId": "a" * 64,
                "DesiredStatus": desired,
                "KnownStatus": "RUNNING",
            },
            {
                "Name": "protection",
                "DockerId": "b" * 64,
                "DesiredStatus": desired,
                "KnownStatus": "RUNNING",
            },
        ],
    }
    if service is not None:
        document["ServiceName"] = service  # agents 1.63.1 and newer, tasks of a service
    return document


class FakeMetadata:
    def __init__(
        self,
        cluster: str = "test-cluster",
        task_arn: str = "arn:aws:ecs:us-east-1:123456789012:task/test-cluster/abc123",
        service: str | None = None,
    ) -> None:
        self.document = task_document(cluster, task_arn, service=service)
        self.requests = 0
        self.fail_with: int | None = None
        self.raw_once: bytes | None = None  # answered once, as is, to the next /task
        self.url = ""
        self._runner: web.AppRunner | None = None

    def stop_task(self) -> None:
        """What ECS does first when it stops the task."""
        self.document["DesiredStatus"] = "STOPPED"
        for container in self.document["Containers"]:
            container["DesiredStatus"] = "STOPPED"

    async def _task(self, _request: web.Request) -> web.Response:
        self.requests += 1
        if self.fail_with is not None:
            return web.Response(status=self.fail_with, text="unavailable")
        if self.raw_once is not None:
            body, self.raw_once = self.raw_once, None
            return web.Response(body=body, content_type="application/json")
        return web.json_response(self.document)

    async def _container(self, _request: web.Request) -> web.Response:
        return web.json_response(self.document["Containers"][1])

    async def start(self, host: str = "127.0.0.1") -> str:
        app = web.Application()
        app.router.add_get("/v4/abc/task", self._task)
        app.router.add_get("/v4/abc", self._container)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, 0)
        await site.start()
        self.url = f"http://{host}:{self._runner.addresses[0][1]}/v4/abc"
        return self.url

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
