"""Admission: intake's protocol checks, the policy checks that count nothing, per-agent LLM caps."""

from __future__ import annotations

import json
import time
from collections import Counter
from typing import Any

import pytest

from aiosd.daemon.access.authorizer import Admission, Ask, Refused, refusal_of
from aiosd.daemon.access.directory import Standing
from aiosd.daemon.access.policy import Policy
from aiosd.daemon.leasing.caps import CapRound
from aiosd.daemon.pipeline.intake import ANONYMOUS, Intake, OwnDataAuthorizer, Rejected
from aiosd.daemon.transport.delivery import Delivery
from aiosd.sdk.llm import LlmChatArgs
from aiosd.sdk.protocol import ErrorCode, Status
from aiosd.sdk.syscalls import MemoryAddArgs
from aiosd.sdk.tools import ToolCallArgs


def _delivery(body: Any, **props: Any) -> Delivery:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    fields: dict[str, Any] = {
        "message_id": "m1",
        "correlation_id": "c1",
        "reply_to": "aiosd.reply.alice.1",
        "priority": 3,
        "user_id": "alice",
    }
    fields.update(props)
    return Delivery(body=raw, ack=lambda: None, nack=lambda _r: None, dead_letter=lambda _c, _r: None, **fields)


def _intake(**kw: Any) -> Intake:
    options: dict[str, Any] = {"max_body_bytes": 4096, "allow_anonymous": False, "authorizer": OwnDataAuthorizer()}
    options.update(kw)
    return Intake(**options)


HI = [{"role": "user", "content": "hi"}]
ADD = {"syscall": "memory.add", "args": {"content": "hello"}}


def test_a_valid_call_is_accepted_with_the_broker_proven_identity() -> None:
    accepted = _intake().admit(_delivery(ADD))
    env = accepted.envelope
    assert (env.agent, env.message_id, env.priority, env.correlation_id) == ("alice", "m1", 3, "c1")
    assert isinstance(accepted.args, MemoryAddArgs) and accepted.args.content == "hello"


@pytest.mark.parametrize(
    ("body", "props", "code"),
    [
        (ADD, {"user_id": None}, ErrorCode.UNAUTHENTICATED),
        (b"x" * 5000, {}, ErrorCode.TOO_LARGE),
        (ADD, {"message_id": None}, ErrorCode.INVALID_REQUEST),
        (ADD, {"message_id": "a/b"}, ErrorCode.INVALID_REQUEST),
        (ADD, {"reply_to": "aiosd.reply.bob.1"}, ErrorCode.INVALID_REQUEST),
        (b"{not json", {}, ErrorCode.MALFORMED),
        ({"syscall": "memory.fly", "args": {}}, {}, ErrorCode.UNKNOWN_SYSCALL),
        ({"syscall": "memory.add", "args": {"content": ""}}, {}, ErrorCode.INVALID_ARGS),
        ({"syscall": "memory.add", "args": {"content": "x", "metadata": {"$where": 1}}}, {}, ErrorCode.INVALID_ARGS),
        ({"v": 2, **ADD}, {}, ErrorCode.UNSUPPORTED_VERSION),
    ],
)
def test_protocol_violations_are_rejected_with_their_code(body: Any, props: dict[str, Any], code: ErrorCode) -> None:
    with pytest.raises(Rejected) as caught:
        _intake().admit(_delivery(body, **props))
    assert caught.value.code == code
    assert caught.value.dead_letter  # protocol violations are dead-lettered, not only answered


def test_priority_is_clamped_to_the_protocol_range_then_to_the_authorizers_word() -> None:
    assert _intake().admit(_delivery(ADD, priority=42)).envelope.priority == 9
    assert _intake().admit(_delivery(ADD, priority=-3)).envelope.priority == 0

    class AtMostTwo:
        def authorize_many(self, asks: list[Ask]) -> list[Admission | Refused]:
            return [Admission(min(ask.priority, 2)) for ask in asks]

    assert _intake(authorizer=AtMostTwo()).admit(_delivery(ADD, priority=8)).envelope.priority == 2


def test_an_authorizers_refusal_is_answered_and_audited_as_denied_but_not_dead_lettered() -> None:
    class No:
        def authorize_many(self, asks: list[Ask]) -> list[Admission | Refused]:
            return [Refused(ErrorCode.QUOTA_EXCEEDED, "used up", resource="memory:alice") for _ in asks]

    with pytest.raises(Rejected) as caught:
        _intake(authorizer=No()).admit(_delivery(ADD))
    rej = caught.value
    assert (rej.code, rej.status, rej.dead_letter, rej.resource) == (
        ErrorCode.QUOTA_EXCEEDED,
        Status.DENIED,
        False,
        "memory:alice",
    )


def test_the_anonymous_agent_exists_only_in_development_mode() -> None:
    env = _intake(allow_anonymous=True).admit(_delivery(ADD, user_id=None, reply_to="anything")).envelope
    assert env.agent == ANONYMOUS


def test_an_extra_check_can_refuse_validated_arguments() -> None:
    intake = _intake(checks={"memory.add": lambda args: "no greetings" if "hello" in str(args) else None})
    with pytest.raises(Rejected, match="no greetings"):
        intake.admit(_delivery(ADD))


def _standing(**policy: Any) -> Standing:
    return Standing(Policy(**policy))


