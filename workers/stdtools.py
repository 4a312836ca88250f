"""The built-in tools: a calculator, JSON queries, regular expressions, reading the caller's files.

None of them reaches the network; each is declared in ``setup.cfg`` under the
entry-point group ``aiosd.tools`` like any third-party tool. Standard library
only: this module is imported inside every sandboxed child that runs one.
"""

from __future__ import annotations

import ast
import base64
import json
import math
import operator
import re
from collections.abc import Callable, Iterator
from typing import Any

from aiosd.sdk.toolkit import Tool, ToolContext, ToolError

# -- calculator ------------------------------------------------------------------------

MAX_EXPRESSION = 1000
MAX_NODES = 200
#: Results (and powers) larger than this many bits are refused: they would not print.
MAX_BITS = 10_000

_BINARY: dict[type[ast.operator], Callable[[Any, Any], Any]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
}
_UNARY: dict[type[ast.unaryop], Callable[[Any], Any]] = {ast.UAdd: operator.pos, ast.USub: operator.neg}
_CONSTANTS = {"pi": math.pi, "e": math.e, "tau": math.tau}


def _factorial(n: Any) -> int:
    if not isinstance(n, int) or not 0 <= n <= 1000:
        raise ToolError("factorial takes a whole number from 0 to 1000", "invalid_args")
    return math.factorial(n)


_FUNCTIONS: dict[str, Callable[..., Any]] = {
    "abs": abs,
    "round": round,
    "min": min,
    "max": max,
    "sqrt": math.sqrt,
    "exp": math.exp,
    "log": math.log,
    "log2": math.log2,
    "log10": math.log10,
    "sin": math.sin,
    "cos": math.cos,
    "tan": math.tan,
    "asin": math.asin,
    "acos": math.acos,
    "atan": math.atan,
    "atan2": math.atan2,
    "hypot": math.hypot,
    "floor": math.floor,
    "ceil": math.ceil,
    "degrees": math.degrees,
    "radians": math.radians,
    "factorial": _factorial,
}


def _power(base: Any, exp: Any) -> Any:
    too_big = isinstance(base, int) and isinstance(exp, int) and exp > 0 and abs(base) > 1
    if too_big and exp * math.log2(abs(base)) > MAX_BITS:
        raise ToolError(f"the result would have more than {MAX_BITS} bits", "too_large")
    return operator.pow(base, exp)


def evaluate(expression: str) -> int | float:
    """The value of an arithmetic ``expression`` (numbers, + - * / // % **, math functions); no eval."""
    try:
        tree = ast.parse(expression.strip(), mode="eval")
    except SyntaxError as exc:
        raise ToolError(f"not an arithmetic expression: {exc.msg}", "invalid_args") from exc
    if sum(1 for _ in ast.walk(tree)) > MAX_NODES:
        raise ToolError(f"expression too long: more than {MAX_NODES} parts", "too_large")
    try:
        value = _eval(tree.body)
    except ZeroDivisionError as exc:
        raise ToolError("division by zero", "invalid_args") from exc
    except (OverflowError, ValueError, TypeError) as exc:
        raise ToolError(f"cannot compute: {exc}", "invalid_args") from exc
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ToolError("the expression does not give a number", "invalid_args")
    if isinstance(value, float) and not math.isfinite(value):
        raise ToolError("the result is not a finite number", "invalid_args")
    if isinstance(value, int) and value.bit_length() > MAX_BITS:
        raise ToolError(f"the result has more than {MAX_BITS} bits", "too_large")
    return value


def _eval(node: ast.expr) -> Any:
    if isinstance(node, ast.Constant) and isinstance(node.value, int | float) and not isinstance(node.value, bool):
        return node.value
    if isinstance(node, ast.BinOp):
        left, right = _eval(node.left), _eval(node.right)
        if isinstance(node.op, ast.Pow):
            return _power(left, right)
        op = _BINARY.get(type(node.op))
        if op is not None:
            return op(left, right)
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
        return _UNARY[type(node.op)](_eval(node.operand))
    if isinstance(node, ast.Name) and node.id in _CONSTANTS:
        return _CONSTANTS[node.id]
    if (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Name)
        and node.func.id in _FUNCTIONS
        and not node.keywords
    ):
        return _FUNCTIONS[node.func.id](*(_eval(a) for a in node.args))
    shown = ast.unparse(node)[:40]
    raise ToolError(f"not allowed in an expression: {shown!r}", "invalid_args")


def _calculator(args: dict[str, Any], _ctx: ToolContext) -> dict[str, Any]:
    return {"expression": args["expression"], "value": evaluate(args["expression"])}


