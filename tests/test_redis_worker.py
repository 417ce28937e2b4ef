"""examples/redis_worker.py against a real Redis and the real sidecar, as users run it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest

from tests.framework_support import ROOT
from tests.support import read_line

pytest_plugins = ["tests.framework_fixtures"]

WORKER = ROOT / "examples" / "redis_worker.py"


def test_a_job_taken_while_draining_goes_back_and_the_worker_waits_for_sigterm(redis_db, sidecar):
    """The task is stopping (the sidecar drains) when the worker takes a job: the job goes
    back to the queue unstarted, and the worker leaves only on its SIGTERM, with 0. A
    worker that left first could be dying just as that SIGTERM came, and exit 143."""
    job = json.dumps({"id": "j1", "seconds": 0})
    redis_db.client.rpush("jobs", job)
    sidecar.post("/drain")
    env = {**os.environ, "REDIS_URL": redis_db.url, "TASK_PROTECTION_URL": sidecar.url}
    worker = subprocess.Popen(
        [sys.executable, str(WORKER)], env=env, stdout=subprocess.PIPE, text=True
    )
    try:
        assert read_line(worker.stdout, timeout=60).startswith("ready: taking jobs into")
        assert read_line(worker.stdout, timeout=60) == "stopping: gave back j1"
        assert redis_db.client.lrange("jobs", 0, -1) == [job.encode()]
        assert redis_db.client.keys("processing:*") == []
        with pytest.raises(subprocess.TimeoutExpired):
            worker.wait(timeout=3)  # still there: it waits for its SIGTERM
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(timeout=60) == 0
    finally:
        if worker.poll() is None:
            worker.kill()
        worker.wait(10)
