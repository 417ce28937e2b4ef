"""UpdateTaskProtection / GetTaskProtection for moto, which does not implement them.

moto looks up an action as a method of EC2ContainerServiceResponse at request time, so
adding the two methods there serves them under `mock_aws` and `ThreadedMotoServer`
alike. State lives on the ECS backend, keyed by task ARN. Semantics follow the ECS API:
1-10 tasks per update and 1-100 per get, ExpiresInMinutes 1-2880 (default 120), each
enable resets the expiry, `MISSING` for unknown tasks, `TASK_NOT_VALID` for tasks not
started by a service.

`install()` refuses to overwrite an implementation that moto itself provides: when a
moto release implements the operations, this shim fails loudly instead of hiding them.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from moto.core.responses import ActionResult
from moto.ecs.exceptions import InvalidParameterException
from moto.ecs.responses import EC2ContainerServiceResponse

if TYPE_CHECKING:
    from moto.ecs.models import EC2ContainerServiceBackend, Task

OPERATIONS = ("update_task_protection", "get_task_protection")
_MARK = "_ecs_protection_shim"

# Wall clock used for expiry; tests may replace it to move time.
clock = time.time


class ShimConflictError(RuntimeError):
    """moto implements the operation itself: remove this shim."""


def install(target: type = EC2ContainerServiceResponse) -> None:
    for name in OPERATIONS:
        existing = target.__dict__.get(name)
        if existing is not None and not getattr(existing, _MARK, False):
            raise ShimConflictError(
                f"moto now implements {target.__name__}.{name}: delete tests/fakes/moto_ecs.py "
                "and use moto's implementation"
            )
    setattr(target, "update_task_protection", _update_task_protection)  # noqa: B010
    setattr(target, "get_task_protection", _get_task_protection)  # noqa: B010


def _state(backend: EC2ContainerServiceBackend) -> dict[str, float | None]:
    """Task ARN -> expiry (epoch seconds) while protected, None when not."""
    if not hasattr(backend, "_task_protection"):
        backend._task_protection = {}  # type: ignore[attr-defined]
    return backend._task_protection  # type: ignore[attr-defined,no-any-return]


def _find(backend: EC2ContainerServiceBackend, cluster: str, ref: str) -> Task | None:
    cluster_name = backend._get_cluster(cluster).name
    for arn, task in backend.tasks.get(cluster_name, {}).items():
        if ref in (arn, arn.rsplit("/", 1)[-1]):
            return task
    return None


def _started_by_service(task: Task) -> bool:
    return str(task.group or "").startswith("service:") or str(task.started_by or "").startswith(
        "ecs-svc/"
    )


def _entry(task: Task, expiry: float | None) -> dict[str, Any]:
    protected = expiry is not None and expiry > clock()
    return {
        "taskArn": task.task_arn,
        "protectionEnabled": protected,
        "expirationDate": datetime.fromtimestamp(expiry, UTC) if protected and expiry else None,
    }


def _lookup(
    backend: EC2ContainerServiceBackend, cluster: str, refs: list[str], limit: int
) -> tuple[list[Task], list[dict[str, Any]]]:
    if not refs or len(refs) > limit:
        raise InvalidParameterException(f"tasks must hold 1 to {limit} task ARNs or IDs")
    found: list[Task] = []
    failures: list[dict[str, Any]] = []
    for ref in refs:
        task = _find(backend, cluster, ref)
        if task is None:
            failures.append({"arn": ref, "reason": "MISSING"})
        elif not _started_by_service(task) or task.desired_status == "STOPPED":
            failures.append(
                {
                    "arn": task.task_arn,
                    "reason": "TASK_NOT_VALID",
                    "detail": "The task is not part of an active service deployment",
                }
            )
        else:
            found.append(task)
    return found, failures


def _update_task_protection(self: EC2ContainerServiceResponse) -> ActionResult:
    backend = self.ecs_backend
    cluster = self._get_param("cluster", "default")
    enabled = self._get_param("protectionEnabled")
    minutes = self._get_param("expiresInMinutes", 120) if enabled else None
    if minutes is not None and not 1 <= int(minutes) <= 2880:
        raise InvalidParameterException("expiresInMinutes must be between 1 and 2880")
    tasks, failures = _lookup(backend, cluster, self._get_param("tasks", []), 10)
    state = _state(backend)
    for task in tasks:
        state[task.task_arn] = clock() + int(minutes) * 60 if minutes is not None else None
    return ActionResult(
        {
            "protectedTasks": [_entry(task, state[task.task_arn]) for task in tasks],
            "failures": failures,
        }
    )


def _get_task_protection(self: EC2ContainerServiceResponse) -> ActionResult:
    backend = self.ecs_backend
    tasks, failures = _lookup(
        backend, self._get_param("cluster", "default"), self._get_param("tasks", []), 100
    )
    state = _state(backend)
    return ActionResult(
        {
            "protectedTasks": [_entry(task, state.get(task.task_arn)) for task in tasks],
            "failures": failures,
        }
    )


for _operation in (_update_task_protection, _get_task_protection):
    setattr(_operation, _MARK, True)
