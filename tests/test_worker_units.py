"""The worker's pure parts: settings -> backend options, lease -> request, error mapping, --check verdicts."""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from aiosd.sdk.cluster import Lease, Snapshot
from aiosd.sdk.errors import ConfigError
from aiosd.sdk.process.settings import Settings
from aiosd.sdk.protocol import ErrorCode
from aiosd.workers.backends.base import (
    BackendBadRequest,
    BackendError,
    BackendTimeout,
    BackendUnavailable,
    OutputInvalid,
)
from aiosd.workers.calls import chat_request, classify
from aiosd.workers.check import judge
from aiosd.workers.config import worker_config

NOW = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)


def _settings(**fields: Any) -> Settings:
    return Settings(worker_id="w1", **fields)


# -- config --------------------------------------------------------------------------


def test_llamacpp_defaults_to_the_bundled_model_and_capacity_one() -> None:
    config = worker_config(_settings())
    assert (config.worker_id, config.backend, config.capacity) == ("w1", "llamacpp", 1)
    assert config.options == {"model_path": None, "model_name": None} and config.launch is None


def test_default_worker_id_is_host_and_pid() -> None:
    assert worker_config(Settings(worker_id=None)).worker_id.endswith(f"-{os.getpid()}")


def test_openai_needs_a_url_and_defaults_to_capacity_eight() -> None:
    with pytest.raises(ConfigError, match="backend_url"):
        worker_config(_settings(backend="openai"))
    config = worker_config(_settings(backend="openai", backend_url="http://h:8000", model_name="m"))
    assert config.capacity == 8 and config.options == {"url": "http://h:8000", "model": "m"}


def test_sglang_connects_to_a_url_or_launches_a_model(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"backend_url .* or model_path"):
        worker_config(_settings(backend="sglang"))
    remote = worker_config(_settings(backend="sglang", backend_url="http://gpu:30000", capacity=5))
    assert remote.launch is None and remote.capacity == 5
    assert remote.options == {"url": "http://gpu:30000", "chat_template": None}

    launched = worker_config(
        _settings(
            backend="sglang",
            model_path=str(tmp_path),
            sglang_port=30001,
            sglang_mem_fraction=0.8,
            sglang_max_running_requests=48,
            sglang_schedule_policy="lpm",
            sglang_args=["--tp", "2"],
        )
    )
    assert launched.launch is not None and launched.capacity == 48  # what the server admits
    assert launched.options == {"url": "http://127.0.0.1:30001", "chat_template": str(tmp_path)}
    command = launched.launch.command()
    assert command[1:3] == ["-m", "sglang.launch_server"]
    for flag in ("--mem-fraction-static", "0.8", "--max-running-requests", "48", "--schedule-policy", "lpm"):
        assert flag in command
    assert command[-2:] == ["--tp", "2"]
    assert worker_config(_settings(backend="sglang", model_path="org/model")).capacity == 32


def test_a_missing_gguf_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="GGUF"):
        worker_config(_settings(model_path="/nonexistent/model.gguf"))


# -- lease -> request ---------------------------------------------------------------------


def _lease(args: dict[str, Any], **fields: Any) -> Lease:
    return Lease(lease_id="l", key="a/m", agent="a", call_id="c", args=args, expires_at=NOW, **fields)


def test_chat_request_carries_every_argument_and_the_snapshot() -> None:
    call = {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
    tool = {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}
    args = {
        "messages": [
            {"role": "system", "content": "be brief"},
            {"role": "assistant", "content": None, "tool_calls": [call]},
            {"role": "tool", "content": "42", "tool_call_id": "call_1"},
        ],
        "model": "m",
        "max_tokens": 9,
        "temperature": 0.5,
        "top_p": 0.9,
        "stop": ["\n"],
        "seed": 7,
        "response_format": {"type": "object"},
        "tools": [tool],
    }
    request = chat_request(_lease(args, resume=Snapshot(token_ids=[1, 2], text="ab")))
    assert (request.model, request.max_tokens, request.temperature, request.top_p) == ("m", 9, 0.5, 0.9)
    assert (request.stop, request.seed, request.json_schema) == (("\n",), 7, {"type": "object"})
    assert request.tools == (tool,)
    assert request.messages[1].tool_calls[0].function.name == "f"
    assert request.messages[2].tool_call_id == "call_1"
    assert request.resume is not None and request.resume.token_ids == (1, 2) and request.resume.text == "ab"


@pytest.mark.parametrize(
    "args",
    [
        {},
        {"messages": [{"role": "robot", "content": "x"}]},
        {"messages": [{"role": "user", "content": "x"}], "max_tokens": 0},
    ],
)
def test_invalid_args_are_a_bad_request(args: dict[str, Any]) -> None:
    with pytest.raises(BackendBadRequest, match=r"invalid llm\.chat arguments"):
        chat_request(_lease(args))


# -- error mapping ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("exc", "code", "retryable"),
    [
        (BackendBadRequest("too long"), ErrorCode.INVALID_ARGS, False),
        (OutputInvalid("not JSON", "{oops"), ErrorCode.INVALID_ARGS, False),
        (BackendUnavailable("down"), ErrorCode.UNAVAILABLE, True),
        (BackendTimeout("slow"), ErrorCode.UNAVAILABLE, True),
        (BackendError("llama.cpp failed"), ErrorCode.INTERNAL, False),
        (KeyError("bug"), ErrorCode.INTERNAL, False),
    ],
)
def test_classify(exc: Exception, code: ErrorCode, retryable: bool) -> None:
    got_code, got_retryable, message = classify(exc)
    assert (got_code, got_retryable) == (code, retryable) and message


def test_invalid_output_is_quoted_in_the_message() -> None:
    _code, _retry, message = classify(OutputInvalid("output is not valid JSON", "x" * 500))
    assert message.startswith("output is not valid JSON") and "xxx..." in message and len(message) < 300


# -- --check verdicts -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("doc", "ok", "says"),
    [
        (None, False, "not registered"),
        ({"healthy": True}, False, "no last_seen"),
        ({"last_seen": NOW - timedelta(seconds=5), "healthy": True}, True, "healthy"),
        ({"last_seen": (NOW - timedelta(seconds=5)).replace(tzinfo=None), "healthy": True}, True, "healthy"),
        ({"last_seen": NOW - timedelta(seconds=7), "healthy": True}, False, "stale"),
        ({"last_seen": NOW, "healthy": False}, False, "unhealthy"),
        ({"last_seen": NOW, "healthy": True, "alive": False}, False, "goodbye"),
    ],
)
def test_judge(doc: dict[str, Any] | None, ok: bool, says: str) -> None:
    verdict, reason = judge("w1", doc, 6.0, NOW)
    assert verdict is ok and says in reason and "w1" in reason
