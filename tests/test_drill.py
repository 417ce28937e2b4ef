"""A reduced scale-in drill: real sidecar and worker processes, moto, scale-in, scale-out and
a deployment while jobs run. In sidecar mode no job may be interrupted, and the calls
must stay at the theoretical minimum for the workload."""

from __future__ import annotations

from benchmarks.drill import Settings, environment, run_drill


def test_sidecar_mode_interrupts_no_job_and_makes_minimal_calls():
    # The deployment comes second, so that even a quick run has one while jobs run.
    settings = Settings(
        jobs=150, wave=50, tasks=3, scale_every=1.5, timeout=90, plan=("in", "deploy", "out")
    )
    with environment() as (moto_url, agent, workdir):
        result = run_drill("sidecar", settings, moto_url, agent, workdir)
    assert result.completed == settings.jobs
    assert result.interrupted == 0
    assert result.scale_events >= 2
    assert result.deployments >= 1
    assert result.minimum_calls > 0
    assert result.update_calls <= result.minimum_calls * 1.1 + 2
