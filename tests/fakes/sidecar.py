"""A fake sidecar for client unit tests: the v1 API shape, scripted answers, a request log."""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from tests.fakes.threaded import ThreadedServer, serve_app


@dataclass
class Seen:
    method: str
    path: str
    body: dict[str, Any]
    authorization: str | None


@dataclass
class FakeSidecar:
    """Keeps leases like the sidecar; `busy_error` forces an error answer to new leases."""

    leases: set[str] = field(default_factory=set)
    seen: list[Seen] = field(default_factory=list)
    busy_error: tuple[int, str] | None = None  # (status, code) for /busy
    draining: bool = False
    max_concurrent: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/busy", self._busy)
        app.router.add_post("/idle", self._idle)
        app.router.add_get("/state", self._state)
        return app

    def _record(self, request: web.Request, body: dict[str, Any]) -> None:
        with self.lock:
            self.seen.append(
                Seen(request.method, request.path, body, request.headers.get("Authorization"))
            )

    def posts(self, path: str) -> list[dict[str, Any]]:
        with self.lock:
            return [s.body for s in self.seen if s.path == path]

    async def _busy(self, request: web.Request) -> web.Response:
        body = json.loads(await request.read() or b"{}")
        self._record(request, body)
        lease = body.get("lease", "default")
        new = lease not in self.leases
        if self.draining and new:
            return _error(503, "Draining", lease, len(self.leases))
        if self.busy_error is not None:
            status, code = self.busy_error
            if code != "Draining":
                self.leases.add(lease)
            return _error(status, code, lease, len(self.leases))
        self.leases.add(lease)
        self.max_concurrent = max(self.max_concurrent, len(self.leases))
        return web.json_response(
            {
                "lease": lease,
                "protected": True,
                "expires_at": "2026-11-27T21:30:33.895Z",
                "leases": len(self.leases),
            }
        )

    async def _idle(self, request: web.Request) -> web.Response:
        body = json.loads(await request.read() or b"{}")
        self._record(request, body)
        lease = body.get("lease", "default")
        released = lease in self.leases
        self.leases.discard(lease)
        return web.json_response({"released": released, "leases": len(self.leases)})

    async def _state(self, request: web.Request) -> web.Response:
        self._record(request, {})
        return web.json_response(
            {
                "busy": bool(self.leases),
                "leases": [
                    {"lease": lease, "since": None, "expires_at": None}
                    for lease in sorted(self.leases)
                ],
                "protection": {
                    "enabled": bool(self.leases),
                    "expires_at": None,
                    "backend": "local",
                    "last_error": None,
                    "calls": 0,
                },
                "draining": self.draining,
                "drain_deadline": None,
            }
        )


def _error(status: int, code: str, lease: str, leases: int) -> web.Response:
    return web.json_response(
        {
            "error": {"code": code, "message": f"scripted {code}"},
            "lease": lease,
            "protected": False,
            "leases": leases,
        },
        status=status,
    )


def threaded(fake: FakeSidecar) -> ThreadedServer:
    runner: list[web.AppRunner] = []

    async def start() -> str:
        started, url = await serve_app(fake.app())
        runner.append(started)
        return url

    async def stop() -> None:
        await runner[0].cleanup()

    return ThreadedServer(start, stop)
