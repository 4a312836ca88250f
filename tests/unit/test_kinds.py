"""The kinds table: who serves each syscall is decided once, in the SDK's catalogue."""

from __future__ import annotations

import re
from pathlib import Path

from aiosd.sdk.syscalls import CATALOGUE, is_leased, served_by

ROOT = Path(__file__).resolve().parents[2]
#: Deciding a syscall's kind by its name's text, anywhere but the catalogue.
PREFIX_TEST = re.compile(r"""startswith\(\s*["'](llm|tool|memory|storage|context)|==\s*["']tool\.call["']|kind_of\(""")


def test_every_syscall_has_exactly_one_server() -> None:
    assert {name for name, s in CATALOGUE.items() if s.served_by == "llm"} == {"llm.chat"}
    assert {name for name, s in CATALOGUE.items() if s.served_by == "tools"} == {"tool.call"}
    assert served_by("memory.add") == "kernel" and served_by("tool.list") == "kernel"
    assert is_leased("llm.chat") and is_leased("tool.call") and not is_leased("syscall.result")
    assert served_by("no.such") == "kernel" and not is_leased("no.such")


def test_no_code_decides_a_kind_by_prefix_outside_the_catalogue() -> None:
    offenders = [
        f"{path.relative_to(ROOT)}:{n}"
        for folder in ("daemon", "workers", "sdk")
        for path in sorted((ROOT / folder).rglob("*.py"))
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if PREFIX_TEST.search(line)
    ]
    assert offenders == []
