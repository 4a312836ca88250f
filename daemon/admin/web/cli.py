"""The ``aiosd web`` command: serve the console with uvicorn, as a systemd notify service."""

from __future__ import annotations

import socket
import sys
from typing import Any

import click
from structlog.stdlib import BoundLogger

from aiosd.sdk.errors import EXIT_CONFIG
from aiosd.sdk.process.lifecycle import Lifecycle
from aiosd.sdk.process.logs import configure_logging, get_logger
from aiosd.sdk.process.options import load, settings_options
from aiosd.sdk.process.settings import Settings


@click.command()
@settings_options
@click.option("--host", "web_host", help="Address to bind (env AIOSD_WEB_HOST; default 127.0.0.1).")
@click.option("--port", "web_port", type=click.IntRange(0, 65535), help="Port (env AIOSD_WEB_PORT; 0: any free one).")
def web(config_file: str | None, **overrides: Any) -> None:
    """Run the web console: overview, batches, workers, agents, audit log, approvals."""
    settings = load(config_file, **overrides)
    configure_logging(settings.log_level, settings.log_format)
    if settings.web_password is None:
        click.echo("aiosd: set web_password (env AIOSD_WEB_PASSWORD) for the console's operator", err=True)
        sys.exit(EXIT_CONFIG)
    try:
        sock = bind(settings.web_host, settings.web_port)
    except OSError as exc:
        click.echo(f"aiosd: cannot listen on {settings.web_host}:{settings.web_port}: {exc}", err=True)
        sys.exit(EXIT_CONFIG)
    serve(settings, sock, Lifecycle(), get_logger("aiosd.web"))


def bind(host: str, port: int) -> socket.socket:
    """A socket bound to ``host:port`` before the server starts, so its real port is known (port 0)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    return sock


def serve(settings: Settings, sock: socket.socket, lifecycle: Lifecycle, log: BoundLogger) -> None:
    """Run uvicorn on ``sock`` until SIGTERM/SIGINT; tell systemd when it listens."""
    import uvicorn

    from aiosd.daemon.admin.web.app import create_app

    host, port = sock.getsockname()[:2]
    url = f"http://{host if ':' not in host else f'[{host}]'}:{port}/"

    class Server(uvicorn.Server):
        async def startup(self, sockets: list[socket.socket] | None = None) -> None:
            await super().startup(sockets=sockets)
            if self.started:
                log.info("web_ready", url=url, user=settings.web_user)
                lifecycle.ready(f"console at {url}")

    config = uvicorn.Config(
        create_app(settings, lifecycle),
        log_config=None,  # uvicorn's loggers go through ours (structlog, JSON to journald)
        access_log=False,
        server_header=False,
        timeout_graceful_shutdown=5,
    )
    Server(config).run(sockets=[sock])
