"""The Dramatiq broker and actor of the framework tests.

dramatiq tests.framework_apps.dramatiq_probe
"""

from __future__ import annotations

import os

import dramatiq
from dramatiq.brokers.redis import RedisBroker
from dramatiq.middleware import CurrentMessage
from dramatiq.results import Results
from dramatiq.results.backends.redis import RedisBackend

from ecs_protection.dramatiq import EcsProtection
from tests.framework_apps.probe import job

URL = os.environ["PROBE_REDIS_URL"]

broker = RedisBroker(url=URL)
broker.add_middleware(CurrentMessage())
broker.add_middleware(Results(backend=RedisBackend(url=URL)))
broker.add_middleware(EcsProtection(ttl=float(os.environ.get("PROBE_TTL", "60"))))
dramatiq.set_broker(broker)


@dramatiq.actor(store_results=True, max_retries=0)
def work(seconds: float = 0.0, ticks: int = 0) -> str:
    message = CurrentMessage.get_current_message()
    assert message is not None
    return job(URL, message.message_id, seconds, ticks)
