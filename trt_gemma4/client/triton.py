"""Clients for the packaged repository's `ensemble` / `tensorrt_llm_bls` models (any Triton endpoint).

* `GrpcClient`: gRPC bidirectional streaming (ModelStreamInfer) for decoupled models, one stream per request,
  the end detected by Triton's `triton_final_response` parameter (with enable_empty_final_response);
* `HttpClient`: Triton's HTTP generate extension, `generate` (one JSON answer) and `generate_stream` (SSE).

Both give the same `Chunk`s (text, token ids, arrival time), honour an overall timeout, cancel the request on the
server when the caller stops reading (closing the stream) or the timeout expires, and turn server errors into
`ServerError` with the server's own message.
"""

from __future__ import annotations

import json
import queue
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from trt_gemma4.errors import Gemma4Error


class ServerError(Gemma4Error):
    """The server refused or failed the request; the message is the server's."""


class RequestTimeout(ServerError):
    """No answer within the client's timeout (the request was cancelled)."""


# input name -> numpy dtype, as the ensemble and tensorrt_llm_bls declare them (triton_repo/ensemble/config.pbtxt)
INPUT_DTYPES: dict[str, Any] = {
    "text_input": np.object_,
    "max_tokens": np.int32,
    "bad_words": np.object_,
    "stop_words": np.object_,
    "end_id": np.int32,
    "pad_id": np.int32,
    "temperature": np.float32,
    "top_k": np.int32,
    "top_p": np.float32,
    "repetition_penalty": np.float32,
    "presence_penalty": np.float32,
    "frequency_penalty": np.float32,
    "min_tokens": np.int32,
    "seed": np.uint64,
    "stream": np.bool_,
    "exclude_input_in_output": np.bool_,
    "apply_chat_template": np.bool_,
    "enable_thinking": np.bool_,
}


@dataclass
class GenerateRequest:
    """One generation request. Unset sampling fields take the checkpoint's generation_config defaults."""

    text: str
    max_tokens: int = 64
    temperature: float | None = None
    top_k: int | None = None  # 1: greedy
    top_p: float | None = None
    seed: int | None = None
    min_tokens: int | None = None
    repetition_penalty: float | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    stop_words: list[str] = field(default_factory=list)
    bad_words: list[str] = field(default_factory=list)
    enable_thinking: bool | None = None  # default off (the chat template's switch)
    apply_chat_template: bool | None = None  # default on: text is the user's message
    exclude_input_in_output: bool | None = None

    def fields(self, stream: bool) -> dict[str, Any]:
        """Input name -> value for the set fields (the names of the ensemble's inputs)."""
        d: dict[str, Any] = {"text_input": self.text, "max_tokens": self.max_tokens, "stream": stream}
        for name in (
            "temperature",
            "top_k",
            "top_p",
            "seed",
            "min_tokens",
            "repetition_penalty",
            "presence_penalty",
            "frequency_penalty",
            "enable_thinking",
            "apply_chat_template",
            "exclude_input_in_output",
        ):
            v = getattr(self, name)
            if v is not None:
                d[name] = v
        if self.stop_words:
            d["stop_words"] = list(self.stop_words)
        if self.bad_words:
            d["bad_words"] = list(self.bad_words)
        return d


@dataclass
class Chunk:
    """One response: its text (a delta when streaming), its token ids and when it arrived (time.monotonic)."""

    text: str
    token_ids: list[int]
    arrival: float


@dataclass
class GenerateResult:
    text: str
    token_ids: list[int]
    chunks: list[Chunk]
    start: float
    end: float

    @property
    def ttft(self) -> float | None:
        """Seconds to the first chunk carrying tokens."""
        first = next((c.arrival for c in self.chunks if c.token_ids or c.text), None)
        return None if first is None else first - self.start


def collect(chunks: Iterator[Chunk], start: float) -> GenerateResult:
    got = list(chunks)
    ids = [t for c in got for t in c.token_ids]
    return GenerateResult("".join(c.text for c in got), ids, got, start, time.monotonic())


