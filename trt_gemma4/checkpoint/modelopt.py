"""The ModelOpt `fp8_pb_wo` + FP8-KV export of Gemma-4-unified, read lazily and checked as a whole.

Format (research/modelopt.md §2, modelopt_unified.md §3): every decoder linear is `weight` float8_e4m3fn [N,K]
plus `weight_scale` float32, the dequant multiplier of each 128x128 block (w ~ q * s), stored as
[ceil(N/128),1,ceil(K/128),1], [ceil(N/128),ceil(K/128)] or 0-D for a single block; the block size is written
nowhere, so it is checked against the shapes. `k_proj.k_scale` / `v_proj.v_scale` are the KV-cache scales
(0-D float32). Whether a module is quantized is decided from its tensors (fp8 dtype + a `weight_scale`), never
from the export's exclude list: ModelOpt writes `model.embed_vision*` there, which does not match the on-disk
`model.vision_embedder.*` names (modelopt_unified.md §3.4).

Tensors stay on disk (safetensors memory map) until asked for; `validate()` reads only the scales.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open

from trt_gemma4.checkpoint import names
from trt_gemma4.checkpoint.safetensors_writer import TensorEntry, dtype_name, read_header
from trt_gemma4.errors import CheckpointError
from trt_gemma4.spec import Gemma4Spec, load_json, spec_from_config

FP8 = torch.float8_e4m3fn
FLOAT_DTYPES = (torch.bfloat16, torch.float16, torch.float32)
SUPPORTED_QUANT_ALGO = "fp8_pb_wo"
# Exports before ModelOpt 0.27 wrote the raw k_proj/v_proj output amax under the same k_scale/v_scale names
# (pre-norm, pre-RoPE): not the tensor the cache holds (research/modelopt.md §2.4).
MIN_KV_SCALE_VERSION = (0, 27)
VISION_PREFIXES = ("model.vision_embedder.", "model.embed_vision.")
AUDIO_PREFIX = "model.embed_audio."
INDEX_FILE = "model.safetensors.index.json"


def num_blocks(n: int) -> int:
    """128-blocks covering n rows or columns (the last one may be partial)."""
    return -(-n // names.BLOCK)


def dequantize_blocks(q: torch.Tensor, grid: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """w = q * s, each scale of `grid` [ceil(N/128), ceil(K/128)] covering one 128x128 block of q [N, K]."""
    n, k = q.shape
    s = grid.float().repeat_interleave(names.BLOCK, 0).repeat_interleave(names.BLOCK, 1)[:n, :k]
    return (q.float() * s).to(dtype)


def parse_version(v: str | None) -> tuple[int, ...] | None:
    """'0.47.0' -> (0, 47, 0); '0.37.0rc1' -> (0, 37, 0); None when there is no version."""
    if not v:
        return None
    nums = re.findall(r"\d+", v.split("+")[0])[:3]
    return tuple(int(x) for x in nums) if nums else None


@dataclass(frozen=True)
class QuantConfig:
    """What the export says about its quantization (hf_quant_config.json and/or config.json)."""

    quant_algo: str | None
    kv_cache_quant_algo: str | None
    modelopt_version: str | None
    exclude_modules: tuple[str, ...]
    file: str  # where quant_algo was read


def _kv_algo_from_scheme(scheme: Any) -> str | None:
    if isinstance(scheme, dict) and scheme.get("type") == "float" and int(scheme.get("num_bits", 0)) == 8:
        return "FP8"
    return None


def read_quant_config(ckpt: Path, cfg: dict[str, Any], cfg_file: Path) -> QuantConfig:
    """hf_quant_config.json first, then config.json's quantization_config; the two must agree."""
    algo = kv = version = None
    exclude: list[str] = []
    file = str(cfg_file)
    hq = ckpt / "hf_quant_config.json"
    if hq.exists():
        d = load_json(hq)
        q = d.get("quantization") or {}
        algo, kv = q.get("quant_algo"), q.get("kv_cache_quant_algo")
        exclude = list(q.get("exclude_modules") or [])
        version = (d.get("producer") or {}).get("version")
        file = str(hq)
    qc = cfg.get("quantization_config") or {}
    if qc:
        algo2 = qc.get("quant_algo")
        if algo is None:
            algo = algo2
        elif algo2 is not None and str(algo2).lower() != str(algo).lower():
            raise CheckpointError(
                str(cfg_file), None, f"quantization_config.quant_algo {algo!r} (as in {hq.name})", repr(algo2)
            )
        kv = kv or qc.get("kv_cache_quant_algo") or _kv_algo_from_scheme(qc.get("kv_cache_scheme"))
        version = version or (qc.get("producer") or {}).get("version")
        exclude = exclude or list(qc.get("ignore") or [])
    return QuantConfig(
        quant_algo=None if algo is None else str(algo),
        kv_cache_quant_algo=None if kv is None else str(kv),
        modelopt_version=None if version is None else str(version),
        exclude_modules=tuple(exclude),
        file=file,
    )


