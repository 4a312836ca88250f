"""aiosd daemon: the scheduler process, its kernel services and the CLI."""
