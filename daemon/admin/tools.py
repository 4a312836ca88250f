"""The ``aiosd tools`` command: run the tool runner, list the installed tools, or check its health."""

from __future__ import annotations

import json
import sys
from typing import Any

import click

from aiosd.sdk.errors import EXIT_CONFIG, EXIT_FAILURE, EXIT_OK, AiosdError, ConfigError
from aiosd.sdk.process.options import fail, load, settings_options


@click.command()
@settings_options
@click.option("--check", is_flag=True, help="Exit 0 if this tool runner's registration is fresh and healthy, else 1.")
@click.option(
    "--list", "list_tools", is_flag=True, help="Print the installed tools (and declarations that failed) as JSON."
)
@click.option("--worker-id", help="Stable id of this tool runner (env AIOSD_WORKER_ID; default <host>-tools-<pid>).")
@click.option("--capacity", "tools_capacity", type=int, help="Tool calls run at once (env AIOSD_TOOLS_CAPACITY).")
@click.option("--tool-timeout", type=float, help="Upper bound on a call's wall-clock seconds (env AIOSD_TOOL_TIMEOUT).")
@click.option("--tool-memory-mb", type=int, help="Address space per call in MiB (env AIOSD_TOOL_MEMORY_MB).")
@click.option("--tool-cpu-seconds", type=int, help="CPU seconds per call (env AIOSD_TOOL_CPU_SECONDS).")
@click.option("--tool-scratch-dir", help="Directory for the calls' scratch directories (env AIOSD_TOOL_SCRATCH_DIR).")
@click.option("--heartbeat-interval", type=float, help="Seconds between heartbeats.")
@click.option("--shutdown-timeout", type=float, help="Seconds to finish in-flight calls on SIGTERM.")
@click.option("--connect-timeout", type=float, help="Seconds to wait for RabbitMQ at start.")
def tools(config_file: str | None, check: bool, list_tools: bool, **overrides: Any) -> None:
    """Run the tool runner: leased tool.call syscalls, each in a sandboxed child process."""
    settings = load(config_file, **overrides)
    if check:
        from aiosd.workers.check import check_worker

        ok, reason = check_worker(settings)
        click.echo(reason, err=not ok)
        sys.exit(EXIT_OK if ok else EXIT_FAILURE)
    from aiosd.sdk.process.lifecycle import Lifecycle
    from aiosd.sdk.process.logs import configure_logging
    from aiosd.sdk.registry import ToolRegistry

    configure_logging(settings.log_level, settings.log_format)  # on stderr
    if list_tools:
        registry = ToolRegistry.load()
        listing = {"tools": [i.model_dump() for i in registry.infos()], "errors": registry.errors}
        click.echo(json.dumps(listing, indent=2))
        sys.exit(EXIT_OK)
    lifecycle = Lifecycle()
    lifecycle.install_signal_handlers()
    try:
        _run(settings, lifecycle, ToolRegistry.load())
    except ConfigError as exc:
        click.echo(f"aiosd: {exc}", err=True)
        sys.exit(EXIT_CONFIG)
    except AiosdError as exc:
        fail(exc)


def _run(settings: Any, lifecycle: Any, registry: Any) -> None:
    from aiosd.daemon.services.storage.reader import storage_reader
    from aiosd.workers.toolrunner import ToolEngine, tools_config
    from aiosd.workers.toolservices import KernelServices
    from aiosd.workers.worker import Worker

    config = tools_config(settings)
    engine = ToolEngine(config, settings, registry, KernelServices(storage_reader(settings)))
    Worker(settings, lifecycle, config, engine, kind="tools", interrupted=engine.interrupted).run()
