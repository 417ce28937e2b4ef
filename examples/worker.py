import random
import time

from ecs_protection import GracefulShutdown, busy

shutdown = GracefulShutdown().install()  # SIGTERM: idle exits now; a job and its ack finish


def receive() -> float:  # stand-in for your queue, e.g. SQS receive_message
    return random.uniform(1, 3)


def delete(job: float) -> None:  # stand-in for the ack, e.g. SQS delete_message
    print(f"acked {job:.1f}", flush=True)


while not shutdown.requested:
    job = receive()
    with busy(ttl=60):  # protected from scale-in while the job runs
        print(f"working for {job:.1f}s", flush=True)
        time.sleep(job)
        print("done", flush=True)
    delete(job)  # runs even when SIGTERM came during the job: no message is handled twice
