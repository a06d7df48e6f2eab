"""HF transformers as the reference for the torch backend, holding the SAME dequantized weights.

The HF model is built from the spec (spec.hf_config_dict), never from a checkpoint's own config, and its weights
are our checkpoint's block-FP8 tensors dequantized (and un-sharded: TP ranks concatenated) to the compute dtype,
so any difference is in the forward, not in the weights. Two ways to compare:
  * `compare_model`: the whole model at once (tiny models; anything that fits in memory twice);
  * `compare_layers`: layer by layer, streaming weights, at most one HF layer and the torch backend's current
    layer in memory: hidden states after each layer, then the head (the 12B on a 24 GB machine).
Needs transformers >= 5.10.1 (the 'tiny' extra).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from trt_gemma4.backends.torch_backend import TorchBackend
from trt_gemma4.backends.weights import WeightSource, dequantize_blocks, iter_linear_names
from trt_gemma4.checkpoint.names import LAYER_TENSORS, SCALE_SUFFIX, Linear, fused_segments, trt_layer
from trt_gemma4.errors import MissingToolError
from trt_gemma4.graph import gemma4
from trt_gemma4.spec import Gemma4Spec, hf_config_dict


def require_transformers() -> Any:
    """The transformers module, or a MissingToolError saying how to get it."""
    try:
        import transformers
    except ImportError:
        raise MissingToolError(
            "comparing against HF transformers needs the 'tiny' extra (transformers >= 5.10.1 with "
            "gemma4_unified): pip install 'trt-gemma4[tiny]'"
        ) from None
    if tuple(int(x) for x in transformers.__version__.split(".")[:2]) < (5, 10):
        raise MissingToolError(
            f"gemma4_unified needs transformers >= 5.10.1, found {transformers.__version__}: "
            "pip install 'trt-gemma4[tiny]'"
        )
    return transformers


def hf_text_config(spec: Gemma4Spec) -> Any:
    """Gemma4UnifiedTextConfig of the spec, eager attention (fp32 softmax, explicit masks)."""
    transformers = require_transformers()
    d = hf_config_dict(spec)
    d.pop("model_type")
    cfg = transformers.Gemma4UnifiedTextConfig(**d)
    cfg._attn_implementation = "eager"
    return cfg


# ---- our weights in HF names ----------------------------------------------------------------------------------


def linear_sizes(spec: Gemma4Spec, layer: int, lin: Linear) -> list[int]:
    """Component sizes of a fused linear, as the graph passes them."""
    if lin.trt_name == "attention.qkv":
        return gemma4.qkv_sizes(spec, layer)
    if lin.trt_name == "mlp.fc":
        return [spec.intermediate_size, spec.intermediate_size]
    return [spec.hidden_size]


def dequantized_components(
    src: WeightSource, spec: Gemma4Spec, layer: int, name: str, lin: Linear, dtype: torch.dtype
) -> list[torch.Tensor]:
    """The whole-model weight [n, K] of each component of a fused linear, ranks put back together."""
    sizes = linear_sizes(spec, layer, lin)
    deq = [
        dequantize_blocks(src.get(name + ".weight", r), src.get(f"{name}.{SCALE_SUFFIX}", r), dtype)
        for r in range(src.tp)
    ]
    if lin.tp_dim == 1:  # row parallel: input columns split
        return [torch.cat(deq, dim=1)]
    replicated = [p in lin.replicated for p in lin.hf_parts]
    rank_sizes = sizes if src.tp == 1 else [n if rep else n // src.tp for n, rep in zip(sizes, replicated)]
    out = []
    for c, (off, n) in enumerate(fused_segments(rank_sizes)):
        ranks = deq[:1] if replicated[c] else deq
        out.append(torch.cat([w[off : off + n] for w in ranks], dim=0))
    return out


def hf_layer_state(src: WeightSource, spec: Gemma4Spec, layer: int, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """One decoder layer's state dict in HF names (relative to the layer)."""
    sd = {hf: src.get(trt_layer(layer, trt)).to(dtype) for trt, hf in LAYER_TENSORS.items()}
    for name, lin in iter_linear_names(spec, layer):
        for part, w in zip(lin.hf_parts, dequantized_components(src, spec, layer, name, lin, dtype)):
            sd[part + ".weight"] = w
    return sd