def type_problems(payload: dict[str, Any]) -> list[str]:
    """Fields of a generate payload whose JSON type does not fit the ensemble's input type."""
    out = []
    for name, value in payload.items():
        dtype = INPUT_DTYPES.get(name)
        if dtype is None:
            continue
        values = value if isinstance(value, list) else [value]
        if dtype is np.object_:
            ok = all(isinstance(v, str) for v in values)
        elif dtype is np.bool_:
            ok = all(isinstance(v, bool) for v in values)
        elif np.issubdtype(np.dtype(dtype), np.integer):
            ok = all(isinstance(v, int) and not isinstance(v, bool) for v in values)
        else:
            ok = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
        if not ok:
            kind = {np.object_: "a string", np.bool_: "true/false"}.get(dtype, f"a number ({np.dtype(dtype).name})")
            out.append(f"{name} must be {kind}, got {value!r}")
    return out


def _ids(v: Any) -> list[int]:
    if v is None:
        return []
    return [int(x) for x in np.asarray(v).reshape(-1)]


def _text(v: Any) -> str:
    if v is None:
        return ""
    parts = np.asarray(v, dtype=object).reshape(-1)
    return "".join(p.decode("utf-8", errors="replace") if isinstance(p, bytes) else str(p) for p in parts)


def _split_url(url: str, default_scheme: str) -> tuple[str, str]:
    if "://" in url:
        scheme, rest = url.split("://", 1)
        return scheme, rest.rstrip("/")
    return default_scheme, url.rstrip("/")


class GrpcClient:
    """gRPC streaming client (decoupled models): `stream()` yields chunks as the server sends them."""

    def __init__(self, url: str, model: str = "ensemble", timeout: float = 120.0) -> None:
        _, self.url = _split_url(url, "grpc")
        self.model = model
        self.timeout = timeout

    def _inputs(self, fields: dict[str, Any]) -> list[Any]:
        import tritonclient.grpc as grpcclient
        from tritonclient.utils import np_to_triton_dtype

        out = []
        for name, value in fields.items():
            dtype = INPUT_DTYPES.get(name, np.object_)
            a = np.array([value if isinstance(value, list) else [value]], dtype=dtype)
            if dtype is np.object_:
                a = np.vectorize(lambda s: s.encode("utf-8") if isinstance(s, str) else s, otypes=[object])(a)
            t = grpcclient.InferInput(name, list(a.shape), np_to_triton_dtype(a.dtype))
            t.set_data_from_numpy(a)
            out.append(t)
        return out

    def stream(self, request: GenerateRequest, *, stream: bool = True, timeout: float | None = None) -> Iterator[Chunk]:
        """Yield the responses of one request. Closing the iterator early cancels the request on the server."""
        import tritonclient.grpc as grpcclient
        from tritonclient.utils import InferenceServerException

        deadline = time.monotonic() + (timeout or self.timeout)
        results: queue.Queue[Any] = queue.Queue()

        def callback(result: Any = None, error: Any = None) -> None:  # called by keyword (result=, error=)
            results.put(error if error is not None else result)

        client = grpcclient.InferenceServerClient(self.url)
        finished = False
        try:
            client.start_stream(callback=callback)
            client.async_stream_infer(
                self.model,
                self._inputs(request.fields(stream)),
                request_id=uuid.uuid4().hex,
                enable_empty_final_response=True,
            )
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise RequestTimeout(
                        f"{self.model}: no complete answer within {timeout or self.timeout:g} s (request cancelled)"
                    )
                try:
                    item = results.get(timeout=min(left, 1.0))
                except queue.Empty:
                    continue
                if isinstance(item, InferenceServerException):
                    finished = True
                    raise ServerError(f"{self.model}: {item.message()}")
                response = item.get_response()
                text, ids = _text(item.as_numpy("text_output")), _ids(item.as_numpy("output_ids"))
                if text or ids:
                    yield Chunk(text, ids, time.monotonic())
                final = response.parameters.get("triton_final_response")
                if final is not None and final.bool_param:
                    finished = True
                    return
        except InferenceServerException as e:
            raise ServerError(f"{self.model}: {e.message()}") from None
        finally:
            try:
                client.stop_stream(cancel_requests=not finished)
            finally:
                client.close()

    def generate(
        self, request: GenerateRequest, *, stream: bool = True, timeout: float | None = None
    ) -> GenerateResult:
        start = time.monotonic()
        return collect(self.stream(request, stream=stream, timeout=timeout), start)


