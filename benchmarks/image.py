"""The sidecar image in numbers: start to healthy inside a container, SIGTERM to exit, and
the layers each image adds to its base. Built first by scripts/images (podman).

    python -m benchmarks.image [--runs 5]

The base is the stand-in scripts/images makes from Debian bookworm's packages (Python
3.11): sizes are of the layers the project adds, which the official python image would
carry the same way; the whole image is larger than on python:3.12-slim.
"""

from __future__ import annotations

import argparse
import re
import statistics
import time
from datetime import datetime

from tests.containers import (
    SIDECAR_API_IMAGE,
    SIDECAR_IMAGE,
    PodmanScope,
    added_bytes,
    base_image,
    container_state,
    podman,
)

MB = 1_000_000
DEADLINE = 120.0


def started_at(name: str) -> float:
    """When the runtime started the container's process (podman's clock, seconds)."""
    text = container_state(name)["StartedAt"]  # RFC 3339 with nanoseconds
    match = re.fullmatch(r"([\d-]+T[\d:]+)(?:\.(\d+))?(Z|[+-][\d:]+)", text)
    if match is None:
        raise SystemExit(f"unexpected StartedAt {text!r}")
    stamp, fraction, zone = match[1], (match[2] or "0")[:6], match[3].replace("Z", "+00:00")
    return datetime.fromisoformat(f"{stamp}.{fraction:0<6}{zone}").timestamp()


def one_start(image: str, scope: PodmanScope) -> tuple[float, float, float]:
    """(podman run to healthy, process start to healthy, SIGTERM to exit), seconds."""
    name = scope.container("bench")
    began = time.time()
    podman("run", "--detach", "--name", name, "--read-only", "--http-proxy=false", image)
    while podman("healthcheck", "run", name, check=False).returncode != 0:
        if time.time() - began > DEADLINE:
            raise SystemExit(f"{name} not healthy within {DEADLINE:.0f} s")
        time.sleep(0.05)
    healthy = time.time()
    podman("kill", "--signal", "TERM", name)
    podman("wait", name)
    stopped = time.time()
    return healthy - began, healthy - started_at(name), stopped - healthy


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    print(f"base: {base_image()} (Debian bookworm, Python 3.11 stand-in)")
    for image in (SIDECAR_IMAGE, SIDECAR_API_IMAGE):
        print(f"{image}: layers added to the base {added_bytes(image) / MB:.1f} MB")
    print(f"\n{'image':45} {'run→healthy':>12} {'start→healthy':>14} {'SIGTERM→exit':>13}")
    with PodmanScope("bench") as scope:
        for image in (SIDECAR_IMAGE, SIDECAR_API_IMAGE):
            runs = [one_start(image, scope) for _ in range(args.runs)]
            medians = [statistics.median(column) for column in zip(*runs, strict=True)]
            print(f"{image:45} {medians[0]:11.2f}s {medians[1]:13.2f}s {medians[2]:12.2f}s")
    print(
        f"\nmedians of {args.runs} runs; healthy = the image's HEALTHCHECK passed "
        "(`podman healthcheck run`, polled every 50 ms)"
    )


if __name__ == "__main__":
    main()
