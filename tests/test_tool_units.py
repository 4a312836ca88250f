"""Tools without the broker: built-ins, the registry, policies, the sandbox (real child processes)."""

from __future__ import annotations

import asyncio
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from aiosd.daemon.access.policy import SAFE_TOOLS, Policy, parse_policy
from aiosd.daemon.errors import InvalidPolicy
from aiosd.daemon.services.tools import ToolService
from aiosd.sdk.cluster import Lease
from aiosd.sdk.process.settings import Settings
from aiosd.sdk.protocol import ErrorCode
from aiosd.sdk.registry import ToolRegistry
from aiosd.sdk.toolkit import Tool, ToolError
from aiosd.sdk.tools import ToolCallArgs, ToolFailure
from aiosd.workers.sandbox import Job, Limits, run_job
from aiosd.workers.stdtools import evaluate, parse_path, query
from aiosd.workers.toolrunner import ToolEngine, tools_config

from .harness import TEST_TOOLS

BUILTINS = {
    "calculator": "aiosd.workers.stdtools:CALCULATOR",
    "regex": "aiosd.workers.stdtools:REGEX",
    "json_query": "aiosd.workers.stdtools:JSON_QUERY",
    "read_file": "aiosd.workers.stdtools:READ_FILE",
}


@pytest.fixture
def test_tools(monkeypatch: pytest.MonkeyPatch) -> None:
    """The test tool package importable here and in sandboxed children."""
    monkeypatch.syspath_prepend(str(TEST_TOOLS))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(TEST_TOOLS), os.environ.get("PYTHONPATH")])))


# -- built-ins ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("expression", "value"),
    [
        ("1 + 2 * 3", 7),
        ("(1 + 2) * 3", 9),
        ("7 / 2", 3.5),
        ("7 // 2", 3),
        ("-7 % 3", 2),
        ("2 ** 10", 1024),
        ("sqrt(16) + abs(-2)", 6.0),
        ("max(1, 5, 3)", 5),
        ("round(pi, 2)", 3.14),
        ("2 ** -1", 0.5),
        ("factorial(5)", 120),
        ("log(e)", 1.0),
        ("10 ** 100 // 10 ** 99", 10),
    ],
)
def test_calculator_computes(expression: str, value: float) -> None:
    assert evaluate(expression) == value


@pytest.mark.parametrize(
    ("expression", "code", "says"),
    [
        ("__import__('os').system('id')", "invalid_args", "not allowed"),
        ("open('/etc/passwd')", "invalid_args", "not allowed"),
        ("(1).__class__", "invalid_args", "not allowed"),
        ("[x for x in range(10)]", "invalid_args", "not allowed"),
        ("'a' * 3", "invalid_args", "not allowed"),
        ("1 / 0", "invalid_args", "division by zero"),
        ("9 ** 9 ** 9", "too_large", "bits"),
        ("10.0 ** 400", "invalid_args", "cannot compute"),
        ("factorial(10 ** 6)", "invalid_args", "factorial"),
        ("1 +", "invalid_args", "not an arithmetic expression"),
        ("+".join(["1"] * 300), "too_large", "too long"),
        ("True + 1", "invalid_args", "not allowed"),
    ],
)
def test_calculator_refuses_what_is_not_arithmetic(expression: str, code: str, says: str) -> None:
    with pytest.raises(ToolError) as err:
        evaluate(expression)
    assert err.value.code == code and says in err.value.message


def test_json_query_paths() -> None:
    doc = {"a": {"b": [10, 20, 30]}, "items": [{"name": "x", "tags": ["t"]}, {"name": "y"}], "odd key": 1}
    assert query(doc, "$.a.b[0]") == [10]
    assert query(doc, "a.b[-1]") == [30]
    assert query(doc, "$.a.b[1:]") == [20, 30]
    assert query(doc, "$.items[*].name") == ["x", "y"]
    assert query(doc, "$..name") == ["x", "y"]
    assert query(doc, "$['odd key']") == [1]
    assert query(doc, "$.missing.deeper") == []
    assert query(doc, "$.a.*") == [[10, 20, 30]]
    assert query(doc, "$") == [doc]
    with pytest.raises(ToolError, match="cannot read the query"):
        parse_path("$.a[")


# -- registry and scheduler-side decisions -------------------------------------------------


def test_registry_loads_the_installed_builtins() -> None:
    registry = ToolRegistry.load()
    assert set(BUILTINS) <= set(registry.tools) and registry.errors == []
    assert registry.get("calculator") is not None and not registry.irreversible("calculator")


