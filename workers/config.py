"""From :class:`~aiosd.sdk.process.settings.Settings` to what a worker runs.

:func:`worker_config` is the one place that turns the worker's settings into
a backend kind with its constructor options, a capacity, an id and, for a
worker that launches its own SGLang server, the launch options. Every
inconsistency is a :class:`~aiosd.sdk.errors.ConfigError` (exit 78), found
before anything is loaded or connected.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiosd.sdk.errors import ConfigError
from aiosd.sdk.process.settings import Settings

from .backends.launcher import SGLangLaunch

#: ``backend_stream`` as the HTTP backends' ``stream`` option (``None``: only sliced calls stream).
STREAM_OPTION: dict[str, bool | None] = {"auto": None, "always": True, "never": False}

#: Calls a worker runs at once when ``capacity`` is 0. One llama.cpp context
#: serialises its calls; HTTP servers batch, SGLang's continuous batching best.
DEFAULT_CAPACITY = {"llamacpp": 1, "openai": 8, "sglang": 32}


@dataclass(frozen=True)
class WorkerConfig:
    """Everything the worker process needs to know about itself and its backend."""

    worker_id: str
    host: str
    backend: str
    capacity: int
    options: dict[str, Any] = field(default_factory=dict)
    launch: SGLangLaunch | None = None


def default_worker_id(host: str | None = None, pid: int | None = None) -> str:
    """``<host>-<pid>``: unique on a host, but new at every start (systemd sets a stable one)."""
    return f"{host or socket.gethostname()}-{pid or os.getpid()}"


def worker_config(settings: Settings) -> WorkerConfig:
    """The worker's configuration; raise :class:`ConfigError` when settings disagree."""
    host = socket.gethostname()
    kind = settings.backend
    options, launch = _backend_options(settings)
    return WorkerConfig(
        worker_id=settings.worker_id or default_worker_id(host),
        host=host,
        backend=kind,
        capacity=settings.capacity or _default_capacity(settings),
        options=options,
        launch=launch,
    )


def _default_capacity(settings: Settings) -> int:
    # A launched SGLang admits at most --max-running-requests: more leases would only queue there.
    if settings.backend == "sglang" and settings.sglang_max_running_requests:
        return settings.sglang_max_running_requests
    return DEFAULT_CAPACITY[settings.backend]


def _backend_options(settings: Settings) -> tuple[dict[str, Any], SGLangLaunch | None]:
    if settings.backend == "llamacpp":
        if settings.model_path and not Path(settings.model_path).is_file():
            raise ConfigError(f"model_path {settings.model_path} is not a GGUF file")
        return {"model_path": settings.model_path, "model_name": settings.model_name}, None
    if settings.backend == "openai":
        if not settings.backend_url:
            raise ConfigError("the openai backend needs backend_url (--backend-url)")
        return {"url": settings.backend_url, "model": settings.model_name, **_stream(settings)}, None
    options, launch = _sglang_options(settings)
    return {**options, **_stream(settings)}, launch


def _stream(settings: Settings) -> dict[str, Any]:
    # Only a forced choice is passed on: the backends' default is auto.
    if settings.backend_stream == "auto":
        return {}
    return {"stream": STREAM_OPTION[settings.backend_stream]}


def _sglang_options(settings: Settings) -> tuple[dict[str, Any], SGLangLaunch | None]:
    """Connect to ``backend_url``, or launch ``model_path`` on this host's GPU.

    With both, the worker connects to the URL and reads the chat template
    from the local model folder ``model_path`` (a remote server's own path
    is usually not readable here).
    """
    template = settings.model_path if settings.model_path and Path(settings.model_path).is_dir() else None
    if settings.backend_url:
        return {"url": settings.backend_url, "chat_template": template}, None
    if not settings.model_path:
        raise ConfigError("the sglang backend needs backend_url (a running server) or model_path (to launch one)")
    launch = SGLangLaunch(
        model_path=settings.model_path,
        port=settings.sglang_port,
        mem_fraction_static=settings.sglang_mem_fraction,
        max_running_requests=settings.sglang_max_running_requests,
        schedule_policy=settings.sglang_schedule_policy,
        extra_args=tuple(settings.sglang_args),
    )
    return {"url": launch.url, "chat_template": template}, launch
