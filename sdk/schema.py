"""JSON Schemas of the wire protocol, generated from the pydantic models.

The generated files live in ``schemas/`` beside this module and are
committed, so agents in other languages can validate against them; a test
fails when they drift from the models.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from .protocol import Reply, Request
from .syscalls import CATALOGUE

SCHEMA_DIR = Path(__file__).with_name("schemas")
_DIALECT = "https://json-schema.org/draft/2020-12/schema"


def generate() -> dict[str, dict[str, Any]]:
    """Return ``{file name: schema}`` for the envelopes and every syscall."""
    out = {"request.json": _schema(Request, "aiosd request (v1)"), "reply.json": _schema(Reply, "aiosd reply (v1)")}
    for name, spec in sorted(CATALOGUE.items()):
        out[f"{name}.args.json"] = _schema(spec.args, f"{name} arguments")
        out[f"{name}.result.json"] = _schema(spec.result, f"{name} result")
    return out


def write(directory: Path = SCHEMA_DIR) -> list[Path]:
    """Write every schema file (and remove ones no model produces)."""
    directory.mkdir(parents=True, exist_ok=True)
    wanted = generate()
    for old in directory.glob("*.json"):
        if old.name not in wanted:
            old.unlink()
    paths = []
    for name, schema in wanted.items():
        path = directory / name
        path.write_text(_render(schema), encoding="utf-8")
        paths.append(path)
    return paths


def stale(directory: Path = SCHEMA_DIR) -> list[str]:
    """Names of schema files that are missing, different or extra."""
    wanted = generate()
    present = {p.name for p in directory.glob("*.json")}
    bad = sorted(present - wanted.keys())
    for name, schema in wanted.items():
        path = directory / name
        if not path.is_file() or path.read_text(encoding="utf-8") != _render(schema):
            bad.append(name)
    return bad


def _schema(model: type[BaseModel], title: str) -> dict[str, Any]:
    schema = model.model_json_schema(mode="validation")
    return {"$schema": _DIALECT, "title": title, **{k: v for k, v in schema.items() if k != "title"}}


def _render(schema: dict[str, Any]) -> str:
    return json.dumps(schema, indent=2, sort_keys=True) + "\n"
