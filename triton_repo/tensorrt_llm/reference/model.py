"""Triton python model `tensorrt_llm`, reference variant: this package's torch backend on the converted checkpoint.

Same inputs, outputs and streaming behaviour as the TensorRT-LLM C++ backend: decoupled, one response per token
when `streaming` is set (only the new token), the final flag on the last data response, one response with every
token otherwise; `exclude_input_in_output` as the model parameter says unless the request sets it; `stop` cancels
the in-flight request with the same request id. Runs on the CPU, batching requests in flight
(trt_gemma4.triton.reference.InflightBatcher).
"""

from __future__ import annotations

import json
import threading

import numpy as np
import triton_python_backend_utils as pb_utils

from trt_gemma4.triton.reference import GenerationError, InflightBatcher, SamplingParams, TokenEvent

FINAL = pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL
UNSUPPORTED = ("beam_width",)  # inputs whose non-default values the reference engine cannot honour


def _param(config: dict, key: str) -> str | None:
    value = config.get("parameters", {}).get(key, {}).get("string_value")
    return None if value is None or value.startswith("${") else value


def _scalar(request, name: str, default=None):
    t = pb_utils.get_input_tensor_by_name(request, name)
    if t is None:
        return default
    a = t.as_numpy().reshape(-1)
    return default if a.size == 0 else a[0].item()


def _word_list(request, name: str) -> list[list[int]]:
    t = pb_utils.get_input_tensor_by_name(request, name)
    if t is None:
        return []
    rows = t.as_numpy().reshape(2, -1).tolist()
    out, start = [], 0
    for end in rows[1]:
        if end < 0:
            break
        out.append(rows[0][start:end])
        start = end
    return [w for w in out if w]


def _tensors(ids: list[int], logprobs: list[float], n_input: int) -> list:
    n = len(ids)
    arrays = {
        "output_ids": np.array([[ids]], np.int32).reshape(1, 1, n),
        "sequence_length": np.array([[n]], np.int32),
        "cum_log_probs": np.array([[sum(logprobs)]], np.float32),
        "output_log_probs": np.array([[logprobs]], np.float32).reshape(1, 1, len(logprobs)),
        "batch_index": np.zeros((1, 1), np.int32),
        "sequence_index": np.zeros((1, 1), np.int32),
        "num_input_tokens": np.array([[n_input]], np.int32),
        "num_output_tokens": np.array([[n]], np.int32),
    }
    return [pb_utils.Tensor(k, v) for k, v in arrays.items()]


