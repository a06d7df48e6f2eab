"""The engine plan: build limits, KV-cache pools and their memory on a given GPU, runtime settings, consequences.

One `Plan` is made before the engine build and travels with the engine (engines/<name>/plan.json); the Triton
packager fills the model repository from it (max_attention_window list, KV memory fraction, batch limits).

How the numbers are worked out (every figure is recomputed in tests/test_plan.py by hand):
  * weights: FP8 linear weights (1 byte each) + one fp32 scale per 128x128 block + bf16 norms, per TP rank (the
    global layer's single KV head is replicated on every rank), + the bf16 embedding; the tied LM head is a second
    bf16 copy unless the backend shares the embedding's weights with it (`lm_head_shares_embedding`);
  * activations: max_num_tokens x the live bf16 tensors of one decoder layer (residual, normed input, fused
    gate|up output, gelu output, widest q) + fp32 logits for max_batch_size rows, + a fixed runtime allowance
    (CUDA context, cuBLAS workspaces, TRT-LLM runtime buffers). These are estimates: TRT-LLM measures the free
    memory after loading the engine and logs the real block counts;
  * KV budget = kv_cache_free_gpu_mem_fraction x (GPU memory - weights - activations - allowance), as TRT-LLM
    sizes its cache from the free memory (research/trtllm.md §7.1 kv_cache_free_gpu_mem_fraction);
  * one pool group per attention window (TRT-LLM kvCacheManager.h: one WindowBlockManager per window, one pool per
    KV-head count inside it): sliding layers get a ring of `sliding_window` tokens, global layers the whole
    max_seq_len. The budget is shared between windows in proportion to window x cache bytes per token, as
    TRT-LLM's BlockManager::calculateWindowSizeToShare (cpp/tensorrt_llm/batch_manager/kvCacheManager.cpp) does;
  * bytes per token of a layer = 2 (K, V) x declared KV heads x head_size x dtype bytes, with the global layer's
    512-d head declared as 2 "heads" of 256 (DESIGN.md "KV cache"; spec.num_kv_heads_per_layer).

The KV-cache dtype decides more than memory: TRT-LLM 1.2's builder turns paged context FMHA off when the KV cache
is FP8 and the model is not FP8-QDQ (ours is not: quant_algo null), and without paged context FMHA there is no
chunked context (prompts are capped at max_num_tokens) and no KV-cache reuse (research/trtllm.md §0.4).
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trt_gemma4.errors import Gemma4Error
from trt_gemma4.spec import DrafterSpec, Gemma4Spec

GIB = 1 << 30
MIB = 1 << 20
BLOCK = 128  # FP8 weight block edge (one fp32 scale per 128x128 block)
RUNTIME_ALLOWANCE_BYTES = 2 * GIB  # CUDA context, cuBLAS/cuBLASLt workspaces, TRT-LLM runtime buffers (estimate)


@dataclass(frozen=True)
class GpuPreset:
    name: str
    memory_bytes: int
    source: str


# Total memory as nvidia-smi reports it (MiB).
GPU_PRESETS: dict[str, GpuPreset] = {
    "h100": GpuPreset("H100 80GB", 81_559 * MIB, "nvidia-smi total, H100 80GB HBM3 (SXM)"),
    "h200": GpuPreset("H200 141GB", 143_771 * MIB, "nvidia-smi total, H200 141GB HBM3e"),
}

KV_DTYPE_BYTES = {"fp8": 1, "bf16": 2}


@dataclass
class KvPool:
    """The KV pools of one attention window (TRT-LLM: one WindowBlockManager)."""

    kind: str  # "sliding ring" | "global"
    window: int  # tokens a sequence keeps in these layers (max_attention_window entry)
    layers: list[int]
    kv_heads_per_layer: int  # declared heads per layer on one rank (planes for a global layer)
    head_size: int
    bytes_per_token: int  # all layers of this window, K and V, one rank
    bytes_per_block: int
    share: float  # of the KV budget
    blocks: int
    blocks_per_full_sequence: int  # blocks one sequence at max_seq_len needs here
    max_full_sequences: int  # sequences at max_seq_len these blocks hold


@dataclass
class MemoryEstimate:
    gpu_memory_bytes: int
    linear_weight_bytes: int
    other_weight_bytes: int  # norms, layer scalars
    embedding_bytes: int
    lm_head_bytes: int  # 0 when the LM head shares the embedding's weights
    drafter_bytes: int
    activation_bytes: int
    runtime_allowance_bytes: int
    kv_budget_bytes: int

    @property
    def weight_bytes(self) -> int:
        return (
            self.linear_weight_bytes
            + self.other_weight_bytes
            + self.embedding_bytes
            + self.lm_head_bytes
            + self.drafter_bytes
        )


@dataclass
class Plan:
    """Everything the engine build and the runtime need to agree on, with the consequences spelled out."""

    model: str
    arch: str
    gpu: str
    tp: int
    max_batch_size: int
    max_num_tokens: int
    max_seq_len: int
    max_input_len: int
    max_position_embeddings: int  # = max_seq_len: RoPE tables sized to what can be served
    max_draft_len: int
    tokens_per_block: int
    kv_cache_dtype: str  # "fp8" | "bf16" (one dtype for every pool in TRT-LLM 1.2)
    paged_context_fmha_override: bool  # our build keeps paged context FMHA on with an FP8 cache (unverified)
    use_paged_context_fmha: bool
    enable_chunked_context: bool
    enable_kv_cache_reuse: bool
    kv_cache_free_gpu_mem_fraction: float
    lm_head_shares_embedding: bool
    max_attention_window: list[int]  # per layer, the runtime setting
    num_kv_heads_per_layer: list[int]  # as declared in the checkpoint config (before TP division)
    memory: MemoryEstimate
    pools: list[KvPool]
    consequences: list[str] = field(default_factory=list)

    # ---- (de)serialization ----------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["memory"]["weight_bytes"] = self.memory.weight_bytes
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Plan:
        d = dict(d)
        mem = dict(d.pop("memory"))
        mem.pop("weight_bytes", None)
        pools = [KvPool(**p) for p in d.pop("pools")]
        return cls(memory=MemoryEstimate(**mem), pools=pools, **d)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> Plan:
        try:
            return cls.from_dict(json.loads(Path(path).read_text()))
        except (OSError, json.JSONDecodeError, TypeError, KeyError) as e:
            raise Gemma4Error(f"{path}: not a trt-gemma4 plan ({e})") from None

    # ---- reading ------------------------------------------------------------------------------------------
    def window_csv(self) -> str:
        """max_attention_window as Triton's tensorrt_llm config takes it (comma-separated)."""
        return ",".join(str(w) for w in self.max_attention_window)

    def summary(self) -> str:
        m = self.memory
        lines = [
            f"plan for {self.model} on {self.gpu} ({self.arch}, tp={self.tp}): max_batch_size {self.max_batch_size}, "
            f"max_num_tokens {self.max_num_tokens}, max_seq_len {self.max_seq_len}, max_input_len "
            f"{self.max_input_len}, KV cache {self.kv_cache_dtype}, tokens_per_block {self.tokens_per_block}",
            f"  memory per GPU: {_gib(m.gpu_memory_bytes)} = weights {_gib(m.weight_bytes)} (linear "
            f"{_gib(m.linear_weight_bytes)}, embedding {_gib(m.embedding_bytes)}, LM head {_gib(m.lm_head_bytes)}"
            + (f", drafter {_gib(m.drafter_bytes)}" if m.drafter_bytes else "")
            + f") + activations {_gib(m.activation_bytes)} + runtime {_gib(m.runtime_allowance_bytes)} + free; "
            f"KV cache {_gib(m.kv_budget_bytes)} ({self.kv_cache_free_gpu_mem_fraction:.0%} of free)",
        ]
        for p in self.pools:
            lines.append(
                f"  {p.kind} pool: {len(p.layers)} layers, window {p.window}, {p.bytes_per_token} B/token, "
                f"{p.share:.1%} of the KV budget = {p.blocks} blocks of {p.bytes_per_block // 1024} KiB "
                f"-> {p.max_full_sequences} sequences at max_seq_len"
            )
        lines.append(f"  max_attention_window: {self.window_csv()}")
        lines += [f"  - {c}" for c in self.consequences]
        return "\n".join(lines)


