"""aiosd daemon: the scheduler process, its kernel services and the ``aiosd`` command line.

Each subpackage is one room of the kernel; the layers, from the top, are
``admin`` > ``runtime`` > ``leasing`` > ``pipeline`` > ``services`` >
``access`` > ``audit`` | ``transport``, over :mod:`.store` and :mod:`.errors`.
A room imports only from rooms below it and from :mod:`aiosd.sdk`; the
import-linter contracts in ``setup.cfg`` keep it so.
"""
