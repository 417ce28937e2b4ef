"""A worker using GracefulShutdown, driven line by line on stdin by the tests.

`job` starts a job inside busy() and prints `started`; the next line ends it
(`finished`). Modes: sync (main thread), threads (job in a worker thread),
asyncio (job in a task).
"""

from __future__ import annotations

import asyncio
import sys
import threading

from ecs_protection import GracefulShutdown, busy


def say(word: str) -> None:
    sys.stdout.write(word + "\n")
    sys.stdout.flush()


def job() -> None:
    with busy():
        say("started")
        sys.stdin.readline()
        say("finished")


def sync_mode() -> None:
    for line in sys.stdin:
        if line.strip() == "job":
            job()


def threads_mode() -> None:
    def feed() -> None:
        for line in sys.stdin:
            if line.strip() == "job":
                threading.Thread(target=job).start()
                return

    threading.Thread(target=feed, daemon=True).start()
    threading.Event().wait()


async def asyncio_mode() -> None:
    loop = asyncio.get_running_loop()
    while True:
        line = await loop.run_in_executor(None, sys.stdin.readline)
        if line.strip() == "job":
            async with busy():
                say("started")
                await loop.run_in_executor(None, sys.stdin.readline)
                say("finished")


if __name__ == "__main__":
    shutdown = GracefulShutdown().install()
    say("ready")
    mode = sys.argv[1]
    if mode == "asyncio":
        asyncio.run(asyncio_mode())
    else:
        {"sync": sync_mode, "threads": threads_mode}[mode]()
