"""The kernel services the scheduler runs itself (database work): memory, storage,
sessions and the scheduler's side of tools, one subpackage or module each.

A service knows the call it serves (:mod:`.context`) and may import
:mod:`..access` (policies, counters) and below; never the pipeline.
"""
