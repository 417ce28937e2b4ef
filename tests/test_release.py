"""Release hygiene: one version (the package metadata) everywhere it is written, a licence
in both distributions, an image that says what it is and carries no unused botocore."""

from __future__ import annotations

import importlib.metadata
import json
import re
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).parent.parent
VERSION = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
DOCKERFILE = (ROOT / "Dockerfile").read_text()


def test_the_version_is_written_the_same_everywhere():
    client = tomllib.loads((ROOT / "client" / "pyproject.toml").read_text())["project"]
    openapi = json.loads((ROOT / "sidecar" / "openapi.json").read_text())
    task = json.loads((ROOT / "ecs" / "task-definition.json").read_text())
    [sidecar] = [c for c in task["containerDefinitions"] if c["name"] == "protection"]
    readme = "".join(
        page.read_text() for page in [ROOT / "README.md", *(ROOT / "docs").glob("*.md")]
    )
    app_image = (ROOT / "examples" / "Dockerfile.app").read_text()
    assert importlib.metadata.version("ecs-protection-sidecar") == VERSION
    assert client["version"] == VERSION
    assert openapi["info"]["version"] == VERSION
    assert sidecar["image"].rsplit(":", 1)[1] == VERSION
    assert re.search(r"^ARG VERSION=(\S+)$", DOCKERFILE, flags=re.MULTILINE)[1] == VERSION
    tags = re.findall(r"ecs-protection-sidecar:(\d+\.\d+\.\d+)", readme + DOCKERFILE)
    pins = re.findall(r'"ecs-protection==([\w.]+)"', readme + app_image)
    assert tags
    assert pins
    assert set(tags) | set(pins) == {VERSION}


@pytest.mark.parametrize("distribution", [ROOT, ROOT / "client"])
def test_each_distribution_ships_the_apache_licence(distribution):
    project = tomllib.loads((distribution / "pyproject.toml").read_text())["project"]
    assert project["license"] == "Apache-2.0"
    assert project["license-files"] == ["LICENSE"]
    text = (distribution / "LICENSE").read_text()
    assert "Apache License" in text.splitlines()[0]
    assert "Version 2.0, January 2004" in text
    assert "TERMS AND CONDITIONS FOR USE, REPRODUCTION, AND DISTRIBUTION" in text
    assert project["classifiers"]
    assert set(project["urls"]) >= {"Homepage", "Source", "Issues"}


def test_the_image_has_oci_labels_that_follow_the_version():
    labels = dict(
        re.findall(
            r"(org\.opencontainers\.image\.\w+)=\"([^\"]*)\"", DOCKERFILE.replace("\\\n", "")
        )
    )
    assert labels["org.opencontainers.image.version"] == "${VERSION}"
    assert labels["org.opencontainers.image.licenses"] == "Apache-2.0"
    assert labels["org.opencontainers.image.source"].startswith("https://")


@pytest.mark.parametrize(
    ("extras", "pins", "botocore"),
    [("", "requirements/image.txt", False), ("api", "requirements/image-api.txt", True)],
)
def test_the_default_image_has_no_botocore_and_the_api_image_has(extras, pins, botocore):
    """The pins the build stage installs, its path expanded by the image's own shell."""
    joined = DOCKERFILE.replace("\\\n", " ")
    spec = re.search(r'--require-hashes\s+-r "(requirements/[^"]+)"', joined)[1]
    out = subprocess.run(
        ["/bin/sh", "-c", f'printf "%s\\n" "{spec}"'],
        env={"EXTRAS": extras},
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert out == [pins]
    pinned = re.findall(r"^([a-z0-9-]+)==", (ROOT / pins).read_text(), flags=re.MULTILINE)
    assert "aiohttp" in pinned
    assert ("botocore" in pinned) is botocore
    assert ("boto3" in pinned) is botocore
    base = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    assert not any(dep.startswith(("boto3", "botocore")) for dep in base)


def test_the_client_readme_links_only_to_absolute_addresses():
    """It is the client's page on the package index, where relative links are broken."""
    readme = (ROOT / "client" / "README.md").read_text()
    targets = re.findall(r"\]\(([^)]+)\)", readme)
    assert all(target.startswith("https://") for target in targets), targets


@pytest.mark.parametrize(
    ("command", "distribution"),
    [("ecs-protection-sidecar", "ecs-protection-sidecar"), ("ecs-protection", "ecs-protection")],
)
def test_both_commands_print_their_version(command, distribution):
    script = Path(sys.executable).parent / command
    out = subprocess.run(
        [str(script), "--version"], capture_output=True, text=True, check=True, timeout=30
    )
    assert out.stdout.strip() == f"{command} {importlib.metadata.version(distribution)}"
    assert importlib.metadata.version(distribution) == VERSION


def _project(directory: Path) -> dict[str, Any]:
    return dict(tomllib.loads((directory / "pyproject.toml").read_text()))


def test_development_dependencies_are_groups_not_published_extras():
    """`test` and `bench` are not offered to users on the package index (PEP 735 groups)."""
    sidecar = _project(ROOT)
    assert set(sidecar["project"]["optional-dependencies"]) == {"api"}
    assert {"test", "bench", "docs"} <= set(sidecar["dependency-groups"])


def test_the_client_builds_with_a_setuptools_that_knows_pep_639():
    requires = _project(ROOT / "client")["build-system"]["requires"]
    assert requires == ["setuptools>=77"]  # `license = "Apache-2.0"` needs 77


def test_the_client_says_what_it_is_on_the_package_index():
    project = _project(ROOT / "client")["project"]
    assert "Typing :: Typed" in project["classifiers"]
    assert any(c.startswith("Development Status ::") for c in project["classifiers"])
    assert any(c.startswith("Framework :: Celery") for c in project["classifiers"])
    assert project["keywords"]
    assert all(extra in project["description"] for extra in project["optional-dependencies"])


def test_the_sidecars_index_page_is_short_and_links_only_to_absolute_addresses():
    project = _project(ROOT)["project"]
    assert project["readme"] == "README.pypi.md"
    text = (ROOT / project["readme"]).read_text()
    assert len(text.splitlines()) < 50
    targets = re.findall(r"\]\(([^)]+)\)", text)
    assert targets
    assert all(target.startswith("https://") for target in targets), targets


def test_the_sidecars_sdist_ships_no_tests():
    """The tests need conftest.py and the fakes: a clone runs them, the sdist has none."""
    rules = (ROOT / "MANIFEST.in").read_text().split()
    assert {"tests", "benchmarks", "client"} <= {
        rules[i + 1] for i, word in enumerate(rules) if word == "prune"
    }
