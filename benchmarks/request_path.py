"""Cost of a /busy + /idle pair through the sidecar (while protected) vs a bare aiohttp handler.

Both servers run as separate processes on loopback and are driven by the same
keep-alive aiohttp client, in alternating rounds so that machine noise hits both
alike. Prints the median time per pair for each and their ratio.

    python -m benchmarks.request_path [--pairs 2000] [--rounds 5]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import aiohttp

from tests.support import free_port

HERE = Path(__file__).resolve().parent


def start(cmd: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


async def wait_healthy(session: aiohttp.ClientSession, url: str) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            async with session.get(url + "/healthz") as response:
                if response.status == 200:
                    return
        except aiohttp.ClientError:
            pass
        await asyncio.sleep(0.05)
    raise SystemExit(f"{url} did not come up")


async def pairs(session: aiohttp.ClientSession, url: str, count: int, lease: str) -> float:
    """Seconds per /busy + /idle pair, averaged over `count` sequential pairs."""
    body = {"lease": lease}
    began = time.perf_counter()
    for _ in range(count):
        async with session.post(url + "/busy", json=body) as response:
            await response.read()
            if response.status != 200:
                raise SystemExit(f"/busy answered {response.status}")
        async with session.post(url + "/idle", json=body) as response:
            await response.read()
    return (time.perf_counter() - began) / count


async def main(pair_count: int, rounds: int) -> None:
    sidecar_port, bare_port = free_port(), free_port()
    env = {
        **os.environ,
        "TASK_PROTECTION_PORT": str(sidecar_port),
        "TASK_PROTECTION_BACKEND": "local",
        "TASK_PROTECTION_LOG_LEVEL": "warning",
    }
    env.pop("ECS_AGENT_URI", None)
    procs = [
        start([sys.executable, "-m", "sidecar"], env),
        start([sys.executable, str(HERE / "bare_server.py"), str(bare_port)], dict(os.environ)),
    ]
    sidecar_url = f"http://127.0.0.1:{sidecar_port}"
    bare_url = f"http://127.0.0.1:{bare_port}"
    try:
        connector = aiohttp.TCPConnector(limit=1)
        async with aiohttp.ClientSession(connector=connector) as session:
            await wait_healthy(session, sidecar_url)
            await wait_healthy(session, bare_url)
            # Protection on, and a second lease held so each pair is a pure ref-count change.
            async with session.post(sidecar_url + "/busy", json={"lease": "holder"}) as r:
                if r.status != 200:
                    raise SystemExit(f"/busy answered {r.status}: {await r.text()}")
            await pairs(session, sidecar_url, 200, "warm")
            await pairs(session, bare_url, 200, "warm")
            sidecar_times, bare_times = [], []
            for _ in range(rounds):
                sidecar_times.append(await pairs(session, sidecar_url, pair_count, "job"))
                bare_times.append(await pairs(session, bare_url, pair_count, "job"))
            async with session.post(sidecar_url + "/release") as r:
                await r.read()  # so that SIGTERM below drains at once
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(timeout=10)
    side, bare = statistics.median(sidecar_times), statistics.median(bare_times)
    print(f"{'server':<28}{'us per /busy+/idle pair':>26}{'pairs/s':>10}")
    print(f"{'sidecar (protected)':<28}{side * 1e6:>26.0f}{1 / side:>10.0f}")
    print(f"{'bare aiohttp handler':<28}{bare * 1e6:>26.0f}{1 / bare:>10.0f}")
    print(
        f"ratio sidecar / bare: {side / bare:.2f}x  (median of {rounds} rounds x {pair_count} "
        f"pairs, keep-alive aiohttp client, {os.cpu_count()} cores)"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    asyncio.run(main(args.pairs, args.rounds))