@dataclass(frozen=True)
class Expected:
    """One tensor a layer must have: its shape, the dtype kind and where the numbers come from (config.json)."""

    shape: tuple[int, ...]
    kind: str  # "fp8" (quantized weight), "scale" (its block scales), "float" (bf16/fp16/fp32), "kv" (KV scale)
    why: str
    optional: bool = False


def _linear_shapes(spec: Gemma4Spec, i: int) -> dict[str, tuple[tuple[int, int], str]]:
    """(N, K) of each quantized linear of layer i, with the config numbers that give them."""
    H, I = spec.hidden_size, spec.intermediate_size
    hd, kvh, nh = spec.head_dim(i), spec.kv_heads(i), spec.num_attention_heads
    q, kv = spec.q_size(i), spec.kv_size(i)
    q_why = f"num_attention_heads {nh} x head_dim {hd}, hidden_size {H}"
    kv_why = f"{kvh} KV heads x head_dim {hd}, hidden_size {H}"
    mlp_why = f"intermediate_size {I}, hidden_size {H}"
    out = {
        "self_attn.q_proj": ((q, H), q_why),
        "self_attn.k_proj": ((kv, H), kv_why),
        "self_attn.v_proj": ((kv, H), kv_why),
        "self_attn.o_proj": ((H, q), f"hidden_size {H}, " + q_why.split(",")[0]),
        "mlp.gate_proj": ((I, H), mlp_why),
        "mlp.up_proj": ((I, H), mlp_why),
        "mlp.down_proj": ((H, I), f"hidden_size {H}, intermediate_size {I}"),
    }
    if not spec.has_v_proj(i):
        del out["self_attn.v_proj"]
    return out


def expected_layer_tensors(spec: Gemma4Spec, i: int) -> dict[str, Expected]:
    """Every tensor of decoder layer i (names relative to the layer), in the name table's order."""
    H, hd = spec.hidden_size, spec.head_dim(i)
    kind = spec.layer_types[i]
    exp: dict[str, Expected] = {}
    for hf in names.LAYER_TENSORS.values():
        if hf == "layer_scalar":
            exp[hf] = Expected((1,), "float", "one scalar per layer")
        elif hf.startswith("self_attn."):
            exp[hf] = Expected((hd,), "float", f"head_dim {hd} of a {kind} layer")
        else:
            exp[hf] = Expected((H,), "float", f"hidden_size {H}")
    shapes = _linear_shapes(spec, i)
    for lin in names.layer_linears(spec.has_v_proj(i), spec.is_global(i)):
        for part in lin.hf_parts:
            (n, k), why = shapes[part]
            exp[f"{part}.weight"] = Expected((n, k), "fp8", why)
            exp[f"{part}.weight_scale"] = Expected((num_blocks(n), num_blocks(k)), "scale", why)
    for hf in (names.HF_K_SCALE, names.HF_V_SCALE):
        exp[hf] = Expected((), "kv", "a per-layer KV-cache scale", optional=True)
    return exp


