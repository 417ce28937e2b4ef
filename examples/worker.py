import random
import time

from ecs_protection import GracefulShutdown, busy

shutdown = GracefulShutdown().install()  # SIGTERM: exit now if idle, after the job if busy


def receive_job() -> float:  # stand-in for your queue, e.g. SQS receive_message
    return random.uniform(1, 3)


while not shutdown.requested:
    seconds = receive_job()
    with busy(ttl=60):  # protected from scale-in while the job runs
        print(f"working for {seconds:.1f}s", flush=True)
        time.sleep(seconds)
        print("done", flush=True)