CALCULATOR = Tool(
    name="calculator",
    description=(
        "Evaluate an arithmetic expression exactly: integers and decimals, + - * / // % ** and parentheses, "
        "the constants pi, e, tau and the functions " + ", ".join(sorted(_FUNCTIONS)) + "."
    ),
    parameters={
        "type": "object",
        "properties": {
            "expression": {
                "type": "string",
                "minLength": 1,
                "maxLength": MAX_EXPRESSION,
                "description": "e.g. (2 + 3) * sqrt(16) / 2**3",
            }
        },
        "required": ["expression"],
        "additionalProperties": False,
    },
    run=_calculator,
    timeout=5.0,
    max_timeout=10.0,
)

# -- json_query ------------------------------------------------------------------------

_STEP = re.compile(
    r"""\.\.(?P<deep>[A-Za-z_][\w-]*|\*)        # ..name / ..*
      | \.(?P<key>[A-Za-z_][\w-]*|\*)           # .name / .*
      | \[\s*(?P<index>-?\d+)\s*\]              # [3] / [-1]
      | \[\s*(?P<start>-?\d*)\s*:\s*(?P<stop>-?\d*)\s*\]   # [1:3]
      | \[\s*(?P<star>\*)\s*\]                  # [*]
      | \[\s*(?P<quoted>'[^']*'|"[^"]*")\s*\]   # ['a key']
    """,
    re.VERBOSE,
)

Step = tuple[str, Any]


def parse_path(path: str) -> list[Step]:
    """The steps of a JSONPath-lite expression: ``$.a.b[0]``, ``$..name``, ``items[*].id``, ``[1:3]``."""
    text = path.strip()
    text = text[1:] if text.startswith("$") else text
    if text and text[0] not in ".[":
        text = "." + text
    steps: list[Step] = []
    pos = 0
    while pos < len(text):
        m = _STEP.match(text, pos)
        if m is None:
            raise ToolError(f"cannot read the query at {text[pos : pos + 20]!r}", "invalid_args")
        pos = m.end()
        g = m.groupdict()
        if g["deep"] is not None:
            steps.append(("deep", g["deep"]))
        elif g["key"] is not None:
            steps.append(("all", None) if g["key"] == "*" else ("key", g["key"]))
        elif g["index"] is not None:
            steps.append(("index", int(g["index"])))
        elif g["star"] is not None:
            steps.append(("all", None))
        elif g["quoted"] is not None:
            steps.append(("key", g["quoted"][1:-1]))
        else:
            steps.append(("slice", (int(g["start"]) if g["start"] else None, int(g["stop"]) if g["stop"] else None)))
    return steps


def query(data: Any, path: str) -> list[Any]:
    """Every value of ``data`` that ``path`` selects, in document order."""
    current = [data]
    for kind, arg in parse_path(path):
        current = [found for value in current for found in _step(value, kind, arg)]
    return current


def _step(value: Any, kind: str, arg: Any) -> Iterator[Any]:
    if kind == "key" and isinstance(value, dict) and arg in value:
        yield value[arg]
    elif kind == "index" and isinstance(value, list) and -len(value) <= arg < len(value):
        yield value[arg]
    elif kind == "slice" and isinstance(value, list):
        yield from value[arg[0] : arg[1]]
    elif kind == "all":
        yield from _children(value)
    elif kind == "deep":
        for node in _descendants(value):
            if arg == "*":
                yield from _children(node)
            elif isinstance(node, dict) and arg in node:
                yield node[arg]


def _children(value: Any) -> list[Any]:
    if isinstance(value, dict):
        return list(value.values())
    return list(value) if isinstance(value, list) else []


def _descendants(value: Any) -> Iterator[Any]:
    stack = [value]
    while stack:
        node = stack.pop()
        yield node
        stack.extend(reversed(_children(node)))


def _json_query(args: dict[str, Any], ctx: ToolContext) -> dict[str, Any]:
    if ("data" in args) == ("file" in args):
        raise ToolError("give exactly one of data and file", "invalid_args")
    data = args.get("data")
    if "file" in args:
        stored = ctx.read_file(args["file"])
        try:
            data = json.loads(stored.data)
        except ValueError as exc:
            raise ToolError(f"{args['file']} is not JSON: {exc}", "invalid_args") from exc
    matches = query(data, args["query"])
    limit = int(args.get("limit", 100))
    return {"matches": matches[:limit], "count": len(matches), "truncated": len(matches) > limit}


