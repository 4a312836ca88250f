"""Process lifecycle: signals, systemd notifications and the watchdog."""

from __future__ import annotations

import os
import signal
import threading
import time
from types import FrameType

import sdnotify

from aiosd.sdk.process.logs import get_logger

log = get_logger(__name__)


class Lifecycle:
    """Turns SIGTERM/SIGINT into a stop request and talks sd_notify to systemd.

    Outside systemd (no ``NOTIFY_SOCKET``) the notifications are no-ops.
    """

    def __init__(self) -> None:
        self.stop_requested = threading.Event()
        self._notifier = sdnotify.SystemdNotifier() if os.environ.get("NOTIFY_SOCKET") else None
        usec = int(os.environ.get("WATCHDOG_USEC", "0") or 0)
        # Ping at half the watchdog interval, as sd_watchdog_enabled(3) advises.
        self._watchdog_every = usec / 2_000_000 if usec else 0.0
        self._last_ping = 0.0

    def install_signal_handlers(self) -> None:
        """Route SIGTERM and SIGINT to :meth:`request_stop` (main thread only)."""
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)

    def request_stop(self) -> None:
        """Ask the process to stop taking work and shut down."""
        self.stop_requested.set()

    def ready(self, status: str = "serving") -> None:
        """Tell systemd start-up is complete."""
        self._notify(f"READY=1\nSTATUS={status}")

    def stopping(self) -> None:
        """Tell systemd shutdown has begun."""
        self._notify("STOPPING=1\nSTATUS=stopping")

    def tick(self) -> None:
        """Ping the watchdog when due; call from the main loop."""
        if not self._watchdog_every:
            return
        now = time.monotonic()
        if now - self._last_ping >= self._watchdog_every:
            self._notify("WATCHDOG=1")
            self._last_ping = now

    def _notify(self, state: str) -> None:
        if self._notifier is not None:
            self._notifier.notify(state)

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        log.info("stop_requested", signal=signal.Signals(signum).name)
        self.request_stop()
