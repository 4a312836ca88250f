"""Chat messages to prompt text for ``/v1/chat/completions``, with the model folder's template.

The simulated model's folder (``Llama-3.1-8B-Instruct-sim/``) holds a Hugging
Face ``tokenizer_config.json`` whose ``chat_template`` both sides render: the
worker's ``sglang`` backend (it reads the folder that ``/model_info`` names)
and this module, in the same Jinja2 sandbox settings (``trim_blocks``,
``lstrip_blocks``) as Hugging Face's ``apply_chat_template``. So a conversation
sent through either API becomes the same tokens and hits the same cache blocks.
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Any

from jinja2 import TemplateError
from jinja2.ext import loopcontrols
from jinja2.sandbox import ImmutableSandboxedEnvironment

MODEL_DIR = Path(__file__).resolve().parent / "Llama-3.1-8B-Instruct-sim"


def _raise_exception(message: str) -> None:
    raise TemplateError(message)


def _token_text(token: Any) -> str:
    if isinstance(token, dict):
        return str(token.get("content", ""))
    return token if isinstance(token, str) else ""


def _content(content: Any) -> str:
    """OpenAI content: a string, or a list of parts whose text parts are joined."""
    if isinstance(content, list):
        return "".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return "" if content is None else str(content)


class ChatFormat:
    """The chat template of a model folder."""

    def __init__(self, model_dir: str | Path = MODEL_DIR) -> None:
        config = json.loads((Path(model_dir) / "tokenizer_config.json").read_text(encoding="utf-8"))
        source = config.get("chat_template")
        if not isinstance(source, str) or not source:
            raise ValueError(f"{model_dir} has no chat_template")
        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
        env.filters["tojson"] = lambda value, indent=None: json.dumps(value, indent=indent, ensure_ascii=False)
        env.globals["raise_exception"] = _raise_exception
        env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
        self._template = env.from_string(source)
        self.bos_token = _token_text(config.get("bos_token"))
        self.eos_token = _token_text(config.get("eos_token"))

    def render(self, messages: list[dict[str, Any]], *, continue_final: bool = False) -> str:
        """Prompt text ending where the assistant answers (or inside the last message, ``continue_final``)."""
        plain = [{**m, "content": _content(m.get("content"))} for m in messages]
        try:
            text = self._template.render(
                messages=plain,
                add_generation_prompt=not continue_final,
                bos_token=self.bos_token,
                eos_token=self.eos_token,
            )
        except TemplateError as exc:
            raise ValueError(f"chat template rejected the messages: {exc}") from exc
        if continue_final and self.eos_token:
            head, sep, tail = text.rpartition(self.eos_token)
            if sep and not tail.strip():
                text = head
        return text