JSON_QUERY = Tool(
    name="json_query",
    description=(
        "Select values from a JSON document with a JSONPath-like query: $.a.b, $.items[0], $.items[-1], "
        "$.items[*].name, $.items[1:3], $..name (at any depth), $['a key']. The document is given inline (data) "
        "or read from one of your stored files (file)."
    ),
    parameters={
        "type": "object",
        "properties": {
            "query": {"type": "string", "minLength": 1, "maxLength": 1000},
            "data": {"description": "The JSON document."},
            "file": {"type": "string", "minLength": 1, "maxLength": 1024, "description": "Path of a stored JSON file."},
            "limit": {"type": "integer", "minimum": 1, "maximum": 10_000, "default": 100},
        },
        "required": ["query"],
        "additionalProperties": False,
    },
    run=_json_query,
    timeout=5.0,
    max_timeout=30.0,
)

# -- regex -------------------------------------------------------------------------------

MAX_TEXT = 1_000_000
_FLAGS = {"i": re.IGNORECASE, "m": re.MULTILINE, "s": re.DOTALL, "x": re.VERBOSE}


def _match(m: re.Match[str]) -> dict[str, Any]:
    return {"match": m.group(0), "start": m.start(), "end": m.end(), "groups": list(m.groups()), "named": m.groupdict()}


def _regex(args: dict[str, Any], _ctx: ToolContext) -> dict[str, Any]:
    flags = 0
    for flag in args.get("flags", []):
        flags |= _FLAGS[flag]
    try:
        pattern = re.compile(args["pattern"], flags)
    except re.error as exc:
        raise ToolError(f"invalid regular expression: {exc}", "invalid_args") from exc
    text, mode, limit = args["text"], args.get("mode", "findall"), int(args.get("max_matches", 100))
    if mode == "search":
        found = pattern.search(text)
        return {"match": _match(found) if found else None}
    if mode == "sub":
        try:
            new, count = pattern.subn(args.get("replacement", ""), text, count=limit)
        except (re.error, IndexError) as exc:
            raise ToolError(f"invalid replacement: {exc}", "invalid_args") from exc
        return {"text": new, "count": count}
    if mode == "split":
        parts = pattern.split(text, maxsplit=limit)
        return {"parts": parts}
    matches: list[dict[str, Any]] = []
    for m in pattern.finditer(text):
        if len(matches) == limit:
            return {"matches": matches, "truncated": True}
        matches.append(_match(m))
    return {"matches": matches, "truncated": False}


REGEX = Tool(
    name="regex",
    description=(
        "Apply a Python regular expression to a text: findall (every match with its groups and offsets), "
        "search (the first match), sub (replace, \\1 or \\g<name> in the replacement) or split. "
        "Flags: i (ignore case), m (multiline), s (dot matches newline), x (verbose)."
    ),
    parameters={
        "type": "object",
        "properties": {
            "pattern": {"type": "string", "minLength": 1, "maxLength": 1000},
            "text": {"type": "string", "maxLength": MAX_TEXT},
            "mode": {"enum": ["findall", "search", "sub", "split"], "default": "findall"},
            "replacement": {"type": "string", "maxLength": 10_000},
            "flags": {"type": "array", "items": {"enum": sorted(_FLAGS)}, "uniqueItems": True},
            "max_matches": {"type": "integer", "minimum": 1, "maximum": 10_000, "default": 100},
        },
        "required": ["pattern", "text"],
        "additionalProperties": False,
    },
    run=_regex,
    timeout=5.0,
    max_timeout=30.0,
)

# -- read_file ---------------------------------------------------------------------------


def _read_file(args: dict[str, Any], ctx: ToolContext) -> dict[str, Any]:
    stored = ctx.read_file(args["path"], args.get("version"))
    offset, limit = int(args.get("offset", 0)), int(args.get("limit", 100_000))
    out: dict[str, Any] = {
        "path": stored.path,
        "version": stored.version,
        "content_type": stored.content_type,
        "size": len(stored.data),
        "offset": offset,
    }
    try:
        text = stored.data.decode("utf-8")
    except UnicodeDecodeError:
        chunk = stored.data[offset : offset + limit]
        out.update(
            encoding="base64", content=base64.b64encode(chunk).decode(), truncated=offset + limit < len(stored.data)
        )
        return out
    out.update(encoding="utf-8", content=text[offset : offset + limit], truncated=offset + limit < len(text))
    return out


READ_FILE = Tool(
    name="read_file",
    description=(
        "Read one of your own stored files (storage.write), optionally an older version and a window of it: "
        "text as UTF-8 characters from offset, binary content as base64 of bytes from offset."
    ),
    parameters={
        "type": "object",
        "properties": {
            "path": {"type": "string", "minLength": 1, "maxLength": 1024},
            "version": {"type": "integer", "minimum": 1},
            "offset": {"type": "integer", "minimum": 0, "default": 0},
            "limit": {"type": "integer", "minimum": 1, "maximum": 1_000_000, "default": 100_000},
        },
        "required": ["path"],
        "additionalProperties": False,
    },
    run=_read_file,
    timeout=10.0,
    max_timeout=30.0,
)
