"""The `reference` variant's engine: the torch backend behind TensorRT-LLM's request semantics, on the CPU.

An in-flight batcher like the engine's: every step runs the prompts of newly admitted requests and one token of
every running request through `TorchBackend.forward` together, then samples each request's next token with its
own settings (temperature, top-k, top-p, penalties, bad words, min tokens, seed) and stops it on its end id, a stop
sequence (end of turn), max tokens or cancellation. Responses go out through a per-request callback, so the
Triton model streams token by token exactly as the decoupled C++ backend does.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from trt_gemma4.errors import Gemma4Error


class GenerationError(Gemma4Error):
    """A request the reference engine cannot run (the message says what to change)."""


@dataclass
class SamplingParams:
    """One request's generation settings, with TensorRT-LLM's meanings and defaults."""

    max_new_tokens: int
    end_id: int
    stop_sequences: list[list[int]] = field(default_factory=list)
    bad_sequences: list[list[int]] = field(default_factory=list)
    temperature: float = 1.0
    top_k: int = 0  # 0: off; 1: greedy
    top_p: float = 0.0  # 0 or >= 1: off
    repetition_penalty: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    min_tokens: int = 0
    seed: int = 0

    @property
    def greedy(self) -> bool:
        return self.top_k == 1 or self.temperature <= 0.0


@dataclass
class TokenEvent:
    """What the batcher reports for a request: one new token, or the end (finished / error)."""

    token: int | None
    logprob: float
    finished: bool
    reason: str = ""  # "end_id", "stop", "length", "cancelled" or "error"
    error: str | None = None
    first_token_time_ns: int = 0


def _mask_bad_words(logits: torch.Tensor, generated: list[int], bad: list[list[int]]) -> None:
    for seq in bad:
        *prefix, last = seq
        if not prefix or (len(generated) >= len(prefix) and generated[-len(prefix) :] == prefix):
            logits[last] = float("-inf")


def next_token(
    logits: torch.Tensor, prompt: list[int], generated: list[int], p: SamplingParams, gen: torch.Generator
) -> tuple[int, float]:
    """Sample one token from fp32 logits [vocab]; returns (token, log-probability under the sampled distribution)."""
    x = logits.float().clone()
    history = prompt + generated
    if p.repetition_penalty != 1.0 and history:
        idx = torch.tensor(sorted(set(history)), dtype=torch.long)
        vals = x[idx]
        x[idx] = torch.where(vals > 0, vals / p.repetition_penalty, vals * p.repetition_penalty)
    if generated and (p.presence_penalty or p.frequency_penalty):
        ids, counts = torch.unique(torch.tensor(generated, dtype=torch.long), return_counts=True)
        x[ids] -= p.presence_penalty + p.frequency_penalty * counts.float()
    _mask_bad_words(x, generated, p.bad_sequences)
    if len(generated) < p.min_tokens:
        x[p.end_id] = float("-inf")
        for seq in p.stop_sequences:
            if len(seq) == 1:
                x[seq[0]] = float("-inf")
    if p.greedy:
        tok = int(torch.argmax(x))
        return tok, float(torch.log_softmax(x, -1)[tok])
    x = x / p.temperature
    if p.top_k > 0 and p.top_k < x.numel():
        kth = torch.topk(x, p.top_k).values[-1]
        x[x < kth] = float("-inf")
    if 0.0 < p.top_p < 1.0:
        sorted_x, order = torch.sort(x, descending=True)
        probs = torch.softmax(sorted_x, -1)
        drop = torch.cumsum(probs, -1) - probs > p.top_p  # keep the smallest set whose mass reaches top_p
        x[order[drop]] = float("-inf")
    logp = torch.log_softmax(x, -1)
    tok = int(torch.multinomial(logp.exp(), 1, generator=gen))
    return tok, float(logp[tok])


def stopped_by(generated: list[int], p: SamplingParams) -> str:
    """Why generation ends after the last token ("" if it goes on)."""
    if generated and generated[-1] == p.end_id:
        return "end_id"
    for seq in p.stop_sequences:
        if seq and generated[-len(seq) :] == seq:
            return "stop"
    if len(generated) >= p.max_new_tokens:
        return "length"
    return ""


Callback = Callable[[TokenEvent], None]


@dataclass
class _Request:
    prompt: list[int]
    params: SamplingParams
    callback: Callback
    is_cancelled: Callable[[], bool]
    generated: list[int] = field(default_factory=list)
    seq_id: int | None = None
    gen: torch.Generator = field(default_factory=torch.Generator)
    first_token_ns: int = 0
    undeliverable: bool = False  # its callback failed: treated as cancelled

    def cancelled(self) -> bool:
        return self.undeliverable or self.is_cancelled()


class InflightBatcher:
    """Runs requests on a TorchBackend in one background thread, batching every step across requests."""

    def __init__(self, backend: object, max_batch_size: int, max_seq_len: int, idle_wait_s: float = 0.05) -> None:
        self.backend = backend
        self.max_batch_size = max_batch_size
        self.max_seq_len = max_seq_len
        self.idle_wait_s = idle_wait_s
        self._incoming: queue.Queue[_Request] = queue.Queue()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="reference-batcher", daemon=True)
        self._thread.start()

    @classmethod
    def from_checkpoint(cls, checkpoint: str | Path, max_batch_size: int, max_seq_len: int) -> InflightBatcher:
        """Load the converted checkpoint into the torch backend (fp32 on the CPU) with a cache for the batch."""
        from trt_gemma4.backends.torch_backend import CacheConfig, TorchBackend

        backend = TorchBackend(
            str(checkpoint), cache=CacheConfig(max_seq_len=max_seq_len, max_sequences=max_batch_size)
        )
        return cls(backend, max_batch_size, max_seq_len)

    def submit(
        self, prompt: list[int], params: SamplingParams, callback: Callback, is_cancelled: Callable[[], bool]
    ) -> None:
        """Queue a request; `callback` gets every token, then a finished event (also on errors)."""
        vocab = self.backend.spec.vocab_size  # type: ignore[attr-defined]
        if not prompt:
            raise GenerationError("input_ids is empty")
        if any(not 0 <= t < vocab for t in prompt):
            raise GenerationError(f"input_ids hold token ids outside the vocabulary [0, {vocab})")
        if params.max_new_tokens < 1:
            raise GenerationError(f"request_output_len must be at least 1, got {params.max_new_tokens}")
        if len(prompt) + params.max_new_tokens > self.max_seq_len:
            raise GenerationError(
                f"input ({len(prompt)} tokens) + request_output_len ({params.max_new_tokens}) exceed "
                f"max_seq_len {self.max_seq_len}"
            )
        r = _Request(list(prompt), params, callback, is_cancelled)
        r.gen.manual_seed(params.seed)
        self._incoming.put(r)

    def close(self, timeout: float = 30.0) -> None:
        """Stop the loop; every request still queued or running ends with an error (so its stream is closed)."""
        self._stop.set()
        self._thread.join(timeout)

    # -- the loop --
    def _finish(self, r: _Request, reason: str, error: str | None = None) -> None:
        if r.seq_id is not None:
            self.backend.free(r.seq_id)  # type: ignore[attr-defined]
            r.seq_id = None
        self._deliver(r, TokenEvent(None, 0.0, True, reason, error, r.first_token_ns))

    @staticmethod
    def _deliver(r: _Request, ev: TokenEvent) -> None:
        """Hand an event to the request's callback; a failing callback (its client is gone) cancels the request."""
        try:
            r.callback(ev)
        except Exception:
            r.undeliverable = True

    def _loop(self) -> None:
        running: list[_Request] = []
        try:
            self._serve(running)
        finally:  # unloading: nothing may be left without its final event
            for r in running:
                self._finish(r, "error", "the model is being unloaded")
            while True:
                try:
                    self._finish(self._incoming.get_nowait(), "error", "the model is being unloaded")
                except queue.Empty:
                    break

    def _serve(self, running: list[_Request]) -> None:
        while not self._stop.is_set():
            new: list[_Request] = []
            while len(running) + len(new) < self.max_batch_size:
                try:
                    wait = self.idle_wait_s if not running and not new else 0.0
                    r = self._incoming.get(timeout=wait) if wait else self._incoming.get_nowait()
                except queue.Empty:
                    break
                if r.cancelled():
                    self._finish(r, "cancelled")
                    continue
                new.append(r)
            for r in [r for r in running if r.cancelled()]:
                running.remove(r)
                self._finish(r, "cancelled")
            if not running and not new:
                continue
            try:
                self._step(running, new)
            except Exception as e:  # a failing step fails its requests, never the server
                for r in running + new:
                    self._finish(r, "error", f"{type(e).__name__}: {e}")
                running.clear()
                continue
            running[:] = [r for r in running + new if r.seq_id is not None]

    def _step(self, running: list[_Request], new: list[_Request]) -> None:
        for r in new:
            r.seq_id = self.backend.add_sequence()  # type: ignore[attr-defined]
        batch = [(r.seq_id, r.prompt) for r in new] + [(r.seq_id, [r.generated[-1]]) for r in running]
        out = self.backend.forward(batch)  # type: ignore[attr-defined]
        now = time.time_ns()
        for r, logits in zip(new + running, out.logits):
            tok, logp = next_token(logits[-1], r.prompt, r.generated, r.params, r.gen)
            r.generated.append(tok)
            if not r.first_token_ns:
                r.first_token_ns = now
            self._deliver(r, TokenEvent(tok, logp, False, first_token_time_ns=r.first_token_ns))
            reason = stopped_by(r.generated, r.params)
            if reason:
                self._finish(r, reason)
