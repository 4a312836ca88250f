"""LLM backends behind one small interface (:class:`~.base.Backend`).

- ``llamacpp``: llama-cpp-python in process with the bundled SmolLM2 GGUF (CPU default);
- ``openai``: any OpenAI-compatible server;
- ``sglang``: SGLang's native HTTP API, optionally launched and supervised by
  :mod:`.launcher`.

Backend modules import their heavy libraries lazily, so importing this
package costs nothing; :func:`create_backend` builds one by name.
"""

from __future__ import annotations

from typing import Any

from .base import Backend, BackendBadRequest

BACKENDS = ("llamacpp", "openai", "sglang")


def create_backend(kind: str, **options: Any) -> Backend:
    """The backend called ``kind``, built with its keyword ``options``."""
    if kind == "llamacpp":
        from .llamacpp import LlamaCppBackend

        return LlamaCppBackend(**options)
    if kind == "openai":
        from .openai import OpenAIBackend

        return OpenAIBackend(**options)
    if kind == "sglang":
        from .sglang import SGLangBackend

        return SGLangBackend(**options)
    raise BackendBadRequest(f"unknown backend {kind!r}; choose one of {', '.join(BACKENDS)}")
