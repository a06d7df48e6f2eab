"""Text side of serving: the checkpoint's chat template, tokenization, sampling defaults and stop tokens.

This module is copied next to the python-backend models of the Triton repository (as `gemma4_text.py`), where
it runs inside the serving container (transformers 4.57 there is too old for Gemma-4): so it imports nothing
from this package and needs only `tokenizers`, `jinja2` and the standard library. Everything comes from the
checkpoint's own files — tokenizer.json, tokenizer_config.json (or chat_template.jinja) and
generation_config.json — nothing about the model's tokens is written here.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "generation_config.json",
    "chat_template.jinja",
    "chat_template.json",
    "special_tokens_map.json",
)


class TextConfigError(ValueError):
    """The tokenizer files are missing or inconsistent; the message names the file."""


class RequestError(ValueError):
    """A request the model cannot serve (prompt too long, bad parameter); the message says what to change."""


@dataclass(frozen=True)
class Sampling:
    """Sampling defaults as the checkpoint's generation_config.json states them."""

    temperature: float = 1.0
    top_k: int = 0  # 0: no top-k filter
    top_p: float = 1.0
    greedy: bool = False  # generation_config do_sample false


@dataclass(frozen=True)
class TextConfig:
    """Everything the pre/postprocessing models need, read from one tokenizer directory."""

    directory: str
    chat_template: str | None
    special: dict[str, str]  # bos_token / eos_token / pad_token as text, for the template
    end_id: int  # the first end token: the engine's end_id
    stop_ids: tuple[int, ...]  # every token that ends a turn (eos ids of generation_config + tokenizer eos)
    pad_id: int
    suppress_ids: tuple[int, ...]  # never generated (generation_config suppress_tokens)
    sampling: Sampling
    model_max_length: int | None
    extra: dict[str, Any] = field(default_factory=dict)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise TextConfigError(f"{path}: not valid JSON ({e.msg} at line {e.lineno})") from None


def _token_text(v: Any) -> str | None:
    """tokenizer_config stores special tokens as strings or as AddedToken dicts."""
    if isinstance(v, dict):
        return v.get("content")
    return v if isinstance(v, str) else None


def _ids(v: Any) -> list[int]:
    if v is None:
        return []
    return [int(x) for x in v] if isinstance(v, list) else [int(v)]


def load_text_config(directory: str | Path) -> TextConfig:
    """Read tokenizer_config.json, generation_config.json and the chat template of a checkpoint directory."""
    from tokenizers import Tokenizer

    d = Path(directory)
    if not (d / "tokenizer.json").is_file():
        raise TextConfigError(f"{d}: no tokenizer.json (the checkpoint's tokenizer files are needed)")
    tok = Tokenizer.from_file(str(d / "tokenizer.json"))
    tcfg = _read_json(d / "tokenizer_config.json") if (d / "tokenizer_config.json").is_file() else {}
    gcfg = _read_json(d / "generation_config.json") if (d / "generation_config.json").is_file() else {}

    template = tcfg.get("chat_template")
    if isinstance(template, list):  # named templates: [{"name": "default", "template": ...}, ...]
        named = {t.get("name"): t.get("template") for t in template}
        template = named.get("default") or next(iter(named.values()), None)
    if (d / "chat_template.jinja").is_file():  # transformers >= 4.47 writes the template to its own file
        template = (d / "chat_template.jinja").read_text(encoding="utf-8")
    elif template is None and (d / "chat_template.json").is_file():
        template = _read_json(d / "chat_template.json").get("chat_template")

    special = {k: t for k in ("bos_token", "eos_token", "pad_token") if (t := _token_text(tcfg.get(k)))}

    def token_id(text: str | None) -> int | None:
        return None if text is None else tok.token_to_id(text)

    eos_ids = _ids(gcfg.get("eos_token_id"))
    tok_eos = token_id(special.get("eos_token"))
    if tok_eos is not None and tok_eos not in eos_ids:
        eos_ids.append(tok_eos)
    if not eos_ids:
        raise TextConfigError(
            f"{d}: no end token: generation_config.json has no eos_token_id and tokenizer_config.json no eos_token"
        )
    pad = gcfg.get("pad_token_id")
    if pad is None:
        pad = token_id(special.get("pad_token"))
    vocab = tok.get_vocab_size(with_added_tokens=True)
    suppress = _ids(gcfg.get("suppress_tokens"))
    for name, ids in (("eos_token_id", eos_ids), ("suppress_tokens", suppress)):
        bad = [i for i in ids if not 0 <= i < vocab]
        if bad:
            raise TextConfigError(f"{d}/generation_config.json: {name} {bad} outside the vocabulary (size {vocab})")

    do_sample = gcfg.get("do_sample", True)
    sampling = Sampling(
        temperature=float(gcfg.get("temperature", 1.0)),
        top_k=int(gcfg.get("top_k", 0) or 0),
        top_p=float(gcfg.get("top_p", 1.0)),
        greedy=not do_sample,
    )
    max_len = tcfg.get("model_max_length")
    return TextConfig(
        directory=str(d),
        chat_template=template,
        special=special,
        end_id=eos_ids[0],
        stop_ids=tuple(dict.fromkeys(eos_ids)),
        pad_id=int(pad) if pad is not None else eos_ids[0],
        suppress_ids=tuple(suppress),
        sampling=sampling,
        model_max_length=int(max_len) if isinstance(max_len, int) and max_len < 10**9 else None,
    )


