"""Shared fixtures: the tiny real checkpoints, built once per test run (ModelOpt on CPU, seconds)."""

from __future__ import annotations

import os
from collections.abc import Iterator
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


@pytest.fixture(scope="session")
def tiny_converted(tiny_root: Path, tiny_ckpt: Path) -> Path:
    """The multimodal tiny export converted to our TRT-LLM checkpoint (TP=1), once per run."""
    from trt_gemma4.convert import convert

    out = tiny_root / "tiny-converted"
    if not (out / "config.json").exists():
        convert(tiny_ckpt, out)
    return out


@pytest.fixture(scope="session")
def converted_tiny(tiny_root: Path, tiny_text_ckpt: Path) -> Path:
    """The tiny text-only export converted to our TRT-LLM checkpoint (TP=1), once per run."""
    from trt_gemma4.convert import convert

    out = tiny_root / "tiny-text-converted"
    if not (out / "config.json").exists():
        convert(tiny_text_ckpt, out)
    return out


@pytest.fixture(scope="module")
def single_torch_thread() -> Iterator[None]:
    """Many tiny ops: one intra-op thread avoids thread hand-off costs (large on a busy 2-core CI machine).
    Modules opt in with `pytestmark = pytest.mark.usefixtures("single_torch_thread")`."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
