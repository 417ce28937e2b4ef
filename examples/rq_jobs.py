"""Jobs for an RQ worker that keeps the ECS task protected while a job runs (docs/frameworks.md).

rq worker -w ecs_protection.rq.Worker --url redis://127.0.0.1:6379/0   # in this folder
python rq_jobs.py 3                                                      # enqueue 3 jobs
"""

import os
import random
import sys
import time

from redis import Redis
from rq import Queue


def process(seconds: float) -> None:
    print(f"processing for {seconds:.1f}s", flush=True)
    time.sleep(seconds)
    print("processed", flush=True)


if __name__ == "__main__":
    queue = Queue(
        connection=Redis.from_url(os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"))
    )
    for _ in range(int(sys.argv[1]) if len(sys.argv) > 1 else 1):
        queue.enqueue("rq_jobs.process", random.uniform(1, 3))  # by name: the worker imports it
