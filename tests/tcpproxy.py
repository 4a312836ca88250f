"""A TCP relay to a real server that a test can cut and mend: a store outage at a chosen moment."""

from __future__ import annotations

import socket
import threading
from types import TracebackType


class TcpProxy:
    """Relays 127.0.0.1:``port`` to ``target``; :meth:`cut` drops every connection and refuses new ones."""

    def __init__(self, host: str, port: int) -> None:
        self._target = (host, port)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._open = threading.Event()
        self._open.set()
        self._lock = threading.Lock()
        self._conns: set[socket.socket] = set()
        self._closed = False
        threading.Thread(target=self._accept, name="tcpproxy-accept", daemon=True).start()

    def url(self, scheme: str = "mongodb") -> str:
        """The proxy's address as a URL of ``scheme``."""
        return f"{scheme}://127.0.0.1:{self.port}/"

    def cut(self) -> None:
        """Drop every relayed connection; new ones are closed as soon as they are accepted."""
        self._open.clear()
        with self._lock:
            conns, self._conns = self._conns, set()
        for s in conns:
            _close(s)

    def mend(self) -> None:
        """Relay new connections again."""
        self._open.set()

    def close(self) -> None:
        """Stop listening and drop everything."""
        self._closed = True
        self.cut()
        _close(self._listener)

    def __enter__(self) -> TcpProxy:
        return self

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self.close()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            if not self._open.is_set():
                _close(client)
                continue
            try:
                upstream = socket.create_connection(self._target, timeout=5)
                upstream.settimeout(None)
            except OSError:
                _close(client)
                continue
            with self._lock:  # cut() clears _open before it takes the lock: a late connection is dropped
                if not self._open.is_set():
                    _close(client)
                    _close(upstream)
                    continue
                self._conns |= {client, upstream}
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(src, dst), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                _close(s)
            with self._lock:
                self._conns -= {src, dst}


def _close(s: socket.socket) -> None:
    try:
        s.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    s.close()
