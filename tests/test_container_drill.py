"""A reduced container drill (benchmarks/container_drill.py): three tasks as pods from the
task definition, working a shared Redis queue, scaled in, force-stopped and redeployed
while jobs run, each stop in ECS's order. No job may be interrupted, duplicated or lost,
and every container exits 0 on its own. The drill runs as users run it: a program."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent
JOBS = 40


@pytest.mark.container
@pytest.mark.timeout(900)
def test_reduced_drill_loses_interrupts_and_duplicates_no_job(container_images, tmp_path):
    out = tmp_path / "drill.json"
    drill = subprocess.Popen(  # the drill makes and removes its own pods and networks
        [
            sys.executable,
            "-m",
            "benchmarks.container_drill",
            *("--tasks", "3", "--jobs", str(JOBS), "--wave", "20", "--wave-gap", "3"),
            *("--scale-every", "2", "--plan", "in,force,deploy", "--timeout", "600"),
            *("--json", str(out)),
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        output, _ = drill.communicate(timeout=840)
    except subprocess.TimeoutExpired:
        drill.terminate()  # SIGTERM: the drill still removes what it made
        output, _ = drill.communicate(timeout=60)
        pytest.fail(f"the drill did not end:\n{output}")
    assert drill.returncode == 0, output
    result = json.loads(out.read_text())
    print(output)  # noqa: T201  (the table, in the test's report)
    assert (result["completed"], result["lost"]) == (JOBS, 0)
    assert result["interrupted"] == 0
    assert result["duplicated"] == 0
    assert result["bad_exits"] == []
    assert result["scale_ins"] >= 1
    assert result["forced_stops"] >= 1
    assert result["deployments"] >= 1
    assert result["tasks_started"] > 3  # replacements, and the new deployment
    # PUTs stay near the fewest that protect these busy periods (stops in a busy period
    # skip the final disable, so fewer is possible).
    assert 0 < result["agent_puts"] <= result["minimum_puts"] * 1.1 + 2
