"""kill -9 while leases are held: the new sidecar adopts the protection, heartbeats restore
the leases, and protection never drops while the job runs."""

from __future__ import annotations

import signal
import threading
import time

from ecs_protection import Client, busy
from tests.processes import SidecarProcess
from tests.support import free_port, wait_until


def test_restart_keeps_the_task_protected(agent_in_thread):
    port = free_port()
    env = {
        "ECS_AGENT_URI": agent_in_thread.uri("task-1"),
        "TASK_PROTECTION_PORT": str(port),
        "TASK_PROTECTION_IDLE_GRACE_SECONDS": "3",
    }
    task = agent_in_thread.tasks["task-1"]
    first = SidecarProcess(env)
    first.port = port
    first.wait_for_log("listening on")
    second: SidecarProcess | None = None

    lapses: list[float] = []
    job_running = threading.Event()
    job_may_end = threading.Event()
    job_done = threading.Event()

    def monitor() -> None:  # samples ECS's view of the task while the job runs
        while not job_done.is_set():
            if job_running.is_set() and not task.enabled:
                lapses.append(time.monotonic())
            time.sleep(0.002)

    def job() -> None:
        with Client(f"http://127.0.0.1:{port}") as client, busy(client=client, ttl=1.5):
            job_running.set()
            job_may_end.wait(60)
        job_done.set()

    threading.Thread(target=monitor, daemon=True).start()
    worker = threading.Thread(target=job)
    worker.start()
    try:
        job_running.wait(30)
        assert task.enabled
        first.proc.send_signal(signal.SIGKILL)
        first.proc.wait(10)

        second = SidecarProcess(env)
        second.port = port
        second.wait_for_log("listening on")
        # Heartbeats (every 0.5 s) re-create the lease the new process never heard of.
        wait_until(lambda: len(second.get("/state").json()["leases"]) == 1)
        state = second.get("/state").json()
        assert state["protection"]["enabled"] is True
        gets = [c for c in agent_in_thread.calls if c.method == "GET"]
        assert len(gets) >= 2  # each process read the protection at start: adopted, not re-set
        job_may_end.set()
        worker.join(30)
        second.wait_for_log("protection disabled")  # after the grace, once the job is done
    finally:
        job_may_end.set()
        job_done.set()
        worker.join(30)
        first.stop()
        if second is not None:
            second.stop()
    assert lapses == []
    assert not task.enabled
