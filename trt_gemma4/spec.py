"""Gemma4Spec: every model number the rest of the toolkit needs, parsed from any Gemma-4-unified config form.

Nothing else in the package reads HF configs. Forms understood (research/gemma4_arch.md §1.3):
  * transformers <= 5.14 / hub form: `head_dim`, `global_head_dim`, `num_key_value_heads`,
    `num_global_key_value_heads` in the text config;
  * transformers >= 5.15 form: the global layers' numbers folded into `per_layer_config`
    ({"5": {"head_dim": 512, "num_key_value_heads": 1}, ...}; keys may be zero-padded);
  * multimodal (`text_config` nested, model_type gemma4_unified) or text-only (gemma4_unified_text);
  * the assistant drafter (gemma4_unified_assistant) as a DrafterSpec.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trt_gemma4.errors import CheckpointError

SLIDING = "sliding"
GLOBAL = "global"
_HF_LAYER_TYPES = {"sliding_attention": SLIDING, "full_attention": GLOBAL}
TEXT_MODEL_TYPES = ("gemma4_unified", "gemma4_unified_text")
DRAFTER_MODEL_TYPES = ("gemma4_unified_assistant",)


@dataclass(frozen=True)
class RopeSpec:
    """RoPE of one layer type. NeoX layout: pair i is (dim i, dim i + head_dim/2)."""

    theta: float
    head_dim: int
    rotary_pairs: int  # pairs that rotate; the rest get inv_freq 0 (identity)

    def inv_freq(self) -> list[float]:
        """Per-pair inverse frequencies over the FULL head dim (proportional RoPE: denominator is head_dim)."""
        half = self.head_dim // 2
        return [self.theta ** (-2.0 * i / self.head_dim) if i < self.rotary_pairs else 0.0 for i in range(half)]


@dataclass(frozen=True)
class DrafterSpec:
    """The assistant (frozen-KV MTP) drafter: q-only layers reading the target's last sliding/global KV."""

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    backbone_hidden_size: int
    layer_types: tuple[str, ...]
    num_attention_heads: int
    sliding_head_dim: int
    global_head_dim: int
    rms_norm_eps: float
    sliding_window: int
    rope_theta_sliding: float
    rope_theta_global: float
    global_partial_rotary_factor: float
    final_logit_softcap: float | None
    tie_word_embeddings: bool = True

    @property
    def num_layers(self) -> int:
        return len(self.layer_types)

    def head_dim(self, layer: int) -> int:
        return self.global_head_dim if self.layer_types[layer] == GLOBAL else self.sliding_head_dim

    def q_size(self, layer: int) -> int:
        return self.num_attention_heads * self.head_dim(layer)


