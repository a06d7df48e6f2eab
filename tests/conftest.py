"""Shared fixtures: the tiny real checkpoints, built once per test run (ModelOpt on CPU, seconds)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiny_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where this run's tiny checkpoints live ($TRT_GEMMA4_TEST_CACHE to reuse them across runs locally)."""
    env = os.environ.get("TRT_GEMMA4_TEST_CACHE")
    return Path(env) if env else tmp_path_factory.mktemp("tiny")


def _variant(root: Path, name: str) -> Path:
    from trt_gemma4.testing.tiny import cached

    return cached(name, root)


@pytest.fixture(scope="session")
def tiny_ckpt(tiny_root: Path) -> Path:
    """Multimodal tiny export, config in the transformers >= 5.15 form."""
    return _variant(tiny_root, "tiny")


@pytest.fixture(scope="session")
def tiny_text_ckpt(tiny_root: Path) -> Path:
    return _variant(tiny_root, "tiny-text")


@pytest.fixture(scope="session")
def tiny_legacy_ckpt(tiny_root: Path) -> Path:
    """Multimodal tiny export with its config in the <= 5.14 / hub form (global_head_dim)."""
    return _variant(tiny_root, "tiny-legacy")


@pytest.fixture(scope="session")
def tiny_tp_ckpt(tiny_root: Path) -> Path:
    """Text-only tiny export whose sharded dimensions are multiples of 128*4."""
    return _variant(tiny_root, "tiny-tp")


@pytest.fixture(scope="session")
def tiny_drafter_ckpt(tiny_root: Path) -> Path:
    return _variant(tiny_root, "tiny-drafter")
