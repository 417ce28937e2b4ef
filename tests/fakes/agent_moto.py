"""Plug moto into the fake agent: PUT and GET become UpdateTaskProtection and
GetTaskProtection calls on the ECS API. The fake agent wraps each call as the real agent
does (SDK retries; the 4 s deadline, past which it answers 504 while the change still
lands at moto), and counts every ECS call it makes."""

from __future__ import annotations

import asyncio
import threading
from typing import TYPE_CHECKING, Any

from botocore.exceptions import ClientError

from tests.fakes.agent import EcsAnswer

if TYPE_CHECKING:
    from tests.fakes.agent import Task, Update


class MotoEcs:
    """The agent's side of the ECS API, for one cluster; counts the calls it makes."""

    def __init__(self, client: Any, cluster: str) -> None:
        self._client = client
        self._cluster = cluster
        self._lock = threading.Lock()
        self.updates = 0
        self.gets = 0

    async def __call__(self, task: Task, update: Update | None) -> EcsAnswer:
        try:
            answer = await asyncio.to_thread(self._call, task, update)
        except ClientError as exc:
            error = exc.response["Error"]
            status = exc.response["ResponseMetadata"]["HTTPStatusCode"]
            return EcsAnswer(status, code=error["Code"], message=error.get("Message", ""))
        for failure in answer.get("failures", []):
            return EcsAnswer(failure=(failure["reason"], failure.get("detail")))
        entry = answer["protectedTasks"][0]
        expires = entry.get("expirationDate")
        return EcsAnswer(
            enabled=bool(entry["protectionEnabled"]),
            expires_wall=expires.timestamp() if expires else None,
        )

    def _call(self, task: Task, update: Update | None) -> Any:
        with self._lock:
            if update is None:
                self.gets += 1
            else:
                self.updates += 1
        if update is None:
            return self._client.get_task_protection(cluster=self._cluster, tasks=[task.arn])
        enabled, minutes = update
        params: dict[str, Any] = {
            "cluster": self._cluster,
            "tasks": [task.arn],
            "protectionEnabled": bool(enabled),
        }
        if enabled and minutes is not None:
            params["expiresInMinutes"] = minutes
        return self._client.update_task_protection(**params)
