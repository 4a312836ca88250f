"""The audit log: appending the hash chain (:mod:`.chain`) and reading and verifying
it (:mod:`.reader`).

It imports nothing of the daemon but :mod:`..store` and :mod:`..errors`.
"""
