"""Tasks: agent programs run by ``aiosd runner`` under their agent's identity, alone or in batches;
their store, the runners' leases, and the ``task.*``/``batch.*`` syscalls.
"""