class _Stream:
    """One request's responses: sent as tokens arrive (streaming) or gathered into one (non-streaming)."""

    def __init__(self, request, prompt: list[int], streaming: bool, include_input: bool) -> None:
        self.request = request
        self.sender = request.get_response_sender()
        self.prompt = prompt
        self.streaming = streaming
        self.include_input = include_input
        self.ids: list[int] = []
        self.logprobs: list[float] = []
        self.pending: tuple[int, float] | None = None  # held back so the final flag rides on the last token
        self.count = 0  # tokens generated
        self.stopped = False
        self.done = threading.Event()

    def cancelled(self) -> bool:
        return self.stopped or self.request.is_cancelled()

    def _send(self, response=None, flags: int = 0) -> bool:
        """Send one response; a failure (the client is gone) is logged and stops the request."""
        try:
            self.sender.send(response, flags=flags)
            return True
        except Exception as e:  # pb_utils raises TritonModelException; nothing else may escape into the batcher
            pb_utils.Logger.log_warn(f"tensorrt_llm: request {self.request.request_id()!r}: sending failed: {e}")
            self.stopped = True
            return False

    def _data(self, ids: list[int], logprobs: list[float]) -> pb_utils.InferenceResponse:
        return pb_utils.InferenceResponse(output_tensors=_tensors(ids, logprobs, len(self.prompt)))

    def on_event(self, ev: TokenEvent) -> None:
        if not ev.finished:
            self.count += 1
            if self.streaming:
                if self.pending is not None:
                    self._send(self._data([self.pending[0]], [self.pending[1]]))
                self.pending = (ev.token, ev.logprob)
            else:
                self.ids.append(ev.token)
                self.logprobs.append(ev.logprob)
            return
        if ev.reason == "cancelled":
            pb_utils.Logger.log_info(
                f"tensorrt_llm: request {self.request.request_id()!r} cancelled after {self.count} tokens"
            )
        try:
            if ev.error is not None:
                final = pb_utils.InferenceResponse(error=pb_utils.TritonError(f"tensorrt_llm: {ev.error}"))
            elif self.streaming:
                final = self._data([self.pending[0]], [self.pending[1]]) if self.pending is not None else None
            else:
                ids = (self.prompt + self.ids) if self.include_input else self.ids
                lp = ([0.0] * len(self.prompt) + self.logprobs) if self.include_input else self.logprobs
                final = self._data(ids, lp)
            if not self._send(final, FINAL) and final is not None:
                self._send(None, FINAL)  # the request must end even when its last data cannot be sent
        finally:
            self.done.set()


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        config = json.loads(args["model_config"])
        self.decoupled = pb_utils.using_decoupled_model_transaction_policy(config)
        checkpoint = _param(config, "checkpoint_dir")
        if not checkpoint:
            raise pb_utils.TritonModelException("tensorrt_llm (reference): parameter checkpoint_dir is not set")
        self.exclude_input = (_param(config, "exclude_input_in_output") or "false").lower() == "true"
        max_batch = int(config.get("max_batch_size") or 1)
        max_seq_len = int(_param(config, "max_seq_len") or 512)
        self.batcher = InflightBatcher.from_checkpoint(checkpoint, max_batch, max_seq_len)
        self.inflight: dict[str, _Stream] = {}
        self.lock = threading.Lock()

    def _params(self, request) -> SamplingParams:
        for name in UNSUPPORTED:
            v = _scalar(request, name)
            if v is not None and int(v) != 1:
                raise GenerationError(f"{name}={v} is not supported by the reference engine (use 1)")
        end_id = _scalar(request, "end_id")
        if end_id is None:
            raise GenerationError("end_id is required by the reference engine (the ensemble's preprocessing sets it)")
        return SamplingParams(
            max_new_tokens=int(_scalar(request, "request_output_len", 0)),
            end_id=int(end_id),
            stop_sequences=_word_list(request, "stop_words_list"),
            bad_sequences=_word_list(request, "bad_words_list"),
            temperature=float(_scalar(request, "temperature", 1.0)),
            top_k=int(_scalar(request, "runtime_top_k", 0)),
            top_p=float(_scalar(request, "runtime_top_p", 0.0)),
            repetition_penalty=float(_scalar(request, "repetition_penalty", 1.0)),
            presence_penalty=float(_scalar(request, "presence_penalty", 0.0)),
            frequency_penalty=float(_scalar(request, "frequency_penalty", 0.0)),
            min_tokens=int(_scalar(request, "min_tokens", 0)),
            seed=int(_scalar(request, "seed", 0)),
        )

    def _start(self, request) -> _Stream | None:
        rid = request.request_id()
        if bool(_scalar(request, "stop", False)):  # TensorRT-LLM: `stop` cancels the request with this id
            with self.lock:
                target = self.inflight.get(rid)
            if target is not None:
                target.stopped = True
            request.get_response_sender().send(flags=FINAL)
            return None
        ids_t = pb_utils.get_input_tensor_by_name(request, "input_ids")
        if ids_t is None:
            raise GenerationError("input_ids is required")
        prompt = ids_t.as_numpy().reshape(-1).astype(np.int64).tolist()
        n = _scalar(request, "input_lengths")
        if n is not None:
            prompt = prompt[: int(n)]
        streaming = bool(_scalar(request, "streaming", False))
        if streaming and not self.decoupled:
            raise GenerationError("streaming needs the decoupled transaction policy (package without --no-decoupled)")
        include = not bool(_scalar(request, "exclude_input_in_output", self.exclude_input))
        stream = _Stream(request, prompt, streaming, include)
        params = self._params(request)
        with self.lock:
            if rid:
                self.inflight[rid] = stream

        def callback(ev: TokenEvent) -> None:
            stream.on_event(ev)
            if ev.finished and rid:
                with self.lock:
                    if self.inflight.get(rid) is stream:
                        del self.inflight[rid]

        self.batcher.submit(prompt, params, callback, stream.cancelled)
        return stream

    def execute(self, requests: list) -> list | None:
        streams = []
        for request in requests:
            try:
                s = self._start(request)
            except (GenerationError, ValueError) as e:
                request.get_response_sender().send(
                    pb_utils.InferenceResponse(error=pb_utils.TritonError(f"tensorrt_llm: {e}")), flags=FINAL
                )
                continue
            if s is not None:
                streams.append(s)
        if not self.decoupled:  # the responses must be sent before execute returns
            for s in streams:
                s.done.wait()  # the batcher always ends a request: finished, stopped, cancelled or failed
        return None

    def finalize(self) -> None:
        self.batcher.close()
