"""Speculative decoding with the assistant drafter (frozen-KV MTP) on the torch backend, fp32 on CPU.

The tiny target has window 16; prompts are longer, so the sliding ring wraps during prefill and decoding.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path

import pytest
import torch

from trt_gemma4.backends.torch_backend import CacheConfig, TorchBackend
from trt_gemma4.checkpoint.drafter import convert_drafter
from trt_gemma4.spec import load_spec
from trt_gemma4.speculative import decoding
from trt_gemma4.speculative.torch_drafter import TorchDrafter

MAX_DRAFT = 6
NEW_TOKENS = 24


pytestmark = pytest.mark.usefixtures("single_torch_thread")


@pytest.fixture(scope="module")
def drafter_dir(tiny_ckpt: Path, tiny_drafter_ckpt: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("spec") / "drafter"
    convert_drafter(tiny_drafter_ckpt, out, load_spec(tiny_ckpt))
    return out


def _backend(ckpt: Path, max_draft_len: int = MAX_DRAFT, max_seq_len: int = 128) -> TorchBackend:
    cfg = CacheConfig(dtype=torch.float32, max_draft_len=max_draft_len, max_seq_len=max_seq_len)
    return TorchBackend(ckpt, dtype=torch.float32, cache=cfg)


@pytest.fixture(scope="module")
def backend(tiny_ckpt: Path) -> TorchBackend:
    return _backend(tiny_ckpt)


@pytest.fixture(scope="module")
def prompts() -> list[list[int]]:
    g = torch.Generator().manual_seed(7)
    return [torch.randint(5, 500, (n,), generator=g).tolist() for n in (37, 21, 50)]  # all > window 16


@pytest.fixture(scope="module")
def greedy(backend: TorchBackend, prompts: list[list[int]]) -> list[list[int]]:
    return backend.generate(prompts, NEW_TOKENS)


@pytest.fixture(scope="module")
def full_hidden(backend: TorchBackend, prompts: list[list[int]], greedy: list[list[int]]) -> list[torch.Tensor]:
    """Post-final-norm hidden of every position of prompt + greedy continuation (one prefill step)."""
    sids = [backend.add_sequence() for _ in prompts]
    try:
        out = backend.forward([(s, p + g) for s, p, g in zip(sids, prompts, greedy)], all_logits=True)
    finally:
        for s in sids:
            backend.free(s)
    return out.hidden


class Oracle:
    """Drafts the greedy continuation for `right` tokens of each round, then wrong tokens. It checks each seed: the
    cache was rolled back to exactly the accepted tokens, the seed token is the target's next greedy token, and the
    seed hidden is the target's post-norm hidden of the last accepted token (position length - 1)."""

    def __init__(
        self,
        backend: TorchBackend,
        prompts: Sequence[Sequence[int]],
        greedy: list[list[int]],
        right: int,
        hidden: list[torch.Tensor] | None = None,
    ) -> None:
        self.backend, self.right, self.hidden = backend, right, hidden
        self.full = [list(p) + g for p, g in zip(prompts, greedy)]
        self.by_seq: dict[int, int] = {}
        self.rounds = 0

    def propose(self, seeds: Sequence[tuple[int, int, torch.Tensor]], ks: Sequence[int]) -> list[list[int]]:
        out = []
        for (sid, tok, h), k in zip(seeds, ks):
            j = self.by_seq.setdefault(sid, len(self.by_seq))
            n = self.backend.length(sid)  # the seed token is not cached yet
            assert self.full[j][n] == tok, "the seed must be the target's greedy token at the cached length"
            if self.hidden is not None:
                torch.testing.assert_close(h, self.hidden[j][n - 1], atol=5e-3, rtol=1e-3)  # fp32 order noise
            truth = self.full[j][n + 1 : n + 1 + k]
            out.append([t if i < self.right else (t + 1) % 500 for i, t in enumerate(truth)])
        self.rounds += 1
        return out


class Recording:
    """A proposer that remembers every draft it made."""

    def __init__(self, inner: decoding.Proposer) -> None:
        self.inner, self.seen = inner, []

    def propose(self, seeds: Sequence[tuple[int, int, torch.Tensor]], ks: Sequence[int]) -> list[list[int]]:
        d = self.inner.propose(seeds, ks)
        self.seen.extend(d)
        return d


