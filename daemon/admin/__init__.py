"""The ``aiosd`` command line and operator tooling: every command, agent administration
through RabbitMQ's management API, the audit and approvals commands, and the demo.

The top of the daemon: it may import every other room (it starts the scheduler
from :mod:`..runtime`) and :mod:`aiosd.workers` (the ``worker`` and ``tools``
commands); nothing imports it.
"""
