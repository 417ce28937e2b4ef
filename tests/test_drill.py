"""A reduced scale-in drill: real sidecar and worker processes, moto, scale-in, scale-out and
a deployment while jobs run. In sidecar mode no job may be interrupted, and the calls
must stay at the theoretical minimum for the workload. The drill runs as users run it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.test_docs_alarm import recommended_alarm

ROOT = Path(__file__).parent.parent


def test_sidecar_mode_interrupts_no_job_and_makes_minimal_calls(tmp_path):
    # The deployment comes second, so that even a quick run has one while jobs run.
    out = tmp_path / "drill.json"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks.drill",
            *("--modes", "sidecar", "--jobs", "150", "--wave", "50", "--tasks", "3"),
            *("--scale-every", "1.5", "--timeout", "90", "--plan", "in,deploy,out"),
            *("--json", str(out)),
        ],
        cwd=ROOT,
        check=True,
        timeout=240,
        capture_output=True,
    )
    [result] = json.loads(out.read_text())
    assert result["completed"] == 150
    assert result["interrupted"] == 0
    assert result["scale_events"] >= 2
    assert result["deployments"] >= 1
    assert result["minimum_calls"] > 0
    assert result["update_calls"] <= result["minimum_calls"] * 1.1 + 2
    assert result["agent_puts"] <= result["update_calls"]  # each PUT is at least one ECS call
    # The UnprotectedBusySeconds alarm of docs/monitoring.md stays quiet through the clean
    # start, scale-in, deployment and scale-out: no run of breaching periods long enough to
    # fire it. The metric itself is not 0 (each cold enable waits for ECS), so an alarm on
    # "> 0" would have fired.
    alarm = recommended_alarm()
    breaching = [
        total > float(alarm["Threshold"]) for total in result["unprotected_busy_by_period"]
    ]
    runs = "".join("x" if b else "." for b in breaching).split(".")
    assert max(len(run) for run in runs) < int(alarm["DatapointsToAlarm"])
    assert result["unprotected_busy_seconds"] > 0
