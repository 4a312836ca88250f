"""Fixtures shared by the backend tests.

Tests are plain functions that drive coroutines with ``asyncio.run`` (no
pytest-asyncio needed); backends that hold a loaded model are module-scoped
and loop-agnostic.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))  # the contract server and the fake launcher live here

from sglang_contract import CHATML, ContractServer  # noqa: E402


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    """A Hugging Face-style model folder holding just a ChatML chat template."""
    config = {"chat_template": CHATML, "bos_token": None, "eos_token": {"content": "<|im_end|>"}}
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config), encoding="utf-8")
    return tmp_path


@pytest.fixture
def contract(model_dir: Path) -> Iterator[ContractServer]:
    """A running SGLang contract server whose first two health probes answer 503."""
    with ContractServer(str(model_dir), starting_requests=2) as server:
        yield server
