"""aiosd workers: processes that run leased LLM syscalls on a backend."""
