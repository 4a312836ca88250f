"""The life of a syscall: intake (decode, validate, authorize), syscall records,
the kernel's syscall table, serving and replying, approvals that park a call,
and recovery of unfinished calls.

It may import :mod:`..services`, :mod:`..access`, :mod:`..audit` and
:mod:`..transport`; leased work is handed on through a protocol, not an import.
"""
