"""Triton python model `tensorrt_llm_bls`: the ensemble's request handled in one model (business logic scripting).

Calls `preprocessing`, then `tensorrt_llm` (decoupled when it is), and turns the token stream into text deltas
with an incremental detokenizer, so a streamed character spread over several byte tokens arrives whole. Client
cancellation is passed on to the engine request.
"""

from __future__ import annotations

import json
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils
from gemma4_text import IncrementalDetokenizer, TextCodec

FINAL = pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL

# ensemble input name -> (model, its input name); the preprocessing outputs feed tensorrt_llm as in the ensemble
TO_PREPROCESSING = {
    "text_input": "QUERY",
    "max_tokens": "REQUEST_OUTPUT_LEN",
    "bad_words": "BAD_WORDS_DICT",
    "stop_words": "STOP_WORDS_DICT",
    "end_id": "END_ID",
    "pad_id": "PAD_ID",
    "temperature": "TEMPERATURE",
    "top_k": "TOP_K",
    "top_p": "TOP_P",
    "apply_chat_template": "APPLY_CHAT_TEMPLATE",
    "enable_thinking": "ENABLE_THINKING",
}
PREPROCESSING_TO_ENGINE = {
    "INPUT_ID": "input_ids",
    "REQUEST_INPUT_LEN": "input_lengths",
    "REQUEST_OUTPUT_LEN_OUT": "request_output_len",
    "BAD_WORDS_IDS": "bad_words_list",
    "STOP_WORDS_IDS": "stop_words_list",
    "OUT_END_ID": "end_id",
    "OUT_PAD_ID": "pad_id",
    "OUT_TEMPERATURE": "temperature",
    "OUT_TOP_K": "runtime_top_k",
    "OUT_TOP_P": "runtime_top_p",
}
TO_ENGINE = {
    "repetition_penalty": "repetition_penalty",
    "presence_penalty": "presence_penalty",
    "frequency_penalty": "frequency_penalty",
    "min_tokens": "min_tokens",
    "seed": "seed",
    "stream": "streaming",
    "exclude_input_in_output": "exclude_input_in_output",
}


def _param(config: dict, key: str) -> str | None:
    value = config.get("parameters", {}).get(key, {}).get("string_value")
    return None if value is None or value.startswith("${") else value


