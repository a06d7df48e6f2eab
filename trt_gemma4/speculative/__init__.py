"""Speculative decoding with the assistant drafter (frozen-KV MTP).

graph.py (the drafter forward on the op interface) · torch_drafter.py (it in eager torch beside the torch backend)
· decoding.py (draft, verify, accept, roll back) · verify.py (`verify --speculative`) · engine.py (the settings of
the drafter inside the TRT-LLM engine; docs/speculative_engine.md).
"""

from __future__ import annotations

from typing import Any


def check_speculative(*args: Any, **kwargs: Any) -> dict[str, Any]:
    """`trt_gemma4.speculative.verify.check_speculative` (imported on use: it needs the torch backend)."""
    from trt_gemma4.speculative.verify import check_speculative as check

    return check(*args, **kwargs)
