"""Chat templates, tool prompts and tool-call parsing for raw-generation backends.

The ``llamacpp`` and ``sglang`` backends generate from a flat prompt, so they
render the model's own chat template (Jinja2, the way Hugging Face's
``apply_chat_template`` and llama-cpp-python's ``Jinja2ChatFormatter`` do:
sandboxed, ``trim_blocks``/``lstrip_blocks``, ``raise_exception``) and parse
tool calls out of the generated text themselves.

Tools: a template that mentions ``tools`` gets them as a variable; for any
other template the tool list is described in the system message and the model
is asked for Hermes-style ``<tool_call>{"name": ..., "arguments": {...}}</tool_call>``
blocks (what SmolLM2, Qwen and Hermes models are trained on).
"""

from __future__ import annotations

import json
import re
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any

from jinja2 import TemplateError
from jinja2.ext import loopcontrols
from jinja2.sandbox import ImmutableSandboxedEnvironment

from .base import BackendBadRequest, BackendUnavailable, ChatRequest, FunctionCall, Message, ToolCall

_TOOL_CALL_RE = re.compile(r"<tool_call>\s*(.*?)\s*(?:</tool_call>|$)", re.DOTALL)


def _raise_exception(message: str) -> None:
    raise TemplateError(message)


def _tojson(value: Any, indent: int | None = None, ensure_ascii: bool = False) -> str:
    return json.dumps(value, indent=indent, ensure_ascii=ensure_ascii)


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


class ChatTemplate:
    """A model's Jinja2 chat template, rendered with ``add_generation_prompt``."""

    def __init__(self, source: str, bos_token: str = "", eos_token: str = "") -> None:
        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
        env.filters["tojson"] = _tojson
        env.globals["raise_exception"] = _raise_exception
        env.globals["strftime_now"] = _strftime_now
        self.source = source
        self.bos_token = bos_token
        self.eos_token = eos_token
        self.supports_tools = "tools" in source
        self._template = env.from_string(source)

    @classmethod
    def from_model_dir(cls, path: str | Path) -> ChatTemplate:
        """The template of a Hugging Face model folder (``tokenizer_config.json``).

        Newer models keep it in ``chat_template.jinja`` beside the config; a
        list of named templates means the one called ``default``.
        """
        folder = Path(path)
        try:
            config = json.loads((folder / "tokenizer_config.json").read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise BackendUnavailable(f"no readable tokenizer_config.json in {folder}: {exc}") from exc
        source = config.get("chat_template")
        if isinstance(source, list):
            source = next((t["template"] for t in source if t.get("name") == "default"), None)
        jinja_file = folder / "chat_template.jinja"
        if not source and jinja_file.is_file():
            source = jinja_file.read_text(encoding="utf-8")
        if not isinstance(source, str) or not source:
            raise BackendUnavailable(f"{folder} has no chat template")
        return cls(source, _token_text(config.get("bos_token")), _token_text(config.get("eos_token")))

    def render(self, request: ChatRequest) -> str:
        """The prompt text for ``request``, ending where the assistant's answer begins."""
        tools = list(request.tools) or None
        messages = [_message_dict(m) for m in request.messages]
        if tools and not self.supports_tools:
            messages = _with_tool_instructions(messages, tools)
        try:
            return self._template.render(
                messages=messages,
                tools=tools if self.supports_tools else None,
                add_generation_prompt=True,
                bos_token=self.bos_token,
                eos_token=self.eos_token,
            )
        except TemplateError as exc:
            raise BackendBadRequest(f"chat template rejected the messages: {exc}") from exc


def _token_text(token: Any) -> str:
    # tokenizer_config.json spells special tokens as a string or {"content": ...}.
    if isinstance(token, dict):
        return str(token.get("content", ""))
    return token if isinstance(token, str) else ""


def _message_dict(message: Message) -> dict[str, Any]:
    data = message.as_dict()
    if message.tool_calls and not message.content:
        # Templates without tool support would show an empty turn; show the call instead.
        data["content"] = "".join(_tool_call_text(call) for call in message.tool_calls)
    if message.tool_calls:
        data["tool_calls"] = [call.model_dump() for call in message.tool_calls]
    return data


def _tool_call_text(call: ToolCall) -> str:
    try:
        arguments = json.loads(call.function.arguments or "{}")
    except ValueError:
        arguments = call.function.arguments  # show what the model wrote
    payload = json.dumps({"name": call.function.name, "arguments": arguments})
    return f"<tool_call>\n{payload}\n</tool_call>"


def tool_instructions(tools: list[dict[str, Any]]) -> str:
    """The system-prompt text that describes ``tools`` to a model."""
    listing = "\n".join(json.dumps(tool["function"]) for tool in tools)
    return (
        "You may call functions. Available functions:\n<tools>\n"
        f"{listing}\n</tools>\n"
        "To call one, answer with exactly:\n"
        '<tool_call>\n{"name": <function-name>, "arguments": <args-json-object>}\n</tool_call>'
    )


def _with_tool_instructions(messages: list[dict[str, Any]], tools: list[dict[str, Any]]) -> list[dict[str, Any]]:
    text = tool_instructions(tools)
    if messages and messages[0]["role"] == "system":
        first = dict(messages[0], content=f"{messages[0]['content']}\n\n{text}")
        return [first, *messages[1:]]
    return [{"role": "system", "content": text}, *messages]


def parse_tool_calls(text: str, tools: tuple[dict[str, Any], ...]) -> tuple[str, tuple[ToolCall, ...]]:
    """Split generated text into plain content and the tool calls it makes.

    Only calls naming one of ``tools`` count; anything unparsable stays text.
    """
    if not tools:
        return text, ()
    names = {tool["function"]["name"] for tool in tools}
    candidates = _TOOL_CALL_RE.findall(text) or [text.strip()]
    calls = [call for chunk in candidates for call in _calls_from_json(chunk, names)]
    if not calls:
        return text, ()
    content = _TOOL_CALL_RE.sub("", text).strip() if "<tool_call>" in text else ""
    return content, tuple(calls)


def _calls_from_json(chunk: str, names: set[str]) -> list[ToolCall]:
    try:
        data = json.loads(chunk)
    except ValueError:
        return []
    if isinstance(data, dict) and isinstance(data.get("tool_calls"), list):
        data = data["tool_calls"]
    items = data if isinstance(data, list) else [data]
    calls = []
    for item in items:
        if isinstance(item, dict) and item.get("name") in names:
            arguments = item.get("arguments", item.get("parameters", {}))
            if isinstance(arguments, str):
                try:
                    arguments = json.loads(arguments) if arguments.strip() else {}
                except ValueError:
                    continue
            calls.append(_make_call(str(item["name"]), arguments))
    return calls


def _make_call(name: str, arguments: Any) -> ToolCall:
    return ToolCall(
        id=f"call_{uuid.uuid4().hex[:24]}",
        function=FunctionCall(name=name, arguments=json.dumps(arguments)),
    )


def find_stop(text: str, stops: tuple[str, ...], start: int = 0) -> int | None:
    """Index of the earliest stop string in ``text[start:]``, or None."""
    hits = [i for i in (text.find(stop, start) for stop in stops) if i >= 0]
    return min(hits) if hits else None
