"""The alarm docs/monitoring.md recommends stays quiet on a healthy task, where an alarm
on `UnprotectedBusySeconds > 0` would fire: a real sidecar and the fake agent, EMF
records on stdout."""

from __future__ import annotations

import json
import re
import signal
from pathlib import Path

import yaml

from tests.processes import SidecarProcess

ROOT = Path(__file__).parent.parent


def recommended_alarm() -> dict[str, object]:
    page = (ROOT / "docs" / "monitoring.md").read_text()
    block = re.search(r"^```yaml\n(.*?)^```$", page, re.MULTILINE | re.DOTALL)
    assert block
    # The template's short forms (!Ref) are irrelevant here: read them as plain text.
    loader = type("Loader", (yaml.SafeLoader,), {})
    loader.add_multi_constructor("!", lambda _loader, _tag, node: str(node.value))
    template = yaml.load(block[1], Loader=loader)  # noqa: S506  (a SafeLoader subclass)
    return dict(template["Resources"]["UnprotectedBusyAlarm"]["Properties"])


def test_a_clean_start_cold_enables_and_a_drain_stay_below_the_alarm(agent_in_thread):
    """Through the fake agent with the real one's latency: each enable takes 0.1-0.4 s."""
    agent_in_thread.ecs_latency = 0.2
    alarm = recommended_alarm()
    assert alarm["MetricName"] == "UnprotectedBusySeconds"
    assert alarm["Statistic"] == "Sum"
    assert alarm["ComparisonOperator"] == "GreaterThanThreshold"
    env = {
        "ECS_AGENT_URI": agent_in_thread.uri("task-1"),
        "TASK_PROTECTION_EMF_NAMESPACE": str(alarm["Namespace"]),
        "TASK_PROTECTION_IDLE_GRACE_SECONDS": "0",  # every job below is a cold enable
    }
    with SidecarProcess(env, stdout=True) as sidecar:
        for job in range(5):
            assert sidecar.post("/busy", {"lease": f"job-{job}"}).json()["protected"] is True
            sidecar.post("/idle", {"lease": f"job-{job}"})
        sidecar.signal(signal.SIGTERM)
        assert sidecar.wait() == 0
        records = []
        while (line := sidecar.stdout.get(timeout=30)) is not None:
            records.append(json.loads(line))
    total = sum(float(record["UnprotectedBusySeconds"]) for record in records)
    # The whole run fits in one period: its sum is what the alarm compares.
    assert total <= float(alarm["Threshold"])  # type: ignore[arg-type]
    assert int(alarm["EvaluationPeriods"]) >= 3  # type: ignore[call-overload]
    # Never exactly 0: each cold enable held a lease before protection was confirmed.
    assert total > 0
