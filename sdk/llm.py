"""Arguments and result of the ``llm.chat`` syscall (OpenAI-style chat)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

MAX_MESSAGES = 512
MAX_TOKENS_LIMIT = 8192

Role = Literal["system", "user", "assistant", "tool"]


class ChatMessage(BaseModel):
    """One chat message. ``tool_calls`` and ``tool_call_id`` follow OpenAI's shapes."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    role: Role
    content: str | None = Field(default=None, max_length=1_000_000)
    name: str | None = Field(default=None, max_length=64)
    tool_call_id: str | None = Field(default=None, max_length=128)
    tool_calls: list[dict[str, Any]] | None = None


class LlmChatArgs(BaseModel):
    """``llm.chat``: generate the next assistant message."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    messages: list[ChatMessage] = Field(min_length=1, max_length=MAX_MESSAGES)
    model: str | None = Field(default=None, max_length=256, description="Model to use; any served model if null.")
    max_tokens: int = Field(default=256, ge=1, le=MAX_TOKENS_LIMIT)
    temperature: float = Field(default=1.0, ge=0.0, le=2.0, description="0 is greedy (deterministic).")
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    stop: list[str] = Field(default_factory=list, max_length=8)
    seed: int | None = None
    response_format: Literal["text", "json"] | dict[str, Any] = Field(
        default="text",
        description="'text', 'json' (any JSON value) or a JSON Schema the output must validate against.",
    )
    tools: list[dict[str, Any]] = Field(default_factory=list, max_length=64, description="OpenAI-style function tools.")

    @field_validator("stop")
    @classmethod
    def _stops_not_empty(cls, stop: list[str]) -> list[str]:
        if any(not s for s in stop):
            raise ValueError("stop strings must not be empty")
        return stop

    @field_validator("tools")
    @classmethod
    def _tools_are_functions(cls, tools: list[dict[str, Any]]) -> list[dict[str, Any]]:
        for tool in tools:
            function = tool.get("function")
            if tool.get("type") != "function" or not isinstance(function, dict) or not function.get("name"):
                raise ValueError('each tool must be {"type": "function", "function": {"name": ..., "parameters": ...}}')
        return tools


class LlmChatResult(BaseModel):
    """``llm.chat`` result. Token counts are in the reply's ``usage``."""

    model_config = ConfigDict(frozen=True)

    text: str = Field(description="The assistant message (empty when the model only called tools).")
    finish_reason: Literal["stop", "length", "tool_calls"]
    tool_calls: list[dict[str, Any]] = Field(default_factory=list, description="OpenAI-style tool calls.")
    model: str = ""
    worker: str = Field(default="", description="Worker that produced the final slice.")
    slices: int = Field(default=1, description="Time slices the generation took (1 unless preempted).")
