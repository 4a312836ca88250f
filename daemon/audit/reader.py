"""Reading the audit log: verify the hash chain, show the latest records.

What verification proves: every record from 1 to the last one is present,
unmodified and in its place, relative to the chain itself. Without an
``audit_key`` someone able to write the database could still rebuild the
whole chain (or append well-formed records at its end); with a key they
cannot, and comparing the reported head with one recorded elsewhere catches
a rewrite too (see docs/security.md).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from pymongo.collection import Collection

from aiosd.daemon.audit.chain import GENESIS, HEAD_ID, canonical_ts, head_collection, record_hash
from aiosd.daemon.errors import AuditError
from aiosd.daemon.store import Doc

BATCH = 1000


@dataclass(frozen=True)
class Verdict:
    """Result of :func:`verify`: ``broken`` names the first bad record, if any."""

    records: int
    last_seq: int
    last_hash: str
    broken: Any = None
    problem: str | None = None
    beyond_head: int = 0

    @property
    def ok(self) -> bool:
        """Whether the chain is intact."""
        return self.problem is None


def verify(audit: Collection[Doc], key: bytes | None = None) -> Verdict:
    """Walk the whole chain in sequence order; stop at the first broken record."""
    expected, prev, count = 1, GENESIS, 0
    for doc in audit.find({}).sort("_id", 1).batch_size(BATCH):
        rid = doc["_id"]
        problem = _check(doc, expected, prev, key)
        if problem is not None:
            blamed, text = problem
            return Verdict(count, expected - 1, prev, broken=blamed, problem=text)
        prev, expected, count = str(doc["hash"]), rid + 1, count + 1
    last = expected - 1
    head = head_collection(audit).find_one({"_id": HEAD_ID})
    if head is not None and int(head["seq"]) > last:
        text = f"records {last + 1}..{head['seq']} are missing: the log was cut short (the head says {head['seq']})"
        return Verdict(count, last, prev, broken=last + 1, problem=text)
    if head is not None and not _head_matches(audit, head):
        text = f"record {head['seq']} does not match the hash the head recorded for it: it was rewritten"
        return Verdict(count, last, prev, broken=int(head["seq"]), problem=text)
    beyond = last - int(head["seq"]) if head is not None else last
    return Verdict(count, last, prev, beyond_head=beyond)


def _check(doc: Doc, expected: int, prev: str, key: bytes | None) -> tuple[Any, str] | None:
    rid = doc["_id"]
    if not isinstance(rid, int) or isinstance(rid, bool):
        return rid, f"record {rid!r} is not part of the chain: it was inserted (its _id is not a sequence number)"
    if rid != expected:
        gap = f"{expected}" if rid == expected + 1 else f"{expected}..{rid - 1}"
        return expected, f"record {gap} is missing: deleted (the chain jumps from {expected - 1} to {rid})"
    alg = doc.get("alg")
    if key is None and alg == "hmac-sha256":
        raise AuditError("this audit log is keyed (HMAC); set audit_key (AIOSD_AUDIT_KEY) to verify it")
    if key is not None and alg != "hmac-sha256":
        return rid, f"record {rid} is not signed with the audit key: it was forged or inserted"
    if doc.get("seq") != rid or record_hash(doc, key) != doc.get("hash"):
        return rid, f"record {rid} was modified: its hash does not match its content"
    if doc.get("prev") != prev:
        return rid - 1, (
            f"record {rid - 1} was rewritten (record {rid} recorded a different hash for it), "
            f"or record {rid} was forged in its place"
        )
    return None


def _head_matches(audit: Collection[Doc], head: Doc) -> bool:
    if int(head["seq"]) == 0:
        return True
    rec = audit.find_one({"_id": int(head["seq"])}, {"hash": 1})
    return rec is not None and rec.get("hash") == head.get("hash")


def latest(audit: Collection[Doc], count: int, agent: str | None = None) -> list[Doc]:
    """The last ``count`` records (of ``agent``, if given), oldest first."""
    if count <= 0:
        return []  # (limit(0) would mean "no limit")
    query: Doc = {"agent": agent} if agent else {}
    return list(reversed(list(audit.find(query).sort("_id", -1).limit(count))))


def after(audit: Collection[Doc], seq: int, agent: str | None = None) -> Iterator[Doc]:
    """Records with a sequence number above ``seq`` (of ``agent``, if given), in order."""
    query: Doc = {"_id": {"$gt": seq}}
    if agent:
        query["agent"] = agent
    return iter(audit.find(query).sort("_id", 1).batch_size(BATCH))


def last_seq(audit: Collection[Doc]) -> int:
    """The head's sequence number (0 for an empty log)."""
    head = head_collection(audit).find_one({"_id": HEAD_ID})
    return int(head["seq"]) if head else 0


def format_record(doc: Doc) -> str:
    """One human line per record."""
    parts = [
        f"{doc.get('seq', doc['_id']):>8}",
        canonical_ts(doc["ts"]),
        doc.get("agent") or "-",
        doc.get("decision") or "-",
        doc.get("syscall") or "-",
        doc.get("resource") or "-",
        doc.get("message_id") or "-",
    ]
    if doc.get("code"):
        parts.append(f"code={doc['code']}")
    if doc.get("reason"):
        parts.append(f"reason={doc['reason']!r}")
    if doc.get("actor") and doc["actor"] != "scheduler":
        parts.append(f"by={doc['actor']}")
    return " ".join(str(p) for p in parts)
