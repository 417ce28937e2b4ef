"""A queue worker using GracefulShutdown, driven line by line on stdin by the tests.

The queue is stdin: `job N` is a message; the job runs inside busy(), prints
`started N` and waits for the line `finish`; then the ack (after the block, like SQS
DeleteMessage) waits for the line `ack` and prints `acked N`.

Modes:
  loop      the loop from the README: `while not shutdown.requested`
  loop-cleanup  the same, then a cleanup after the loop that waits for the line
            `cleanup` (however long it takes: the fallback must not cut it)
  no-check  `while True`: stops at the next busy(), which refuses the job
  pool      jobs in daemon worker threads; the main thread only waits (a thread-pool
            server): stops through the fallback, grace after the last job
  asyncio   the loop in a task, `async with busy()`

argv: MODE [GRACE_SECONDS]
"""

from __future__ import annotations

import asyncio
import sys
import threading

from ecs_protection import GracefulShutdown, busy


def say(word: str) -> None:
    sys.stdout.write(word + "\n")
    sys.stdout.flush()


def receive() -> str:
    line = sys.stdin.readline()
    if not line:
        raise SystemExit(3)  # the test went away
    return line.split()[-1]


def handle(message: str) -> None:
    say(f"started {message}")
    sys.stdin.readline()  # `finish`
    say(f"finished {message}")


def delete(message: str) -> None:
    sys.stdin.readline()  # `ack`
    say(f"acked {message}")


def loop_mode(shutdown: GracefulShutdown) -> None:
    while not shutdown.requested:
        message = receive()
        with busy():
            handle(message)
        delete(message)
    say("loop ended")


def loop_cleanup_mode(shutdown: GracefulShutdown) -> None:
    loop_mode(shutdown)
    sys.stdin.readline()  # `cleanup`: closing connections, flushing, ...
    say("cleaned up")


def no_check_mode(_shutdown: GracefulShutdown) -> None:
    while True:
        message = receive()
        with busy():
            handle(message)
        delete(message)


def pool_mode(_shutdown: GracefulShutdown) -> None:
    def serve() -> None:
        while True:
            message = receive()
            with busy():
                handle(message)
            delete(message)

    threading.Thread(target=serve, daemon=True).start()
    threading.Event().wait()  # never a safe point: the fallback must end the process


async def asyncio_mode(shutdown: GracefulShutdown) -> None:
    # stdin is read by a daemon thread: a default-executor thread blocked in readline()
    # would keep asyncio.run() from returning after SystemExit.
    loop = asyncio.get_running_loop()
    lines: asyncio.Queue[str] = asyncio.Queue()

    def feed() -> None:
        for line in sys.stdin:
            loop.call_soon_threadsafe(lines.put_nowait, line)

    threading.Thread(target=feed, daemon=True).start()
    while not shutdown.requested:
        message = (await lines.get()).split()[-1]
        async with busy():
            say(f"started {message}")
            await lines.get()  # `finish`
            say(f"finished {message}")
        await lines.get()  # `ack`
        say(f"acked {message}")
    say("loop ended")


if __name__ == "__main__":
    mode = sys.argv[1]
    grace = float(sys.argv[2]) if len(sys.argv) > 2 else 5.0
    shutdown = GracefulShutdown(grace_seconds=grace).install()
    say("ready")
    if mode == "asyncio":
        asyncio.run(asyncio_mode(shutdown))
    else:
        modes = {
            "loop": loop_mode,
            "loop-cleanup": loop_cleanup_mode,
            "no-check": no_check_mode,
            "pool": pool_mode,
        }
        modes[mode](shutdown)
