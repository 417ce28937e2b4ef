"""Dramatiq actors that keep the ECS task protected while a message runs (docs/frameworks.md).

dramatiq dramatiq_actors --processes 1 --threads 2    # the worker, in this folder
python dramatiq_actors.py 3                           # send it 3 messages
"""

import os
import random
import sys
import time

import dramatiq
from dramatiq.brokers.redis import RedisBroker

import ecs_protection.dramatiq

broker = RedisBroker(url=os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"))
broker.add_middleware(ecs_protection.dramatiq.EcsProtection())  # a lease per message
dramatiq.set_broker(broker)


@dramatiq.actor
def process(seconds: float) -> None:
    print(f"processing for {seconds:.1f}s", flush=True)
    time.sleep(seconds)
    print("processed", flush=True)


if __name__ == "__main__":
    for _ in range(int(sys.argv[1]) if len(sys.argv) > 1 else 1):
        process.send(random.uniform(1, 3))