def align_rope_tables(rotary: Any, spec: Gemma4Spec) -> None:
    """Give HF's rotary module the spec's inverse frequencies, in fp32 whatever the model dtype (HF computes them
    in fp32 and keeps them so when it loads a bf16 model). The spec's are computed in float64 and rounded to fp32,
    as TRT-LLM builds its tables; HF's fp32 computation lands up to 1 ulp away. The attention logits are large
    (scale 1.0 on normed q, k), so that ulp alone moves the tiny model's logits by ~6e-5 relative: aligning the
    tables keeps the comparison about the forward. A real RoPE difference (not rounding) raises."""
    for kind, layers in (("sliding_attention", spec.sliding_layers), ("full_attention", spec.global_layers)):
        if not layers:
            continue
        ours = torch.tensor(spec.rope(layers[0]).inv_freq(), dtype=torch.float32)
        theirs = getattr(rotary, f"{kind}_inv_freq")
        rtol = 1e-6 if theirs.dtype == torch.float32 else 1e-2
        if theirs.shape != ours.shape or not torch.allclose(theirs.float().cpu(), ours, rtol=rtol, atol=0):
            raise RuntimeError(f"{kind}: HF's RoPE inverse frequencies differ from the spec's beyond rounding")
        for name in (f"{kind}_inv_freq", f"{kind}_original_inv_freq"):
            rotary.register_buffer(name, ours.clone().to(theirs.device), persistent=False)


def build_hf_model(src: WeightSource, dtype: torch.dtype = torch.float32) -> Any:
    """Gemma4UnifiedForCausalLM with our dequantized weights (the whole model in memory)."""
    transformers = require_transformers()
    spec = src.spec
    model = transformers.Gemma4UnifiedForCausalLM(hf_text_config(spec)).to(dtype).eval()
    sd = {
        "model.embed_tokens.weight": src.get(gemma4.EMBEDDING).to(dtype),
        "model.norm.weight": src.get(gemma4.FINAL_NORM).to(dtype),
    }
    for i in spec.layer_range:
        sd.update({f"model.layers.{i}.{k}": v for k, v in hf_layer_state(src, spec, i, dtype).items()})
    missing, unexpected = model.load_state_dict(sd, strict=False)
    missing = [k for k in missing if k != "lm_head.weight"]
    if missing or unexpected:
        raise RuntimeError(f"HF reference weights do not line up: missing {missing[:5]}, unexpected {unexpected[:5]}")
    model.tie_weights()
    align_rope_tables(model.model.rotary_emb, spec)
    return model


# ---- reports --------------------------------------------------------------------------------------------------


@dataclass
class ParityReport:
    """max|Δlogit| / max|logit| over all prompts and positions; greedy continuation agreement."""

    rel_logit_error: float = 0.0
    max_abs_logit_error: float = 0.0
    argmax_agreement: float = 1.0  # over every position of every prompt
    greedy_tokens_equal: int = 0
    greedy_tokens_total: int = 0
    layer_rel_errors: list[float] = field(default_factory=list)  # layer mode: max|Δh| / max|h| after each layer
    hf_low_precision_rel_error: float | None = None  # HF itself in the backend's (lower) dtype vs the reference

    def to_dict(self) -> dict[str, Any]:
        return {
            "rel_logit_error": self.rel_logit_error,
            "max_abs_logit_error": self.max_abs_logit_error,
            "argmax_agreement": self.argmax_agreement,
            "greedy_tokens_equal": self.greedy_tokens_equal,
            "greedy_tokens_total": self.greedy_tokens_total,
            "layer_rel_errors": self.layer_rel_errors,
            "hf_low_precision_rel_error": self.hf_low_precision_rel_error,
        }


