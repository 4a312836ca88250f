"""The ``aiosd`` CLI's exit codes and the settings' sources and precedence."""

from __future__ import annotations

import json
import os
import socket
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from pydantic import ValidationError

from aiosd.sdk import Client
from aiosd.sdk.errors import EXIT_CONFIG, EXIT_FAILURE, EXIT_UNAVAILABLE, ConfigError
from aiosd.sdk.process.settings import Settings, load_settings

from .harness import SchedulerProcess, World, aiosd_command

#: A run of the CLI must never take this long, whatever it is waiting for.
CLI_TIMEOUT = 60


def closed_port() -> int:
    """A local TCP port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIOSD_")}
    env.update(extra)
    return env


def run_cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        aiosd_command(*args), env=env, capture_output=True, text=True, timeout=CLI_TIMEOUT, check=False
    )


# -- exit codes of `aiosd scheduler` -------------------------------------------


@pytest.mark.parametrize(
    ("args", "env", "expected"),
    [
        ((), {"AIOSD_PREFETCH": "0"}, "prefetch"),
        ((), {"AIOSD_THREADS": "lots"}, "threads"),
        ((), {"AIOSD_LOG_LEVEL": "CHATTY"}, "log_level"),
        (("--prefetch", "0"), {"AIOSD_PREFETCH": "5"}, "prefetch"),  # the flag beats the valid env value
        (("--config", "/nonexistent/aiosd.toml"), {}, "/nonexistent/aiosd.toml does not exist"),
        ((), {"AIOSD_CONFIG": "/nonexistent/aiosd.toml"}, "/nonexistent/aiosd.toml does not exist"),
    ],
    ids=[
        "env-prefetch-0",
        "env-threads-not-int",
        "env-log-level",
        "flag-prefetch-0",
        "flag-config-missing",
        "env-config-missing",
    ],
)
def test_scheduler_with_invalid_settings_exits_78(args: tuple[str, ...], env: dict[str, str], expected: str) -> None:
    result = run_cli("scheduler", *args, env=clean_env(**env))
    assert result.returncode == EXIT_CONFIG == 78, result.stderr
    assert result.stderr.startswith("aiosd: ")
    assert expected in result.stderr
    assert "Traceback" not in result.stderr


def test_scheduler_with_bad_config_file_exits_78(tmp_path: Path) -> None:
    broken = tmp_path / "broken.toml"
    broken.write_text("prefetch = [unterminated\n")
    result = run_cli("scheduler", "--config", str(broken), env=clean_env())
    assert result.returncode == EXIT_CONFIG, result.stderr
    assert result.stderr.startswith("aiosd: cannot read settings")

    unknown = tmp_path / "unknown.toml"
    unknown.write_text("prefech = 10\n")  # a typo must not be silently ignored
    result = run_cli("scheduler", "--config", str(unknown), env=clean_env())
    assert result.returncode == EXIT_CONFIG, result.stderr
    assert "prefech" in result.stderr and "Traceback" not in result.stderr


def test_scheduler_exits_69_when_mongodb_is_unreachable() -> None:
    env = clean_env(
        AIOSD_MONGO_URL=f"mongodb://127.0.0.1:{closed_port()}/", AIOSD_CONNECT_TIMEOUT="2", AIOSD_LOG_FORMAT="json"
    )
    result = run_cli("scheduler", env=env)
    assert result.returncode == EXIT_UNAVAILABLE == 69, result.stderr
    assert "aiosd: MongoDB is unreachable" in result.stderr
    assert "Traceback" not in result.stderr


def test_scheduler_exits_69_when_rabbitmq_is_unreachable(world: World) -> None:
    env = world.env(AIOSD_AMQP_URL=f"amqp://guest:guest@127.0.0.1:{closed_port()}/%2F", AIOSD_CONNECT_TIMEOUT="2")
    result = run_cli("scheduler", env=env)
    assert result.returncode == EXIT_UNAVAILABLE, result.stderr
    assert "aiosd: RabbitMQ is unreachable" in result.stderr


# -- precedence: CLI flag > env > TOML file > default -----------------------------


@pytest.fixture
def no_aiosd_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[pytest.MonkeyPatch]:
    for key in list(os.environ):
        if key.startswith("AIOSD_"):
            monkeypatch.delenv(key)
    yield monkeypatch


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    path = tmp_path / "aiosd.toml"
    path.write_text('prefetch = 10\nthreads = 3\nmongo_db = "from_file"\nshutdown_timeout = 12.5\n')
    return path


def test_defaults_without_any_source(no_aiosd_env: pytest.MonkeyPatch) -> None:
    s = load_settings()
    assert (s.prefetch, s.threads, s.mongo_db, s.shutdown_timeout) == (256, 8, "aiosd", 30.0)
    assert s == Settings()


def test_file_beats_defaults(no_aiosd_env: pytest.MonkeyPatch, config_file: Path) -> None:
    s = load_settings(str(config_file))
    assert (s.prefetch, s.threads, s.mongo_db, s.shutdown_timeout) == (10, 3, "from_file", 12.5)
    assert s.max_body_bytes == 1_048_576  # not in the file: default


def test_env_beats_file(no_aiosd_env: pytest.MonkeyPatch, config_file: Path) -> None:
    no_aiosd_env.setenv("AIOSD_PREFETCH", "20")
    no_aiosd_env.setenv("AIOSD_MONGO_DB", "from_env")
    s = load_settings(str(config_file))
    assert (s.prefetch, s.mongo_db) == (20, "from_env")
    assert (s.threads, s.shutdown_timeout) == (3, 12.5)  # only in the file


def test_flag_beats_env_and_file(no_aiosd_env: pytest.MonkeyPatch, config_file: Path) -> None:
    no_aiosd_env.setenv("AIOSD_PREFETCH", "20")
    no_aiosd_env.setenv("AIOSD_THREADS", "4")
    # A flag the user did not give arrives as None and must not mask the lower sources.
    s = load_settings(str(config_file), prefetch=30, threads=None, mongo_db=None)
    assert (s.prefetch, s.threads, s.mongo_db, s.shutdown_timeout) == (30, 4, "from_file", 12.5)


def test_config_file_named_by_env(no_aiosd_env: pytest.MonkeyPatch, config_file: Path, tmp_path: Path) -> None:
    no_aiosd_env.setenv("AIOSD_CONFIG", str(config_file))
    assert load_settings().prefetch == 10
    other = tmp_path / "other.toml"
    other.write_text("prefetch = 11\n")
    assert load_settings(str(other)).prefetch == 11  # --config beats AIOSD_CONFIG


def test_invalid_values_raise_config_error_naming_the_field(
    no_aiosd_env: pytest.MonkeyPatch, config_file: Path
) -> None:
    with pytest.raises(ConfigError, match="prefetch"):
        load_settings(prefetch=0)
    no_aiosd_env.setenv("AIOSD_SHUTDOWN_TIMEOUT", "-1")
    with pytest.raises(ConfigError, match="shutdown_timeout"):
        load_settings(str(config_file))
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings("/nonexistent/aiosd.toml")


def test_settings_are_read_once_and_frozen(no_aiosd_env: pytest.MonkeyPatch) -> None:
    s = load_settings(prefetch=7)
    with pytest.raises(ValidationError, match="frozen"):
        s.prefetch = 8  # type: ignore[misc]
    no_aiosd_env.setenv("AIOSD_PREFETCH", "9")
    assert s.prefetch == 7


# -- `aiosd result ID` --------------------------------------------------------------


def test_result_prints_stored_reply_and_fails_for_unknown_id(
    world: World, make_scheduler: Callable[..., SchedulerProcess]
) -> None:
    make_scheduler().start()
    with Client(world.amqp_url(), timeout=60) as client:
        reply = client.request("memory.add", {"content": "fetch me by id"}, message_id="cli-result-1")
    env = world.env()

    shown = run_cli("result", "cli-result-1", env=env)
    assert shown.returncode == 0, shown.stderr
    record = json.loads(shown.stdout)
    assert (record["id"], record["agent"], record["syscall"], record["state"]) == (
        "cli-result-1",
        "guest",
        "memory.add",
        "completed",
    )
    assert record["args"] == {"content": "fetch me by id"}
    assert record["reply"] == json.loads(reply.model_dump_json())
    assert record["reply"]["status"] == "ok" and record["reply"]["result"]["id"].startswith("n_")

    assert run_cli("result", "cli-result-1", "--agent", "guest", env=env).returncode == 0

    unknown = run_cli("result", "no-such-call", env=env)
    assert unknown.returncode == EXIT_FAILURE == 1
    assert unknown.stdout == ""
    assert "no syscall with id 'no-such-call'" in unknown.stderr

    other_agent = run_cli("result", "cli-result-1", "--agent", "somebody-else", env=env)
    assert other_agent.returncode == EXIT_FAILURE
    assert "from agent 'somebody-else'" in other_agent.stderr


def test_result_exits_69_when_mongodb_is_unreachable() -> None:
    env = clean_env(AIOSD_MONGO_URL=f"mongodb://127.0.0.1:{closed_port()}/")
    result = run_cli("result", "anything", env=env)
    assert result.returncode == EXIT_UNAVAILABLE, result.stderr
    assert "aiosd: MongoDB is unreachable" in result.stderr
