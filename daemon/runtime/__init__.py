"""The scheduler process: the composition root that builds the object graph, the main
loop that owns the AMQP connection, and the periodic jobs.

It may import every room below it (leasing, pipeline, services, access, audit,
transport); only :mod:`..admin` imports it.
"""
