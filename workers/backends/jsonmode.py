"""JSON output mode: the schema to constrain decoding with, and the final check.

Constrained decoding (a llama.cpp grammar, SGLang's ``json_schema``) makes
well-formed output very likely but not certain: a generation cut by
``max_tokens`` is an unfinished document, and grammars do not enforce every
JSON Schema keyword. So every backend validates the finished text here and
raises :class:`OutputInvalid` with a clear message when it does not conform.
"""

from __future__ import annotations

import json
from typing import Any

import jsonschema
from jsonschema.exceptions import SchemaError

from .base import BackendBadRequest, ChatRequest, ChatResult, OutputInvalid

#: The schema that "json" mode constrains to: any JSON object.
ANY_OBJECT: dict[str, Any] = {"type": "object"}


def check_schema(request: ChatRequest) -> None:
    """Reject an invalid JSON Schema before spending any tokens on it."""
    schema = request.json_schema
    if schema is None:
        return
    try:
        jsonschema.Draft202012Validator.check_schema(schema)
    except SchemaError as exc:
        raise BackendBadRequest(f"response_format is not a valid JSON Schema: {exc.message}") from exc


def decoding_schema(request: ChatRequest) -> dict[str, Any] | None:
    """The schema to constrain decoding with, or None for free text."""
    if not request.wants_json:
        return None
    return request.json_schema or ANY_OBJECT


def validate_output(request: ChatRequest, result: ChatResult) -> None:
    """Raise :class:`OutputInvalid` unless a finished JSON-mode result conforms.

    Sliced partial results and tool calls are not checked: they are not the
    final answer.
    """
    if not request.wants_json or result.finish_reason in ("slice", "tool_calls"):
        return
    text = result.text
    if result.finish_reason == "length":
        raise OutputInvalid(f"JSON output was cut at max_tokens={request.max_tokens}; raise max_tokens", text)
    try:
        document = json.loads(text)
    except ValueError as exc:
        raise OutputInvalid(f"output is not valid JSON: {exc}", text) from exc
    schema = request.json_schema
    if schema is None:
        return
    error = jsonschema.exceptions.best_match(jsonschema.Draft202012Validator(schema).iter_errors(document))
    if error is not None:
        where = "/".join(str(p) for p in error.absolute_path) or "(root)"
        raise OutputInvalid(f"output does not match the JSON Schema at {where}: {error.message}", text)