def _rel(a: torch.Tensor, b: torch.Tensor) -> tuple[float, float]:
    d = (a.float() - b.float()).abs().max().item()
    return d / max(b.float().abs().max().item(), 1e-30), d


def hf_greedy(model: Any, prompt: Sequence[int], n: int) -> list[int]:
    """Greedy continuation with HF's own cache (generate without sampling)."""
    ids = torch.tensor([list(prompt)], device=model.device)
    with torch.no_grad():
        out = model.generate(
            ids,
            max_new_tokens=n,
            min_new_tokens=n,
            do_sample=False,
            use_cache=True,
            pad_token_id=model.config.pad_token_id,
        )
    return out[0, len(prompt) :].tolist()


def compare_model(
    backend: TorchBackend,
    model: Any,
    prompts: Sequence[Sequence[int]],
    greedy_tokens: int = 0,
    low_precision_model: Any | None = None,
) -> ParityReport:
    """Whole-model comparison: every position's logits of every prompt (our prompts run as one batch), then
    greedy continuations (ours batched) against HF generate. `model` is the reference; when the backend runs
    in a lower precision, `low_precision_model` (HF in that dtype) measures how far HF itself lands from it."""
    rep = ParityReport()
    sids = [backend.add_sequence() for _ in prompts]
    try:
        ours = backend.forward([(s, p) for s, p in zip(sids, prompts)], all_logits=True).logits
    finally:
        for s in sids:
            backend.free(s)
    agree, total = 0, 0
    num, den = 0.0, 1e-30
    with torch.no_grad():
        for p, lo in zip(prompts, ours):
            ref = model(input_ids=torch.tensor([list(p)], device=model.device)).logits[0].float().to(lo.device)
            num = max(num, (lo.float() - ref).abs().max().item())
            den = max(den, ref.abs().max().item())
            agree += int((lo.argmax(-1) == ref.argmax(-1)).sum())
            total += len(p)
    rep.max_abs_logit_error, rep.rel_logit_error = num, num / den
    rep.argmax_agreement = agree / max(total, 1)
    if low_precision_model is not None:
        low = 0.0
        with torch.no_grad():
            for p in prompts:
                ids = torch.tensor([list(p)], device=model.device)
                ref = model(input_ids=ids).logits[0].float()
                low = max(
                    low,
                    (
                        low_precision_model(input_ids=ids.to(low_precision_model.device))
                        .logits[0]
                        .float()
                        .to(ref.device)
                        - ref
                    )
                    .abs()
                    .max()
                    .item(),
                )
        rep.hf_low_precision_rel_error = low / den
    if greedy_tokens:
        ours_gen = backend.generate(prompts, greedy_tokens)
        for p, g in zip(prompts, ours_gen):
            ref = hf_greedy(model, p, greedy_tokens)
            rep.greedy_tokens_equal += _prefix_len(g, ref)
            rep.greedy_tokens_total += greedy_tokens
    return rep


