"""The ``aiosd runner`` command: run agent programs for tasks, or list the installed programs."""

from __future__ import annotations

import json
import sys
from typing import Any

import click

from aiosd.sdk.errors import EXIT_CONFIG, EXIT_OK, AiosdError, ConfigError
from aiosd.sdk.process.options import fail, load, settings_options


@click.command()
@settings_options
@click.option("--list", "list_programs", is_flag=True, help="Print the installed programs (and broken ones) as JSON.")
@click.option("--capacity", "runner_capacity", type=int, help="Tasks run at once (env AIOSD_RUNNER_CAPACITY).")
@click.option("--task-call-timeout", type=float, help="Seconds a program's syscall may wait for its reply.")
@click.option("--task-lease-ttl", type=float, help="Seconds a task lease lives without a heartbeat (the scheduler's).")
@click.option("--shutdown-timeout", type=float, help="Seconds running tasks may take to finish on SIGTERM.")
@click.option("--connect-timeout", type=float, help="Seconds to wait for RabbitMQ at start.")
def runner(config_file: str | None, list_programs: bool, **overrides: Any) -> None:
    """Run the task runner: take queued tasks and run their agent programs under their agents' identities."""
    settings = load(config_file, **overrides)
    from aiosd.sdk.process.lifecycle import Lifecycle
    from aiosd.sdk.process.logs import configure_logging
    from aiosd.sdk.programs import load_programs

    configure_logging(settings.log_level, settings.log_format)  # on stderr
    programs, errors = load_programs()
    if list_programs:
        click.echo(json.dumps({"programs": sorted(programs), "errors": errors}, indent=2))
        sys.exit(EXIT_OK)
    lifecycle = Lifecycle()
    lifecycle.install_signal_handlers()
    try:
        from aiosd.workers.taskrunner import TaskRunner

        TaskRunner(settings, lifecycle, programs).run()
    except ConfigError as exc:
        click.echo(f"aiosd: {exc}", err=True)
        sys.exit(EXIT_CONFIG)
    except AiosdError as exc:
        fail(exc)