def test_deny_by_default_and_disabled_agents_are_refused() -> None:
    args = MemoryAddArgs(content="x")
    refusal = refusal_of("ghost", None, "memory.add", args)
    assert refusal is not None and refusal[0] == ErrorCode.DENIED and "deny by default" in refusal[1]
    disabled = Standing(Policy(), disabled=True)
    refusal = refusal_of("alice", disabled, "memory.add", args)
    assert refusal is not None and "disabled" in refusal[1]
    assert refusal_of("alice", _standing(), "memory.add", args) is None


def test_syscall_model_and_tool_patterns_are_enforced() -> None:
    only_memory = _standing(syscalls=["memory.*"])
    assert refusal_of("a", only_memory, "storage.write", None) is not None
    small_models = _standing(models=["smol*"])
    assert refusal_of("a", small_models, "llm.chat", LlmChatArgs(model="smollm2", messages=HI)) is None
    refusal = refusal_of("a", small_models, "llm.chat", LlmChatArgs(model="gpt", messages=HI))
    assert refusal is not None and "model 'gpt'" in refusal[1]
    unnamed = refusal_of("a", small_models, "llm.chat", LlmChatArgs(messages=HI))
    assert unnamed is not None and "unnamed model" in unnamed[1]
    calc_only = _standing(tools=["calculator"])
    assert refusal_of("a", calc_only, "tool.call", ToolCallArgs(name="calculator")) is None
    assert refusal_of("a", calc_only, "tool.call", ToolCallArgs(name="regex")) is not None


def test_a_cap_round_admits_an_agent_until_it_holds_its_maximum() -> None:
    limits = {"capped": 2, "free": None}
    asked: list[str] = []

    def limit_of(agent: str) -> int | None:
        asked.append(agent)
        return limits[agent]

    cap = CapRound(Counter({"capped": 1}), limit_of)
    assert cap.admits("capped")
    cap.took("capped")
    assert not cap.admits("capped")
    for _ in range(10):
        assert cap.admits("free")
        cap.took("free")
    assert asked.count("capped") == 1 and asked.count("free") == 1  # one policy read per agent per round


def test_a_batch_keeps_its_order_and_mixes_rejections_with_admissions() -> None:
    batch = [
        _delivery(ADD, message_id="a"),
        _delivery(b"{not json", message_id="b"),
        _delivery(ADD, message_id="c", priority=7),
        _delivery(ADD, message_id="d", user_id=None),
    ]
    verdicts = _intake().admit_many(batch)
    assert [type(v).__name__ for v in verdicts] == ["Accepted", "Rejected", "Accepted", "Rejected"]
    first, third = verdicts[0], verdicts[2]
    assert not isinstance(first, Rejected) and first.envelope.message_id == "a"
    assert not isinstance(third, Rejected) and third.envelope.priority == 7


def test_a_delivery_goes_at_once_when_nothing_is_being_served_and_gathers_while_a_batch_is() -> None:
    from aiosd.daemon.transport.batcher import Batcher

    flushed: list[int] = []
    busy = {"serving": False}
    batcher = Batcher(4, 10.0, lambda b: flushed.append(len(b)), busy=lambda: busy["serving"])
    batcher.add(_delivery(ADD))  # nothing being served: at once
    assert flushed == [1]
    busy["serving"] = True
    for _ in range(3):
        batcher.add(_delivery(ADD))
    assert flushed == [1] and len(batcher) == 3 and not batcher.due()  # gathering while a batch is served
    batcher.add(_delivery(ADD))  # full
    assert flushed == [1, 4]
    batcher.add(_delivery(ADD))
    batcher.add(_delivery(ADD))
    assert flushed == [1, 4] and not batcher.due()
    busy["serving"] = False  # the batch being served is done: what gathered meanwhile is due
    assert batcher.due()
    batcher.flush()
    assert flushed == [1, 4, 2]


def test_a_slow_batch_holds_the_next_one_back_by_the_batch_wait_at_most() -> None:
    from aiosd.daemon.transport.batcher import Batcher

    flushed: list[int] = []
    batcher = Batcher(64, 0.5, lambda b: flushed.append(len(b)), busy=lambda: True)
    batcher.add(_delivery(ADD))
    assert flushed == [] and not batcher.due() and 0 < batcher.wait(1.0) <= 0.5
    time.sleep(0.55)
    assert batcher.due() and batcher.wait(1.0) == 0.0


def test_the_last_batch_served_wakes_the_connection_thread_only_when_deliveries_gathered() -> None:
    from aiosd.daemon.transport.batcher import Batcher, Serving

    serving, wakes, flushed = Serving(), [], []

    def hand_on(batch: list[Delivery]) -> None:
        flushed.append(len(batch))
        serving.started()

    batcher = Batcher(64, 10.0, hand_on, busy=serving.busy)
    batcher.add(_delivery(ADD))  # goes at once; being served from now on
    batcher.add(_delivery(ADD))
    batcher.add(_delivery(ADD))
    assert flushed == [1] and len(batcher) == 2 and serving.busy()
    serving.done(batcher, lambda: wakes.append(1))
    assert wakes == [1] and not serving.busy() and batcher.due()  # the woken loop hands on the two
    batcher.flush()
    assert flushed == [1, 2]
    serving.done(batcher, lambda: wakes.append(1))  # nothing gathered meanwhile: no wake-up
    assert wakes == [1]
    serving.started()
    serving.started()
    batcher.add(_delivery(ADD))
    serving.done(batcher, lambda: wakes.append(1))  # another batch is still being served
    assert wakes == [1] and not batcher.due()