def test_registry_checks_arguments_against_the_schema() -> None:
    registry = ToolRegistry(BUILTINS)
    assert registry.check(ToolCallArgs(name="regex", args={"pattern": "a", "text": "b"})) is None
    bad = registry.check(ToolCallArgs(name="regex", args={"pattern": 5, "flags": ["q"], "extra": 1}))
    assert bad is not None and "args.pattern: 5 is not of type 'string'" in bad and "args.flags[0]" in bad
    assert "'text' is a required property" in bad and "'extra' was unexpected" in bad
    many = registry.check(ToolCallArgs(name="regex", args={f"x{i}": i for i in range(3)} | {"flags": [1, 2, 3, 4, 5]}))
    assert many is not None and many.endswith("and 3 more")
    unknown = registry.check(ToolCallArgs(name="nope", args={}))
    assert unknown is not None and "unknown tool 'nope'" in unknown and "calculator" in unknown
    slow = registry.check(ToolCallArgs(name="calculator", args={"expression": "1"}, timeout=11))
    assert slow is not None and "max_timeout of 10s" in slow


def _tool(**overrides: Any) -> Tool:
    fields: dict[str, Any] = {
        "name": "good",
        "description": "d",
        "parameters": {"type": "object"},
        "run": lambda args, ctx: None,
    }
    return Tool(**{**fields, **overrides})


GOOD = _tool()
BAD_SCHEMA = _tool(name="bad_schema", parameters={"type": "object", "properties": {"x": {"type": 12}}})
NOT_OBJECT = _tool(name="not_object", parameters={"type": "string"})
SLOW = _tool(name="slow", timeout=100.0, max_timeout=10.0)
NO_TOOL = object()


def test_registry_skips_invalid_declarations() -> None:
    here = __name__
    registry = ToolRegistry(
        [
            ("good", f"{here}:GOOD"),
            ("good", f"{here}:GOOD"),
            ("bad_schema", f"{here}:BAD_SCHEMA"),
            ("not_object", f"{here}:NOT_OBJECT"),
            ("slow", f"{here}:SLOW"),
            ("other", f"{here}:GOOD"),
            ("thing", f"{here}:NO_TOOL"),
            ("gone", "no_such_module:X"),
            ("Bad-Name", f"{here}:GOOD"),
        ]
    )
    assert list(registry.tools) == ["good"]
    problems = "\n".join(registry.errors)
    for says in (
        "already taken",
        "not a valid JSON Schema",
        "type 'object'",
        "timeout <= max_timeout",
        "declared as 'good'",
        "not an aiosd.sdk.toolkit.Tool",
        "cannot be imported",
    ):
        assert says in problems, says
    assert len(registry.errors) == 8


def test_tool_service_decides_approvals_retries_and_listing(test_tools: None) -> None:
    service = ToolService(ToolRegistry({**BUILTINS, "test_launch": "aiosd_test_tools:LAUNCH"}))
    assert service.irreversible("tool.call", {"name": "test_launch"})
    assert not service.irreversible("tool.call", {"name": "calculator"})
    assert not service.irreversible("memory.add", {"name": "test_launch"})
    assert not service.may_retry({"syscall": "tool.call", "args": {"name": "test_launch", "args": {}}})
    assert service.may_retry({"syscall": "tool.call", "args": {"name": "regex"}})
    assert service.may_retry({"syscall": "llm.chat", "args": {}})


def test_policy_tools_default_to_the_safe_builtins_and_validate() -> None:
    policy = Policy()
    assert policy.tools == list(SAFE_TOOLS) and policy.allows("tool.call") and policy.allows("tool.list")
    assert policy.allows_tool("calculator") and not policy.allows_tool("test_spin")
    assert Policy(tools=["test_*"]).allows_tool("test_spin")
    assert Policy.unrestricted().allows_tool("anything")
    with pytest.raises(InvalidPolicy, match="tool pattern"):
        parse_policy({"tools": ["rm -rf"]})


# -- the sandbox and the tool runner --------------------------------------------------------


def _job(entry: str, name: str, args: dict[str, Any], **limits: Any) -> Job:
    return Job(
        entry=entry,
        name=name,
        args=args,
        agent="agent-a",
        call_id="c1",
        limits=Limits(**{"timeout": 5.0, "memory_mb": 256, "cpu_seconds": 10, **limits}),
    )


def _fail(job: Job) -> ToolFailure:
    with pytest.raises(ToolFailure) as err:
        asyncio.run(run_job(job))
    return err.value


def test_sandbox_runs_a_builtin_in_a_child() -> None:
    done = asyncio.run(
        run_job(_job("aiosd.workers.stdtools:REGEX", "regex", {"pattern": r"\d+", "text": "a1b22", "mode": "findall"}))
    )
    assert [m["match"] for m in done.value["matches"]] == ["1", "22"] and done.duration_ms > 0


def test_sandbox_kills_at_the_wall_clock_and_at_the_cpu_limit(test_tools: None) -> None:
    timed = _fail(_job("aiosd_test_tools:SPIN", "test_spin", {}, timeout=0.5))
    assert timed.code is ErrorCode.TIME_LIMIT_EXCEEDED and "0.5s" in timed.message
    cpu = _fail(_job("aiosd_test_tools:SPIN", "test_spin", {}, timeout=20, cpu_seconds=1))
    assert cpu.code is ErrorCode.TIME_LIMIT_EXCEEDED and "CPU time" in cpu.message