def _prefix_len(a: Sequence[int], b: Sequence[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


# ---- layer by layer (streaming) ---------------------------------------------------------------------------------


def _hf_mask(spec: Gemma4Spec, layer: int, n: int, dtype: torch.dtype) -> torch.Tensor:
    q = torch.arange(n)[:, None]
    k = torch.arange(n)[None, :]
    ok = k <= q
    if not spec.is_global(layer):
        ok &= k > q - spec.sliding_window
    return torch.zeros(n, n, dtype=dtype).masked_fill(~ok, torch.finfo(dtype).min)[None, None]


def compare_layers(
    backend: TorchBackend, prompts: Sequence[Sequence[int]], dtype: torch.dtype = torch.float32
) -> ParityReport:
    """Layer-by-layer comparison streaming one layer's weights at a time (backend built with
    cache_weights=False). Both sides run their own hidden stream; reported: max|Δh|/max|h| after each layer,
    and the logits of every position at the end."""
    transformers = require_transformers()
    from transformers.cache_utils import KVSharingDict
    from transformers.models.gemma4_unified import modeling_gemma4_unified as hf_mod

    spec, src, dev = backend.spec, backend.weights, backend.ops.device
    cfg = hf_text_config(spec)
    rotary = hf_mod.Gemma4UnifiedTextRotaryEmbedding(cfg).to(dev)
    align_rope_tables(rotary, spec)
    rep = ParityReport(layer_rel_errors=[0.0] * spec.num_layers)
    num, den, agree, total = 0.0, 1e-30, 0, 0
    del transformers
    for p in prompts:
        n = len(p)
        ids = torch.tensor(list(p))
        pos = torch.arange(n, device=dev)[None]
        sid = backend.add_sequence()
        try:
            with backend.step([(sid, ids)], all_logits=True) as (ops, packed):
                ours = gemma4.embed(ops, spec, packed)
                # HF's Gemma4UnifiedTextScaledWordEmbedding: weight[ids] * embed_scale in the weight dtype
                table = src.get(gemma4.EMBEDDING).to(dev, dtype)
                ref = (
                    torch.nn.functional.embedding(ids.to(dev), table)
                    * torch.tensor(spec.embedding_scale, device=dev).to(dtype)
                )[None]
                del table
                shared = KVSharingDict()
                for s, layers in enumerate(backend.stages):
                    ops.stage = s
                    for i in layers:
                        ours = gemma4.decoder_layer(ops, spec, i, ours)
                        with torch.device("meta"):  # no random init: the layer's memory is its weights only
                            layer = hf_mod.Gemma4UnifiedTextDecoderLayer(cfg, i).eval()
                        state = {k: v.to(dev) for k, v in hf_layer_state(src, spec, i, dtype).items()}
                        missing, unexpected = layer.load_state_dict(state, strict=False, assign=True)
                        if missing or unexpected:
                            raise RuntimeError(f"layer {i}: HF weights do not line up: {missing} {unexpected}")
                        del state
                        kind = cfg.layer_types[i]
                        with torch.no_grad():
                            ref = layer(
                                ref,
                                shared_kv_states=shared,
                                position_embeddings=rotary(ref, pos, kind),
                                attention_mask=_hf_mask(spec, i, n, dtype).to(dev),
                                position_ids=pos,
                            )
                        del layer
                        r, _ = _rel(ours, ref[0])
                        rep.layer_rel_errors[i] = max(rep.layer_rel_errors[i], r)
                lo, x = gemma4.forward_with_hidden(ops, spec, ours, [], first_stage=False)
            # HF's head: the model's RMSNorm module, the tied embedding as lm_head, then the soft-cap
            norm = hf_mod.Gemma4UnifiedRMSNorm(spec.hidden_size, eps=spec.rms_norm_eps).to(dev, dtype)
            emb = src.get(gemma4.EMBEDDING).to(dev, dtype)
            with torch.no_grad():
                norm.weight.copy_(src.get(gemma4.FINAL_NORM))
                lr = torch.nn.functional.linear(norm(ref[0]), emb)
                if spec.final_logit_softcap:
                    lr = torch.tanh(lr / spec.final_logit_softcap) * spec.final_logit_softcap
                lr = lr.float()
        finally:
            backend.free(sid)
        num = max(num, (lo - lr).abs().max().item())
        den = max(den, lr.abs().max().item())
        agree += int((lo.argmax(-1) == lr.argmax(-1)).sum())
        total += n
    rep.max_abs_logit_error, rep.rel_logit_error = num, num / den
    rep.argmax_agreement = agree / max(total, 1)
    if not math.isfinite(rep.rel_logit_error):
        raise RuntimeError("non-finite logits in the comparison")
    return rep