def _gib(n: int) -> str:
    return f"{n / GIB:.2f} GiB"


def _blocks(n: int, k: int) -> int:
    return math.ceil(n / BLOCK) * math.ceil(k / BLOCK)


def _linear_bytes(n: int, k: int) -> int:
    """FP8 weight [n, k] + its fp32 block scales."""
    return n * k + 4 * _blocks(n, k)


def weight_bytes(spec: Gemma4Spec, tp: int = 1) -> tuple[int, int]:
    """(linear weights with scales, norms and layer scalars) of one TP rank, in bytes."""
    H, I = spec.hidden_size, spec.intermediate_size
    linear = other = 0
    for i in spec.layer_range:
        q, kv = spec.q_size(i) // tp, spec.kv_size(i)
        kv_rank = kv if spec.is_global(i) else kv // tp  # the global KV head is replicated on every rank
        linear += _linear_bytes(q, H) + _linear_bytes(kv_rank, H)
        if spec.has_v_proj(i):
            linear += _linear_bytes(kv_rank, H)
        linear += _linear_bytes(H, q)  # o_proj, split on its input columns
        linear += _linear_bytes(2 * I // tp, H) + _linear_bytes(H, I // tp)  # gate|up, down
        other += 2 * (4 * H + 2 * spec.head_dim(i) + 1)  # four norms, q/k norm, layer_scalar (bf16)
    other += 2 * H  # final norm
    return linear, other


def drafter_bytes(drafter: DrafterSpec, backbone_hidden: int) -> int:
    """The BF16 assistant drafter: pre/post projections, q-only layers, its own tied LM head."""
    h, inter = drafter.hidden_size, drafter.intermediate_size
    n = 2 * backbone_hidden * h + h * backbone_hidden  # pre_projection [h, 2B], post_projection [B, h]
    for i in range(drafter.num_layers):
        q = drafter.q_size(i)
        n += q * h + h * q + 3 * h * inter + 4 * h + drafter.head_dim(i) + 1
    n += drafter.vocab_size * h + h  # LM head (tied to its own embedding) + final norm
    return 2 * n


def activation_bytes(spec: Gemma4Spec, max_num_tokens: int, max_batch_size: int, tp: int = 1) -> int:
    """Estimate: the live bf16 tensors of one decoder layer per token, and fp32 logits of the batch."""
    H, I = spec.hidden_size, spec.intermediate_size
    widest_q = max(spec.q_size(i) for i in spec.layer_range) // tp
    per_token = 2 * (2 * H + 3 * I // tp + widest_q)
    return max_num_tokens * per_token + max_batch_size * spec.vocab_size * 4


def window_list(spec: Gemma4Spec, max_seq_len: int) -> list[int]:
    """Runtime max_attention_window per layer: the ring on sliding layers, the whole sequence on global ones."""
    return [max_seq_len if spec.is_global(i) else min(spec.sliding_window, max_seq_len) for i in spec.layer_range]


def make_plan(
    spec: Gemma4Spec,
    *,
    model: str,
    arch: str,
    gpu: str | None = "h100",
    gpu_memory_gb: float | None = None,
    tp: int = 1,
    max_batch_size: int = 64,
    max_num_tokens: int = 8192,
    max_seq_len: int = 32768,
    max_input_len: int | None = None,
    max_draft_len: int = 0,
    with_drafter: bool = False,
    tokens_per_block: int = 32,
    kv_cache_dtype: str = "fp8",
    paged_context_fmha_override: bool = False,
    kv_cache_free_gpu_mem_fraction: float = 0.9,
    lm_head_shares_embedding: bool = False,
) -> Plan:
    """Work out the plan. gpu_memory_gb (GiB, 2^30 bytes, as nvidia-smi's MiB / 1024) overrides the gpu preset."""
    if gpu_memory_gb is not None:
        if gpu_memory_gb <= 0:
            raise Gemma4Error(f"--gpu-memory-gb must be positive, found {gpu_memory_gb}")
        gpu_name, total = f"{gpu_memory_gb:g} GiB GPU", int(gpu_memory_gb * GIB)
    elif gpu in GPU_PRESETS:
        gpu_name, total = GPU_PRESETS[gpu].name, GPU_PRESETS[gpu].memory_bytes
    else:
        raise Gemma4Error(f"GPU preset {gpu!r}: expected one of {sorted(GPU_PRESETS)} or --gpu-memory-gb")
    if kv_cache_dtype not in KV_DTYPE_BYTES:
        raise Gemma4Error(f"KV cache dtype {kv_cache_dtype!r}: expected one of {sorted(KV_DTYPE_BYTES)}")
    if not 0 < kv_cache_free_gpu_mem_fraction <= 1:
        raise Gemma4Error(f"KV memory fraction must be in (0, 1], found {kv_cache_free_gpu_mem_fraction}")
    if tokens_per_block <= 0 or tokens_per_block & (tokens_per_block - 1):
        raise Gemma4Error(f"tokens_per_block must be a power of two (TRT-LLM KVBlockArray), found {tokens_per_block}")
    for name, v in (
        ("max_batch_size", max_batch_size),
        ("max_num_tokens", max_num_tokens),
        ("max_seq_len", max_seq_len),
        ("tp", tp),
    ):
        if v <= 0:
            raise Gemma4Error(f"{name} must be positive, found {v}")
    if max_seq_len > spec.max_position_embeddings:
        raise Gemma4Error(
            f"max_seq_len {max_seq_len} exceeds the model's max_position_embeddings {spec.max_position_embeddings}"
        )
    if max_draft_len and not with_drafter:
        raise Gemma4Error("max_draft_len > 0 needs the drafter (--drafter)")

    paged_fmha = kv_cache_dtype != "fp8" or paged_context_fmha_override
    if max_input_len is None:
        max_input_len = max_seq_len - 1 if paged_fmha else min(max_seq_len - 1, max_num_tokens)
    if not paged_fmha and max_input_len > max_num_tokens:
        raise Gemma4Error(
            f"max_input_len {max_input_len} > max_num_tokens {max_num_tokens}: with an FP8 KV cache TRT-LLM 1.2 turns "
            "paged context FMHA off, so a prompt must fit one step (raise max_num_tokens, use --kv-cache-dtype bf16, "
            "or --paged-context-fmha-override)"
        )
    if max_input_len >= max_seq_len:
        raise Gemma4Error(f"max_input_len {max_input_len} must be below max_seq_len {max_seq_len}")

    # ---- memory ----
    linear, other = weight_bytes(spec, tp)
    embedding = spec.vocab_size * spec.hidden_size * 2
    lm_head = 0 if lm_head_shares_embedding else embedding
    draft = drafter_bytes(spec.drafter, spec.hidden_size) if with_drafter and spec.drafter else 0
    if with_drafter and spec.drafter is None:
        raise Gemma4Error("the plan asks for the drafter, but the model spec has none (pass the drafter checkpoint)")
    act = activation_bytes(spec, max_num_tokens, max_batch_size, tp)
    used = linear + other + embedding + lm_head + draft + act + RUNTIME_ALLOWANCE_BYTES
    if used >= total:
        raise Gemma4Error(
            f"the model needs about {_gib(used)} before any KV cache, more than the {_gib(total)} of {gpu_name} "
            f"(weights {_gib(linear + other + embedding + lm_head + draft)}, activations {_gib(act)}); "
            "lower max_num_tokens / max_batch_size or use tp > 1"
        )
    budget = int(kv_cache_free_gpu_mem_fraction * (total - used))
    memory = MemoryEstimate(total, linear, other, embedding, lm_head, draft, act, RUNTIME_ALLOWANCE_BYTES, budget)

    # ---- pools ----
    windows = window_list(spec, max_seq_len)
    heads = spec.num_kv_heads_per_layer(tp)
    elem = KV_DTYPE_BYTES[kv_cache_dtype]
    groups: dict[int, list[int]] = {}
    for i, w in enumerate(windows):
        groups.setdefault(w, []).append(i)
    per_token = {
        w: sum(2 * math.ceil(heads[i] / tp) * spec.kv_head_size * elem for i in layers) for w, layers in groups.items()
    }
    weight = {w: w * per_token[w] for w in groups}
    total_weight = sum(weight.values())
    pools = []
    for w in sorted(groups):
        layers = groups[w]
        share = weight[w] / total_weight
        block_bytes = tokens_per_block * per_token[w]
        blocks = int(share * budget) // block_bytes
        need = math.ceil(w / tokens_per_block)
        pools.append(
            KvPool(
                kind=_pool_kind(spec, layers),
                window=w,
                layers=layers,
                kv_heads_per_layer=math.ceil(heads[layers[0]] / tp),
                head_size=spec.kv_head_size,
                bytes_per_token=per_token[w],
                bytes_per_block=block_bytes,
                share=share,
                blocks=blocks,
                blocks_per_full_sequence=need,
                max_full_sequences=blocks // need,
            )
        )

    plan = Plan(
        model=model,
        arch=arch,
        gpu=gpu_name,
        tp=tp,
        max_batch_size=max_batch_size,
        max_num_tokens=max_num_tokens,
        max_seq_len=max_seq_len,
        max_input_len=max_input_len,
        max_position_embeddings=max_seq_len,
        max_draft_len=max_draft_len,
        tokens_per_block=tokens_per_block,
        kv_cache_dtype=kv_cache_dtype,
        paged_context_fmha_override=paged_context_fmha_override,
        use_paged_context_fmha=paged_fmha,
        enable_chunked_context=paged_fmha,
        enable_kv_cache_reuse=paged_fmha,
        kv_cache_free_gpu_mem_fraction=kv_cache_free_gpu_mem_fraction,
        lm_head_shares_embedding=lm_head_shares_embedding,
        max_attention_window=windows,
        num_kv_heads_per_layer=heads,
        memory=memory,
        pools=pools,
    )
    plan.consequences = consequences(plan)
    return plan


def _pool_kind(spec: Gemma4Spec, layers: list[int]) -> str:
    kinds = {spec.is_global(i) for i in layers}
    if kinds == {True}:
        return "global"
    return "sliding ring" if kinds == {False} else "sliding and global (max_seq_len <= sliding window)"


def consequences(plan: Plan) -> list[str]:
    """What each choice means for serving, in words."""
    out: list[str] = []
    if plan.kv_cache_dtype == "fp8" and not plan.paged_context_fmha_override:
        out.append(
            "FP8 KV cache on a model that is not FP8-QDQ: TRT-LLM 1.2's builder turns paged context FMHA off "
            f"(builder.py build()), so prompts are capped at max_num_tokens ({plan.max_num_tokens}; max_input_len "
            f"{plan.max_input_len}), there is no chunked context and no KV-cache reuse. Alternatives: "
            "--kv-cache-dtype bf16 (TRT-LLM 1.2 has one KV dtype for every pool, so the sliding layers' BF16 cache "
            "means BF16 everywhere: twice the KV memory, our global plugin reads either), or "
            "--paged-context-fmha-override (our build keeps paged context FMHA with FP8 KV; unverified on a GPU)."
        )
    elif plan.kv_cache_dtype == "fp8":
        out.append(
            "FP8 KV cache with paged context FMHA kept on by our build (override of TRT-LLM 1.2's builder rule): "
            "chunked context and KV reuse are enabled, but whether stock gpt_attention accepts FP8 KV with BF16 "
            "paged context FMHA is unverified on a GPU (research/trtllm.md §0.4 option b)."
        )
    else:
        out.append(
            "BF16 KV cache: paged context FMHA, chunked context and KV-cache reuse stay on; the cache takes twice "
            "the memory of FP8 (the block counts above already use 2 bytes per element)."
        )
    out.append(
        f"max_position_embeddings is set to max_seq_len ({plan.max_seq_len}) so the RoPE tables cover exactly what "
        "the engine can serve; serving longer sequences needs a rebuild."
    )
    sliding = [p for p in plan.pools if p.kind == "sliding ring"]
    glob = [p for p in plan.pools if p.kind == "global"]
    if sliding and glob:
        full = min(p.max_full_sequences for p in plan.pools)
        out.append(
            f"Sliding layers keep a ring of {sliding[0].window} tokens per sequence whatever its length; global "
            f"layers keep all {plan.max_seq_len}. About {full} sequences at max_seq_len fit at once"
            + (
                f" (fewer than max_batch_size {plan.max_batch_size}: the scheduler waits for blocks)"
                if full < plan.max_batch_size
                else ""
            )
            + "."
        )
    if plan.lm_head_shares_embedding:
        out.append("The LM head reads the embedding's weights: one bf16 copy of the vocabulary matrix.")
    else:
        out.append(
            f"The tied LM head is a second bf16 copy of the embedding ({_gib(plan.memory.lm_head_bytes)} per GPU) "
            "unless the TRT-LLM backend shares the embedding's weights with it."
        )
    if plan.max_draft_len:
        out.append(
            f"Speculative decoding with up to {plan.max_draft_len} drafts: verification writes max_draft_len + 1 "
            "entries into the sliding ring per step; the ring is the window, so entries still needed by rejected "
            "drafts must not be overwritten (DESIGN.md 'Drafter')."
        )
    if plan.tp > 1:
        out.append(
            f"TP={plan.tp}: every rank keeps the whole global KV head (declared {plan.num_kv_heads_per_layer[-1]} "
            "heads so that the runtime's division by tp leaves 2 planes per rank)."
        )
    return out


# ---- presets and inputs ------------------------------------------------------------------------------------------

ARCHES = ("sm_90", "sm_100", "sm_120")
# Preset keys that are make_plan arguments (the rest describe the preset).
_PLAN_KEYS = (
    "gpu",
    "gpu_memory_gb",
    "tp",
    "max_batch_size",
    "max_num_tokens",
    "max_seq_len",
    "tokens_per_block",
    "kv_cache_dtype",
    "kv_cache_free_gpu_mem_fraction",
)


def presets_dir() -> Path:
    """engines/presets of the source tree ($TRT_GEMMA4_PRESETS overrides)."""
    import os

    env = os.environ.get("TRT_GEMMA4_PRESETS")
    return Path(env) if env else Path(__file__).resolve().parents[1] / "engines" / "presets"


def load_preset(arch: str) -> dict[str, Any]:
    """The tracked preset engines/presets/<arch>.json."""
    if arch not in ARCHES:
        raise Gemma4Error(f"--arch {arch!r}: expected one of {', '.join(ARCHES)}")
    path = presets_dir() / f"{arch}.json"
    try:
        preset = json.loads(path.read_text())
    except FileNotFoundError:
        raise Gemma4Error(
            f"{path}: preset not found (set TRT_GEMMA4_PRESETS to the engines/presets directory)"
        ) from None
    except json.JSONDecodeError as e:
        raise Gemma4Error(f"{path}: invalid JSON ({e.msg} at line {e.lineno})") from None
    if preset.get("arch") != arch:
        raise Gemma4Error(f"{path}: expected arch {arch!r}, found {preset.get('arch')!r}")
    return preset


def plan_arguments(preset: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """make_plan keyword arguments: the preset's, then every override that is not None."""
    kwargs = {k: preset[k] for k in _PLAN_KEYS if k in preset}
    kwargs.update({k: v for k, v in overrides.items() if v is not None})
    if overrides.get("gpu") is not None and overrides.get("gpu_memory_gb") is None:
        kwargs["gpu_memory_gb"] = None  # an explicit --gpu wins over the preset's memory figure
    return kwargs


def spec_for_checkpoint(path: str | Path) -> Gemma4Spec:
    """Spec of a ModelOpt export (HF config) or of a converted TRT-LLM checkpoint (our `gemma4.spec` key)."""
    from trt_gemma4.spec import load_json, spec_from_config

    p = Path(path) / "config.json"
    cfg = load_json(p)
    if isinstance(cfg.get("gemma4"), dict) and "spec" in cfg["gemma4"]:
        return Gemma4Spec.from_dict(cfg["gemma4"]["spec"])
    return spec_from_config(cfg, str(p))
