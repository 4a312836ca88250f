"""The scheduling bench of issue 13: agent programs on four simulated GPUs, with and without aiosd.

``python -m bench.sched`` runs the whole comparison (see ``__main__.py``);
``python -m bench.sched.micro`` measures the dispatcher's CPU per call in process.
"""
