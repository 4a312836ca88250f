"""A simulated GPU serving engine for the bench: SGLang's scheduling and HTTP APIs, no GPU.

See ``README.md`` beside this file. Import it as ``bench.sim`` from the
repository root (``python -m bench.sim``, the tests) or as ``sim`` with
``bench/`` on ``sys.path`` (the bench scripts); the modules import each other
relatively, so both work.
"""

from __future__ import annotations

from .engine import Engine, EngineConfig, SimRequest
from .server import SimOptions, Simulator
from .serving import serve

__all__ = ["Engine", "EngineConfig", "SimOptions", "SimRequest", "Simulator", "serve"]
