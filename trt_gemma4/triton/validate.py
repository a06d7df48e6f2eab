"""Check a Triton model repository against Triton's own schema, and check the ensemble's wiring.

The schema is tritonclient's `model_config_pb2.ModelConfig` (the server's protobuf, research/triton.md §4):
parsing with google.protobuf.text_format rejects unknown fields, bad enums and bad types. The wiring check sees
what the schema cannot: every ensemble step feeds each required input of its model from a tensor that exists
(an ensemble input or an earlier step's output) with the same data type, every mapped name is a real input or
output of that model, every ensemble input is used, every produced tensor is consumed, every ensemble output
is produced.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trt_gemma4.errors import Gemma4Error

PLACEHOLDER = re.compile(r"\$\{[A-Za-z0-9_]+\}")


class RepositoryError(Gemma4Error):
    """A generated config.pbtxt breaks Triton's schema or the ensemble's wiring; the message names the file."""


def _pb() -> Any:
    try:
        from tritonclient.grpc import model_config_pb2
    except ImportError:
        raise Gemma4Error(
            "validating Triton configs needs tritonclient (the 'triton' extra): pip install 'trt-gemma4[triton]'"
        ) from None
    return model_config_pb2


def parse_config(text: str, where: str = "config.pbtxt") -> Any:
    """Parse config.pbtxt text into Triton's ModelConfig; raise RepositoryError naming `where` on any problem."""
    from google.protobuf import text_format

    pb = _pb()
    cfg = pb.ModelConfig()
    try:
        text_format.Parse(text, cfg)
    except text_format.ParseError as e:
        raise RepositoryError(f"{where}: not a valid Triton model config: {e}") from None
    left = PLACEHOLDER.findall(text_format.MessageToString(cfg))
    if left:
        raise RepositoryError(f"{where}: template placeholders left unfilled: {sorted(set(left))}")
    if not (cfg.backend or cfg.platform):
        raise RepositoryError(f"{where}: neither backend nor platform is set")
    if not cfg.name:
        raise RepositoryError(f"{where}: the model has no name")
    return cfg


def _dtype_name(dt: int) -> str:
    return _pb().DataType.Name(dt)


@dataclass(frozen=True)
class _Tensor:
    dtype: int
    producer: str


def check_ensemble(ensemble: Any, models: dict[str, Any], where: str = "ensemble") -> None:
    """Wiring of one ensemble config against its composing models' configs (all Triton ModelConfig)."""
    tensors: dict[str, _Tensor] = {i.name: _Tensor(i.data_type, "ensemble input") for i in ensemble.input}
    consumed: set[str] = set()
    if not ensemble.ensemble_scheduling.step:
        raise RepositoryError(f"{where}: ensemble has no steps")
    for n, step in enumerate(ensemble.ensemble_scheduling.step):
        name = step.model_name
        if name not in models:
            raise RepositoryError(f"{where}: step {n} runs model '{name}', which is not in the repository")
        model = models[name]
        inputs = {i.name: i for i in model.input}
        outputs = {o.name: o for o in model.output}
        for key, tensor in step.input_map.items():
            if key not in inputs:
                raise RepositoryError(f"{where}: step '{name}' maps '{key}', which is not an input of '{name}'")
            if tensor not in tensors:
                raise RepositoryError(
                    f"{where}: step '{name}' input '{key}' reads '{tensor}', which no ensemble input or earlier step "
                    "produces"
                )
            if tensors[tensor].dtype != inputs[key].data_type:
                raise RepositoryError(
                    f"{where}: step '{name}' input '{key}' is {_dtype_name(inputs[key].data_type)} but '{tensor}' "
                    f"({tensors[tensor].producer}) is {_dtype_name(tensors[tensor].dtype)}"
                )
            consumed.add(tensor)
        missing = [i.name for i in model.input if not i.optional and i.name not in step.input_map]
        if missing:
            raise RepositoryError(f"{where}: step '{name}' does not feed required input(s) {missing}")
        for key, tensor in step.output_map.items():
            if key not in outputs:
                raise RepositoryError(f"{where}: step '{name}' maps '{key}', which is not an output of '{name}'")
            if tensor in tensors:
                raise RepositoryError(f"{where}: tensor '{tensor}' is produced twice ({tensors[tensor].producer})")
            tensors[tensor] = _Tensor(outputs[key].data_type, f"output '{key}' of '{name}'")
    for o in ensemble.output:
        if o.name not in tensors:
            raise RepositoryError(f"{where}: ensemble output '{o.name}' is produced by no step")
        if tensors[o.name].dtype != o.data_type:
            raise RepositoryError(
                f"{where}: ensemble output '{o.name}' is {_dtype_name(o.data_type)} but {tensors[o.name].producer} "
                f"is {_dtype_name(tensors[o.name].dtype)}"
            )
        consumed.add(o.name)
    unused = [i.name for i in ensemble.input if i.name not in consumed]
    if unused:
        raise RepositoryError(f"{where}: ensemble input(s) {unused} feed no step")
    dangling = sorted(t for t, v in tensors.items() if t not in consumed and v.producer != "ensemble input")
    if dangling:
        raise RepositoryError(f"{where}: tensor(s) {dangling} are produced but consumed by no step or output")
    for name in {s.model_name for s in ensemble.ensemble_scheduling.step}:
        mb = models[name].max_batch_size
        if ensemble.max_batch_size > mb:
            raise RepositoryError(
                f"{where}: max_batch_size {ensemble.max_batch_size} exceeds that of step model '{name}' ({mb})"
            )


def validate_repository(repo: str | Path) -> dict[str, Any]:
    """Parse every <model>/config.pbtxt of a model repository and check each ensemble; returns name -> config."""
    repo = Path(repo)
    models: dict[str, Any] = {}
    dirs = sorted(p for p in repo.iterdir() if p.is_dir())
    if not dirs:
        raise RepositoryError(f"{repo}: no model directories")
    for d in dirs:
        f = d / "config.pbtxt"
        if not f.is_file():
            raise RepositoryError(f"{d}: no config.pbtxt (Triton would fail to load this directory as a model)")
        cfg = parse_config(f.read_text(), str(f))
        if cfg.name != d.name:
            raise RepositoryError(f"{f}: name '{cfg.name}' differs from its directory '{d.name}'")
        if cfg.backend == "python" and not any((d / v / "model.py").is_file() for v in _versions(d)):
            raise RepositoryError(f"{d}: python backend model without <version>/model.py")
        models[cfg.name] = cfg
    for name, cfg in models.items():
        if cfg.platform == "ensemble":
            check_ensemble(cfg, models, str(repo / name / "config.pbtxt"))
    return models


def _versions(model_dir: Path) -> list[str]:
    return sorted(p.name for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit())
