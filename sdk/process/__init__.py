"""What every aiosd process shares (scheduler, worker, tool runner, CLI): the settings
object, logging, the systemd lifecycle and the command-line plumbing.

Agents never import it; it needs the ``daemon`` or ``worker`` extra
(pydantic-settings, structlog, click, sdnotify). Like all of :mod:`aiosd.sdk`
it imports nothing of the daemon or the workers.
"""
