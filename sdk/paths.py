"""Paths of the storage namespaces: the strict rules and the canonical form.

A path names a file inside one agent's namespace, never a host path. Paths
are checked strictly rather than "cleaned up", so a trick is refused with a
clear message instead of silently meaning something else:

* a leading ``/`` is optional and means the namespace root (``notes/a.txt``
  and ``/notes/a.txt`` are the same file); ``/etc/passwd`` is simply a file
  named ``/etc/passwd`` in the caller's namespace;
* segments ``.`` and ``..``, empty segments (``a//b``), backslashes, NUL and
  other control characters are refused;
* at most :data:`MAX_PATH_CHARS` characters, :data:`MAX_SEGMENT_CHARS` per
  segment and :data:`MAX_DEPTH` segments; text is NFC-normalized so two
  spellings of the same name are one file.

A *prefix* may also end with ``/`` (a directory) or be ``/`` (everything).
"""

from __future__ import annotations

import unicodedata

MAX_PATH_CHARS = 1024
MAX_SEGMENT_CHARS = 255
MAX_DEPTH = 64


def _check_segments(path: str, raw: str) -> list[str]:
    if not raw:
        raise ValueError("path is empty")
    if len(raw) > MAX_PATH_CHARS:
        raise ValueError(f"path is too long ({len(raw)} > {MAX_PATH_CHARS} characters)")
    if "\0" in raw:
        raise ValueError("path contains a NUL character")
    if "\\" in raw:
        raise ValueError("path contains a backslash: separate segments with '/' (there are no host paths)")
    if any(unicodedata.category(c) == "Cc" for c in raw):
        raise ValueError("path contains a control character")
    segments = path.split("/")
    if len(segments) > MAX_DEPTH:
        raise ValueError(f"path is too deep (more than {MAX_DEPTH} segments)")
    for segment in segments:
        if segment in (".", ".."):
            raise ValueError(f"{segment!r} segments are not allowed: a path cannot leave or walk the namespace")
        if not segment:
            raise ValueError("path has an empty segment ('//')")
        if len(segment) > MAX_SEGMENT_CHARS:
            raise ValueError(f"a path segment is longer than {MAX_SEGMENT_CHARS} characters")
    return segments


def normalize_path(raw: str) -> str:
    """The canonical form (``/a/b``) of a file path; raise :class:`ValueError` naming the problem."""
    text = unicodedata.normalize("NFC", raw)
    body = text[1:] if text.startswith("/") else text
    if not body:
        raise ValueError("'/' is the namespace root, not a file: name a file such as '/notes.txt'")
    if body.endswith("/"):
        raise ValueError("a file path cannot end with '/'")
    return "/" + "/".join(_check_segments(body, raw))


def normalize_prefix(raw: str) -> str:
    """The canonical form of a directory prefix: ``/``, ``/docs/`` or a path prefix like ``/docs/re``."""
    text = unicodedata.normalize("NFC", raw)
    body = text[1:] if text.startswith("/") else text
    if not body:
        return "/"
    trailing = body.endswith("/")
    core = body[:-1] if trailing else body
    return "/" + "/".join(_check_segments(core, raw)) + ("/" if trailing else "")
