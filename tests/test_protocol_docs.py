"""The committed JSON Schemas and docs/protocol.md match the protocol models."""

from __future__ import annotations

import json
import subprocess

from aiosd.sdk import schema
from aiosd.sdk.protocol import ErrorCode, Request, Status
from aiosd.sdk.syscalls import CATALOGUE

from .harness import ROOT, aiosd_command

PROTOCOL_DOC = (ROOT / "docs" / "protocol.md").read_text()


def test_committed_schemas_are_fresh() -> None:
    assert schema.stale() == [], "JSON Schemas are stale: run `make schema` and commit"


def test_schema_check_command_fails_when_stale(tmp_path: object) -> None:
    ok = subprocess.run(aiosd_command("schema", "--check"), capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    target = schema.SCHEMA_DIR / "request.json"
    original = target.read_text()
    try:
        target.write_text(original.replace('"syscall"', '"sys_call"'))
        stale = subprocess.run(aiosd_command("schema", "--check"), capture_output=True, text=True)
        assert stale.returncode == 1 and "request.json" in stale.stderr
    finally:
        target.write_text(original)


def test_request_schema_validates_like_the_model() -> None:
    doc = json.loads((schema.SCHEMA_DIR / "request.json").read_text())
    assert doc["required"] == ["syscall"] and doc["additionalProperties"] is False
    assert Request(syscall="memory.add").v == 1


def test_docs_cover_every_syscall_status_and_code() -> None:
    for name in CATALOGUE:
        assert f"`{name}`" in PROTOCOL_DOC, f"{name} missing from docs/protocol.md"
    for code in ErrorCode:
        assert f"`{code.value}`" in PROTOCOL_DOC, f"error code {code.value} missing from docs/protocol.md"
    for status in Status:
        assert f"`{status.value}`" in PROTOCOL_DOC
    for name in (
        "aiosd.ingress",
        "aiosd.syscalls",
        "aiosd.dead",
        "x-aiosd-error-code",
        "x-aiosd-error-reason",
        "aiosd-protocol",
    ):
        assert name in PROTOCOL_DOC


def test_readme_documents_every_setting() -> None:
    from aiosd.sdk.process.settings import Settings

    readme = (ROOT / "README.md").read_text()
    missing = [f for f in Settings.model_fields if f"`{f}`" not in readme and f"AIOSD_{f.upper()}" not in readme]
    assert missing == [], f"settings missing from the README's table: {missing}"
