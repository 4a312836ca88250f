"""Storage paths: strict rules and one canonical form, so no path escapes or aliases another."""

from __future__ import annotations

import pytest

from aiosd.sdk.paths import MAX_DEPTH, MAX_PATH_CHARS, MAX_SEGMENT_CHARS, normalize_path, normalize_prefix


@pytest.mark.parametrize(
    ("raw", "canonical"),
    [
        ("notes/a.txt", "/notes/a.txt"),
        ("/notes/a.txt", "/notes/a.txt"),
        ("/etc/passwd", "/etc/passwd"),  # a file in the caller's namespace, not a host path
        ("cafe\u0301.txt", "/caf\u00e9.txt"),  # NFC: two spellings, one file
    ],
)
def test_equivalent_spellings_have_one_canonical_form(raw: str, canonical: str) -> None:
    assert normalize_path(raw) == canonical


@pytest.mark.parametrize(
    ("raw", "problem"),
    [
        ("", "namespace root"),
        ("/", "namespace root"),
        ("a/", "cannot end with '/'"),
        ("a/../b", "'..' segments"),
        ("./a", "'.' segments"),
        ("a//b", "empty segment"),
        ("a\\b", "backslash"),
        ("a\x00b", "NUL"),
        ("a\nb", "control character"),
        ("x" * (MAX_PATH_CHARS + 1), "too long"),
        ("x" * (MAX_SEGMENT_CHARS + 1), "longer than"),
        ("/".join(["d"] * (MAX_DEPTH + 1)), "too deep"),
    ],
)
def test_tricks_are_refused_with_a_reason_not_cleaned_up(raw: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        normalize_path(raw)


def test_prefixes_may_name_directories_and_the_root() -> None:
    assert normalize_prefix("/") == "/"
    assert normalize_prefix("notes/") == "/notes/"
    assert normalize_prefix("/notes") == "/notes"
    with pytest.raises(ValueError):
        normalize_prefix("notes/../x/")
