"""A prefork pool in miniature: the parent uses the client, then forks workers.

The parent opens keep-alive connections on the default client and on its own Client,
and holds a lease across the forks. Each child runs JOBS jobs in each of 2 threads,
half on each client, and checks that releasing the parent's hold in the child does
nothing. Children exit with their error count; the parent prints one JSON line.

argv: CHILDREN JOBS_PER_THREAD
"""

from __future__ import annotations

import json
import os
import sys
import threading

from ecs_protection import Client, busy


def child(client: Client, parent_hold_release: object, jobs: int) -> int:
    errors: list[str] = []
    if callable(parent_hold_release):
        parent_hold_release()  # the parent's lease: must be a no-op here

    def work(thread: int) -> None:
        for i in range(jobs):
            try:
                own = (i + thread) % 2 == 0
                with busy(client=client if own else None, ttl=30) as lease:
                    if not lease.protected:
                        errors.append(f"unprotected: {lease}")
            except Exception as exc:  # noqa: BLE001  (counted and reported)
                errors.append(repr(exc))

    threads = [threading.Thread(target=work, args=(n,)) for n in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for error in errors[:5]:
        sys.stderr.write(f"child {os.getpid()}: {error}\n")
    return len(errors)


def main() -> None:
    children, jobs = int(sys.argv[1]), int(sys.argv[2])
    client = Client()
    with busy():  # the default client's connection
        pass
    with busy(client=client):  # and the user's client's
        pass
    parent_hold = client.hold()
    pids = []
    for _ in range(children):
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                code = min(child(client, parent_hold.release, jobs), 100)
            finally:
                os._exit(code)
        pids.append(pid)
    codes = [os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) for pid in pids]
    state = client.state()
    held_after_children = state.leases if state else None
    parent_hold.release()
    outcome = {"codes": codes, "held_after_children": held_after_children}
    sys.stdout.write(json.dumps(outcome) + "\n")


if __name__ == "__main__":
    main()
