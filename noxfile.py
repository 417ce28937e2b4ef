"""The client on every Python it supports (3.9 to 3.13) that is installed here.

`./scripts/test` runs this after the main suite; `nox` alone does too. A session
whose interpreter is missing is skipped, and nox's summary says which ran. pyenv's
interpreters are found even when pyenv has not selected them.

Only the client's own tests run here (tests/test_client*.py), without the
repository's conftest: they use stdlib fakes, and a real sidecar (which needs
Python 3.11+) is started with SIDECAR_PYTHON, the repository's .venv by default.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import nox

ROOT = Path(__file__).parent
PYTHONS = ["3.9", "3.10", "3.11", "3.12", "3.13"]
TEST_PACKAGES = ["pytest>=8", "pytest-asyncio>=0.23", "pytest-timeout>=2.3"]

nox.options.sessions = ["client", "client_types"]
nox.options.reuse_venv = "yes"  # installs are quick when nothing changed
nox.options.envdir = str(ROOT / ".venv" / "nox")  # beside the main venv, ignored by git
nox.options.error_on_missing_interpreters = False  # a machine may lack some
nox.options.download_python = "never"  # nothing is fetched: use what is installed

_pyenv = Path(os.environ.get("PYENV_ROOT") or Path.home() / ".pyenv") / "versions"
if _pyenv.is_dir():
    _bins = sorted(str(path) for path in _pyenv.glob("3.*/bin"))
    os.environ["PATH"] = os.pathsep.join([*_bins, os.environ.get("PATH", "")])


def _sidecar_python() -> str:
    if os.environ.get("SIDECAR_PYTHON"):
        return os.environ["SIDECAR_PYTHON"]
    repo_venv = ROOT / ".venv" / "bin" / "python"
    return str(repo_venv) if repo_venv.exists() else sys.executable


@nox.session(python=PYTHONS)
def client(session: nox.Session) -> None:
    """The client's tests on one Python."""
    session.install("-e", "./client[async]", *TEST_PACKAGES)
    tests = [
        "tests/test_client.py",
        *sorted(str(p) for p in Path("tests").glob("test_client_*.py")),
        "tests/test_shutdown.py",  # GracefulShutdown under real SIGTERM, on each Python
    ]
    session.run(
        "python",
        "-m",
        "pytest",
        "--noconftest",
        "-p",
        "tests.client_fixtures",
        "-p",
        "no:cacheprovider",
        "-q",
        *tests,
        *session.posargs,
        env={"SIDECAR_PYTHON": _sidecar_python()},
    )


@nox.session(python="3.9")
def client_types(session: nox.Session) -> None:
    """mypy --strict on the client as Python 3.9 sees it (current mypy no longer targets 3.9)."""
    # The framework integrations are checked against the frameworks as installed on 3.9.
    session.install(
        "mypy", "types-requests", "celery-types", "-e", "./client[async,celery,rq,dramatiq]"
    )
    session.run("mypy", "--strict", "--python-version", "3.9", "client/ecs_protection")
