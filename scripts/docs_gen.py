"""The generated parts of the docs: the settings table and the HTTP API reference.

Each sits between two markers in its page, so the rest of the page stays hand-written:

    python scripts/docs_gen.py          # rewrite them from sidecar/config.py, openapi.json
    python scripts/docs_gen.py --check  # exit 1 naming each page that is out of step

The settings come from the declarations (`sidecar.config.settings_table`), the API from
`sidecar/openapi.json`, the document the sidecar serves at GET /openapi.json.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run as a script from anywhere: import the checkout's sidecar

from sidecar.config import settings_table  # noqa: E402

SETTINGS = ("settings table: generated from sidecar/config.py", "end of settings table")
API = ("API reference: generated from sidecar/openapi.json", "end of API reference")


def _type(schema: dict[str, Any]) -> str:
    kind = str(schema.get("type", "object"))
    if "enum" in schema:
        kind = " \\| ".join(f"`{value}`" for value in schema["enum"])
    elif kind == "array":
        kind = f"list of {_type(schema.get('items', {}))}"
    elif schema.get("format") == "date-time":
        kind = "RFC3339 time"
    return f"{kind} or null" if schema.get("nullable") else kind


def _fields(schema: dict[str, Any], prefix: str = "") -> list[str]:
    """One table row per property, nested objects flattened to `a.b`."""
    rows = []
    required = set(schema.get("required", []))
    for name, prop in schema.get("properties", {}).items():
        path = f"{prefix}{name}"
        text = " ".join(str(prop.get("description", "")).split())
        need = "yes" if name in required else "no"
        rows.append(f"| `{path}` | {_type(prop)} | {need} | {text} |")
        if prop.get("type") == "object" and "properties" in prop:
            rows.extend(_fields(prop, f"{path}."))
    return rows


def _resolve(doc: dict[str, Any], schema: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    ref = str(schema.get("$ref", ""))
    if not ref:
        return "", schema
    name = ref.rsplit("/", 1)[1]
    return name, doc["components"]["schemas"][name]


def api_reference(doc: dict[str, Any]) -> str:
    """Markdown for every operation of the OpenAPI document, then its schemas."""
    out = []
    for path, methods in doc["paths"].items():
        for method, op in methods.items():
            out += [f"### `{method.upper()} {path}`", "", str(op.get("summary", "")), ""]
            body = op.get("requestBody", {}).get("content", {}).get("application/json")
            if body:
                name, _ = _resolve(doc, body["schema"])
                out += [f"Body (optional): [`{name}`](#{name.lower()}).", ""]
            out += ["| status | meaning | body |", "|---|---|---|"]
            for status, answer in op["responses"].items():
                content = answer.get("content", {})
                shown = ""
                if "application/json" in content:
                    name, _ = _resolve(doc, content["application/json"]["schema"])
                    shown = f"[`{name}`](#{name.lower()})" if name else "JSON"
                elif content:
                    shown = ", ".join(f"`{kind}`" for kind in content)
                meaning = " ".join(str(answer.get("description", "")).split())
                out.append(f"| {status} | {meaning} | {shown} |")
            out.append("")
    out += ["## Schemas", ""]
    for name, schema in doc["components"]["schemas"].items():
        out += [f"### {name}", ""]
        if schema.get("description"):
            out += [" ".join(str(schema["description"]).split()), ""]
        out += ["| field | type | always | what |", "|---|---|---|---|", *_fields(schema), ""]
    return "\n".join(out).rstrip("\n")


def generated() -> dict[tuple[str, tuple[str, str]], str]:
    doc = json.loads((ROOT / "sidecar" / "openapi.json").read_text(encoding="utf-8"))
    return {
        ("docs/configuration.md", SETTINGS): settings_table(),
        ("docs/http-api.md", API): api_reference(doc),
    }


def replaced(text: str, markers: tuple[str, str], body: str) -> str:
    begin, end = f"<!-- {markers[0]} -->\n", f"\n<!-- {markers[1]} -->"
    start, stop = text.index(begin) + len(begin), text.index(end)
    return text[:start] + body + text[stop:]


def main(argv: list[str]) -> int:
    stale = []
    for (page, markers), body in generated().items():
        path = ROOT / page
        text = path.read_text(encoding="utf-8")
        new = replaced(text, markers, body)
        if new != text:
            stale.append(page)
            if "--check" not in argv:
                path.write_text(new, encoding="utf-8")
    if stale and "--check" in argv:
        print(f"out of step, run python scripts/docs_gen.py: {', '.join(stale)}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
