"""SDK round trips for every memory syscall, sync and asyncio, through a real scheduler."""

from __future__ import annotations

import asyncio

import pytest

from aiosd.sdk import AsyncClient, CallError, Client

from .harness import SchedulerProcess, World


def test_sync_round_trip(shared_world: World, scheduler: SchedulerProcess) -> None:
    with Client(shared_world.amqp_url(), timeout=20) as client:
        ref = client.memory.add("the standup moved to 10am", tags=["calendar"], metadata={"source": "chat"})
        note = client.memory.get(ref.id)
        assert (note.content, note.tags, note.metadata) == (
            "the standup moved to 10am",
            ["calendar"],
            {"source": "chat"},
        )

        updated = client.memory.update(ref.id, content="the standup moved to 11am")
        assert updated.content == "the standup moved to 11am"
        assert updated.tags == ["calendar"]  # untouched fields keep their value
        assert updated.updated_at >= note.updated_at

        client.memory.add("buy oat milk", tags=["shopping"])
        hits = client.memory.search("when is the standup").results
        assert hits and hits[0].id == ref.id and hits[0].score > 0

        assert client.memory.delete(ref.id).id == ref.id
        with pytest.raises(CallError) as err:
            client.memory.get(ref.id)
        assert err.value.code == "not_found"
        assert all(h.id != ref.id for h in client.memory.search("standup").results)


def test_async_round_trip(shared_world: World, scheduler: SchedulerProcess) -> None:
    async def scenario() -> None:
        async with AsyncClient(shared_world.amqp_url(), timeout=20) as client:
            refs = await asyncio.gather(*(client.memory.add(f"async note {i}", tags=["a"]) for i in range(5)))
            assert len({r.id for r in refs}) == 5
            note = await client.memory.get(refs[0].id)
            assert note.content == "async note 0"
            updated = await client.memory.update(refs[1].id, tags=["a", "b"])
            assert updated.tags == ["a", "b"]
            found = await client.memory.search("note", tags=["b"])
            assert [h.id for h in found.results] == [refs[1].id]
            await client.memory.delete(refs[2].id)
            with pytest.raises(CallError) as err:
                await client.memory.get(refs[2].id)
            assert err.value.code == "not_found"

    asyncio.run(scenario())


def test_errors_carry_protocol_codes(shared_world: World, scheduler: SchedulerProcess) -> None:
    with Client(shared_world.amqp_url(), timeout=20) as client:
        with pytest.raises(CallError) as err:
            client.call("memory.teleport", {})
        assert err.value.code == "unknown_syscall"
        with pytest.raises(CallError) as err:
            client.call("memory.add", {"text": "wrong field"})
        assert err.value.code == "invalid_args" and "content" in err.value.message
        with pytest.raises(CallError) as err:
            client.memory.update("n_does_not_exist", content="x")
        assert err.value.code == "not_found"


def test_result_fetchable_after_disconnect(shared_world: World, scheduler: SchedulerProcess) -> None:
    with Client(shared_world.amqp_url(), timeout=20) as client:
        call_id = client.submit("memory.add", {"content": "written while nobody waited"})
    with Client(shared_world.amqp_url(), timeout=20) as later:
        reply = later.result(call_id, wait=15)
        assert reply is not None and reply.status.value == "ok"
        note = later.memory.get(reply.result["id"])
        assert note.content == "written while nobody waited"
        with pytest.raises(CallError) as err:
            later.result("never-sent")
        assert err.value.code == "not_found"


def test_search_filters_by_tags_and_time(shared_world: World, scheduler: SchedulerProcess) -> None:
    import time

    with Client(shared_world.amqp_url(), timeout=20) as client:
        old = client.memory.add("deploy checklist for the api service", tags=["ops"])
        cut = client.memory.get(old.id).created_at
        time.sleep(0.05)
        new = client.memory.add("deploy notes for the web service", tags=["ops", "web"])
        client.memory.add("deploy the garden furniture", tags=["home"])
        ops = client.memory.search("deploy service", tags=["ops"]).results
        assert {h.id for h in ops} == {old.id, new.id} and all(h.score > 0 for h in ops)
        recent = client.memory.search(
            "deploy", tags=["ops"], created_after=cut + (client.memory.get(new.id).created_at - cut) / 2
        ).results
        assert [h.id for h in recent] == [new.id]
        earlier = client.memory.search(
            "deploy", tags=["ops"], created_before=client.memory.get(new.id).created_at
        ).results
        assert [h.id for h in earlier] == [old.id]
