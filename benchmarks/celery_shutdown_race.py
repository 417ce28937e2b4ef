"""Celery's warm-shutdown race: SIGTERM to a busy prefork worker (acks_late off), repeated.

    python -m benchmarks.celery_shutdown_race [--repetitions 20]

Each repetition queues 60 short tasks, starts `celery worker -P prefork -c 2` (the probe
app of the tests, protected, against a real sidecar and a real Redis), sends SIGTERM at a
random moment while tasks start one after another, and counts, per task, its starts plus
the copies of its message still on the broker: 1 is right, 2 is a task run twice, 0 a task
lost. Prints the repetitions with a duplicate and with a loss, how many tasks the
shutdown sent back unrun, and how many a child ran whose message the main process
acknowledged only at the end of the shutdown (each of them would have run twice).
"""

from __future__ import annotations

import argparse
import random
import tempfile
from pathlib import Path

import redis

from tests.celery_scenarios import shutdown_race
from tests.framework_support import RedisDb
from tests.processes import SidecarProcess
from tests.redis_server import RedisServer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repetitions", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    duplicated = lost = put_back = acknowledged = 0
    with tempfile.TemporaryDirectory() as workdir, RedisServer(Path(workdir)) as server:
        sidecar = SidecarProcess().start()
        try:
            for _ in range(args.repetitions):
                url = server.url(server.new_db())
                with redis.Redis.from_url(url) as client:
                    jobs, outcome = shutdown_race(RedisDb(url, client), sidecar, rng=rng)
                duplicated += any(outcome.runs(job) > 1 for job in jobs)
                lost += any(outcome.runs(job) == 0 for job in jobs)
                put_back += outcome.put_back
                acknowledged += outcome.acknowledged_at_the_end
        finally:
            sidecar.stop()
    print(f"repetitions: {args.repetitions}")
    print(f"repetitions with a task run twice: {duplicated}")
    print(f"repetitions with a task lost: {lost}")
    print(f"tasks sent back unrun by the shutdown: {put_back}")
    print(f"tasks run whose message was acknowledged only at the end: {acknowledged}")


if __name__ == "__main__":
    main()
