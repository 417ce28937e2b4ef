"""Load: 1,000 concurrent leases from 64 clients while the backend is slow and throttling."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp

from tests.fakes import agent as fa
from tests.processes import SidecarProcess
from tests.sidecar_fixture import running_sidecar

CLIENTS = 64
LEASES = 1000


async def test_a_thousand_leases_from_64_clients_while_the_backend_struggles(aiohttp_client, agent):
    agent.fail_always(fa.delay(0.2, methods=("PUT",)))  # slow...
    agent.fail(fa.ecs_error(), times=3)  # ...and throttling first
    async with running_sidecar(aiohttp_client, agent, max_leases=LEASES) as sidecar:
        base = str(sidecar.client.make_url(""))
        # How many /busy answers had come when each /healthz answer came: counts, not
        # seconds, so that a slow machine slows both sides alike.
        busy_answers_at_health: list[int] = []
        statuses: list[int] = []

        async def worker(n: int, session: aiohttp.ClientSession) -> None:
            for i in range(n, LEASES, CLIENTS):
                body = {"lease": f"job-{i}", "ttl_seconds": 600, "wait_seconds": 0.05}
                async with session.post(base + "/busy", json=body) as answer:
                    statuses.append(answer.status)

        async def health(session: aiohttp.ClientSession, stop: asyncio.Event) -> None:
            while not stop.is_set():
                async with session.get(base + "/healthz") as answer:
                    assert answer.status == 200
                busy_answers_at_health.append(len(statuses))
                await asyncio.sleep(0.01)

        connector = aiohttp.TCPConnector(limit=CLIENTS + 1)
        async with aiohttp.ClientSession(connector=connector) as session:
            stop = asyncio.Event()
            watcher = asyncio.create_task(health(session, stop))
            await asyncio.gather(*(worker(n, session) for n in range(CLIENTS)))
            stop.set()
            await watcher

        assert len(statuses) == LEASES
        assert set(statuses) <= {200, 503}  # confirmed, or kept while the backend struggles
        _, state = await sidecar.get("/state")
        assert state["lease_count"] == LEASES  # nothing lost
        assert all(sidecar.service.holds(f"job-{i}") for i in range(LEASES))
        # /healthz kept answering throughout: between the first and the last /busy
        # answer, not only before or after the flood.
        during = {n for n in busy_answers_at_health if 0 < n < LEASES}
        assert len(during) >= 3, busy_answers_at_health

        # Protection converges, with calls counted in busy periods, not in jobs.
        async with asyncio.timeout(30):
            while not sidecar.view().protected:  # noqa: ASYNC110  (state, not an event)
                await asyncio.sleep(0.05)
        enables = [c for c in agent.calls if c.method == "PUT"]
        assert len(enables) <= 6

        async def release(i: int) -> None:
            await sidecar.post("/idle", {"lease": f"job-{i}"})

        await asyncio.gather(*(release(i) for i in range(LEASES)))
        _, state = await sidecar.get("/state")
        assert (state["busy"], state["leases"]) == (False, [])


async def test_a_lease_flood_is_bounded(aiohttp_client, agent):
    """Past TASK_PROTECTION_MAX_LEASES new leases answer 429 instead of growing memory."""
    async with running_sidecar(aiohttp_client, agent, max_leases=100) as sidecar:
        codes = []
        for i in range(600):
            status, body = await sidecar.post("/busy", {"lease": f"flood-{i}", "wait_seconds": 0})
            codes.append(status if status != 503 else body["error"]["code"])
        assert codes.count(429) == 500
        assert sidecar.service.lease_count == 100
        status, _ = await sidecar.post("/busy", {"lease": "flood-0"})  # refresh still works
        assert status == 200


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text(encoding="ascii").splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")


async def test_ten_thousand_leases_and_50_concurrent_state_reads_stay_in_128_mib():
    """The example task definition gives the sidecar 128 MiB: a full lease table read by
    50 clients at once stays far inside it (the /state document is bounded)."""
    process = SidecarProcess({"TASK_PROTECTION_IDLE_GRACE_SECONDS": "600"}).start()
    try:
        connector = aiohttp.TCPConnector(limit=32)
        async with aiohttp.ClientSession(process.url, connector=connector) as session:

            async def take(start: int) -> None:
                for i in range(start, 10_000, 32):
                    body = {"lease": f"job-{i}", "wait_seconds": 0}
                    async with session.post("/busy", json=body) as answer:
                        assert answer.status in (200, 503)  # 503: not confirmed yet, kept

            await asyncio.gather(*(take(n) for n in range(32)))
            async with session.get("/state") as answer:
                assert (await answer.json())["lease_count"] == 10_000

            async def read_state() -> int:
                async with session.get("/state") as answer:
                    return len(await answer.read())

            sizes = await asyncio.gather(*(read_state() for _ in range(50)))
        assert max(sizes) < 64 * 1024
        peak = peak_rss_mib(process.proc.pid)
        assert peak < 128
    finally:
        process.stop()
