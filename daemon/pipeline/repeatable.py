"""Kernel syscalls that may run again without effect once they have completed.

``memory.add`` names its note after the call (agent and message id), so a
second run finds the note there and changes nothing; the others read one
thing by its name. Their copies are not looked up before they run: the
``results`` collection's unique ``_id`` tells, when the reply is committed,
that the call completed before, and the copy is answered with the stored
reply. A lone call so waits for no read first. Reads whose cost grows with
what they cover (``memory.search``, the listings) are looked up first: a
re-sent copy must not cost a second ranking or scan.
"""

from __future__ import annotations

REPEATABLE: frozenset[str] = frozenset(
    {
        "memory.add",
        "memory.get",
        "storage.read",
        "storage.stat",
        "context.get",
        "tool.list",
        "syscall.result",
        "task.get",
        "batch.get",
    }
)