@dataclass
class ModelOptCheckpoint:
    """A ModelOpt export directory: config, quantization config and lazily read tensors."""

    path: Path
    config: dict[str, Any]
    spec: Gemma4Spec
    quant: QuantConfig
    entries: dict[str, TensorEntry]
    tensor_file: str  # the index (sharded exports) or the single safetensors file: named in "missing" errors
    _handles: dict[Path, Any] = field(default_factory=dict, repr=False)

    # ---- opening ------------------------------------------------------------------------------------------------
    @classmethod
    def open(cls, path: str | Path) -> ModelOptCheckpoint:
        """Read config.json, the quantization config and every safetensors header (no tensor data yet)."""
        path = Path(path)
        if not path.exists():
            raise CheckpointError(str(path), None, "a ModelOpt export directory", "no such file or directory")
        if not path.is_dir():
            raise CheckpointError(str(path), None, "a directory (config.json + *.safetensors)", "a file")
        cfg_file = path / "config.json"
        if not cfg_file.exists():
            if not any(path.iterdir()):
                raise CheckpointError(
                    str(path), None, "a ModelOpt export (config.json + model.safetensors)", "an empty directory"
                )
            raise CheckpointError(str(cfg_file), None, "the model's config.json", "no such file")
        cfg = load_json(cfg_file)
        spec = spec_from_config(cfg, str(cfg_file))
        quant = read_quant_config(path, cfg, cfg_file)
        index = path / INDEX_FILE
        weight_map: dict[str, str] | None = None
        if index.exists():
            weight_map = load_json(index).get("weight_map")
            if not isinstance(weight_map, dict) or not weight_map:
                raise CheckpointError(str(index), None, "a 'weight_map' of tensor -> shard file", "none")
            files = []
            for shard in sorted(set(weight_map.values())):
                if not (path / shard).exists():
                    first = next(n for n, f in weight_map.items() if f == shard)
                    raise CheckpointError(str(index), first, f"shard file {shard}", "no such file")
                files.append(path / shard)
            tensor_file = str(index)
        else:
            files = sorted(path.glob("*.safetensors"))
            if not files:
                raise CheckpointError(
                    str(path),
                    None,
                    "model.safetensors (or shards + model.safetensors.index.json)",
                    "no .safetensors file",
                )
            tensor_file = str(files[0]) if len(files) == 1 else str(path / "*.safetensors")
        entries: dict[str, TensorEntry] = {}
        for f in files:
            found, _ = read_header(f)
            for name, e in found.items():
                if name in entries:
                    raise CheckpointError(
                        str(f), name, f"one copy of each tensor (also in {entries[name].file.name})", "a second copy"
                    )
                entries[name] = e
        if weight_map is not None:
            for name, shard in weight_map.items():
                if name not in entries or entries[name].file.name != shard:
                    where = entries[name].file.name if name in entries else "no shard"
                    raise CheckpointError(str(index), name, f"the tensor in {shard}", f"it is in {where}")
            for name, e in entries.items():
                if name not in weight_map:
                    raise CheckpointError(str(e.file), name, f"every tensor listed in {INDEX_FILE}", "not listed")
        return cls(path=path, config=cfg, spec=spec, quant=quant, entries=entries, tensor_file=tensor_file)

    def close(self) -> None:
        """Drop the memory maps."""
        self._handles.clear()

    def __enter__(self) -> ModelOptCheckpoint:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- what the export says -------------------------------------------------------------------------------
    @property
    def quant_algo(self) -> str | None:
        return self.quant.quant_algo

    @property
    def kv_cache_quant_algo(self) -> str | None:
        return self.quant.kv_cache_quant_algo

    @property
    def modelopt_version(self) -> str | None:
        return self.quant.modelopt_version

    @property
    def prefix(self) -> str:
        """Key prefix of the text model: 'model.language_model.' (multimodal) or 'model.' (text-only)."""
        return names.hf_prefix(self.spec.multimodal)

    def text_key(self, rel: str) -> str:
        """Full key of a text-model tensor, e.g. text_key('norm.weight')."""
        return self.prefix + rel

    def layer_key(self, layer: int, rel: str) -> str:
        """Full key of a layer tensor, e.g. layer_key(0, 'self_attn.q_proj.weight')."""
        return names.hf_layer(self.prefix, layer, rel)

    # ---- tensors -------------------------------------------------------------------------------------------
    def keys(self) -> list[str]:
        return sorted(self.entries)

    def __contains__(self, name: str) -> bool:
        return name in self.entries

    def entry(self, name: str) -> TensorEntry:
        """File, dtype, shape and byte range of a tensor (no data read)."""
        try:
            return self.entries[name]
        except KeyError:
            raise CheckpointError(self.tensor_file, name, "this tensor", "no such tensor") from None

    def _handle(self, file: Path) -> Any:
        h = self._handles.get(file)
        if h is None:
            try:
                h = safe_open(str(file), framework="pt")
            except SafetensorError as e:
                raise CheckpointError(str(file), None, "a readable safetensors file", str(e)) from None
            self._handles[file] = h
        return h

    def tensor(self, name: str) -> torch.Tensor:
        """The tensor `name`, read from the memory map (a CPU copy of this tensor only)."""
        e = self.entry(name)
        return self._handle(e.file).get_tensor(name)

    def slice(self, name: str) -> Any:
        """A lazy slice object: `ckpt.slice(name)[a:b]` reads only those rows."""
        e = self.entry(name)
        return self._handle(e.file).get_slice(name)

    def is_quantized(self, module: str) -> bool:
        """True if `module.weight` is float8_e4m3fn and `module.weight_scale` exists."""
        w = self.entries.get(f"{module}.weight")
        return w is not None and w.dtype == FP8 and f"{module}.weight_scale" in self.entries

    def weight_scale_grid(self, module: str) -> torch.Tensor:
        """`module.weight_scale` as float32 [ceil(N/128), ceil(K/128)], whichever of the three forms is stored."""
        w = self.entry(f"{module}.weight")
        s = self.entry(f"{module}.weight_scale")
        if len(w.shape) != 2:
            raise CheckpointError(str(w.file), w.name, "a 2-D [out, in] weight", f"shape {list(w.shape)}")
        nb, kb = num_blocks(w.shape[0]), num_blocks(w.shape[1])
        forms = [(nb, 1, kb, 1), (nb, kb)] + ([()] if nb == kb == 1 else [])
        if s.shape not in forms:
            shown = " or ".join(str(list(f)) for f in forms)
            raise CheckpointError(
                str(s.file),
                s.name,
                f"a scale grid of {nb}x{kb} 128x128 blocks for weight {list(w.shape)}: shape {shown}",
                f"shape {list(s.shape)}",
            )
        if s.dtype != torch.float32:
            raise CheckpointError(str(s.file), s.name, "float32 block scales", dtype_name(s.dtype))
        return self.tensor(s.name).reshape(nb, kb)

    def dequantized(self, module: str, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The weight of a quantized module as `dtype` [N, K] (q * block scale); a float weight as it is."""
        if not self.is_quantized(module):
            return self.tensor(f"{module}.weight").to(dtype)
        return dequantize_blocks(self.tensor(f"{module}.weight"), self.weight_scale_grid(module), dtype)

    def kv_scales(self, layer: int) -> tuple[float, float] | None:
        """(k_scale, v_scale) of a decoder layer, or None when the export has none (fp8_cast)."""
        k, v = self.layer_key(layer, names.HF_K_SCALE), self.layer_key(layer, names.HF_V_SCALE)
        if k not in self.entries and v not in self.entries:
            return None
        return float(self.tensor(k).reshape(-1)[0]), float(self.tensor(v).reshape(-1)[0])

    def layer_indices(self) -> list[int]:
        """Decoder layer indices present in the tensors."""
        pat = re.compile(re.escape(self.prefix) + r"layers\.(\d+)\.")
        return sorted({int(m.group(1)) for n in self.entries if (m := pat.match(n))})

    def bytes_by_dtype(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for e in self.entries.values():
            out[dtype_name(e.dtype)] = out.get(dtype_name(e.dtype), 0) + e.nbytes
        return dict(sorted(out.items(), key=lambda kv: -kv[1]))

    def iter_layer_tensors(self, layer: int) -> Iterator[tuple[str, TensorEntry]]:
        """(name relative to the layer, entry) of every tensor of a layer."""
        lp = self.layer_key(layer, "")
        for n in sorted(self.entries):
            if n.startswith(lp):
                yield n[len(lp) :], self.entries[n]

    @property
    def kv_scales_version_ok(self) -> bool:
        """True if the exporting ModelOpt measured post-norm K/V for k_scale/v_scale (>= 0.27)."""
        v = parse_version(self.modelopt_version)
        return v is not None and v[:2] >= MIN_KV_SCALE_VERSION

    # ---- validation ----------------------------------------------------------------------------------------
    def validate(self) -> None:
        """Check the WHOLE export before anything is written; raise CheckpointError on the first problem."""
        self._check_quant_config()
        self._check_text_prefix()
        self._check_layer_count()
        self._check_text_globals()
        for i in self.spec.layer_range:
            self._check_layer(i)
        self._check_kv_scales()
        self._check_embedders()
        self._check_unexpected()

    def _check_quant_config(self) -> None:
        q = self.quant
        if q.quant_algo is None:
            raise CheckpointError(
                str(self.path / "hf_quant_config.json"),
                None,
                f"a ModelOpt export with quant_algo {SUPPORTED_QUANT_ALGO} (hf_quant_config.json or config.json "
                "quantization_config)",
                "no quantization config (an unquantized checkpoint?)",
            )
        if q.quant_algo.lower() != SUPPORTED_QUANT_ALGO:
            raise CheckpointError(
                q.file, None, f"quant_algo {SUPPORTED_QUANT_ALGO} (128x128 block FP8, weight-only)", repr(q.quant_algo)
            )
        if (q.kv_cache_quant_algo or "").upper() != "FP8":
            raise CheckpointError(q.file, None, "kv_cache_quant_algo FP8", repr(q.kv_cache_quant_algo))

    def _check_text_prefix(self) -> None:
        key = self.text_key("embed_tokens.weight")
        if key in self.entries:
            return
        other = names.hf_prefix(not self.spec.multimodal)
        form = "multimodal (text_config in config.json)" if self.spec.multimodal else "text-only"
        if other + "embed_tokens.weight" in self.entries:
            raise CheckpointError(
                self.tensor_file,
                key,
                f"text-model keys under '{self.prefix}' for a {form} config",
                f"keys under '{other}'",
            )
        raise CheckpointError(self.tensor_file, key, "the token embedding", "no such tensor")

    def _check_layer_count(self) -> None:
        n = self.spec.num_layers
        present = self.layer_indices()
        if present == list(range(n)):
            return
        expected = f"{n} decoder layers (num_hidden_layers {n} in config.json)"
        extra = [i for i in present if i >= n]
        if extra:
            name = next(k for k in self.keys() if k.startswith(self.layer_key(extra[0], "")))
            raise CheckpointError(
                str(self.entries[name].file),
                name,
                expected,
                f"tensors for {len(present)} layers (up to layers.{present[-1]})",
            )
        missing = sorted(set(range(n)) - set(present))
        raise CheckpointError(
            self.tensor_file,
            self.layer_key(missing[0], "*"),
            expected,
            f"no tensors for layer {missing[0]} ({len(present)} layers present)",
        )

    def _check_float(self, name: str, shape: tuple[int, ...], why: str) -> None:
        e = self.entry(name)
        if e.dtype not in FLOAT_DTYPES:
            raise CheckpointError(str(e.file), name, "bfloat16 (not quantized)", dtype_name(e.dtype))
        if e.shape != shape:
            raise CheckpointError(
                str(e.file), name, f"shape {list(shape)} ({why} in config.json)", f"shape {list(e.shape)}"
            )

    def _check_text_globals(self) -> None:
        s = self.spec
        self._check_float(
            self.text_key("embed_tokens.weight"),
            (s.vocab_size, s.hidden_size),
            f"vocab_size {s.vocab_size} x hidden_size {s.hidden_size}",
        )
        self._check_float(self.text_key("norm.weight"), (s.hidden_size,), f"hidden_size {s.hidden_size}")
        if not s.tie_word_embeddings:
            raise CheckpointError(
                self.tensor_file,
                "lm_head.weight",
                "a tied LM head (tie_word_embeddings true)",
                "tie_word_embeddings false",
            )

    def _check_scale_values(self, name: str, t: torch.Tensor, what: str) -> None:
        bad = ~(torch.isfinite(t) & (t > 0))
        if bool(bad.any()):
            idx = [int(x) for x in bad.nonzero()[0]] if t.dim() else []
            where = f" at block {idx}" if idx else ""
            value = float(t[tuple(idx)] if idx else t)
            raise CheckpointError(str(self.entries[name].file), name, f"finite positive {what}", f"{value:.6g}{where}")

    def _check_quantized(self, module: str, shape: tuple[int, int], why: str) -> None:
        w = self.entry(f"{module}.weight")
        if w.dtype != FP8:
            raise CheckpointError(str(w.file), w.name, "float8_e4m3fn (a quantized linear)", dtype_name(w.dtype))
        if w.shape != shape:
            raise CheckpointError(
                str(w.file), w.name, f"shape {list(shape)} ({why} in config.json)", f"shape {list(w.shape)}"
            )
        grid = self.weight_scale_grid(module)
        self._check_scale_values(f"{module}.weight_scale", grid, "block scales (dequant multipliers)")

    def _check_layer(self, i: int) -> None:
        exp = expected_layer_tensors(self.spec, i)
        present = dict(self.iter_layer_tensors(i))
        kind = self.spec.layer_types[i]
        for rel, e in exp.items():
            if rel not in present and not e.optional:
                raise CheckpointError(
                    self.tensor_file,
                    self.layer_key(i, rel),
                    f"this tensor in {kind} layer {i} ({e.why})",
                    "no such tensor",
                )
        for rel, entry in present.items():
            if rel not in exp:
                hint = ""
                if rel.startswith("self_attn.v_proj.") and not self.spec.has_v_proj(i):
                    hint = "a global layer with attention_k_eq_v has no v_proj: V is derived from k_proj"
                raise CheckpointError(
                    str(entry.file),
                    entry.name,
                    f"only the tensors of a {kind} layer (layer {i})",
                    f"an unexpected {dtype_name(entry.dtype)} {list(entry.shape)} tensor",
                    hint,
                )
        for rel, e in exp.items():
            name = self.layer_key(i, rel)
            if e.kind == "float":
                self._check_float(name, e.shape, e.why)
            elif e.kind == "fp8":
                n, k = e.shape
                self._check_quantized(name.removesuffix(".weight"), (n, k), e.why)
            elif e.kind == "kv" and rel in present:
                t = present[rel]
                if t.dtype != torch.float32 or t.shape not in ((), (1,)):
                    raise CheckpointError(
                        str(t.file), t.name, "a float32 scalar KV-cache scale", f"{dtype_name(t.dtype)} {list(t.shape)}"
                    )
                self._check_scale_values(name, self.tensor(name), "KV-cache scale")

    def _check_kv_scales(self) -> None:
        # All layers carry both scales, or none does (ModelOpt fp8_cast writes none: the cache then uses 1.0).
        have = {
            (i, rel): self.layer_key(i, rel) in self.entries
            for i in self.spec.layer_range
            for rel in (names.HF_K_SCALE, names.HF_V_SCALE)
        }
        if any(have.values()) and not all(have.values()):
            i, rel = next(k for k, v in have.items() if not v)
            raise CheckpointError(
                self.tensor_file,
                self.layer_key(i, rel),
                "KV-cache scales on every layer (other layers have them)",
                "no such tensor",
            )

    def _check_embedders(self) -> None:
        s = self.spec
        vision = [n for n in self.entries if n.startswith(VISION_PREFIXES)]
        audio = [n for n in self.entries if n.startswith(AUDIO_PREFIX)]
        if not s.multimodal:
            return  # any such key is reported by _check_unexpected
        for n in vision:
            e = self.entries[n]
            if e.dtype not in FLOAT_DTYPES or n.endswith("weight_scale"):
                raise CheckpointError(
                    str(e.file), n, "bfloat16 (the vision embedder is excluded from quantization)", dtype_name(e.dtype)
                )
        if s.vision_embed_dim is not None and s.vision_patch_dim is not None:
            self._check_float(
                "model.vision_embedder.patch_dense.weight",
                (s.vision_embed_dim, s.vision_patch_dim),
                f"vision mm_embed_dim {s.vision_embed_dim} x patch values {s.vision_patch_dim}",
            )
            self._check_float(
                "model.embed_vision.embedding_projection.weight",
                (s.hidden_size, s.vision_embed_dim),
                f"hidden_size {s.hidden_size} x vision mm_embed_dim {s.vision_embed_dim}",
            )
        if s.audio_embed_dim is not None:
            module = AUDIO_PREFIX + "embedding_projection"
            shape = (s.hidden_size, s.audio_embed_dim)
            why = f"hidden_size {s.hidden_size} x audio_embed_dim {s.audio_embed_dim}"
            if self.entry(f"{module}.weight").dtype == FP8:
                self._check_quantized(module, shape, why)
            else:
                self._check_float(f"{module}.weight", shape, why)
                if f"{module}.weight_scale" in self.entries:
                    e = self.entries[f"{module}.weight_scale"]
                    raise CheckpointError(
                        str(e.file), e.name, "no weight_scale for a bfloat16 weight", "a weight_scale"
                    )
            for n in audio:
                if n not in (f"{module}.weight", f"{module}.weight_scale"):
                    e = self.entries[n]
                    raise CheckpointError(
                        str(e.file),
                        n,
                        f"only the audio embedding_projection under '{AUDIO_PREFIX}'",
                        f"{dtype_name(e.dtype)} {list(e.shape)}",
                    )

    def _check_unexpected(self) -> None:
        text_globals = {self.text_key("embed_tokens.weight"), self.text_key("norm.weight")}
        layer_key = re.compile(re.escape(self.prefix) + r"layers\.\d+\.")  # checked per layer already
        known = VISION_PREFIXES + (AUDIO_PREFIX,) if self.spec.multimodal else ()
        for n in self.keys():
            if n in text_globals or layer_key.match(n) or (known and n.startswith(known)):
                continue
            e = self.entries[n]
            hint = "the LM head is tied to the embedding and not stored" if n.startswith("lm_head") else ""
            raise CheckpointError(
                str(e.file), n, "no such tensor in a Gemma-4 export", f"{dtype_name(e.dtype)} {list(e.shape)}", hint
            )