class HttpClient:
    """Triton's HTTP generate extension: `generate` (one JSON object) and `generate_stream` (server-sent events)."""

    def __init__(self, url: str, model: str = "ensemble", timeout: float = 120.0) -> None:
        scheme, rest = _split_url(url, "http")
        self.base = f"{'https' if scheme == 'https' else 'http'}://{rest}"
        self.model = model
        self.timeout = timeout

    def _open(self, endpoint: str, payload: dict[str, Any], timeout: float) -> Any:
        req = urllib.request.Request(
            f"{self.base}/v2/models/{self.model}/{endpoint}",
            data=json.dumps(payload).encode(),
            headers={"Content-Type": "application/json"},
        )
        try:
            return urllib.request.urlopen(req, timeout=timeout)
        except urllib.error.HTTPError as e:
            body = e.read().decode(errors="replace").strip()
            if body.startswith("data:"):  # an SSE stream that failed on its first response
                body = body[len("data:") :].strip()
            try:
                msg = json.loads(body).get("error", body)
            except json.JSONDecodeError:
                msg = body
            raise ServerError(f"{self.model}: HTTP {e.code}: {msg}") from None
        except TimeoutError:
            raise RequestTimeout(f"{self.model}: no answer within {timeout:g} s") from None
        except urllib.error.URLError as e:
            raise ServerError(f"{self.model}: cannot reach {self.base}: {e.reason}") from None

    def generate_json(self, payload: dict[str, Any], timeout: float | None = None) -> dict[str, Any]:
        """POST a raw generate payload; the JSON answer, or ServerError with the server's message."""
        try:
            with self._open("generate", payload, timeout or self.timeout) as r:
                out = json.loads(r.read())
        except ServerError as e:
            problems = type_problems(payload)
            if problems and not isinstance(e, RequestTimeout):  # Triton's JSON parse errors name no input
                raise ServerError(f"{e} (request fields of the wrong type: {'; '.join(problems)})") from None
            raise
        if "error" in out:
            raise ServerError(f"{self.model}: {out['error']}")
        return out

    def generate(self, request: GenerateRequest, timeout: float | None = None) -> GenerateResult:
        start = time.monotonic()
        out = self.generate_json(request.fields(stream=False), timeout)
        chunk = Chunk(_text(out.get("text_output")), _ids(out.get("output_ids")), time.monotonic())
        return GenerateResult(chunk.text, chunk.token_ids, [chunk], start, chunk.arrival)

    def stream_json(self, payload: dict[str, Any], timeout: float | None = None) -> Iterator[dict[str, Any]]:
        """POST a raw payload to generate_stream; yield each event's JSON. Errors may come after a 200 (SSE)."""
        limit = timeout or self.timeout
        deadline = time.monotonic() + limit
        with self._open("generate_stream", payload, limit) as r:
            for _ in range(1 << 20):  # bounded: far more events than any request produces
                if time.monotonic() > deadline:
                    raise RequestTimeout(f"{self.model}: stream not finished within {limit:g} s (closed)")
                try:
                    line = r.readline()
                except TimeoutError:
                    raise RequestTimeout(f"{self.model}: no event within {limit:g} s (closed)") from None
                if not line:
                    return
                line = line.strip()
                if not line.startswith(b"data:"):
                    continue
                event = json.loads(line[5:])
                if "error" in event:
                    raise ServerError(f"{self.model}: {event['error']}")
                yield event

    def stream(self, request: GenerateRequest, timeout: float | None = None) -> Iterator[Chunk]:
        for event in self.stream_json(request.fields(stream=True), timeout):
            text, ids = _text(event.get("text_output")), _ids(event.get("output_ids"))
            if text or ids:
                yield Chunk(text, ids, time.monotonic())

    def generate_streaming(self, request: GenerateRequest, timeout: float | None = None) -> GenerateResult:
        start = time.monotonic()
        return collect(self.stream(request, timeout), start)

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.base}/v2/health/ready", timeout=5) as r:
                return r.status == 200
        except OSError:
            return False


def make_client(url: str, model: str = "ensemble", timeout: float = 120.0) -> GrpcClient | HttpClient:
    """grpc://host:port -> GrpcClient; http(s)://host:port or host:port -> HttpClient."""
    scheme, _ = _split_url(url, "http")
    if scheme == "grpc":
        return GrpcClient(url, model, timeout)
    if scheme in ("http", "https"):
        return HttpClient(url, model, timeout)
    raise Gemma4Error(f"{url}: unknown scheme {scheme!r} (use grpc://HOST:PORT or http://HOST:PORT)")
