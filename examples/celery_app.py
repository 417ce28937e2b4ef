"""A Celery worker whose tasks keep the ECS task protected while they run (docs/frameworks.md).

celery -A celery_app worker -P prefork -c 2      # the worker, next to a sidecar
python celery_app.py 3                           # send it 3 jobs
"""

import os
import random
import sys
import time

from celery import Celery

import ecs_protection.celery

# Named after this module, so the tasks that `python celery_app.py` sends are the worker's.
app = Celery("celery_app", broker=os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"))
ecs_protection.celery.protect(app)  # a lease per task; no new tasks once the task drains


@app.task
def process(seconds: float) -> None:
    print(f"processing for {seconds:.1f}s", flush=True)
    time.sleep(seconds)
    print("processed", flush=True)


if __name__ == "__main__":
    for _ in range(int(sys.argv[1]) if len(sys.argv) > 1 else 1):
        process.delay(random.uniform(1, 3))
