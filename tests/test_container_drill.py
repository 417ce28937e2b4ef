"""A reduced container drill (benchmarks/container_drill.py): three tasks as pods from the
task definition, working a shared Redis queue, scaled in, force-stopped and redeployed
while jobs run, each stop in ECS's order. No job may be interrupted, duplicated or lost,
and every container exits 0 on its own."""

from __future__ import annotations

import pytest

from benchmarks.container_drill import Settings, run_drill

JOBS = 40


@pytest.mark.container
@pytest.mark.timeout(900)
def test_reduced_drill_loses_interrupts_and_duplicates_no_job(
    container_images, podman_scope, tmp_path
):
    settings = Settings(
        tasks=3,
        jobs=JOBS,
        wave=20,
        wave_gap=3.0,
        scale_every=2.0,
        plan=("in", "force", "deploy"),
        timeout=600,
    )
    result = run_drill(settings, podman_scope, tmp_path)
    assert (result.completed, result.lost) == (JOBS, 0)
    assert result.interrupted == 0
    assert result.duplicated == 0
    assert result.bad_exits == []
    assert result.scale_ins >= 1
    assert result.forced_stops >= 1
    assert result.deployments >= 1
    assert result.tasks_started > settings.tasks  # replacements, and the new deployment
    # PUTs stay near the fewest that protect these busy periods (stops in a busy period
    # skip the final disable, so fewer is possible).
    assert 0 < result.agent_puts <= result.minimum_puts * 1.1 + 2
