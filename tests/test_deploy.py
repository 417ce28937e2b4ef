"""ecs/task-definition.json, ecs/task-role-policy.json and the Dockerfile, checked as far
as this machine can: registered in moto (botocore rejects unknown keys), the semantics
moto does not check, hadolint, and the commands the image and the task really run."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

from moto import mock_aws

from sidecar.config import Config
from tests.aws import ecs_client, use_fake_credentials
from tests.processes import SidecarProcess

ROOT = Path(__file__).parent.parent
TASK_DEFINITION = json.loads((ROOT / "ecs" / "task-definition.json").read_text())
CONTAINERS = {c["name"]: c for c in TASK_DEFINITION["containerDefinitions"]}
APP, SIDECAR = CONTAINERS["app"], CONTAINERS["protection"]
FARGATE_MAX_STOP_TIMEOUT = 120


def env_of(container: dict) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container.get("environment", [])}


def test_registers_with_the_ecs_api_model():
    use_fake_credentials()
    with mock_aws():
        answer = ecs_client().register_task_definition(**TASK_DEFINITION)
    registered = answer["taskDefinition"]
    assert registered["family"] == "queue-worker"
    assert {c["name"] for c in registered["containerDefinitions"]} == {"app", "protection"}


def test_app_waits_for_a_healthy_sidecar():
    assert APP["dependsOn"] == [{"containerName": "protection", "condition": "HEALTHY"}]


def test_sidecar_health_check_uses_what_the_image_has():
    command = SIDECAR["healthCheck"]["command"]
    assert command[0] == "CMD"  # exec form, no shell needed
    assert command[1:] == ["python", "-m", "sidecar.healthcheck"]
    assert SIDECAR["healthCheck"]["timeout"] < SIDECAR["healthCheck"]["interval"]


def test_stop_timeouts_fit_fargate_and_the_drain():
    for container in CONTAINERS.values():
        assert 0 < container["stopTimeout"] <= FARGATE_MAX_STOP_TIMEOUT
    drain = float(env_of(SIDECAR)["TASK_PROTECTION_DRAIN_TIMEOUT_SECONDS"])
    assert drain < SIDECAR["stopTimeout"]  # the sidecar exits on its own before SIGKILL


def test_app_url_agrees_with_the_sidecar_port():
    sidecar_env = {**env_of(SIDECAR)}
    port = Config.from_environ(sidecar_env).port
    assert env_of(APP)["TASK_PROTECTION_URL"] == f"http://127.0.0.1:{port}"
    assert "portMappings" not in SIDECAR  # loopback only: nothing to publish


def test_sidecar_environment_is_valid_configuration():
    config = Config.from_environ({**env_of(SIDECAR), "ECS_AGENT_URI": "http://169.254.170.2/api/x"})
    assert (config.backend, config.log_format) == ("agent", "json")


def test_commands_are_exec_form():
    for container in CONTAINERS.values():
        for key in ("entryPoint", "command"):
            if key in container:
                assert isinstance(container[key], list)
                assert container[key][:2] not in (["sh", "-c"], ["/bin/sh", "-c"])


def test_essential_flags_and_restart_policy():
    assert APP["essential"] is True
    # A crashed sidecar must not stop the task (and the job in it): it is restarted,
    # adopts the protection still in force, and heartbeats restore the leases.
    assert SIDECAR["essential"] is False
    assert SIDECAR["restartPolicy"]["enabled"] is True
    assert 0 in SIDECAR["restartPolicy"]["ignoredExitCodes"]  # a finished drain is not a crash


def test_fargate_awsvpc_and_logging():
    assert TASK_DEFINITION["networkMode"] == "awsvpc"
    assert TASK_DEFINITION["requiresCompatibilities"] == ["FARGATE"]
    assert TASK_DEFINITION["taskRoleArn"].startswith("arn:aws:iam::")
    for container in CONTAINERS.values():
        assert container["logConfiguration"]["logDriver"] == "awslogs"
    cpu = sum(c["cpu"] for c in CONTAINERS.values())
    memory = sum(c["memory"] for c in CONTAINERS.values())
    assert cpu <= int(TASK_DEFINITION["cpu"])
    assert memory <= int(TASK_DEFINITION["memory"])


def test_task_role_policy_is_least_privilege():
    policy = json.loads((ROOT / "ecs" / "task-role-policy.json").read_text())
    actions = sorted(a for s in policy["Statement"] for a in s["Action"])
    assert actions == ["ecs:GetTaskProtection", "ecs:UpdateTaskProtection"]
    assert all(s["Effect"] == "Allow" and s["Resource"] != "*" for s in policy["Statement"])


# ---- the Dockerfile -----------------------------------------------------------------

DOCKERFILE = (ROOT / "Dockerfile").read_text()
FINAL_STAGE = DOCKERFILE.rsplit("\nFROM ", 1)[1]


def instruction(name: str, text: str = FINAL_STAGE) -> str:
    joined = text.replace("\\\n", " ")
    found = re.findall(rf"^{name} (.+)$", joined, flags=re.MULTILINE)
    assert found, f"no {name}"
    return found[-1].strip()


def test_dockerfile_passes_hadolint():
    hadolint = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    result = subprocess.run(
        [hadolint, str(ROOT / "Dockerfile"), str(ROOT / "examples" / "Dockerfile.app")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_base_image_is_slim_and_pinned():
    args = dict(re.findall(r"^ARG (\w+)=(\S+)", DOCKERFILE, flags=re.MULTILINE))
    for base in re.findall(r"^FROM (\S+)", DOCKERFILE, flags=re.MULTILINE):
        image = re.sub(r"\$\{(\w+)\}", lambda m: args[m[1]], base)
        assert re.fullmatch(r"python:3\.\d+\.\d+-slim-\w+", image), image


def test_final_stage_runs_as_a_non_root_user():
    user = instruction("USER")
    assert user not in ("root", "0")


def test_entrypoint_is_exec_form_and_names_the_console_script():
    entrypoint = json.loads(instruction("ENTRYPOINT"))
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    # env blocks every signal, then execs the script: still PID 1, and no shell.
    assert entrypoint == ["env", "--block-signal", "ecs-protection-sidecar"]
    assert entrypoint[-1] in scripts


def test_stop_signal_unbuffered_output_and_healthcheck():
    assert instruction("STOPSIGNAL") == "SIGTERM"
    assert "PYTHONUNBUFFERED=1" in FINAL_STAGE
    healthcheck = instruction("HEALTHCHECK")
    assert json.loads(healthcheck.split("CMD", 1)[1]) == ["python", "-m", "sidecar.healthcheck"]


def test_no_build_tools_or_sources_reach_the_final_stage():
    # Only the build stage's virtualenv crosses over; nothing is installed in the final stage.
    assert re.findall(r"^COPY .*$", FINAL_STAGE, flags=re.MULTILINE) == [
        "COPY --from=build /opt/venv /opt/venv"
    ]
    assert not re.search(r"apt-get|gcc|build-essential|pip |--mount", FINAL_STAGE)
    assert "--require-hashes" in DOCKERFILE
    assert "--no-deps" in DOCKERFILE


def test_the_image_command_and_healthcheck_really_work():
    """What the image runs: the console script serves, the healthcheck module sees it."""
    sidecar = SidecarProcess()
    try:
        sidecar.start()
        env = {**os.environ, "TASK_PROTECTION_PORT": str(sidecar.port)}
        ok = subprocess.run(
            [sys.executable, "-m", "sidecar.healthcheck"],
            env=env,
            capture_output=True,
            check=False,
            timeout=30,
        )
        assert ok.returncode == 0
    finally:
        sidecar.stop()
    down = subprocess.run(
        [sys.executable, "-m", "sidecar.healthcheck"],
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=30,
    )
    assert down.returncode == 1
    assert "healthz" in down.stderr
    script = Path(sys.executable).parent / "ecs-protection-sidecar"  # the ENTRYPOINT
    helped = subprocess.run(
        [str(script), "--help"], capture_output=True, text=True, check=False, timeout=30
    )
    assert helped.returncode == 0
    assert "--idle-grace-seconds" in helped.stdout