def _response(text: str, ids: list[int]) -> pb_utils.InferenceResponse:
    return pb_utils.InferenceResponse(
        output_tensors=[
            pb_utils.Tensor("text_output", np.array([[text.encode("utf-8")]], dtype=object)),
            pb_utils.Tensor("output_ids", np.array([[ids]], np.int32).reshape(1, 1, len(ids))),
        ]
    )


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        config = json.loads(args["model_config"])
        tokenizer_dir = _param(config, "tokenizer_dir")
        if not tokenizer_dir:
            raise pb_utils.TritonModelException("tensorrt_llm_bls: parameter tokenizer_dir is not set")
        p = Path(tokenizer_dir)
        self.codec = TextCodec(p if p.is_absolute() else (Path(args["model_repository"]) / p).resolve())
        self.preprocessing = _param(config, "preprocessing_model_name") or "preprocessing"
        self.engine = _param(config, "tensorrt_llm_model_name") or "tensorrt_llm"
        self.engine_decoupled = (_param(config, "tensorrt_llm_decoupled") or "true").lower() == "true"
        self.pool = ThreadPoolExecutor(max_workers=max(int(config.get("max_batch_size") or 1), 1))

    def _preprocess(self, request) -> dict[str, pb_utils.Tensor]:
        inputs = []
        for src, dst in TO_PREPROCESSING.items():
            t = pb_utils.get_input_tensor_by_name(request, src)
            if t is not None:
                inputs.append(pb_utils.Tensor(dst, t.as_numpy()))
        resp = pb_utils.InferenceRequest(
            model_name=self.preprocessing, inputs=inputs, requested_output_names=list(PREPROCESSING_TO_ENGINE)
        ).exec()
        if resp.has_error():
            raise pb_utils.TritonModelException(resp.error().message())
        return {
            PREPROCESSING_TO_ENGINE[t.name()]: pb_utils.Tensor(PREPROCESSING_TO_ENGINE[t.name()], t.as_numpy())
            for t in resp.output_tensors()
        }

    def _stop_engine_request(self, engine_id: str) -> None:
        """TensorRT-LLM's way to cancel: a request carrying `stop` and the same request id."""
        stop = pb_utils.InferenceRequest(
            model_name=self.engine,
            request_id=engine_id,
            requested_output_names=["output_ids"],
            inputs=[
                pb_utils.Tensor("input_ids", np.zeros((1, 1), np.int32)),
                pb_utils.Tensor("input_lengths", np.ones((1, 1), np.int32)),
                pb_utils.Tensor("request_output_len", np.ones((1, 1), np.int32)),
                pb_utils.Tensor("stop", np.ones((1, 1), bool)),
            ],
        )
        for _ in stop.exec(decoupled=True) if self.engine_decoupled else [stop.exec()]:
            pass

    def _run(self, request) -> None:
        sender = request.get_response_sender()
        engine_inputs = self._preprocess(request)
        for src, dst in TO_ENGINE.items():
            t = pb_utils.get_input_tensor_by_name(request, src)
            if t is not None:
                engine_inputs[dst] = pb_utils.Tensor(dst, t.as_numpy().reshape(1, -1))
        t = pb_utils.get_input_tensor_by_name(request, "stream")
        streaming = bool(t is not None and t.as_numpy().reshape(-1)[0])
        if streaming and not self.engine_decoupled:
            raise pb_utils.TritonModelException("stream=true needs tensorrt_llm packaged without --no-decoupled")
        engine_id = f"bls-{uuid.uuid4().hex}"
        engine_request = pb_utils.InferenceRequest(
            model_name=self.engine,
            inputs=list(engine_inputs.values()),
            request_id=engine_id,
            requested_output_names=["output_ids", "sequence_length"],
        )
        responses = engine_request.exec(decoupled=True) if self.engine_decoupled else [engine_request.exec()]
        detok = IncrementalDetokenizer(self.codec)
        all_ids: list[int] = []
        pending: list[int] = []  # ids whose text is held back (an incomplete character) until it completes
        for resp in responses:
            if request.is_cancelled():
                self._stop_engine_request(engine_id)
                for _ in responses:  # the engine ends the stopped request at its next step: drain it
                    pass
                sender.send(pb_utils.InferenceResponse(error=pb_utils.TritonError("request cancelled")), flags=FINAL)
                return
            if resp.has_error():
                raise pb_utils.TritonModelException(resp.error().message())
            out = pb_utils.get_output_tensor_by_name(resp, "output_ids")
            if out is None:  # the engine's empty final response
                continue
            lengths = pb_utils.get_output_tensor_by_name(resp, "sequence_length").as_numpy().reshape(-1)
            ids = out.as_numpy()[0, 0, : int(lengths[0])].tolist()
            all_ids.extend(ids)
            if streaming:
                pending.extend(ids)
                delta = detok.add(ids)
                if delta:
                    sender.send(_response(delta, pending))
                    pending = []
        if streaming:
            tail = detok.flush()
            sender.send(_response(tail, pending) if tail or pending else None, flags=FINAL)
        else:
            sender.send(_response(self.codec.decode(all_ids), all_ids), flags=FINAL)

    def _serve(self, request) -> None:
        try:
            self._run(request)
        except pb_utils.TritonModelException as e:
            request.get_response_sender().send(
                pb_utils.InferenceResponse(error=pb_utils.TritonError(f"tensorrt_llm_bls: {e}")), flags=FINAL
            )

    def execute(self, requests: list) -> None:
        # Decoupled: responses may follow after execute returns, so requests run side by side in the pool.
        for request in requests:
            self.pool.submit(self._serve, request)
        return None

    def finalize(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=False)