def render_chat(
    cfg: TextConfig,
    messages: list[dict[str, str]],
    *,
    enable_thinking: bool = False,
    add_generation_prompt: bool = True,
) -> str:
    """Render the checkpoint's chat template as transformers does (sandboxed jinja2, trim/lstrip blocks)."""
    if not cfg.chat_template:
        raise TextConfigError(f"{cfg.directory}: the tokenizer files carry no chat_template")
    from datetime import datetime

    from jinja2.exceptions import TemplateError
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message: str) -> None:
        raise RequestError(f"chat template: {message}")

    def tojson(x: Any, ensure_ascii: bool = False, indent: int | None = None, **kw: Any) -> str:
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, **kw)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    try:
        template = env.from_string(cfg.chat_template)
        return template.render(
            messages=messages,
            add_generation_prompt=add_generation_prompt,
            enable_thinking=enable_thinking,
            **cfg.special,
        )
    except TemplateError as e:
        raise TextConfigError(f"{cfg.directory}: chat template failed: {e}") from None


class TextCodec:
    """Tokenizer plus the checkpoint's conventions: prompt building, encoding, decoding."""

    def __init__(self, directory: str | Path) -> None:
        from tokenizers import Tokenizer

        self.config = load_text_config(directory)
        self.tokenizer = Tokenizer.from_file(str(Path(directory) / "tokenizer.json"))
        self._special_ids = set(self.config.stop_ids) | {self.config.pad_id}

    def prompt(self, text: str, *, chat: bool = True, enable_thinking: bool = False) -> str:
        """The text the model sees: the user's message in the chat template, or `text` itself (chat=False)."""
        if not chat:
            return text
        return render_chat(self.config, [{"role": "user", "content": text}], enable_thinking=enable_thinking)

    def encode(self, text: str) -> list[int]:
        """Token ids of `text`; special tokens written in it (by the template) map to their ids, none is added."""
        return self.tokenizer.encode(text, add_special_tokens=False).ids

    def decode(self, ids: list[int]) -> str:
        """Text of generated ids, without end/pad tokens (skip_special_tokens, as transformers decodes)."""
        return self.tokenizer.decode([i for i in ids if i not in self._special_ids], skip_special_tokens=True)

    def words_to_ids(self, words: list[str]) -> list[list[int]]:
        """Stop/bad word strings to token sequences (empty strings dropped)."""
        return [ids for w in words if w and (ids := self.encode(w))]


def flatten_word_lists(seqs: list[list[int]]) -> list[list[int]]:
    """TensorRT-LLM's [2, N] word list: row 0 the concatenated ids, row 1 each word's end offset, -1 padded."""
    flat: list[int] = []
    offsets: list[int] = []
    for s in seqs:
        flat.extend(s)
        offsets.append(len(flat))
    n = max(len(flat), len(offsets), 1)
    return [flat + [0] * (n - len(flat)), offsets + [-1] * (n - len(offsets))]


def unflatten_word_lists(rows: list[list[int]]) -> list[list[int]]:
    """Inverse of flatten_word_lists."""
    flat, offsets = rows
    out, start = [], 0
    for end in offsets:
        if end < 0:
            break
        out.append(list(flat[start:end]))
        start = end
    return out


class IncrementalDetokenizer:
    """Turns a growing list of token ids into text deltas that never split a UTF-8 character.

    Decoding token by token breaks characters spread over several byte tokens; instead the text of the whole
    sequence is decoded and only what is new (and not ending in an incomplete character) is emitted.
    """

    def __init__(self, codec: TextCodec) -> None:
        self.codec = codec
        self.ids: list[int] = []
        self.emitted = ""

    def add(self, new_ids: list[int]) -> str:
        self.ids.extend(new_ids)
        text = self.codec.decode(self.ids)
        if text.endswith("\ufffd"):  # an incomplete character: wait for its next bytes
            return ""
        delta = text[len(self.emitted) :] if text.startswith(self.emitted) else text
        self.emitted = text
        return delta

    def flush(self) -> str:
        text = self.codec.decode(self.ids)
        delta = text[len(self.emitted) :] if text.startswith(self.emitted) else ""
        self.emitted = text
        return delta
