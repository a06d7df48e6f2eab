"""What TensorRT-LLM 1.2.1's builder does to context FMHA for our checkpoint, decided before the build.

Our checkpoint has `quant_algo: null` (block-FP8 weights are our own plugin, not a TRT-LLM quantization) and, by
default, `kv_cache_quant_algo: "FP8"`. For that combination `tensorrt_llm/builder.py` `build()` ("Logics to control
paged_context_fmha and fp8_context_fmha", read at commit 008b2b8d; research/trtllm.md §0.4) switches off FP8
context FMHA ("must be used together with the fp8 quantization workflow") and then paged context FMHA ("FP8 Paged
Context FMHA is disabled because FP8 context FMHA is disabled"), with only a log warning. This module makes that
decision explicit: the build sets the flags to exactly these values (so the builder has nothing left to switch)
and prints the consequences. Pure Python: the planner can use it where TensorRT-LLM is not installed.
"""

from __future__ import annotations

from dataclasses import dataclass

# builder.py: FP8 context FMHA (and with it paged context FMHA over an FP8 KV cache) needs one of these quant_algos.
FP8_FMHA_QUANT_ALGOS = ("FP8", "W4A8_AWQ", "NVFP4")
KV_CACHE_DTYPES = ("fp8", "bf16")


@dataclass(frozen=True)
class ContextFmhaChoice:
    """The context-FMHA flags an engine is built with, and what they mean for serving it."""

    kv_cache_dtype: str
    paged_context_fmha: bool
    fp8_context_fmha: bool
    consequences: tuple[str, ...]

    def lines(self) -> list[str]:
        """What the build prints."""
        head = (
            f"KV cache {self.kv_cache_dtype.upper()}: paged context FMHA "
            f"{'on' if self.paged_context_fmha else 'OFF'}, FP8 context FMHA "
            f"{'on' if self.fp8_context_fmha else 'off'}"
        )
        return [head] + [f"  - {c}" for c in self.consequences]


def context_fmha_choice(kv_cache_dtype: str, quant_algo: str | None = None) -> ContextFmhaChoice:
    """The flags TRT-LLM 1.2.1 ends up with for this KV dtype (our quant_algo is null), with their consequences."""
    if kv_cache_dtype not in KV_CACHE_DTYPES:
        raise ValueError(f"kv cache dtype {kv_cache_dtype!r}: expected one of {KV_CACHE_DTYPES}")
    fp8_fmha_allowed = quant_algo in FP8_FMHA_QUANT_ALGOS
    if kv_cache_dtype == "fp8" and not fp8_fmha_allowed:
        return ContextFmhaChoice(
            kv_cache_dtype,
            paged_context_fmha=False,
            fp8_context_fmha=False,
            consequences=(
                "TRT-LLM 1.2.1 builder.py turns paged context FMHA off for an FP8 KV cache on a model whose "
                "quant_algo is not FP8/W4A8_AWQ/NVFP4 (ours is null: block-FP8 weights are a plugin); the build "
                "sets it off itself so nothing changes silently",
                "no chunked context: a prompt must fit max_num_tokens in one step (enable_chunked_context off)",
                "no KV-cache block reuse (enable_kv_cache_reuse off)",
                "no draft-target speculative decoding (both engines need paged context FMHA)",
                "build with --kv-cache bf16 to keep those, at twice the KV bytes per token",
            ),
        )
    if kv_cache_dtype == "fp8":  # an FP8 quantization workflow (not ours): builder.py turns FP8 context FMHA on
        return ContextFmhaChoice(kv_cache_dtype, True, True, ("FP8 context FMHA on, as builder.py requires",))
    return ContextFmhaChoice(
        kv_cache_dtype,
        paged_context_fmha=True,
        fp8_context_fmha=False,
        consequences=(
            "chunked context and KV-cache block reuse available",
            "KV cache takes twice the bytes per token of FP8",
        ),
    )