def test_sandbox_stops_a_memory_hog_and_reports_tool_errors(test_tools: None) -> None:
    hog = _fail(_job("aiosd_test_tools:HOG", "test_hog", {"mb": 4096}, memory_mb=128))
    assert hog.code is ErrorCode.RESOURCE_LIMIT_EXCEEDED and "128 MiB" in hog.message
    raised = _fail(_job("aiosd_test_tools:CRASH", "test_crash", {"how": "raise"}))
    assert raised.code is ErrorCode.TOOL_FAILED and raised.message.startswith("RuntimeError: the tool broke")
    died = _fail(_job("aiosd_test_tools:CRASH", "test_crash", {"how": "exit"}))
    assert died.code is ErrorCode.TOOL_FAILED and "status 3" in died.message
    unjson = _fail(_job("aiosd_test_tools:CRASH", "test_crash", {"how": "unjson"}))
    assert unjson.code is ErrorCode.TOOL_FAILED and "not JSON" in unjson.message
    printed = asyncio.run(run_job(_job("aiosd_test_tools:CRASH", "test_crash", {"how": "print"})))
    assert printed.value == {"printed": True}
    divided = _fail(_job("aiosd.workers.stdtools:CALCULATOR", "calculator", {"expression": "1/0"}))
    assert (divided.code, divided.message) == (ErrorCode.INVALID_ARGS, "division by zero")


def test_sandbox_serves_kernel_calls_for_the_calling_agent_only() -> None:
    asked: list[tuple[str, str, dict[str, Any]]] = []

    async def serve(agent: str, service: str, params: dict[str, Any]) -> Any:
        asked.append((agent, service, params))
        if params["path"] == "/missing":
            raise ToolFailure(ErrorCode.NOT_FOUND, "no file /missing")
        return {"path": params["path"], "version": 3, "content_type": "text/plain", "data": "aGVsbG8gd29ybGQ="}

    done = asyncio.run(
        run_job(_job("aiosd.workers.stdtools:READ_FILE", "read_file", {"path": "/a.txt", "offset": 6}), serve)
    )
    assert done.value["content"] == "world" and done.value["version"] == 3 and done.value["size"] == 11
    assert asked == [("agent-a", "storage.read", {"path": "/a.txt", "version": None})]
    with pytest.raises(ToolFailure) as err:
        asyncio.run(run_job(_job("aiosd.workers.stdtools:READ_FILE", "read_file", {"path": "/missing"}), serve))
    assert err.value.code is ErrorCode.NOT_FOUND


def test_runner_checks_the_lease_and_caps_the_timeout(test_tools: None, tmp_path: Path) -> None:
    settings = Settings(worker_id="t1", tool_timeout=8.0, tool_scratch_dir=str(tmp_path))
    registry = ToolRegistry(
        {**BUILTINS, "test_sleep": "aiosd_test_tools:SLEEP", "test_launch": "aiosd_test_tools:LAUNCH"}
    )
    engine = ToolEngine(tools_config(settings), settings, registry)
    assert (engine.config.worker_id, engine.config.backend, engine.config.capacity) == ("t1", "tools", 4)

    job = engine.job(_lease({"name": "test_sleep", "args": {"seconds": 1}, "timeout": 50}))
    assert job.limits.timeout == 8.0 and job.agent == "agent-a"  # capped by tool_timeout
    assert engine.job(_lease({"name": "calculator", "args": {"expression": "1"}})).limits.timeout == 5.0
    for args, says in [
        ({"name": "calculator", "args": {}}, "required"),
        ({"name": "zzz"}, "unknown tool"),
        ({"nome": "x"}, "invalid tool.call arguments"),
    ]:
        with pytest.raises(ToolFailure, match=says):
            engine.job(_lease(args))

    out = asyncio.run(engine.run(_lease({"name": "calculator", "args": {"expression": "6*7"}})))
    assert out.status == "done" and out.result is not None and out.result["result"]["value"] == 42
    bad = asyncio.run(engine.run(_lease({"name": "calculator", "args": {"expression": 7}})))
    assert (bad.status, bad.error_code, bad.retryable) == ("error", ErrorCode.INVALID_ARGS, False)
    assert list(tmp_path.iterdir()) == []  # every scratch directory is gone

    # Cut off by a stop: a reversible call is handed back, an irreversible one fails for good.
    assert engine.interrupted(_lease({"name": "test_sleep", "args": {}}), "t1", "stopping").status == "released"
    cut = engine.interrupted(_lease({"name": "test_launch", "args": {}}), "t1", "stopping")
    assert (cut.status, cut.error_code, cut.retryable) == ("error", ErrorCode.UNAVAILABLE, False)


def _lease(args: dict[str, Any]) -> Lease:
    return Lease(
        lease_id="l1",
        key="agent-a/c1",
        agent="agent-a",
        call_id="c1",
        syscall="tool.call",
        args=args,
        expires_at=datetime.now(UTC) + timedelta(seconds=30),
    )
