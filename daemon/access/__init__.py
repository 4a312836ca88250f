"""Access control: the agents' directory, their policies, authorization at intake,
atomic counters for rates and quotas.

It may import :mod:`..audit` and below; deny by default.
"""
