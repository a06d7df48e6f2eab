"""Triton python model `preprocessing`: the user's text in the checkpoint's chat template, as token ids.

Also fills what the engine needs from the checkpoint: the sampling defaults of generation_config.json where the
request sets none, the end token, end-of-turn as a stop token, and the suppressed tokens as single-token bad
words. Rejects prompts that do not fit the deployment's max_input_len / max_seq_len with a message saying so.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils
from gemma4_text import RequestError, TextCodec, flatten_word_lists


def _param(config: dict, key: str) -> str | None:
    value = config.get("parameters", {}).get(key, {}).get("string_value")
    return None if value is None or value.startswith("${") else value


def _resolve(model_dir: str, path: str) -> str:
    p = Path(path)
    return str(p if p.is_absolute() else (Path(model_dir) / p).resolve())


def _scalar(request, name: str, default=None):
    t = pb_utils.get_input_tensor_by_name(request, name)
    if t is None:
        return default
    a = t.as_numpy().reshape(-1)
    if a.size == 0:
        return default
    v = a[0]
    return v.decode("utf-8") if isinstance(v, bytes) else v.item()


def _words(request, name: str) -> list[str]:
    t = pb_utils.get_input_tensor_by_name(request, name)
    if t is None:
        return []
    return [w.decode("utf-8") if isinstance(w, bytes) else str(w) for w in t.as_numpy().reshape(-1)]


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        config = json.loads(args["model_config"])
        tokenizer_dir = _param(config, "tokenizer_dir")
        if not tokenizer_dir:
            raise pb_utils.TritonModelException("preprocessing: parameter tokenizer_dir is not set")
        self.codec = TextCodec(_resolve(args["model_repository"], tokenizer_dir))
        self.max_input_len = int(_param(config, "max_input_len") or 0)
        self.max_seq_len = int(_param(config, "max_seq_len") or 0)

    def _one(self, request) -> pb_utils.InferenceResponse:
        cfg = self.codec.config
        query = _scalar(request, "QUERY")
        if query is None:
            raise RequestError("text_input is empty")
        max_tokens = int(_scalar(request, "REQUEST_OUTPUT_LEN", 0))
        if max_tokens < 1:
            raise RequestError(f"max_tokens must be at least 1, got {max_tokens}")
        chat = bool(_scalar(request, "APPLY_CHAT_TEMPLATE", True))
        thinking = bool(_scalar(request, "ENABLE_THINKING", False))
        ids = self.codec.encode(self.codec.prompt(query, chat=chat, enable_thinking=thinking))
        if not ids:
            raise RequestError("the prompt encodes to no tokens")
        if self.max_input_len and len(ids) > self.max_input_len:
            raise RequestError(
                f"prompt too long: {len(ids)} tokens (after the chat template), this deployment accepts at most "
                f"{self.max_input_len} (max_input_len)"
            )
        if self.max_seq_len and len(ids) + max_tokens > self.max_seq_len:
            raise RequestError(
                f"prompt ({len(ids)} tokens) + max_tokens ({max_tokens}) exceed max_seq_len {self.max_seq_len}: "
                f"ask for at most {max(self.max_seq_len - len(ids), 0)} tokens"
            )
        # End of turn stops generation like eos does; the engine's end_id is the first end token.
        end_id = int(_scalar(request, "END_ID", cfg.end_id))
        stop = [[t] for t in cfg.stop_ids if t != end_id] + self.codec.words_to_ids(_words(request, "STOP_WORDS_DICT"))
        bad = [[t] for t in cfg.suppress_ids] + self.codec.words_to_ids(_words(request, "BAD_WORDS_DICT"))
        s = cfg.sampling
        greedy_default = s.greedy
        temperature = _scalar(request, "TEMPERATURE", s.temperature)
        top_k = _scalar(request, "TOP_K", 1 if greedy_default else s.top_k)
        top_p = _scalar(request, "TOP_P", s.top_p)
        out = {
            "INPUT_ID": np.array([ids], np.int32),
            "REQUEST_INPUT_LEN": np.array([[len(ids)]], np.int32),
            "REQUEST_OUTPUT_LEN_OUT": np.array([[max_tokens]], np.int32),
            "BAD_WORDS_IDS": np.array([flatten_word_lists(bad)], np.int32),
            "STOP_WORDS_IDS": np.array([flatten_word_lists(stop)], np.int32),
            "OUT_END_ID": np.array([[end_id]], np.int32),
            "OUT_PAD_ID": np.array([[int(_scalar(request, "PAD_ID", cfg.pad_id))]], np.int32),
            "OUT_TEMPERATURE": np.array([[float(temperature)]], np.float32),
            "OUT_TOP_K": np.array([[int(top_k)]], np.int32),
            "OUT_TOP_P": np.array([[float(top_p)]], np.float32),
        }
        return pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor(k, v) for k, v in out.items()])

    def execute(self, requests: list) -> list:
        responses = []
        for request in requests:
            try:
                responses.append(self._one(request))
            except (RequestError, ValueError, UnicodeDecodeError) as e:
                responses.append(pb_utils.InferenceResponse(error=pb_utils.TritonError(f"preprocessing: {e}")))
        return responses
