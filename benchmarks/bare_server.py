"""The floor to compare against: aiohttp handlers that read the body and answer small JSON."""

from __future__ import annotations

import sys

from aiohttp import web


async def handle(request: web.Request) -> web.Response:
    await request.read()
    return web.json_response({"lease": "default", "protected": True, "leases": 1})


def main() -> None:
    app = web.Application()
    app.router.add_post("/busy", handle)
    app.router.add_post("/idle", handle)
    app.router.add_get("/healthz", handle)
    web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), access_log=None, print=None)


if __name__ == "__main__":
    main()
