"""Fixtures shared by every test module. Helper functions live in helpers.py (importable because
pytest puts this folder on sys.path)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from helpers import TOKENIZER_JSON


@pytest.fixture(scope="session", autouse=True)
def own_matvec_cache(tmp_path_factory):
    """matvec.py keeps its per-machine choices in $NEOX_MINI_CACHE: the tests (and the processes
    they start) use a folder of their own, never the user's ~/.cache."""
    os.environ["NEOX_MINI_CACHE"] = str(tmp_path_factory.mktemp("neox_mini_cache"))


@pytest.fixture(scope="session")
def tokenizer_json() -> Path:
    """The real GPT-NeoX-20B tokenizer.json, from ../shared next to the checkout (never a copy)."""
    if not TOKENIZER_JSON.is_file():
        pytest.skip(
            f"the GPT-NeoX-20B tokenizer is not at {TOKENIZER_JSON}: the tests that tokenize real "
            f"text need ../shared/tokenizer/gpt-neox-20b/tokenizer.json beside the checkout"
        )
    return TOKENIZER_JSON


@pytest.fixture(scope="session")
def tokenizer(tokenizer_json):
    from neox_mini import Tokenizer

    return Tokenizer(tokenizer_json)


@pytest.fixture
def offline_hub(tmp_path, monkeypatch) -> Path:
    """An empty Hugging Face cache in tmp_path/hub, offline, with the endpoint on a closed loopback
    port: nothing a test runs can reach the real Hub or the user's cache."""
    root = tmp_path / "hub"
    root.mkdir()
    monkeypatch.setenv("HF_HUB_CACHE", str(root))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    return root
