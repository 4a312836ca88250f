"""Leased work: syscalls served outside the scheduler (LLM calls by workers, tool calls
by tool runners) — the queue and lease book, the dispatcher, the fleet of workers,
routing between them, ordering policies and per-agent caps.

It may import :mod:`..pipeline` (records, and finishing a call), :mod:`..services`
(sessions), :mod:`..access` and below.
"""
