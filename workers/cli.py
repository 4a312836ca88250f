"""The ``aiosd worker`` command: run one LLM worker, or check one's health."""

from __future__ import annotations

import sys
from typing import Any

import click

from aiosd.sdk.errors import EXIT_CONFIG, EXIT_FAILURE, EXIT_OK, AiosdError, ConfigError
from aiosd.sdk.process.options import fail, load, settings_options


@click.command()
@settings_options
@click.option("--check", is_flag=True, help="Exit 0 if this worker's registration is fresh and healthy, else 1.")
@click.option("--worker-id", help="Stable id of this worker (env AIOSD_WORKER_ID; default <host>-<pid>).")
@click.option("--backend", type=click.Choice(["llamacpp", "openai", "sglang"]), help="LLM backend (env AIOSD_BACKEND).")
@click.option("--capacity", type=int, help="Calls run at once; 0 = backend default (llamacpp 1, openai 8, sglang 32).")
@click.option(
    "--model-path",
    help="llamacpp: GGUF file (default bundled SmolLM2); sglang: model to launch / chat template folder.",
)
@click.option("--backend-url", help="openai/sglang: URL of a running server.")
@click.option("--model-name", help="Model name to request (openai) or report (llamacpp).")
@click.option(
    "--backend-stream",
    type=click.Choice(["auto", "always", "never"]),
    help="openai/sglang: stream backend calls; auto (default) streams only time-sliced calls.",
)
@click.option("--heartbeat-interval", type=float, help="Seconds between heartbeats.")
@click.option("--shutdown-timeout", type=float, help="Seconds to finish in-flight calls on SIGTERM.")
@click.option("--connect-timeout", type=float, help="Seconds to wait for RabbitMQ and the backend at start.")
@click.option("--sglang-port", type=int, help="Port of a launched SGLang server.")
@click.option("--sglang-mem-fraction", type=float, help="Launched SGLang: --mem-fraction-static.")
@click.option("--sglang-max-running-requests", type=int, help="Launched SGLang: --max-running-requests.")
@click.option("--sglang-schedule-policy", help="Launched SGLang: --schedule-policy (lpm, fcfs, ...).")
@click.option("--sglang-arg", "sglang_args", multiple=True, help="Further launch_server argument (repeatable).")
def worker(config_file: str | None, check: bool, **overrides: Any) -> None:
    """Run an LLM worker: one per GPU, or one on a CPU with the embedded model."""
    if not overrides.get("sglang_args"):
        overrides["sglang_args"] = None  # no flag given: keep env/config
    else:
        overrides["sglang_args"] = list(overrides["sglang_args"])
    settings = load(config_file, **overrides)
    if check:
        _check(settings)
    from aiosd.sdk.process.lifecycle import Lifecycle
    from aiosd.sdk.process.logs import configure_logging

    from .worker import Worker

    configure_logging(settings.log_level, settings.log_format)
    lifecycle = Lifecycle()
    lifecycle.install_signal_handlers()
    try:
        Worker(settings, lifecycle).run()
    except ConfigError as exc:
        click.echo(f"aiosd: {exc}", err=True)
        sys.exit(EXIT_CONFIG)
    except AiosdError as exc:
        fail(exc)


def _check(settings: Any) -> None:
    from .check import check_worker

    ok, reason = check_worker(settings)
    click.echo(reason, err=not ok)
    sys.exit(EXIT_OK if ok else EXIT_FAILURE)
