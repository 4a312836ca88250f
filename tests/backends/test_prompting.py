"""Pure helpers: chat templates, tool calls, slicing budget, Prometheus parsing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from sglang_contract import CHATML

from aiosd.workers.backends.base import (
    BackendBadRequest,
    BackendUnavailable,
    ChatRequest,
    FunctionCall,
    Message,
    Resume,
    ToolCall,
    completion_budget,
)
from aiosd.workers.backends.http import parse_prometheus
from aiosd.workers.backends.prompting import ChatTemplate, parse_tool_calls

TOOL = {"type": "function", "function": {"name": "add", "parameters": {"type": "object"}}}


def _request(**options: object) -> ChatRequest:
    return ChatRequest(messages=(Message(role="user", content="hi"),), **options)  # type: ignore[arg-type]


def test_template_from_model_dir_renders_generation_prompt(model_dir: Path) -> None:
    prompt = ChatTemplate.from_model_dir(model_dir).render(_request())
    assert prompt == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"


def test_template_errors(tmp_path: Path) -> None:
    with pytest.raises(BackendUnavailable, match=r"tokenizer_config\.json"):
        ChatTemplate.from_model_dir(tmp_path)
    strict = ChatTemplate("{% if messages[0]['role'] != 'system' %}{{ raise_exception('system first') }}{% endif %}")
    with pytest.raises(BackendBadRequest, match="system first"):
        strict.render(_request())


def test_tools_are_described_and_past_calls_shown() -> None:
    call = ToolCall(id="call_1", function=FunctionCall(name="add", arguments='{"a": 1}'))
    messages = (
        Message(role="user", content="add 1"),
        Message(role="assistant", tool_calls=(call,)),
        Message(role="tool", content="1", tool_call_id="call_1"),
    )
    prompt = ChatTemplate(CHATML).render(ChatRequest(messages=messages, tools=(TOOL,)))
    assert prompt.startswith("<|im_start|>system\nYou may call functions.")
    assert '<tool_call>\n{"name": "add", "arguments": {"a": 1}}\n</tool_call>' in prompt
    assert "<|im_start|>tool\n1<|im_end|>" in prompt


@pytest.mark.parametrize(
    "text",
    [
        'Sure. <tool_call>{"name": "add", "arguments": {"a": 1}}</tool_call>',
        '{"name": "add", "arguments": "{\\"a\\": 1}"}',
        '{"tool_calls": [{"name": "add", "parameters": {"a": 1}}]}',
    ],
)
def test_parse_tool_calls(text: str) -> None:
    content, calls = parse_tool_calls(text, (TOOL,))
    assert [(c.function.name, json.loads(c.function.arguments)) for c in calls] == [("add", {"a": 1})]
    assert content in ("Sure.", "")


def test_unknown_tools_and_plain_text_stay_text() -> None:
    assert parse_tool_calls('{"name": "rm", "arguments": {}}', (TOOL,)) == ('{"name": "rm", "arguments": {}}', ())
    assert parse_tool_calls("just text", (TOOL,)) == ("just text", ())
    assert parse_tool_calls('{"name": "add"}', ()) == ('{"name": "add"}', ())


def test_completion_budget() -> None:
    assert completion_budget(_request(max_tokens=10), None) == (10, False)
    assert completion_budget(_request(max_tokens=10), 3) == (3, True)
    assert completion_budget(_request(max_tokens=10), 10) == (10, False)  # max_tokens ends it, not the slice
    resumed = _request(max_tokens=10, resume=Resume(token_ids=(1,) * 8, text="x"))
    assert completion_budget(resumed, 3) == (2, False)
    with pytest.raises(BackendBadRequest):
        completion_budget(_request(max_tokens=2, resume=Resume(token_ids=(1, 2))), None)


def test_request_validation() -> None:
    with pytest.raises(ValueError):
        _request(tools=({"type": "function", "function": {}},))
    with pytest.raises(ValueError):
        ChatRequest(messages=())
    assert _request(response_format={"type": "object"}).json_schema == {"type": "object"}
    assert _request(response_format="json").wants_json and not _request().wants_json


def test_parse_prometheus() -> None:
    text = (
        "# TYPE sglang:num_running_reqs gauge\n"
        'sglang:num_running_reqs{model_name="a b",dp_rank="0"} 2.0\n'
        'sglang:num_running_reqs{model_name="a b",dp_rank="1"} 3.0\n'
        "sglang:token_usage 0.5\n"
        'sglang:e2e_request_latency_seconds_bucket{le="1"} 4\n'
        "other_metric 1\n"
    )
    assert parse_prometheus(text, "sglang:") == {"num_running_reqs": 5.0, "token_usage": 0.5}
