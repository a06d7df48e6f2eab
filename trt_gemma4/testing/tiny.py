"""Tiny but real Gemma-4-unified checkpoints: built with transformers, quantized and exported by nvidia-modelopt.

Recipe: research/modelopt_unified.md §2 (FP8_2D_BLOCKWISE_WEIGHT_ONLY_CFG + FP8_KV_CFG, then
export_hf_checkpoint; `config.architectures` must be set on a model built from a config). Seconds on a CPU.

Shapes:
  * ``main``: 12 layers = (5 sliding + 1 global) x 2; hidden 128, intermediate 320 (partial 128-blocks in
    gate/up/down), sliding heads 4 x 64 with 2 KV heads (k_proj [128,128] is a single block: 0-D scale), global
    head 128 (= 2 x 64: the engine's two-plane layout) with one KV head and K=V; vision and audio embedders.
  * ``tp``: made for tensor parallelism: every sharded dimension a multiple of 128*4, 4 KV heads on sliding
    layers, global head 256 (= 2 x 128) with one KV head.
  * the assistant drafter (BF16) wired to the ``main`` shape.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import os
import shutil
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trt_gemma4.errors import MissingToolError
from trt_gemma4.fsutil import replace_dir

ROPE = {
    "sliding_attention": {"rope_type": "default", "rope_theta": 10_000.0},
    "full_attention": {"rope_type": "proportional", "partial_rotary_factor": 0.25, "rope_theta": 1_000_000.0},
}

# Special token ids of the tiny vocabulary (multimodal ids as in research/modelopt_unified.md §1).
PAD, EOS, BOS, START_OF_TURN, END_OF_TURN = 0, 1, 2, 3, 4
BOI, EOI, IMAGE, VIDEO, BOA, EOA, AUDIO = 500, 501, 502, 503, 504, 505, 506
SPECIAL_TOKENS = {
    PAD: "<pad>",
    EOS: "<eos>",
    BOS: "<bos>",
    START_OF_TURN: "<start_of_turn>",
    END_OF_TURN: "<end_of_turn>",
    BOI: "<start_of_image>",
    EOI: "<end_of_image>",
    IMAGE: "<image_soft_token>",
    VIDEO: "<video_soft_token>",
    BOA: "<start_of_audio>",
    EOA: "<end_of_audio>",
    AUDIO: "<audio_soft_token>",
}


@dataclass(frozen=True)
class TinyShape:
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_heads: int
    sliding_head_dim: int
    sliding_kv_heads: int
    global_head_dim: int
    sliding_window: int
    repeats: int = 2  # of the (5 sliding + 1 global) pattern

    def text_config_kwargs(self) -> dict[str, Any]:
        layer_types = (["sliding_attention"] * 5 + ["full_attention"]) * self.repeats
        return dict(
            vocab_size=self.vocab_size,
            hidden_size=self.hidden_size,
            intermediate_size=self.intermediate_size,
            num_hidden_layers=len(layer_types),
            layer_types=layer_types,
            num_attention_heads=self.num_heads,
            num_key_value_heads=self.sliding_kv_heads,
            head_dim=self.sliding_head_dim,
            global_head_dim=self.global_head_dim,
            num_global_key_value_heads=1,
            attention_k_eq_v=True,
            sliding_window=self.sliding_window,
            max_position_embeddings=4096,
            final_logit_softcapping=30.0,
            rope_parameters=copy.deepcopy(ROPE),
            pad_token_id=PAD,
            eos_token_id=EOS,
            bos_token_id=BOS,
        )


MAIN = TinyShape(
    vocab_size=512,
    hidden_size=128,
    intermediate_size=320,
    num_heads=4,
    sliding_head_dim=64,
    sliding_kv_heads=2,
    global_head_dim=128,
    sliding_window=16,
)
TP = TinyShape(
    vocab_size=1024,
    hidden_size=256,
    intermediate_size=2048,
    num_heads=8,
    sliding_head_dim=128,
    sliding_kv_heads=4,
    global_head_dim=256,
    sliding_window=16,
)
SHAPES = {"main": MAIN, "tp": TP}


def _require_tiny_extra() -> None:
    import importlib.util

    for name in ("modelopt", "transformers"):  # found, not imported: ModelOpt warns at import time
        if importlib.util.find_spec(name) is None:
            raise MissingToolError(
                f"making the tiny checkpoint needs the 'tiny' extra ({name} is missing): pip install 'trt-gemma4[tiny]'"
            )
    import transformers

    major_minor = tuple(int(x) for x in transformers.__version__.split(".")[:2])
    if major_minor < (5, 10):
        raise MissingToolError(
            f"gemma4_unified needs transformers >= 5.10.1, found {transformers.__version__}: "
            "pip install 'trt-gemma4[tiny]'"
        )


def _perturb(model: Any, seed: int) -> None:
    """Random init leaves every norm at 1 and layer_scalar at 1: move them so tests exercise each one."""
    import torch

    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 1 and "norm" in name:
                p.add_((torch.randn(p.shape, generator=g) * 0.3).to(p.dtype))
        for name, b in model.named_buffers():
            if name.endswith("layer_scalar"):
                b.fill_(float(torch.rand(1, generator=g)) + 0.5)


def build_hf_model(shape: str = "main", text_only: bool = False, seed: int = 0) -> Any:
    """The tiny transformers model (bf16, eager attention), before quantization."""
    _require_tiny_extra()
    import torch
    from transformers import (
        Gemma4UnifiedAudioConfig,
        Gemma4UnifiedConfig,
        Gemma4UnifiedForCausalLM,
        Gemma4UnifiedForConditionalGeneration,
        Gemma4UnifiedTextConfig,
        Gemma4UnifiedVisionConfig,
    )

    torch.manual_seed(seed)
    text = SHAPES[shape].text_config_kwargs()
    if text_only:
        cfg = Gemma4UnifiedTextConfig(**text)
        cfg.architectures = ["Gemma4UnifiedForCausalLM"]  # export needs it (modelopt_unified.md §4.1)
        model_cls = Gemma4UnifiedForCausalLM
    else:
        cfg = Gemma4UnifiedConfig(
            text_config=Gemma4UnifiedTextConfig(**text),
            # patch_dim = (4*2)^2*3 = 192 -> patch_dense [160,192]; embedding_projection [hidden,160]
            vision_config=Gemma4UnifiedVisionConfig(
                patch_size=4, pooling_kernel_size=2, mm_embed_dim=160, output_proj_dims=160, mm_posemb_size=16
            ),
            audio_config=Gemma4UnifiedAudioConfig(audio_embed_dim=16),  # embed_audio [hidden,16]
            boi_token_id=BOI,
            eoi_token_id=EOI,
            image_token_id=IMAGE,
            video_token_id=VIDEO,
            boa_token_id=BOA,
            eoa_token_index=EOA,
            audio_token_id=AUDIO,
        )
        cfg.architectures = ["Gemma4UnifiedForConditionalGeneration"]
        model_cls = Gemma4UnifiedForConditionalGeneration
    cfg._attn_implementation = "eager"
    model = model_cls(cfg).to(torch.bfloat16).eval()
    _perturb(model, seed)
    return model


def _quantize_and_export(model: Any, out: Path, vocab: int, seed: int) -> None:
    import torch

    # ModelOpt prints its resolved config, warns about versions and shows progress bars: keep all of that out of
    # the user's terminal (an error still raises with its own message).
    with (
        contextlib.redirect_stdout(io.StringIO()),
        contextlib.redirect_stderr(io.StringIO()),
        warnings.catch_warnings(),
    ):
        warnings.simplefilter("ignore")
        import modelopt.torch.quantization as mtq
        from modelopt.torch.export import export_hf_checkpoint

        qcfg = mtq.update_quant_cfg_with_kv_cache_quant(
            copy.deepcopy(mtq.FP8_2D_BLOCKWISE_WEIGHT_ONLY_CFG), mtq.FP8_KV_CFG["quant_cfg"]
        )
        g = torch.Generator().manual_seed(seed + 2)
        calib = [torch.randint(5, min(vocab, 500), (2, 40), generator=g) for _ in range(4)]  # 40 > window

        def forward_loop(m: Any) -> None:
            with torch.no_grad():
                for ids in calib:
                    m(input_ids=ids)

        from transformers.utils import logging as hf_logging

        verbosity = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()  # its handler holds the real stderr: the redirect above misses it
        try:
            model = mtq.quantize(model, qcfg, forward_loop)
            with torch.no_grad():
                export_hf_checkpoint(model, export_dir=str(out))
        finally:
            hf_logging.set_verbosity(verbosity)


def _to_legacy_config_form(config_path: Path) -> None:
    """Rewrite a >=5.15 config (per_layer_config) into the <=5.14 / hub form (global_head_dim)."""
    cfg = json.loads(config_path.read_text())
    tc = cfg.get("text_config", cfg)
    plc = tc.pop("per_layer_config", {}) or {}
    heads = {int(v.get("head_dim", 0)) for v in plc.values()}
    kvs = {int(v.get("num_key_value_heads", 0)) for v in plc.values()}
    if len(heads) != 1 or len(kvs) != 1:
        raise ValueError(f"{config_path}: per_layer_config is not uniform over global layers: {plc}")
    tc["global_head_dim"] = heads.pop()
    tc["num_global_key_value_heads"] = kvs.pop()
    tc["transformers_version"] = "5.10.1"
    config_path.write_text(json.dumps(cfg, indent=2) + "\n")


def write_tokenizer(out: Path, vocab_size: int) -> None:
    """A real byte-level BPE tokenizer (trained with `tokenizers` on a fixed text) plus a Gemma-style chat
    template with a thinking switch, and the generation config the serving side reads."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    n_special = max(SPECIAL_TOKENS) + 1 if max(SPECIAL_TOKENS) < vocab_size else 5
    specials = [SPECIAL_TOKENS.get(i, f"<unused{i}>") for i in range(5)]
    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=min(vocab_size, BOI) if n_special > 5 else vocab_size,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    corpus = [
        "The quick brown fox jumps over the lazy dog. Serving engineers expect fast, exact and honest tools.",
        "Gemma is a family of open models. TensorRT engines run on the GPU; Triton serves them over gRPC and HTTP.",
        "Hello, how are you today? I am fine, thank you. What is the capital of France? Paris is the capital.",
        "One two three four five six seven eight nine ten. Numbers: 0 1 2 3 4 5 6 7 8 9 10 100 1000.",
    ] * 4
    tok.train_from_iterator(corpus, trainer)
    # Multimodal markers at their fixed ids (inside the tiny vocabulary), as in the real checkpoint's vocab.
    if vocab_size > AUDIO:
        cur = tok.get_vocab_size()
        for i in range(cur, BOI):
            tok.add_special_tokens([f"<unused{i}>"])
        for i in range(BOI, AUDIO + 1):
            tok.add_special_tokens([SPECIAL_TOKENS[i]])
    tok.save(str(out / "tokenizer.json"))
    template = (
        "{{ bos_token }}"
        "{% if enable_thinking is defined and enable_thinking %}<start_of_turn>system\nThink step by step."
        "<end_of_turn>\n{% endif %}"
        "{% for message in messages %}<start_of_turn>"
        "{{ 'model' if message['role'] == 'assistant' else message['role'] }}\n"
        "{{ message['content'] | trim }}<end_of_turn>\n{% endfor %}"
        "{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
    )
    (out / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "tokenizer_class": "PreTrainedTokenizerFast",
                "bos_token": "<bos>",
                "eos_token": "<eos>",
                "pad_token": "<pad>",
                "model_max_length": 4096,
                "chat_template": template,
            },
            indent=2,
        )
        + "\n"
    )
    (out / "generation_config.json").write_text(
        json.dumps(
            {
                "bos_token_id": BOS,
                "eos_token_id": [EOS, END_OF_TURN],
                "pad_token_id": PAD,
                "do_sample": True,
                "temperature": 1.0,
                "top_k": 64,
                "top_p": 0.95,
                "suppress_tokens": [EOA, EOI] if vocab_size > AUDIO else [],
            },
            indent=2,
        )
        + "\n"
    )


