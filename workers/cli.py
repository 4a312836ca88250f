"""The ``aiosd worker`` command (implemented in the worker module)."""

from __future__ import annotations

import click


@click.command()
def worker() -> None:
    """Run an LLM worker."""
    raise click.ClickException("not implemented yet")
