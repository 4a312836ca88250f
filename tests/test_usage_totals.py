"""Agents' lifetime LLM totals: added up in memory, written in one go, nothing lost or doubled (real database)."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from pymongo.errors import OperationFailure

from aiosd.daemon.leasing.totals import UsageTotals
from aiosd.sdk.protocol import Usage

from .admission import scratch_db


@pytest.fixture
def db() -> Iterator[Any]:
    yield from scratch_db("aiosd_test_totals")


def one_call(prompt: int, completion: int) -> dict[str, tuple[Usage, int]]:
    return {"alice": (Usage(prompt_tokens=prompt, completion_tokens=completion), 1)}


def test_totals_from_many_threads_are_written_once_and_exactly(db: Any) -> None:
    totals = UsageTotals(db["usage"])
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda i: totals.add(one_call(i, 1)), range(400)))
    assert db["usage"].count_documents({}) == 0  # nothing written before the write
    totals.write()
    totals.add({"bob": (Usage(cached_tokens=7), 2)})
    totals.write()
    totals.write()  # nothing new: no write, nothing doubled
    alice = db["usage"].find_one({"_id": "alice"})
    bob = db["usage"].find_one({"_id": "bob"})
    assert (alice["prompt_tokens"], alice["completion_tokens"], alice["llm_calls"]) == (sum(range(400)), 400, 400)
    assert (bob["cached_tokens"], bob["llm_calls"]) == (7, 2)


def test_an_agent_whose_write_failed_is_written_next_time_and_the_others_once(db: Any) -> None:
    db["usage"].insert_one({"_id": "broken", "prompt_tokens": "not a number"})
    totals = UsageTotals(db["usage"])
    totals.add({**one_call(5, 1), "broken": (Usage(prompt_tokens=3), 1)})
    with pytest.raises(OperationFailure):
        totals.write()
    assert db["usage"].find_one({"_id": "alice"})["prompt_tokens"] == 5
    db["usage"].update_one({"_id": "broken"}, {"$set": {"prompt_tokens": 10}})  # repaired
    totals.write()
    assert db["usage"].find_one({"_id": "alice"})["prompt_tokens"] == 5  # not doubled
    broken = db["usage"].find_one({"_id": "broken"})
    assert (broken["prompt_tokens"], broken["llm_calls"]) == (13, 1)
