"""Triton python model `postprocessing`: generated token ids -> text, end/pad tokens removed."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils
from gemma4_text import TextCodec


def _param(config: dict, key: str) -> str | None:
    value = config.get("parameters", {}).get(key, {}).get("string_value")
    return None if value is None or value.startswith("${") else value


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        config = json.loads(args["model_config"])
        tokenizer_dir = _param(config, "tokenizer_dir")
        if not tokenizer_dir:
            raise pb_utils.TritonModelException("postprocessing: parameter tokenizer_dir is not set")
        p = Path(tokenizer_dir)
        self.codec = TextCodec(p if p.is_absolute() else (Path(args["model_repository"]) / p).resolve())

    def execute(self, requests: list) -> list:
        responses = []
        for request in requests:
            tokens = pb_utils.get_input_tensor_by_name(request, "TOKENS_BATCH").as_numpy()  # [1, beams, len]
            lengths = pb_utils.get_input_tensor_by_name(request, "SEQUENCE_LENGTH").as_numpy()  # [1, beams]
            texts = []
            for beam in range(tokens.shape[1]):
                n = int(lengths[0, beam]) if lengths.size else tokens.shape[2]
                texts.append(self.codec.decode(tokens[0, beam, :n].tolist()).encode("utf-8"))
            out = pb_utils.Tensor("OUTPUT", np.array([texts], dtype=object))
            responses.append(pb_utils.InferenceResponse(output_tensors=[out]))
        return responses
