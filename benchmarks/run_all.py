"""Every benchmark in one run, printed as one table (numbers, not pass/fail).

    python -m benchmarks.run_all [--pairs 3000] [--drill-jobs 600]

1. /busy + /idle through the sidecar while protected, with the client library over
   keep-alive: p50, p99, pairs per second; then 64 concurrent async clients.
2. Resident memory of the sidecar, idle and under that load.
3. Process start to /healthz answering 200.
4. Last /idle to process exit, after SIGTERM.
5. UpdateTaskProtection calls per 1,000 jobs: sidecar vs the theoretical minimum vs
   naive, from a drill (benchmarks/drill.py) with scale-in and a deployment.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import signal
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import requests

from ecs_protection import AsyncClient, Client
from tests.processes import SidecarProcess
from tests.support import free_port

ROOT = Path(__file__).resolve().parent.parent


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def round_trips(url: str, pairs: int) -> list[float]:
    """Seconds per /busy + /idle pair with the sync client (one keep-alive session)."""
    times = []
    with Client(url, strict=True) as client:
        for i in range(pairs):
            began = time.perf_counter()
            client.acquire(f"bench-{i}", wait_seconds=10)
            client.release(f"bench-{i}")
            times.append(time.perf_counter() - began)
    return times


async def concurrent_round_trips(
    url: str, clients: int, pairs_each: int
) -> tuple[list[float], float]:
    times: list[float] = []

    async def one(n: int) -> None:
        async with AsyncClient(url, strict=True) as client:
            for i in range(pairs_each):
                began = time.perf_counter()
                await client.acquire(f"c{n}-{i}", wait_seconds=10)
                await client.release(f"c{n}-{i}")
                times.append(time.perf_counter() - began)

    began = time.perf_counter()
    await asyncio.gather(*(one(n) for n in range(clients)))
    return times, time.perf_counter() - began


def start_to_healthy(runs: int) -> list[float]:
    results = []
    for _ in range(runs):
        port = free_port()
        env = {**os.environ, "TASK_PROTECTION_PORT": str(port)}
        env.pop("ECS_AGENT_URI", None)
        began = time.perf_counter()
        proc = subprocess.Popen(
            [sys.executable, "-m", "sidecar"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            while True:
                try:
                    if requests.get(f"http://127.0.0.1:{port}/healthz", timeout=1).ok:
                        break
                except requests.RequestException:
                    time.sleep(0.002)
            results.append(time.perf_counter() - began)
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(30)
    return results


def idle_to_exit(runs: int) -> list[float]:
    results = []
    for _ in range(runs):
        sidecar = SidecarProcess().start()
        try:
            sidecar.post("/busy", {"lease": "last-job"})
            sidecar.signal(signal.SIGTERM)
            sidecar.wait_for_log("draining")
            began = time.perf_counter()
            sidecar.post("/idle", {"lease": "last-job"})
            sidecar.proc.wait(30)
            results.append(time.perf_counter() - began)
        finally:
            sidecar.stop()
    return results


def drill_calls(jobs: int) -> list[tuple[str, float, float]]:
    from benchmarks.drill import Settings, environment, run_drill  # noqa: PLC0415

    settings = Settings(jobs=jobs, wave=max(50, jobs // 6), tasks=3, scale_every=2.0)
    rows = []
    with environment() as (moto_url, agent, workdir):
        for mode in ("naive", "sidecar"):
            result = run_drill(mode, settings, moto_url, agent, workdir)
            rows.append((mode, result.calls_per_1000, result.minimum_per_1000))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description="Run every benchmark and print one table.")
    parser.add_argument("--pairs", type=int, default=3000)
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--drill-jobs", type=int, default=600, help="0 skips the drill")
    args = parser.parse_args()
    rows: list[tuple[str, str]] = []

    sidecar = SidecarProcess().start()
    try:
        sidecar.post("/busy", {"lease": "holder"})  # protected throughout
        idle_rss = rss_kib(sidecar.proc.pid)
        round_trips(sidecar.url, 200)  # warm-up
        times = round_trips(sidecar.url, args.pairs)
        rows += [
            ("/busy+/idle, sync client, keep-alive: p50", f"{percentile(times, 0.5) * 1e3:.2f} ms"),
            (
                "/busy+/idle, sync client, keep-alive: p99",
                f"{percentile(times, 0.99) * 1e3:.2f} ms",
            ),
            ("/busy+/idle, sync client: pairs per second", f"{len(times) / sum(times):.0f}"),
        ]
        peak = [idle_rss]
        stop = threading.Event()

        def sample() -> None:
            while not stop.is_set():
                peak.append(rss_kib(sidecar.proc.pid))
                time.sleep(0.05)

        sampler = threading.Thread(target=sample)
        sampler.start()
        ctimes, wall = asyncio.run(
            concurrent_round_trips(sidecar.url, args.clients, max(1, args.pairs // args.clients))
        )
        stop.set()
        sampler.join()
        rows += [
            (
                f"/busy+/idle, {args.clients} async clients: p50",
                f"{percentile(ctimes, 0.5) * 1e3:.2f} ms",
            ),
            (
                f"/busy+/idle, {args.clients} async clients: p99",
                f"{percentile(ctimes, 0.99) * 1e3:.2f} ms",
            ),
            (
                f"/busy+/idle, {args.clients} async clients: pairs per second",
                f"{len(ctimes) / wall:.0f}",
            ),
            ("sidecar resident memory, idle", f"{idle_rss / 1024:.1f} MiB"),
            (
                f"sidecar resident memory, under {args.clients} clients",
                f"{max(peak) / 1024:.1f} MiB",
            ),
        ]
        sidecar.post("/release")
    finally:
        sidecar.stop()

    healthy = start_to_healthy(5)
    rows.append(
        (
            "process start to /healthz 200 (median of 5)",
            f"{statistics.median(healthy) * 1e3:.0f} ms",
        )
    )
    exits = idle_to_exit(5)
    rows.append(
        (
            "last /idle to exit after SIGTERM (median of 5)",
            f"{statistics.median(exits) * 1e3:.0f} ms",
        )
    )

    if args.drill_jobs:
        for mode, per_1000, minimum in drill_calls(args.drill_jobs):
            rows.append(
                (
                    f"UpdateTaskProtection calls per 1,000 jobs, {mode}",
                    f"{per_1000:.0f} (theoretical minimum {minimum:.0f})",
                )
            )

    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    print(
        f"Machine: {cpu}, {os.cpu_count()} cores, Python {platform.python_version()}, "
        f"{platform.system()} {platform.release()}\n"
    )
    width = max(len(name) for name, _ in rows)
    print(f"| {'benchmark':<{width}} | result |")
    print(f"|{'-' * (width + 2)}|---|")
    for name, value in rows:
        print(f"| {name:<{width}} | {value} |")


if __name__ == "__main__":
    main()