def make_tiny(
    out: str | Path,
    *,
    text_only: bool = False,
    shape: str = "main",
    config_form: str = "per_layer",
    seed: int = 0,
    overwrite: bool = False,
) -> Path:
    """Write a tiny ModelOpt fp8_pb_wo + FP8-KV export to `out` (atomically: temp dir, then rename)."""
    _require_tiny_extra()
    if shape not in SHAPES:
        raise ValueError(f"unknown tiny shape {shape!r}; choose from {sorted(SHAPES)}")
    out = Path(out)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise FileExistsError(f"{out} exists and is not empty")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        model = build_hf_model(shape, text_only=text_only, seed=seed)
        _quantize_and_export(model, tmp, SHAPES[shape].vocab_size, seed)
        if config_form == "global_head_dim":
            _to_legacy_config_form(tmp / "config.json")
        elif config_form != "per_layer":
            raise ValueError(f"unknown config form {config_form!r}")
        write_tokenizer(tmp, SHAPES[shape].vocab_size)
        replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def make_tiny_drafter(out: str | Path, *, shape: str = "main", seed: int = 0) -> Path:
    """The tiny assistant drafter (gemma4_unified_assistant) in BF16, wired to the `shape` target."""
    _require_tiny_extra()
    import torch
    from transformers import Gemma4UnifiedTextConfig
    from transformers.models.gemma4_unified_assistant import (
        Gemma4UnifiedAssistantConfig,
        Gemma4UnifiedAssistantForCausalLM,
    )

    s = SHAPES[shape]
    torch.manual_seed(seed + 10)
    acfg = Gemma4UnifiedAssistantConfig(
        backbone_hidden_size=s.hidden_size,
        text_config=Gemma4UnifiedTextConfig(
            vocab_size=s.vocab_size,
            hidden_size=64,
            intermediate_size=256,
            num_hidden_layers=4,
            layer_types=["sliding_attention"] * 3 + ["full_attention"],
            num_attention_heads=s.num_heads,
            num_key_value_heads=s.sliding_kv_heads,
            head_dim=s.sliding_head_dim,
            global_head_dim=s.global_head_dim,
            num_global_key_value_heads=1,
            attention_k_eq_v=True,
            sliding_window=s.sliding_window,
            rope_parameters=copy.deepcopy(ROPE),
            pad_token_id=PAD,
            eos_token_id=EOS,
            bos_token_id=BOS,
        ),
    )
    acfg.architectures = ["Gemma4UnifiedAssistantForCausalLM"]
    model = Gemma4UnifiedAssistantForCausalLM(acfg).to(torch.bfloat16).eval()
    _perturb(model, seed + 10)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        with contextlib.redirect_stderr(io.StringIO()):  # transformers' shard-writing progress bar
            model.save_pretrained(str(tmp))
        replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