@dataclass(frozen=True)
class Gemma4Spec:
    """The Gemma-4-unified text model's numbers (and the multimodal extras that only matter for key names)."""

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    layer_types: tuple[str, ...]
    num_attention_heads: int
    sliding_head_dim: int
    sliding_kv_heads: int
    global_head_dim: int
    global_kv_heads: int
    attention_k_eq_v: bool
    sliding_window: int  # inclusive of the current token
    rope_theta_sliding: float
    rope_theta_global: float
    global_partial_rotary_factor: float
    final_logit_softcap: float | None
    rms_norm_eps: float
    max_position_embeddings: int
    tie_word_embeddings: bool = True
    hidden_activation: str = "gelu_pytorch_tanh"
    pad_token_id: int = 0
    bos_token_id: int = 2
    eos_token_ids: tuple[int, ...] = (1,)
    multimodal: bool = False
    vision_patch_dim: int | None = None  # (patch_size*pooling_kernel)^2 * 3
    vision_embed_dim: int | None = None
    vision_posemb_size: int | None = None
    audio_embed_dim: int | None = None
    drafter: DrafterSpec | None = None
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    # ---- per-layer numbers ------------------------------------------------------------------------------------
    @property
    def num_layers(self) -> int:
        return len(self.layer_types)

    def is_global(self, layer: int) -> bool:
        return self.layer_types[layer] == GLOBAL

    def head_dim(self, layer: int) -> int:
        return self.global_head_dim if self.is_global(layer) else self.sliding_head_dim

    def kv_heads(self, layer: int) -> int:
        return self.global_kv_heads if self.is_global(layer) else self.sliding_kv_heads

    def q_size(self, layer: int) -> int:
        return self.num_attention_heads * self.head_dim(layer)

    def kv_size(self, layer: int) -> int:
        return self.kv_heads(layer) * self.head_dim(layer)

    def has_v_proj(self, layer: int) -> bool:
        return not (self.is_global(layer) and self.attention_k_eq_v)

    @property
    def global_layers(self) -> list[int]:
        return [i for i, t in enumerate(self.layer_types) if t == GLOBAL]

    @property
    def sliding_layers(self) -> list[int]:
        return [i for i, t in enumerate(self.layer_types) if t == SLIDING]

    def rope(self, layer: int) -> RopeSpec:
        if self.is_global(layer):
            pairs = int(self.global_partial_rotary_factor * self.global_head_dim / 2)
            return RopeSpec(self.rope_theta_global, self.global_head_dim, pairs)
        return RopeSpec(self.rope_theta_sliding, self.sliding_head_dim, self.sliding_head_dim // 2)

    @property
    def embedding_scale(self) -> float:
        """√hidden, applied to the embedding in the compute dtype (62.0 in bf16, 61.9677 in fp32 for the 12B)."""
        return math.sqrt(self.hidden_size)

    # ---- the engine's KV cache ------------------------------------------------------------------------------
    @property
    def kv_head_size(self) -> int:
        """TRT-LLM allows one head size: the sliding one. A global head is stored as several such "heads"."""
        return self.sliding_head_dim

    @property
    def global_kv_planes(self) -> int:
        """How many kv_head_size "heads" one global KV head occupies (2 for the 12B: 512 = 2 x 256)."""
        return self.global_kv_heads * self.global_head_dim // self.kv_head_size

    def num_kv_heads_per_layer(self, tp: int = 1) -> list[int]:
        """As declared in the TRT-LLM checkpoint config. The runtime divides each entry by tp (ceil); global
        layers declare planes*tp so every rank keeps the whole replicated head (DESIGN.md, KV cache)."""
        return [self.global_kv_planes * tp if self.is_global(i) else self.sliding_kv_heads for i in self.layer_range]

    @property
    def layer_range(self) -> range:
        return range(self.num_layers)

    @property
    def drafter_target_layers(self) -> dict[str, int]:
        """The target layers whose KV the drafter reads: its last sliding and its last global layer."""
        return {SLIDING: self.sliding_layers[-1], GLOBAL: self.global_layers[-1]}

    # ---- counts ---------------------------------------------------------------------------------------------
    def text_parameter_count(self) -> int:
        """Parameters of the language model (embedding included once: the LM head is tied). `layer_scalar` is a
        buffer, not a parameter, so it is not counted (as in transformers' and the model card's count)."""
        H, I = self.hidden_size, self.intermediate_size
        n = self.vocab_size * H + H  # embedding + final norm
        for i in self.layer_range:
            hd = self.head_dim(i)
            q, kv = self.q_size(i), self.kv_size(i)
            n += q * H + kv * H + (kv * H if self.has_v_proj(i) else 0) + H * q  # q, k, v, o
            n += 2 * hd  # q_norm, k_norm
            n += 3 * H * I + 4 * H  # mlp, four norms
        return n

    # ---- (de)serialization ----------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d.pop("extra", None)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Gemma4Spec:
        d = dict(d)
        drafter = d.pop("drafter", None)
        d["layer_types"] = tuple(d["layer_types"])
        d["eos_token_ids"] = tuple(d["eos_token_ids"])
        if drafter is not None:
            drafter = dict(drafter)
            drafter["layer_types"] = tuple(drafter["layer_types"])
            d["drafter"] = DrafterSpec(**drafter)
        return cls(**d)

    def with_drafter(self, drafter: DrafterSpec | None) -> Gemma4Spec:
        return dataclasses.replace(self, drafter=drafter)

    def summary(self) -> str:
        g, s = len(self.global_layers), len(self.sliding_layers)
        return (
            f"Gemma-4: {self.num_layers} layers ({s} sliding, {g} global), hidden {self.hidden_size}, "
            f"intermediate {self.intermediate_size}, {self.num_attention_heads} heads; sliding head "
            f"{self.sliding_head_dim} x {self.sliding_kv_heads} KV, window {self.sliding_window}; global head "
            f"{self.global_head_dim} x {self.global_kv_heads} KV{' (K=V)' if self.attention_k_eq_v else ''}; "
            f"vocab {self.vocab_size}; soft-cap {self.final_logit_softcap}"
        )


# ---- parsing -------------------------------------------------------------------------------------------------


def _req(cfg: dict[str, Any], key: str, file: str) -> Any:
    if key not in cfg:
        raise CheckpointError(file, None, f"config field '{key}'", "it is missing")
    return cfg[key]


def _per_layer(cfg: dict[str, Any], layer: int) -> dict[str, Any]:
    plc = cfg.get("per_layer_config") or {}
    for k, v in plc.items():
        if int(k) == layer:
            return v
    return {}


def _layer_types(cfg: dict[str, Any], n_layers: int, file: str) -> tuple[str, ...]:
    raw = cfg.get("layer_types")
    if raw is None:  # transformers default: 5 sliding : 1 full, last layer forced full (configuration L156-167)
        raw = ["full_attention" if (i + 1) % 6 == 0 else "sliding_attention" for i in range(n_layers)]
        raw[-1] = "full_attention"
    if len(raw) != n_layers:
        raise CheckpointError(file, None, f"{n_layers} layer_types (num_hidden_layers)", f"{len(raw)}")
    try:
        return tuple(_HF_LAYER_TYPES[t] for t in raw)
    except KeyError as e:
        raise CheckpointError(file, None, "layer types sliding_attention/full_attention", f"{e.args[0]!r}") from None


def _rope(cfg: dict[str, Any]) -> tuple[float, float, float]:
    rp = cfg.get("rope_parameters") or {}
    s = rp.get("sliding_attention", {})
    f = rp.get("full_attention", {})
    return (
        float(s.get("rope_theta", 10_000.0)),
        float(f.get("rope_theta", 1_000_000.0)),
        float(f.get("partial_rotary_factor", 0.25) if f.get("rope_type", "proportional") == "proportional" else 1.0),
    )


def _text_numbers(tc: dict[str, Any], file: str) -> dict[str, Any]:
    n_layers = int(_req(tc, "num_hidden_layers", file))
    layer_types = _layer_types(tc, n_layers, file)
    k_eq_v = bool(tc.get("attention_k_eq_v", False))
    sliding_hd = int(tc.get("head_dim", 256))
    sliding_kv = int(tc.get("num_key_value_heads", 4))
    # Global numbers: hub / <=5.14 form first, then the >=5.15 per_layer_config form.
    global_idx = [i for i, t in enumerate(layer_types) if t == GLOBAL]
    global_hd = tc.get("global_head_dim")
    global_kv = tc.get("num_global_key_value_heads") if k_eq_v else None
    for i in global_idx:
        plc = _per_layer(tc, i)
        if "head_dim" in plc:
            if global_hd is not None and int(plc["head_dim"]) != int(global_hd):
                raise CheckpointError(file, None, f"global head_dim {global_hd} on layer {i}", str(plc["head_dim"]))
            global_hd = plc["head_dim"]
        if "num_key_value_heads" in plc:
            if global_kv is not None and int(plc["num_key_value_heads"]) != int(global_kv):
                raise CheckpointError(
                    file, None, f"global num_key_value_heads {global_kv} on layer {i}", str(plc["num_key_value_heads"])
                )
            global_kv = plc["num_key_value_heads"]
    # Sliding layers can carry per-layer entries too in the >=5.15 form: they must agree with the base values.
    for i, t in enumerate(layer_types):
        if t == SLIDING:
            plc = _per_layer(tc, i)
            if int(plc.get("head_dim", sliding_hd)) != sliding_hd:
                raise CheckpointError(file, None, f"sliding head_dim {sliding_hd} on layer {i}", str(plc["head_dim"]))
    if global_hd is None:
        global_hd = 512  # class default (configuration_gemma4_unified.py)
    if global_kv is None:
        global_kv = sliding_kv
    theta_s, theta_g, partial = _rope(tc)
    softcap = tc.get("final_logit_softcapping")
    return dict(
        vocab_size=int(_req(tc, "vocab_size", file)),
        hidden_size=int(_req(tc, "hidden_size", file)),
        intermediate_size=int(_req(tc, "intermediate_size", file)),
        layer_types=layer_types,
        num_attention_heads=int(_req(tc, "num_attention_heads", file)),
        sliding_head_dim=sliding_hd,
        sliding_kv_heads=sliding_kv,
        global_head_dim=int(global_hd),
        global_kv_heads=int(global_kv),
        attention_k_eq_v=k_eq_v,
        sliding_window=int(tc.get("sliding_window", 1024)),
        rope_theta_sliding=theta_s,
        rope_theta_global=theta_g,
        global_partial_rotary_factor=partial,
        final_logit_softcap=float(softcap) if softcap is not None else None,
        rms_norm_eps=float(tc.get("rms_norm_eps", 1e-6)),
        max_position_embeddings=int(tc.get("max_position_embeddings", 262_144)),
        tie_word_embeddings=bool(tc.get("tie_word_embeddings", True)),
        hidden_activation=str(tc.get("hidden_activation", "gelu_pytorch_tanh")),
    )


def _ids(v: Any, default: tuple[int, ...]) -> tuple[int, ...]:
    if v is None:
        return default
    return tuple(int(x) for x in v) if isinstance(v, list) else (int(v),)


def spec_from_config(cfg: dict[str, Any], file: str = "config.json") -> Gemma4Spec:
    """Parse a target model config (multimodal or text-only; any transformers form)."""
    model_type = cfg.get("model_type")
    if model_type not in TEXT_MODEL_TYPES:
        raise CheckpointError(
            file, None, f"model_type one of {', '.join(TEXT_MODEL_TYPES)} (Gemma-4 unified)", repr(model_type)
        )
    multimodal = "text_config" in cfg
    tc = cfg["text_config"] if multimodal else cfg
    nums = _text_numbers(tc, file)
    hd = nums["global_head_dim"]
    if nums["global_partial_rotary_factor"] * hd / 2 < 1:
        raise CheckpointError(file, None, "at least one rotating pair on global layers", f"global head_dim {hd}")
    extra: dict[str, Any] = {}
    vision_patch_dim = vision_embed_dim = vision_posemb = audio_dim = None
    if multimodal:
        vc, ac = cfg.get("vision_config") or {}, cfg.get("audio_config") or {}
        if vc:
            p, k = int(vc.get("patch_size", 16)), int(vc.get("pooling_kernel_size", 3))
            vision_patch_dim = (p * k) ** 2 * 3
            vision_embed_dim = int(vc.get("mm_embed_dim", 3840))
            vision_posemb = int(vc.get("mm_posemb_size", 1120))
        if ac:
            audio_dim = int(ac.get("audio_embed_dim", 640))
        for key in (
            "boi_token_id",
            "eoi_token_id",
            "image_token_id",
            "video_token_id",
            "boa_token_id",
            "eoa_token_index",
            "audio_token_id",
        ):
            if key in cfg:
                extra[key] = cfg[key]
    eos = cfg.get("eos_token_id", tc.get("eos_token_id"))
    return Gemma4Spec(
        **nums,
        pad_token_id=int(tc.get("pad_token_id", cfg.get("pad_token_id", 0)) or 0),
        bos_token_id=int(tc.get("bos_token_id", cfg.get("bos_token_id", 2)) or 2),
        eos_token_ids=_ids(eos, (1,)),
        multimodal=multimodal,
        vision_patch_dim=vision_patch_dim,
        vision_embed_dim=vision_embed_dim,
        vision_posemb_size=vision_posemb,
        audio_embed_dim=audio_dim,
        extra=extra,
    )


def drafter_from_config(cfg: dict[str, Any], file: str = "config.json") -> DrafterSpec:
    """Parse the assistant drafter's config (gemma4_unified_assistant)."""
    if cfg.get("model_type") not in DRAFTER_MODEL_TYPES:
        raise CheckpointError(file, None, "model_type gemma4_unified_assistant", repr(cfg.get("model_type")))
    tc = _req(cfg, "text_config", file)
    nums = _text_numbers(tc, file)
    return DrafterSpec(
        vocab_size=nums["vocab_size"],
        hidden_size=nums["hidden_size"],
        intermediate_size=nums["intermediate_size"],
        backbone_hidden_size=int(_req(cfg, "backbone_hidden_size", file)),
        layer_types=nums["layer_types"],
        num_attention_heads=nums["num_attention_heads"],
        sliding_head_dim=nums["sliding_head_dim"],
        global_head_dim=nums["global_head_dim"],
        rms_norm_eps=nums["rms_norm_eps"],
        sliding_window=nums["sliding_window"],
        rope_theta_sliding=nums["rope_theta_sliding"],
        rope_theta_global=nums["rope_theta_global"],
        global_partial_rotary_factor=nums["global_partial_rotary_factor"],
        final_logit_softcap=nums["final_logit_softcap"],
        tie_word_embeddings=bool(cfg.get("tie_word_embeddings", True)),
    )


def load_json(path: Path) -> dict[str, Any]:
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        raise CheckpointError(str(path), None, "a config.json", "no such file") from None
    except json.JSONDecodeError as e:
        raise CheckpointError(str(path), None, "valid JSON", f"{e.msg} at line {e.lineno}") from None


def load_spec(ckpt_dir: str | Path) -> Gemma4Spec:
    """Spec of a checkpoint directory (reads its config.json)."""
    p = Path(ckpt_dir) / "config.json"
    return spec_from_config(load_json(p), str(p))


def load_drafter_spec(ckpt_dir: str | Path) -> DrafterSpec:
    p = Path(ckpt_dir) / "config.json"
    return drafter_from_config(load_json(p), str(p))


def check_drafter_fits(spec: Gemma4Spec, drafter: DrafterSpec, file: str = "drafter config.json") -> None:
    """The drafter reads the target's KV: its head dims and vocab must match the target's."""
    pairs = [
        ("backbone_hidden_size", drafter.backbone_hidden_size, spec.hidden_size),
        ("sliding head_dim", drafter.sliding_head_dim, spec.sliding_head_dim),
        ("global head_dim", drafter.global_head_dim, spec.global_head_dim),
        ("vocab_size", drafter.vocab_size, spec.vocab_size),
    ]
    for name, found, expected in pairs:
        if found != expected:
            raise CheckpointError(file, None, f"{name} {expected} (the target's)", str(found))


# ---- presets -------------------------------------------------------------------------------------------------

GEMMA4_12B_DRAFTER = DrafterSpec(
    vocab_size=262_144,
    hidden_size=1024,
    intermediate_size=8192,
    backbone_hidden_size=3840,
    layer_types=(SLIDING, SLIDING, SLIDING, GLOBAL),
    num_attention_heads=16,
    sliding_head_dim=256,
    global_head_dim=512,
    rms_norm_eps=1e-6,
    sliding_window=1024,
    rope_theta_sliding=10_000.0,
    rope_theta_global=1_000_000.0,
    global_partial_rotary_factor=0.25,
    final_logit_softcap=None,
)

# google/gemma-4-12B-it (research/gemma4_arch.md §3): 11,959,730,176 parameters with the multimodal embedders.
GEMMA4_12B = Gemma4Spec(
    vocab_size=262_144,
    hidden_size=3840,
    intermediate_size=15_360,
    layer_types=((SLIDING,) * 5 + (GLOBAL,)) * 8,
    num_attention_heads=16,
    sliding_head_dim=256,
    sliding_kv_heads=8,
    global_head_dim=512,
    global_kv_heads=1,
    attention_k_eq_v=True,
    sliding_window=1024,
    rope_theta_sliding=10_000.0,
    rope_theta_global=1_000_000.0,
    global_partial_rotary_factor=0.25,
    final_logit_softcap=30.0,
    rms_norm_eps=1e-6,
    max_position_embeddings=262_144,
    eos_token_ids=(1, 106),
    multimodal=True,
    vision_patch_dim=6912,
    vision_embed_dim=3840,
    vision_posemb_size=1120,
    audio_embed_dim=640,
    drafter=GEMMA4_12B_DRAFTER,
)

PRESETS: dict[str, Gemma4Spec] = {"gemma-4-12b": GEMMA4_12B}


def hf_config_dict(spec: Gemma4Spec, form: str = "per_layer") -> dict[str, Any]:
    """The text config as transformers writes it: form 'per_layer' (>=5.15) or 'global_head_dim' (<=5.14, hub)."""
    inv = {v: k for k, v in _HF_LAYER_TYPES.items()}
    tc: dict[str, Any] = dict(
        model_type="gemma4_unified_text",
        vocab_size=spec.vocab_size,
        hidden_size=spec.hidden_size,
        intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.num_layers,
        layer_types=[inv[t] for t in spec.layer_types],
        num_attention_heads=spec.num_attention_heads,
        head_dim=spec.sliding_head_dim,
        num_key_value_heads=spec.sliding_kv_heads,
        attention_k_eq_v=spec.attention_k_eq_v,
        sliding_window=spec.sliding_window,
        max_position_embeddings=spec.max_position_embeddings,
        final_logit_softcapping=spec.final_logit_softcap,
        rms_norm_eps=spec.rms_norm_eps,
        hidden_activation=spec.hidden_activation,
        tie_word_embeddings=spec.tie_word_embeddings,
        rope_parameters={
            "sliding_attention": {"rope_type": "default", "rope_theta": spec.rope_theta_sliding},
            "full_attention": {
                "rope_type": "proportional",
                "partial_rotary_factor": spec.global_partial_rotary_factor,
                "rope_theta": spec.rope_theta_global,
            },
        },
        pad_token_id=spec.pad_token_id,
        bos_token_id=spec.bos_token_id,
        eos_token_id=list(spec.eos_token_ids) if len(spec.eos_token_ids) > 1 else spec.eos_token_ids[0],
    )
    if form == "global_head_dim":
        tc["global_head_dim"] = spec.global_head_dim
        tc["num_global_key_value_heads"] = spec.global_kv_heads
    elif form == "per_layer":
        tc["per_layer_config"] = {
            str(i): {"head_dim": spec.global_head_dim, "num_key_value_heads": spec.global_kv_heads}
            for i in spec.global_layers
        }
    else:
        raise ValueError(f"unknown config form {form!r}")
    return tc
