"""The API's error answers: `{"error": {"code", "message"[, "field"]}}` plus context."""

from __future__ import annotations

from typing import Any

from aiohttp import web


class ApiError(Exception):
    """An answer other than 2xx; `extra` adds context beside `error` (the lease view)."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        extra: dict[str, Any] | None = None,
        *,
        field: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.extra = extra or {}
        self.field = field


def error_response(  # noqa: PLR0913  (the parts of one error body, all keywords but two)
    status: int,
    code: str,
    message: str,
    extra: dict[str, Any] | None = None,
    headers: dict[str, str] | None = None,
    *,
    field: str | None = None,
) -> web.Response:
    error: dict[str, Any] = {"code": code, "message": message}
    if field is not None:
        error["field"] = field
    body: dict[str, Any] = {"error": error}
    if extra:
        body.update(extra)
    return web.json_response(body, status=status, headers=headers)
