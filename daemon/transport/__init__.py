"""The scheduler's AMQP side: the connection owned by one thread, deliveries and how
they are settled, replies, leases and dead letters.

It imports nothing of the daemon but :mod:`..errors`.
"""
