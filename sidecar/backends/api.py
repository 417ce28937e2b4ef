"""The ECS API through boto3: UpdateTaskProtection / GetTaskProtection for this task.

boto3 is imported here only, so the sidecar starts fast with the other backends.
Calls run in a worker thread (boto3 blocks) with bounded timeouts and retries:
botocore's defaults can stall for minutes, and the machine does its own retrying.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any, Literal

import boto3
from botocore.config import Config as BotoConfig
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectTimeoutError,
    EndpointConnectionError,
    NoCredentialsError,
)

from sidecar.backends.base import (
    BackendError,
    Protection,
    ProtectionRefusedError,
    http_date,
    remaining_seconds,
    switched,
)
from sidecar.metadata import TaskIdentity, task_identity

if TYPE_CHECKING:
    from datetime import datetime

    from mypy_boto3_ecs import ECSClient

CLIENT_CONFIG = BotoConfig(
    connect_timeout=3,
    read_timeout=5,
    retries={"total_max_attempts": 2, "mode": "standard"},
)
RETRYABLE_CODES = frozenset(
    {
        "ThrottlingException",
        "Throttling",
        "RequestLimitExceeded",
        "TooManyRequestsException",
        "ServerException",
        "ServiceUnavailable",
        "ServiceUnavailableException",
        "InternalFailure",
        "RequestTimeout",
        "RequestTimeoutException",
    }
)


class ApiBackend:
    def __init__(
        self,
        *,
        cluster: str | None = None,
        task_arn: str | None = None,
        metadata_uri: str | None = None,
        region: str | None = None,
        client: ECSClient | None = None,
    ) -> None:
        if not (cluster and task_arn) and not metadata_uri:
            raise ValueError("the api backend needs cluster and task ARN, or a metadata URI")
        self._identity = TaskIdentity(cluster, task_arn) if cluster and task_arn else None
        self._metadata_uri = metadata_uri
        self._region = region
        self._client = client

    @property
    def name(self) -> Literal["api"]:
        return "api"

    async def get(self) -> Protection:
        identity, client = await self._prepare()
        return await asyncio.to_thread(
            self._call,
            client.get_task_protection,
            identity,
            cluster=identity.cluster,
            tasks=[identity.task_arn],
        )

    async def set(self, enabled: bool, expires_minutes: int) -> Protection:
        identity, client = await self._prepare()
        params: dict[str, Any] = {
            "cluster": identity.cluster,
            "tasks": [identity.task_arn],
            "protectionEnabled": enabled,
        }
        if enabled:
            params["expiresInMinutes"] = expires_minutes
        answer = await asyncio.to_thread(
            self._call, client.update_task_protection, identity, **params
        )
        return switched(enabled, answer)

    async def close(self) -> None:
        if self._client is not None:
            self._client.close()

    async def _prepare(self) -> tuple[TaskIdentity, ECSClient]:
        if self._identity is None:
            assert self._metadata_uri is not None  # noqa: S101  (checked in __init__)
            self._identity = await task_identity(self._metadata_uri)
        if self._client is None:
            region = self._region or self._identity.region
            # Creating a client reads files and builds a model: keep it off the loop.
            self._client = await asyncio.to_thread(
                boto3.client, "ecs", region_name=region, config=CLIENT_CONFIG
            )
        return self._identity, self._client

    @staticmethod
    def _call(operation: Any, identity: TaskIdentity, **params: Any) -> Protection:  # noqa: ANN401
        try:
            answer = operation(**params)
        except NoCredentialsError as exc:
            raise BackendError(
                "NoCredentials", "no AWS credentials: give the task a task role", retryable=False
            ) from exc
        except ClientError as exc:
            error = exc.response.get("Error", {})
            code = str(error.get("Code") or "ClientError")
            status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
            retryable = code in RETRYABLE_CODES or status == 429 or status >= 500
            raise BackendError(
                code,
                str(error.get("Message") or exc)[:500],
                retryable=retryable,
                status=status or None,
                uncertain=status >= 500,  # ECS may have applied it before failing
            ) from exc
        except (EndpointConnectionError, ConnectTimeoutError) as exc:
            # Never connected: the request did not reach ECS.
            raise BackendError(
                "ConnectionError", f"{type(exc).__name__}: {exc}", retryable=True
            ) from exc
        except BotoCoreError as exc:  # read timeouts, dropped connections: sent, answer lost
            raise BackendError(
                "ConnectionError", f"{type(exc).__name__}: {exc}", retryable=True, uncertain=True
            ) from exc
        return parse_answer(answer, identity)


def parse_answer(answer: dict[str, Any], identity: TaskIdentity) -> Protection:
    """The entry for our task in protectedTasks or failures."""
    for failure in answer.get("failures") or []:
        raise ProtectionRefusedError.from_answer(failure.get("reason"), failure.get("detail"))
    task_id = identity.task_arn.rsplit("/", 1)[-1]
    for task in answer.get("protectedTasks") or []:
        if str(task.get("taskArn", "")).rsplit("/", 1)[-1] == task_id:
            enabled = bool(task.get("protectionEnabled"))
            expires = task.get("expirationDate") if enabled else None
            return Protection(
                enabled=enabled,
                expires_at=expires,
                remaining=remaining_seconds(expires, _date(answer)),
            )
    raise BackendError(
        "InvalidResponse", "the answer does not mention this task", retryable=True, uncertain=True
    )


def _date(answer: dict[str, Any]) -> datetime | None:
    """ECS's own clock: the Date header of its answer."""
    headers = answer.get("ResponseMetadata", {}).get("HTTPHeaders", {})
    value = headers.get("date") if isinstance(headers, dict) else None
    return http_date(value if isinstance(value, str) else None)
