"""Lookups by ``_id`` are answered from the ``_id`` index, whatever else the filter says.

The scheduler's hot path addresses records by ``_id`` (alone, with a guard on
their state, or a batch with ``$in``). On the development server (FerretDB's
SQLite handler) that only holds with ``scripts/ferretdb-id-index.patch``: this
test fails against a server that scans. On MongoDB it checks the winning plan.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.harness import World

FILTERS: list[dict[str, Any]] = [
    {"_id": "agent/m5"},
    {"_id": "agent/m5", "state": "accepted"},
    {"_id": {"$in": ["agent/m5", "agent/m7", "agent/none"]}},
]


def _plan(world: World, filter_: dict[str, Any]) -> tuple[str, bool]:
    """The plan as text, and whether it came from FerretDB's SQLite handler."""
    explained = world.db().command("explain", {"find": "plans", "filter": filter_})
    planner = explained.get("queryPlanner") or {}
    sqlite = isinstance(planner.get("Plan"), list)
    return json.dumps(planner), sqlite


@pytest.mark.parametrize("filter_", FILTERS, ids=["id", "id-and-state", "id-in"])
def test_id_lookups_use_the_id_index(world: World, filter_: dict[str, Any]) -> None:
    db = world.db()
    db.plans.insert_many([{"_id": f"agent/m{i}", "state": "accepted", "pad": "x" * 64} for i in range(300)])
    found = list(db.plans.find(filter_))
    assert len(found) == (2 if "$in" in str(filter_) else 1)
    plan, sqlite = _plan(world, filter_)
    if sqlite:
        assert "USING INDEX" in plan and "SCAN" not in plan, plan
    else:  # MongoDB: an _id lookup never scans the collection
        assert "COLLSCAN" not in plan, plan
