"""Command-line plumbing shared by every ``aiosd`` command: settings options and exits."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any, NoReturn, TypeVar

import click

from aiosd.sdk.errors import EXIT_CONFIG, EXIT_FAILURE, EXIT_UNAVAILABLE, AiosdError, ConfigError, ServiceUnavailable
from aiosd.sdk.process.settings import Settings, load_settings

F = TypeVar("F", bound=Callable[..., Any])


def settings_options(fn: F) -> F:
    """Options shared by every command that needs settings; they override env and file."""
    for option in reversed(
        [
            click.option(
                "--config",
                "config_file",
                type=click.Path(dir_okay=False),
                help="TOML settings file (env AIOSD_CONFIG).",
            ),
            click.option("--amqp-url", help="RabbitMQ URL (env AIOSD_AMQP_URL)."),
            click.option("--mongo-url", help="MongoDB URL (env AIOSD_MONGO_URL)."),
            click.option("--mongo-db", help="MongoDB database (env AIOSD_MONGO_DB)."),
            click.option("--log-level", type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False)),
            click.option("--log-format", type=click.Choice(["auto", "json", "console"])),
        ]
    ):
        fn = option(fn)
    return fn


def load(config_file: str | None, **overrides: Any) -> Settings:
    """Settings from the command's options; exit 78 with a message when invalid."""
    if overrides.get("log_level"):
        overrides["log_level"] = overrides["log_level"].upper()
    try:
        return load_settings(config_file, **overrides)
    except ConfigError as exc:
        click.echo(f"aiosd: {exc}", err=True)
        sys.exit(EXIT_CONFIG)


def fail(exc: AiosdError) -> NoReturn:
    """Report ``exc`` and exit: 69 when a service is unreachable, else 1."""
    click.echo(f"aiosd: {exc}", err=True)
    sys.exit(EXIT_UNAVAILABLE if isinstance(exc, ServiceUnavailable) else EXIT_FAILURE)