# ---- cache -------------------------------------------------------------------------------------------------

VARIANTS: dict[str, dict[str, Any]] = {
    "tiny": dict(text_only=False, shape="main", config_form="per_layer"),
    "tiny-text": dict(text_only=True, shape="main", config_form="per_layer"),
    "tiny-legacy": dict(text_only=False, shape="main", config_form="global_head_dim"),
    "tiny-tp": dict(text_only=True, shape="tp", config_form="per_layer"),
}


def cache_root() -> Path:
    return Path(os.environ.get("TRT_GEMMA4_CACHE", Path.home() / ".cache" / "trt_gemma4")) / "tiny"


def cached(variant: str, root: str | Path | None = None) -> Path:
    """Path of a tiny checkpoint variant ('tiny', 'tiny-text', 'tiny-legacy', 'tiny-tp', 'tiny-drafter'),
    building it once under `root` (default: the user cache). Safe to call repeatedly."""
    base = Path(root) if root is not None else cache_root()
    path = base / variant
    if (path / "config.json").exists():
        return path
    if variant == "tiny-drafter":
        return make_tiny_drafter(path)
    if variant not in VARIANTS:
        raise ValueError(f"unknown tiny variant {variant!r}; choose from {sorted(VARIANTS) + ['tiny-drafter']}")
    return make_tiny(path, overwrite=True, **VARIANTS[variant])
