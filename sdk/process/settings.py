"""Settings: read once at start from env vars (``AIOSD_*``), an optional TOML file and CLI flags.

Precedence, highest first: CLI flags, environment, config file, defaults.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr, ValidationError
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict, TomlConfigSettingsSource

from aiosd.sdk.errors import ConfigError
from aiosd.sdk.protocol import describe_validation

CONFIG_ENV = "AIOSD_CONFIG"


class Settings(BaseSettings):
    """Every tunable of the scheduler and CLI. Field ``x`` is env var ``AIOSD_X``."""

    model_config = SettingsConfigDict(env_prefix="AIOSD_", extra="forbid", frozen=True)

    amqp_url: str = Field(
        default="amqp://guest:guest@127.0.0.1:5672/%2F",
        description="Broker URL the scheduler connects with (needs configure rights on its vhost).",
    )
    mongo_url: str = Field(default="mongodb://127.0.0.1:27017/", description="MongoDB URL.")
    mongo_db: str = Field(default="aiosd", description="Database holding all aiosd collections.")
    prefetch: int = Field(default=256, ge=1, le=10_000, description="Unacked deliveries in flight.")
    threads: int = Field(default=8, ge=1, le=256, description="Threads serving syscalls.")
    batch_size: int = Field(
        default=64,
        ge=1,
        le=1000,
        description="Group commit: at most this many deliveries are admitted and stored together.",
    )
    batch_wait_ms: float = Field(
        default=20.0,
        ge=0,
        le=1000,
        description=(
            "Group commit: while a batch is being served the next one gathers, for at most this long;"
            " with nothing being served a delivery goes at once."
        ),
    )
    max_body_bytes: int = Field(default=1_048_576, ge=1024, description="Larger requests are refused.")
    dev_allow_anonymous: bool = Field(
        default=False,
        description="Development only: accept messages without user_id as agent 'anonymous'.",
    )
    shutdown_timeout: float = Field(default=30.0, gt=0, description="Seconds to finish in-flight work.")
    connect_timeout: float = Field(default=30.0, gt=0, description="Seconds to wait for services at start.")
    sweep_interval: float = Field(default=15.0, gt=0, description="Seconds between recovery sweeps.")
    # -- agents, policies, approvals, audit --
    amqp_admin_url: str = Field(
        default="http://127.0.0.1:15672",
        description="RabbitMQ management API, for `aiosd agents` (users, permissions).",
    )
    amqp_admin_user: str = Field(default="guest", description="Management API user (tag administrator).")
    amqp_admin_password: SecretStr = Field(default=SecretStr("guest"), description="Management API password.")
    trust_scheduler_user: bool = Field(
        default=True,
        description="The scheduler's own broker user (already all-powerful on the broker) may make every "
        "syscall without a policy document; every other agent needs one (deny by default).",
    )
    approval_timeout: float = Field(default=3600.0, gt=0, description="Seconds before an undecided approval is denied.")
    approval_poll: float = Field(default=1.0, gt=0, description="Seconds between checks for approval decisions.")
    audit_key: SecretStr | None = Field(
        default=None, description="If set, audit records are chained with HMAC-SHA-256 under this key."
    )
    # -- LLM scheduling (scheduler) --
    policy: Literal["fifo", "priority", "round_robin", "las", "fair"] = Field(
        default="priority",
        description="Order in which queued LLM calls are leased: fifo, priority (9 first), round_robin (time"
        " slices), las (least attained service per program, aged) or fair (weighted fair share per agent, aged).",
    )
    slice_tokens: int = Field(default=64, ge=1, description="round_robin: tokens per time slice.")
    lease_ttl: float = Field(default=30.0, gt=0, description="Seconds a lease lives without a heartbeat.")
    task_lease_ttl: float = Field(
        default=60.0, gt=0, description="Seconds a runner's task lease lives without a task.heartbeat."
    )
    runner_capacity: int = Field(default=4, ge=1, le=256, description="Tasks one runner runs at once.")
    task_call_timeout: float = Field(
        default=900.0, gt=0, description="Seconds a program's syscall may wait for its reply before the task fails."
    )
    max_attempts: int = Field(default=3, ge=1, description="Leases per LLM call before it fails.")
    worker_timeout: float = Field(default=10.0, gt=0, description="Seconds without heartbeat before a worker is dead.")
    affinity_slack: int = Field(
        default=1, ge=0, description="Extra in-flight calls a worker may have and still win a call by affinity."
    )
    service_prefill_weight: float = Field(
        default=0.1,
        ge=0,
        description="las, fair, cache_aware: a computed (uncached) prompt token's cost against one generated token.",
    )
    aging_rate: float = Field(
        default=1000.0,
        gt=0,
        description="las, fair: tokens of service one second of waiting makes up for.",
    )
    starvation_bound: float = Field(
        default=60.0,
        gt=0,
        description="las, fair: at its priority, a queued call is passed over only by calls queued less than"
        " this many seconds after it.",
    )
    routing: Literal["cache_aware", "affinity"] = Field(
        default="cache_aware",
        description="How a worker is chosen: cache_aware (longest cached prompt prefix, within the balance"
        " threshold) or affinity (session or system prompt, within affinity_slack calls).",
    )
    route_balance_tokens: float = Field(
        default=4096.0,
        ge=0,
        description="cache_aware: outstanding tokens by which a worker may exceed the least loaded one and still"
        " win a call by its cached prefix.",
    )
    route_cache_tokens: int = Field(
        default=262_144,
        ge=1,
        description="cache_aware: prompt tokens remembered per worker (about its KV cache), least recently used"
        " forgotten first.",
    )
    interactive_priority: int = Field(
        default=9,
        ge=0,
        le=9,
        description="cache_aware: calls of this priority or higher are interactive (they use the interactive lane).",
    )
    interactive_workers: int = Field(
        default=1,
        ge=0,
        description="cache_aware: LLM workers per model kept clear of other calls while interactive calls are"
        " about (never a model's last worker); 0 turns the interactive lane off.",
    )
    interactive_window: float = Field(
        default=10.0,
        gt=0,
        description="cache_aware: seconds the interactive lane stays open after an interactive call was last"
        " queued or leased (and while one runs).",
    )
    interactive_preempt: bool = Field(
        default=True,
        description="cache_aware: when the interactive lane reserves a worker, the other calls running there are"
        " handed back and run again on other workers (their partial output is computed again).",
    )
    interactive_standby_tokens: int = Field(
        default=1024,
        ge=0,
        description="cache_aware: while the interactive lane is closed, the workers it would reserve take only"
        " calls with at most this many prompt tokens to compute, so an interactive call does not wait for a long"
        " prefill when it opens; 0 turns this off.",
    )
    # -- worker --
    worker_id: str | None = Field(default=None, max_length=64, description="Defaults to <host>-<pid>.")
    backend: Literal["llamacpp", "openai", "sglang"] = Field(default="llamacpp", description="Worker backend.")
    capacity: int = Field(default=0, ge=0, description="Concurrent calls per worker; 0 picks the backend's default.")
    heartbeat_interval: float = Field(default=2.0, gt=0, description="Seconds between worker heartbeats.")
    model_path: str | None = Field(
        default=None, description="llamacpp: a GGUF file (default: the bundled SmolLM2); sglang: model to launch."
    )
    backend_url: str | None = Field(default=None, description="openai/sglang: URL of a running server.")
    model_name: str | None = Field(default=None, description="openai: model name to request.")
    backend_stream: Literal["auto", "always", "never"] = Field(
        default="auto", description="openai/sglang: stream backend calls; auto streams only time-sliced calls."
    )
    sglang_port: int = Field(default=30000, ge=1, le=65535, description="Port of a launched SGLang server.")
    sglang_mem_fraction: float | None = Field(default=None, gt=0, le=1, description="--mem-fraction-static.")
    sglang_max_running_requests: int | None = Field(default=None, ge=1, description="--max-running-requests.")
    sglang_schedule_policy: str | None = Field(default=None, description="--schedule-policy (lpm, fcfs, ...).")
    sglang_args: list[str] = Field(default_factory=list, description="Further launch_server arguments.")
    # -- tools (aiosd tools) --
    tools_capacity: int = Field(default=4, ge=1, le=256, description="Tool calls run at once, each in a child process.")
    tool_timeout: float = Field(
        default=300.0,
        gt=0,
        description="Upper bound on any tool call's wall-clock seconds (each tool has its own "
        "default and maximum); past it the call's process group is killed.",
    )
    tool_cpu_seconds: int = Field(default=60, ge=1, description="CPU seconds per tool call (RLIMIT_CPU).")
    tool_memory_mb: int = Field(default=512, ge=64, description="Address space per tool call in MiB (RLIMIT_AS).")
    tool_scratch_dir: str | None = Field(
        default=None, description="Where each call's private scratch directory is made (default: the system temp dir)."
    )
    metrics_host: str = Field(default="127.0.0.1", description="Address the Prometheus metrics endpoint binds to.")
    metrics_port: int | None = Field(
        default=None,
        ge=0,
        le=65535,
        description="Prometheus metrics port; unset: 9710 scheduler, 9711 worker, 9712 tools, 9713 runner; 0: off.",
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_format: Literal["auto", "json", "console"] = Field(
        default="auto", description="auto: console on a TTY, JSON lines otherwise."
    )
    # -- web console (aiosd web) --
    web_host: str = Field(default="127.0.0.1", description="Address the web console binds to.")
    web_port: int = Field(default=9720, ge=0, le=65535, description="Port of the web console (0: any free port).")
    web_user: str = Field(default="operator", min_length=1, description="The web console operator's login name.")
    web_password: SecretStr | None = Field(
        default=None, description="The web console operator's password; `aiosd web` refuses to start without one."
    )
    web_session_key: SecretStr | None = Field(
        default=None,
        description="Key signing the web console's session cookies (give every console behind one address the"
        " same); unset: a random key per process, so logins end when it restarts.",
    )

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The TOML source reads model_config["toml_file"]; None means no file.
        return (init_settings, env_settings, TomlConfigSettingsSource(settings_cls))


def load_settings(config_file: str | None = None, **overrides: Any) -> Settings:
    """Build the settings; raise :class:`ConfigError` with a readable message."""
    path = config_file or os.environ.get(CONFIG_ENV)
    cls: type[Settings] = Settings
    if path:
        if not Path(path).is_file():
            raise ConfigError(f"config file {path} does not exist")
        cls = type("FileSettings", (Settings,), {"model_config": {**Settings.model_config, "toml_file": path}})
    given = {k: v for k, v in overrides.items() if v is not None}
    try:
        return cls(**given)
    except ValidationError as exc:
        raise ConfigError(f"invalid settings: {describe_validation(exc)}") from exc
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read settings: {exc}") from exc
