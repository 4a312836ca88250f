"""Backend servers as real processes on 127.0.0.1, for tests that need to kill one.

:func:`llama_server` starts llama-cpp-python's OpenAI-compatible server with the
bundled SmolLM2 and its *default* settings (notably ``--interrupt_requests
True``); :func:`standin_server` and :func:`contract_server` run the test
stand-ins as processes. Each is a context manager that stops (by its pid)
only the process it started.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from aiosd.workers.backends.llamacpp import bundled_gguf

HERE = Path(__file__).parent


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Server:
    """A running server process and its base URL."""

    proc: subprocess.Popen[bytes]
    url: str

    def kill(self) -> None:
        """SIGKILL, as a crash would."""
        self.proc.kill()
        self.proc.wait(timeout=10)


@contextmanager
def _running(command: list[str], url: str, ready_path: str, timeout: float = 90.0) -> Iterator[Server]:
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{command[2]} did not start (exit code {proc.poll()})")
            try:
                if httpx.get(url + ready_path, timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        yield Server(proc, url)
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@contextmanager
def llama_server(*extra: str, n_threads: int = 1) -> Iterator[Server]:
    """``python -m llama_cpp.server`` with SmolLM2 and default settings (plus ``extra``)."""
    port = free_port()
    command = [
        sys.executable,
        "-m",
        "llama_cpp.server",
        "--model",
        str(bundled_gguf()),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--n_ctx",
        "2048",
        "--n_threads",
        str(n_threads),
        *extra,
    ]
    with _running(command, f"http://127.0.0.1:{port}", "/v1/models") as server:
        yield server


@contextmanager
def standin_server(*extra: str) -> Iterator[Server]:
    """The OpenAI stand-in (``openai_standin.py``) as a process."""
    port = free_port()
    command = [sys.executable, str(HERE / "openai_standin.py"), "--port", str(port), *extra]
    with _running(command, f"http://127.0.0.1:{port}", "/v1/models", timeout=20) as server:
        yield server


@contextmanager
def contract_server(model_dir: Path, *extra: str) -> Iterator[Server]:
    """The SGLang contract server (``sglang_contract.py``) as a process."""
    port = free_port()
    command = [
        sys.executable,
        str(HERE / "sglang_contract.py"),
        "--port",
        str(port),
        "--model-path",
        str(model_dir),
        *extra,
    ]
    with _running(command, f"http://127.0.0.1:{port}", "/health", timeout=20) as server:
        yield server
