"""Inspect and validate a ModelOpt fp8_pb_wo export: spec, shapes, quantization, sizes, KV-cache scales.

Shows the model's numbers, the tensors of each layer type (dtype, shape, 128x128 scale blocks), which linears are
quantized and which are not, bytes by precision, and the KV-cache scales (min..max per layer type). The whole
checkpoint is validated first (the same checks as convert); a problem is reported as one line naming the file and
tensor. --json prints everything as JSON, with the KV scales of every layer."""

from __future__ import annotations

import argparse
import json
from typing import Any

HELP = __doc__ or ""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("ckpt", help="ModelOpt export directory (config.json, hf_quant_config.json, *.safetensors)")
    p.add_argument("--json", action="store_true", help="print a JSON report instead of text")


def _mb(n: int) -> str:
    return f"{n / 1e6:.2f} MB" if n >= 1e5 else f"{n / 1e3:.1f} kB"


def report(ckpt: Any) -> dict[str, Any]:
    """Everything `inspect` shows, as a JSON-able dict (ckpt: a validated ModelOptCheckpoint)."""
    from trt_gemma4.checkpoint.modelopt import FP8
    from trt_gemma4.checkpoint.safetensors_writer import dtype_name

    spec = ckpt.spec
    layer_types: dict[str, Any] = {}
    for kind in dict.fromkeys(spec.layer_types):
        layers = [i for i, t in enumerate(spec.layer_types) if t == kind]
        tensors = {}
        for rel, e in ckpt.iter_layer_tensors(layers[0]):
            info: dict[str, Any] = {"dtype": dtype_name(e.dtype), "shape": list(e.shape)}
            if rel.endswith(".weight") and e.dtype == FP8:
                info["scale_blocks"] = list(ckpt.weight_scale_grid(ckpt.layer_key(layers[0], rel[:-7])).shape)
            tensors[rel] = info
        layer_types[kind] = {"layers": layers, "tensors": tensors}
    quantized, not_quantized = [], []
    for name in ckpt.keys():
        if name.endswith(".weight") and len(ckpt.entry(name).shape) == 2:
            module = name[: -len(".weight")]
            (quantized if ckpt.is_quantized(module) else not_quantized).append(module)
    per_layer = []
    summary: dict[str, dict[str, float]] = {}
    for i in spec.layer_range:
        scales = ckpt.kv_scales(i)
        if scales is None:
            continue
        k, v = scales
        per_layer.append({"layer": i, "type": spec.layer_types[i], "k_scale": k, "v_scale": v})
        s = summary.setdefault(spec.layer_types[i], {"k_min": k, "k_max": k, "v_min": v, "v_max": v})
        s.update(k_min=min(s["k_min"], k), k_max=max(s["k_max"], k), v_min=min(s["v_min"], v), v_max=max(s["v_max"], v))
    files = sorted({e.file for e in ckpt.entries.values()})
    return {
        "path": str(ckpt.path),
        "files": [{"name": f.name, "bytes": f.stat().st_size} for f in files],
        "quant_algo": ckpt.quant_algo,
        "kv_cache_quant_algo": ckpt.kv_cache_quant_algo,
        "modelopt_version": ckpt.modelopt_version,
        "summary": spec.summary(),
        "spec": spec.to_dict(),
        "layer_types": layer_types,
        "quantized_modules": quantized,
        "not_quantized_modules": not_quantized,
        "bytes_by_dtype": ckpt.bytes_by_dtype(),
        "kv_scales": {
            "present": bool(per_layer),
            "per_layer": per_layer,
            "by_layer_type": summary,
            "trusted_by_version": ckpt.kv_scales_version_ok,
        },
    }


def _ranges(layers: list[int]) -> str:
    out, start = [], None
    for a, b in zip(layers, layers[1:] + [None]):
        start = a if start is None else start
        if b != a + 1:
            out.append(str(a) if start == a else f"{start}-{a}")
            start = None
    return ", ".join(out)


def _print_text(r: dict[str, Any]) -> None:
    print(f"checkpoint {r['path']}: " + ", ".join(f"{f['name']} ({_mb(f['bytes'])})" for f in r["files"]))
    print(
        f"  quant_algo {r['quant_algo']}, kv_cache_quant_algo {r['kv_cache_quant_algo']}, "
        f"exported by ModelOpt {r['modelopt_version'] or '(unknown version)'}"
    )
    print(f"  {r['summary']}")
    for kind, lt in r["layer_types"].items():
        print(f"{kind} layers ({len(lt['layers'])}: {_ranges(lt['layers'])}):")
        for rel, info in lt["tensors"].items():
            blocks = f"  scale blocks {info['scale_blocks']}" if "scale_blocks" in info else ""
            print(f"  {rel:<44} {info['dtype']:<14} {info['shape']}{blocks}")
    q, nq = r["quantized_modules"], r["not_quantized_modules"]
    print(f"quantized (fp8 + 128x128 block scales): {len(q)} linears")
    print(f"not quantized: {', '.join(nq) if nq else 'none'}")
    print("bytes by precision: " + ", ".join(f"{k} {_mb(v)}" for k, v in r["bytes_by_dtype"].items()))
    kv = r["kv_scales"]
    if not kv["present"]:
        print("KV-cache scales: none in the export (the cache uses 1.0)")
    else:
        trust = "" if kv["trusted_by_version"] else " (exported before ModelOpt 0.27: measured pre-norm, not used)"
        print(f"KV-cache scales: in all {len(kv['per_layer'])} layers{trust}")
        for kind, s in kv["by_layer_type"].items():
            print(
                f"  {kind:<8} k_scale {s['k_min']:.4g} .. {s['k_max']:.4g}   "
                f"v_scale {s['v_min']:.4g} .. {s['v_max']:.4g}"
            )
    print("validation: OK")


def run(args: argparse.Namespace) -> int:
    from trt_gemma4.checkpoint.modelopt import ModelOptCheckpoint

    with ModelOptCheckpoint.open(args.ckpt) as ckpt:
        ckpt.validate()
        r = report(ckpt)
    if args.json:
        print(json.dumps(r, indent=2))
    else:
        _print_text(r)
    return 0
