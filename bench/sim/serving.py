"""Run simulators as real HTTP servers (uvicorn) inside the current event loop.

``async with serve([sim, ...]) as urls:`` binds each simulator to 127.0.0.1
(consecutive ports from ``port``, or free ports when ``port`` is 0), waits until
every one answers, and stops them all on exit. Several simulators in one
process cost one Python interpreter instead of one each.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Generator, Sequence

import uvicorn

from .server import Simulator

HOST = "127.0.0.1"


class _Server(uvicorn.Server):
    """uvicorn without its signal handlers: whoever runs the loop decides when to stop."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


def _bind(port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((HOST, port))
    except OSError:
        sock.close()
        raise
    sock.set_inheritable(True)
    return sock


@contextlib.asynccontextmanager
async def serve(sims: Sequence[Simulator], port: int = 0, log_level: str = "warning") -> AsyncIterator[list[str]]:
    """Serve ``sims`` on 127.0.0.1; yields their base URLs."""
    sockets: list[socket.socket] = []
    servers: list[_Server] = []
    tasks: list[asyncio.Task[None]] = []
    try:
        for i, sim in enumerate(sims):
            sockets.append(_bind(port + i if port else 0))
            config = uvicorn.Config(sim.app, log_level=log_level, access_log=False, lifespan="on")
            servers.append(_Server(config))
        for server, sock in zip(servers, sockets, strict=True):
            tasks.append(asyncio.create_task(server.serve(sockets=[sock])))
        while not all(s.started for s in servers):
            failed = [t for t in tasks if t.done()]
            if failed:
                await failed[0]  # raises what stopped it
                raise RuntimeError("a simulator server stopped while starting")
            await asyncio.sleep(0.01)
        yield [f"http://{HOST}:{sock.getsockname()[1]}" for sock in sockets]
    finally:
        for server in servers:
            server.should_exit = True
        await asyncio.gather(*tasks, return_exceptions=True)
        for sock in sockets:
            sock.close()