def test_drafter_forward_matches_transformers(
    tiny_ckpt: Path, tiny_drafter_ckpt: Path, drafter_dir: Path, prompts: list[list[int]]
) -> None:
    """Given the same target K/V of its last sliding/global layers (read from our paged cache), the same token
    and hidden state, our drafter graph equals Gemma4UnifiedAssistantForCausalLM over 3 recurrent steps."""
    from safetensors import safe_open
    from transformers.models.gemma4_unified_assistant import Gemma4UnifiedAssistantForCausalLM

    from trt_gemma4.checkpoint.names import hf_prefix

    be = _backend(tiny_ckpt)
    spec = be.spec
    drafter = TorchDrafter(be, drafter_dir)
    hf = Gemma4UnifiedAssistantForCausalLM.from_pretrained(
        tiny_drafter_ckpt, dtype=torch.float32, attn_implementation="eager"
    ).eval()
    with safe_open(str(tiny_ckpt / "model.safetensors"), "pt") as f:
        embed = f.get_tensor(hf_prefix(spec.multimodal) + "embed_tokens.weight").float()
    sids = [be.add_sequence() for _ in prompts[:2]]
    out = be.forward([(s, p) for s, p in zip(sids, prompts[:2])])
    tokens = [int(lg[-1].argmax()) for lg in out.logits]  # the target's bonus tokens: the first seeds
    hidden = torch.stack([h[-1] for h in out.hidden])  # post-final-norm hidden of the last prompt tokens
    steps = []  # (tokens in, hidden in, logits out, hidden out) of each of our draft steps
    for _ in range(3):
        lg, h_next = drafter.step(sids, tokens, hidden)
        steps.append((tokens, hidden, lg, h_next))
        tokens, hidden = lg.argmax(-1).tolist(), h_next
    layers = spec.drafter_target_layers
    W = spec.sliding_window
    for b, sid in enumerate(sids):
        L = be.length(sid)
        kv = {}
        for kind, hf_kind, lo in (("global", "full_attention", 0), ("sliding", "sliding_attention", L - W)):
            k, v = be.cache.read(layers[kind], sid, torch.arange(lo, L))
            kv[hf_kind] = (k.transpose(0, 1)[None], v.transpose(0, 1)[None])  # [1, kv_heads, n, head_dim]
        for tok_in, h_in, logits, h_out in steps:
            e = embed[tok_in[b]] * torch.tensor(spec.hidden_size**0.5)
            with torch.no_grad():
                ref = hf(
                    inputs_embeds=torch.cat([e, h_in[b]])[None, None],
                    position_ids=torch.tensor([[L - 1]]),
                    shared_kv_states=kv,
                )
            torch.testing.assert_close(logits[b], ref.logits[0, 0], atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(h_out[b], ref.last_hidden_state[0, 0], atol=1e-5, rtol=1e-5)
    drafter_ckpt_hidden = drafter.drafter.hidden_size
    assert steps[0][2].shape == (2, spec.vocab_size) and drafter_ckpt_hidden < spec.hidden_size


def test_draft_steps_write_nothing(tiny_ckpt: Path, drafter_dir: Path, prompts: list[list[int]]) -> None:
    """The drafter reads the target's cache read-only: pool bytes and sequence lengths are unchanged."""
    be = _backend(tiny_ckpt)
    drafter = TorchDrafter(be, drafter_dir)
    sid = be.add_sequence()
    out = be.forward([(sid, prompts[0])])
    before = {k: p.data.clone() for k, p in be.cache.pools.items()}
    drafts = drafter.propose([(sid, int(out.logits[0][-1].argmax()), out.hidden[0][-1])], [MAX_DRAFT])
    assert len(drafts[0]) == MAX_DRAFT
    assert be.length(sid) == len(prompts[0])
    for k, p in be.cache.pools.items():
        assert torch.equal(p.data, before[k]), f"the draft steps changed the {k} pool"


@pytest.mark.parametrize("k", range(1, MAX_DRAFT + 1))
def test_speculative_equals_greedy(
    backend: TorchBackend, drafter_dir: Path, prompts: list[list[int]], greedy: list[list[int]], k: int
) -> None:
    """Greedy decoding with k MTP drafts per round reproduces greedy target decoding token for token (3 sequences
    batched, prompts longer than the window)."""
    res = decoding.generate(backend, TorchDrafter(backend, drafter_dir), prompts, NEW_TOKENS, k)
    tot = res.total
    print(
        f"k={k}: acceptance length {tot.acceptance_length:.3f} tokens/step, "
        f"accepted {tot.accepted}/{tot.drafted} drafts over {tot.rounds} verify steps"
    )
    assert res.tokens == greedy
    assert tot.emitted == sum(len(t) for t in greedy) - len(greedy)  # all but the prefill's token
    assert all(st.drafted <= k * st.rounds for st in res.stats)


@pytest.mark.parametrize(("k", "right"), [(1, 1), (4, 4), (4, 2), (6, 0), (6, 5)])
def test_acceptance_and_rollback(
    backend: TorchBackend,
    prompts: list[list[int]],
    greedy: list[list[int]],
    full_hidden: list[torch.Tensor],
    k: int,
    right: int,
) -> None:
    """Drafts right for `right` tokens of each round: every round accepts min(right, k) (until the last rounds,
    which draft less), the bonus token follows, rejected drafts are rolled back, and the output is greedy's."""
    oracle = Oracle(backend, prompts, greedy, right, full_hidden)
    res = decoding.generate(backend, oracle, prompts, NEW_TOKENS, k)
    assert res.tokens == greedy
    for st in res.stats:
        full_rounds = st.accepted_per_round[:-2]  # the last rounds may draft fewer than k tokens
        assert all(m == min(right, k) for m in full_rounds), st.accepted_per_round
    expected = 1 + min(right, k)
    assert res.total.acceptance_length == pytest.approx(expected, abs=0.5)


def test_ring_of_window_plus_draft_keeps_every_needed_entry(
    tiny_ckpt: Path, drafter_dir: Path, prompts: list[list[int]], greedy: list[list[int]]
) -> None:
    """With a ring of window + k, verification with rejections reads exactly what a ring that never wraps reads:
    same tokens, same drafts (the drafter reads the ring too); the cache raises if a read slot was overwritten."""
    k = 5
    results = []
    for max_draft_len in (k, 200):  # 200: the ring (216 slots) is longer than any sequence, it never wraps
        be = _backend(tiny_ckpt, max_draft_len=max_draft_len)
        mtp = Recording(TorchDrafter(be, drafter_dir))
        for proposer in (mtp, Oracle(be, prompts, greedy, right=2)):
            res = decoding.generate(be, proposer, prompts, NEW_TOKENS, k)
            assert res.tokens == greedy
            results.append((res.tokens, res.total.accepted_per_round))
        results.append(mtp.seen)
    assert results[:3] == results[3:]


def test_undersized_ring_loses_entries(tiny_ckpt: Path, prompts: list[list[int]], greedy: list[list[int]]) -> None:
    """A ring of exactly the window loses keys that later queries need once k+1 entries are written and drafts are
    rejected: the cache refuses to read them (and generate refuses such a cache up front)."""
    be = _backend(tiny_ckpt, max_draft_len=0)
    with pytest.raises(ValueError, match="ring"):
        decoding.generate(be, Oracle(be, prompts, greedy, right=0), prompts, NEW_TOKENS, 4)
    with pytest.raises(RuntimeError, match="overwritten"):
        decoding.generate(be, Oracle(be, prompts, greedy, right=0), prompts, NEW_TOKENS, 4, check_ring_size=False)


def test_stop_at_eos_as_plain_greedy(
    tiny_ckpt: Path, prompts: list[list[int]], greedy: list[list[int]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A sequence stops at its end token even when the token comes in the middle of accepted drafts."""
    be = _backend(tiny_ckpt)
    eos = greedy[0][3]  # the third of four accepted drafts in the first round
    monkeypatch.setattr(be, "spec", dataclasses.replace(be.spec, eos_token_ids=(eos,)))
    ref = be.generate(prompts, NEW_TOKENS, stop_at_eos=True)
    assert len(ref[0]) <= 4
    res = decoding.generate(be, Oracle(be, prompts, greedy, right=4), prompts, NEW_TOKENS, 4, stop_at_eos=True)
    assert res.tokens == ref


def test_verify_speculative_report(tiny_ckpt: Path, tiny_drafter_ckpt: Path, prompts: list[list[int]]) -> None:
    """`verify --speculative` takes an HF assistant directory as well (converted on the fly), sizes its own ring
    even when the caller's cache has none, and reports agreement and acceptance."""
    from trt_gemma4.speculative import check_speculative
    from trt_gemma4.speculative.verify import format_report

    be = _backend(tiny_ckpt, max_draft_len=0)
    rep = check_speculative(be, tiny_drafter_ckpt, prompts[:2], 10, draft_len=3)
    assert rep["identical"] and rep["tokens_equal"] == rep["tokens_total"] == 20
    assert rep["exact_expected"] and rep["draft_len"] == 3 and rep["drafter_weights"] == "bf16"
    assert rep["rounds"] + rep["accepted"] == rep["tokens_total"] - 2  # every verify step: accepted + 1 bonus
    assert "tokens identical to greedy" in format_report(rep)
    fp8 = TorchBackend(tiny_ckpt, dtype=torch.float32, cache=CacheConfig(dtype=torch.float8_e4m3fn))
    assert not check_speculative(fp8, tiny_drafter_ckpt, prompts[:1], 4, draft_len=2)["exact_expected"]


def test_acceptance_helper() -> None:
    assert decoding.accept([5, 6, 7], [5, 6, 9, 1]) == 2
    assert decoding.accept([], [3]) == 0
    assert decoding.accept([1, 2], [1, 2, 3]) == 2
