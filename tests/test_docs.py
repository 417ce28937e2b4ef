"""The docs stay true to the code: generated parts in step, named log events and /state
fields real, the README's links resolvable."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).parent.parent


def test_generated_parts_are_in_step_with_the_code():
    """The settings table and the HTTP API reference; `python scripts/docs_gen.py` fixes it."""
    done = subprocess.run(
        [sys.executable, "scripts/docs_gen.py", "--check"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def _emitted_events() -> set[str]:
    code = "".join(path.read_text() for path in (ROOT / "sidecar").rglob("*.py"))
    events = set(re.findall(r'"event": "(\w+)"', code))
    # protection_enabled and protection_renewed share one call site: `"a" if ... else "b"`.
    events |= set(re.findall(r'"event": "\w+" if [^"]+ else "(\w+)"', code))
    return events


def _state_fields(schema: dict[str, Any], prefix: str = "") -> set[str]:
    fields = set()
    for name, prop in schema.get("properties", {}).items():
        fields.add(prefix + name)
        fields |= _state_fields(prop, f"{prefix}{name}.")
    return fields


def test_troubleshooting_names_only_events_and_state_fields_the_sidecar_has():
    page = (ROOT / "docs" / "troubleshooting.md").read_text()
    events = set(re.findall(r"log event `(\w+)`", page))
    fields = set(re.findall(r"`/state\.([\w.]+)`", page))
    assert len(events) >= 10
    assert len(fields) >= 8
    assert events <= _emitted_events(), events - _emitted_events()
    schema = json.loads((ROOT / "sidecar" / "openapi.json").read_text())["components"]["schemas"]
    error = {"op", "code", "message", "retryable", "at", "retry_in_seconds"}
    known = _state_fields(schema["State"]) | {f"protection.last_error.{e}" for e in error}
    assert fields <= known, fields - known


def test_the_monitoring_page_lists_every_event_the_sidecar_logs():
    page = (ROOT / "docs" / "monitoring.md").read_text()
    listed = set(re.findall(r"`(\w+)`", page))
    assert _emitted_events() - listed == set()


def test_the_readme_links_to_files_that_exist():
    readme = (ROOT / "README.md").read_text()
    targets = re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", readme)
    local = [t for t in targets if not t.startswith("https://")]
    assert len(local) > 15
    missing = [t for t in local if not (ROOT / t).exists()]
    assert missing == []


def test_a_page_that_shows_a_redis_broker_names_the_frameworks_redis_extra():
    """ecs-protection[celery] with a Redis broker fails at worker start without
    celery[redis] (kombu's Redis transport), and Dramatiq's RedisBroker without
    dramatiq[redis]: a page that shows one says which extra it needs."""
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    needs = {"celery[redis]": r"Celery\(.*redis://", "dramatiq[redis]": r"RedisBroker"}
    missing = [
        f"{page.relative_to(ROOT)}: {extra}"
        for page in pages
        for extra, shown in needs.items()
        if re.search(shown, page.read_text()) and extra not in page.read_text()
    ]
    assert missing == []
