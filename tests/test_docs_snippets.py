"""Every code block of README.md and docs/*.md runs as printed, or is validated.

The convention (docs/development.md, "Every snippet is tested"): the block's language
decides what is done with it; a block that cannot run here is preceded by
`<!-- snippet: not run: REASON -->` with one of a few listed reasons, and gets the checks
that need none of the missing resources. `--8<-- "path"` lines include a repository file.
"""

from __future__ import annotations

import importlib
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import botocore.session
import pytest
from botocore.validate import ParamValidator

from tests.processes import SidecarProcess

ROOT = Path(__file__).parent.parent
# The repository's README, the docs, and the two package index pages.
PAGES = [
    ROOT / "README.md",
    *sorted((ROOT / "docs").glob("*.md")),
    ROOT / "README.pypi.md",
    ROOT / "client" / "README.md",
]
BIN = Path(sys.executable).parent

RUN = {"python", "sh", "json", "yaml", "dockerfile"}
SHOWN = {"text", "mermaid"}  # output and diagrams: nothing to run
NOT_RUN = {"AWS", "container engine", "installs packages", "long-running"}

# Whole example files shown on a page whose own tests run them as they must be run (a
# worker loop until SIGTERM): the page's block is the file itself, through an include.
TESTED_BY = {"examples/worker.py": "tests/test_examples.py"}

_FENCE = re.compile(r"^```(\S*)[^\n]*\n(.*?)^```$", re.MULTILINE | re.DOTALL)
_MARK = re.compile(r"<!-- snippet: not run: ([^>]*?) -->\s*$")
_INCLUDE = re.compile(r'^--8<-- "([^"]+)"$', re.MULTILINE)


@dataclass(frozen=True)
class Snippet:
    page: str
    line: int
    language: str
    code: str
    not_run: str | None
    included: str | None = None

    def __str__(self) -> str:
        return f"{self.page}:{self.line}"


def _expand(code: str) -> str:
    return _INCLUDE.sub(lambda m: (ROOT / m[1]).read_text(encoding="utf-8").rstrip("\n"), code)


def snippets() -> list[Snippet]:
    found = []
    for page in PAGES:
        text = page.read_text(encoding="utf-8")
        for match in _FENCE.finditer(text):
            before = text[: match.start()].rstrip("\n").rsplit("\n", 1)[-1]
            mark = _MARK.search(before)
            found.append(
                Snippet(
                    str(page.relative_to(ROOT)),
                    text.count("\n", 0, match.start()) + 1,
                    match[1],
                    _expand(match[2]),
                    mark[1] if mark else None,
                    included[1] if (included := _INCLUDE.fullmatch(match[2].strip())) else None,
                )
            )
    return found


ALL = snippets()


def _ids(kind: set[str], *, runnable: bool) -> list[Any]:
    return [
        pytest.param(s, id=str(s))
        for s in ALL
        if s.language in kind and (s.not_run is None) == runnable and s.included not in TESTED_BY
    ]


def test_example_files_shown_whole_are_run_by_their_own_tests():
    shown = {s.included for s in ALL if s.included in TESTED_BY}
    assert shown == set(TESTED_BY)
    for path, test in TESTED_BY.items():
        assert path in (ROOT / test).read_text(encoding="utf-8").replace('" / "', "/")


def test_every_block_is_of_a_listed_kind():
    """No block escapes the test: a known language, and a listed reason when not run."""
    assert len(ALL) > 30
    for snippet in ALL:
        assert snippet.language in RUN | SHOWN, f"{snippet}: language {snippet.language!r}"
        assert snippet.not_run in {None, *NOT_RUN}, f"{snippet}: reason {snippet.not_run!r}"


def test_the_readme_is_short_and_opens_with_the_two_commands():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(readme.splitlines()) <= 200
    first_blocks = [s for s in ALL if s.page == "README.md" and s.language == "sh"][:2]
    assert "ecs-protection-sidecar" in first_blocks[0].code
    assert first_blocks[1].code.strip() == "./scripts/test"


@pytest.fixture(scope="module")
def sidecar():
    process = SidecarProcess().start()
    yield process
    process.stop()


def _env(sidecar: SidecarProcess) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TASK_PROTECTION_")}
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env["TASK_PROTECTION_URL"] = sidecar.url
    return env


@pytest.mark.parametrize("snippet", _ids({"python"}, runnable=True))
def test_python_blocks_run(snippet, sidecar, tmp_path):
    script = tmp_path / "snippet.py"
    script.write_text(snippet.code, encoding="utf-8")
    done = subprocess.run(
        [sys.executable, str(script)],
        env=_env(sidecar),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, f"{snippet}:\n{done.stdout}\n{done.stderr}"


@pytest.mark.parametrize("snippet", _ids({"sh"}, runnable=True))
def test_shell_blocks_run(snippet, sidecar):
    """Against a real sidecar: the documented default address becomes the test's own."""
    address = f"127.0.0.1:{sidecar.port}"
    code = re.sub(r"\b(localhost|127\.0\.0\.1):31680\b", address, snippet.code)
    done = subprocess.run(
        ["bash", "-e", "-c", code],
        env=_env(sidecar),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, f"{snippet}:\n{done.stdout}\n{done.stderr}"
    assert "Traceback" not in done.stderr, f"{snippet}:\n{done.stderr}"


# ---- configuration: JSON, YAML, Dockerfiles ---------------------------------------------

_ECS = botocore.session.get_session().get_service_model("ecs")
_REGISTER = _ECS.operation_model("RegisterTaskDefinition").input_shape
_CONTAINER_KEYS = set(_REGISTER.members["containerDefinitions"].member.members)


def _task_definition(doc: dict[str, Any]) -> dict[str, Any]:
    """A whole task definition as is; a container definition (or part of one) inside one."""
    if "containerDefinitions" in doc:
        return doc
    assert set(doc) <= _CONTAINER_KEYS, f"not a container definition: {set(doc) - _CONTAINER_KEYS}"
    container = {"name": "app", "image": "app:1", **doc}
    return {"family": "snippet", "containerDefinitions": [container]}


def _check_policy(doc: dict[str, Any]) -> None:
    assert doc["Version"] == "2012-10-17"
    session = botocore.session.get_session()
    for statement in doc["Statement"]:
        assert statement["Effect"] in {"Allow", "Deny"}
        resources = statement["Resource"]
        for resource in [resources] if isinstance(resources, str) else resources:
            assert resource.startswith("arn:aws:"), resource
        for action in statement["Action"]:
            service, operation = action.split(":")
            model = session.get_service_model(service)
            assert operation in model.operation_names, action


@pytest.mark.parametrize("snippet", _ids({"json"}, runnable=True))
def test_json_blocks_are_valid_configuration(snippet):
    doc = json.loads(snippet.code)
    if "Statement" in doc:
        _check_policy(doc)
        return
    report = ParamValidator().validate(_task_definition(doc), _REGISTER)
    assert not report.has_errors(), f"{snippet}: {report.generate_report()}"


@pytest.mark.parametrize("snippet", _ids({"yaml"}, runnable=True))
def test_yaml_blocks_pass_cfn_lint(snippet, tmp_path):
    template = tmp_path / "template.yaml"
    template.write_text(snippet.code, encoding="utf-8")
    done = subprocess.run(
        [str(BIN / "cfn-lint"), str(template)], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, f"{snippet}:\n{done.stdout}{done.stderr}"


@pytest.mark.parametrize(
    "snippet", _ids({"dockerfile"}, runnable=True) + _ids({"dockerfile"}, runnable=False)
)
def test_dockerfile_blocks_pass_hadolint(snippet, tmp_path):
    dockerfile = tmp_path / "Dockerfile"
    dockerfile.write_text(snippet.code, encoding="utf-8")
    hadolint = shutil.which("hadolint") or str(BIN / "hadolint")
    done = subprocess.run([hadolint, str(dockerfile)], capture_output=True, text=True, check=False)
    assert done.returncode == 0, f"{snippet}:\n{done.stdout}{done.stderr}"


# ---- blocks that cannot run here: what can be checked without their resources -----------

_GLOBAL_AWS_OPTIONS = {"cli-input-json", "query", "output", "region", "profile"}
# `aws cloudformation deploy` is a command of the CLI, not an API operation.
_CLI_COMMANDS = {
    ("cloudformation", "deploy"): {
        "template-file",
        "stack-name",
        "capabilities",
        "parameter-overrides",
    },
    # The ECR login of every push: the CLI's own command around GetAuthorizationToken.
    ("ecr", "get-login-password"): set(),
}


def _commands(code: str) -> list[list[str]]:
    """Each command of each line; the commands of a pipeline one by one."""
    joined = code.replace("\\\n", " ")
    lines = [line for line in joined.splitlines() if line.strip()]
    commands: list[list[str]] = []
    for line in lines:
        words = shlex.split(line, comments=True)
        while "|" in words:
            commands.append(words[: words.index("|")])
            words = words[words.index("|") + 1 :]
        commands.append(words)
    return [words for words in commands if words]


def _check_aws(words: list[str]) -> None:
    service, command = words[1], words[2]
    options = {word[2:] for word in words[3:] if word.startswith("--")}
    known = _CLI_COMMANDS.get((service, command))
    if known is None:
        model = botocore.session.get_session().get_service_model(service)
        name = "".join(part.capitalize() for part in command.split("-"))
        assert name in model.operation_names, f"aws {service} {command}"
        members = model.operation_model(name).input_shape.members
        known = {member.lower() for member in members}
        options = {option.replace("-", "") for option in options}
        assert options - {o.replace("-", "") for o in _GLOBAL_AWS_OPTIONS} <= known, options
    else:
        options -= _GLOBAL_AWS_OPTIONS
        assert options <= known, options - known
    for word in words:
        if word.startswith("file://"):
            assert (ROOT / word.removeprefix("file://")).is_file(), word


def _check_python_module(words: list[str]) -> None:
    module = words[words.index("-m") + 1]
    flags = {word.split("=")[0] for word in words if word.startswith("--")}
    if not flags:
        importlib.import_module(module)
        return
    shown = subprocess.run(
        [sys.executable, "-m", module, "--help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    assert all(flag in shown for flag in flags), flags


def _resolve(dotted: str) -> None:
    module, _, name = dotted.rpartition(".")
    assert hasattr(importlib.import_module(module), name), dotted


@pytest.mark.parametrize("snippet", _ids({"sh"}, runnable=False))
def test_shell_blocks_that_cannot_run_here_still_parse_and_name_real_things(snippet):
    for words in _commands(snippet.code):
        if words[0] == "aws":
            assert snippet.not_run == "AWS", f"{snippet}: an aws command is marked AWS"
            _check_aws(words)
        elif "-m" in words and "venv" not in words:
            _check_python_module(words)
        for word in words:
            if word.startswith("./"):
                assert (ROOT / word).exists(), f"{snippet}: {word}"
            for dotted in re.findall(r"\becs_protection\.\w+\.\w+", word):
                _resolve(dotted)
