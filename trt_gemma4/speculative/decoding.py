"""Greedy speculative decoding on the torch backend: draft k tokens, verify them in one target step.

One round, per sequence (research/gemma4_arch.md §4.2–4.3):
  1. the seed is (t, h): t the last token the target chose (not yet in its cache), h the target's post-final-norm
     hidden of the last accepted token (the one whose logits chose t);
  2. the proposer drafts d_1..d_k from the seed (the MTP drafter reads the target's cache, writes nothing);
  3. ONE target step over [t, d_1..d_k] (k+1 tokens, all logits) gives g_0..g_k, g_i = argmax after token i;
  4. accept the longest prefix with d_{i+1} = g_i (m tokens), emit d_1..d_m and the bonus token g_m;
  5. roll the sequence back to what it accepted: the cache keeps t, d_1..d_m (length = before + m + 1); the
     entries of rejected drafts stay in their slots but lie beyond the length, so nothing reads them and the
     next step overwrites them;
  6. the next seed is (g_m, hidden of the token at index m).
Every emitted token is a target argmax over exactly the tokens a plain greedy decode would have fed, so the output
equals greedy target decoding token for token; the drafter only changes how many target steps it takes. That holds
exactly with fp32 compute and an fp32 KV cache. With FP8 or BF16 KV storage (or bf16 compute) the (k+1)-row verify
step and a 1-row decode step compute K/V with different GEMM blockings, a last-bit difference can round a K/V element
to the neighbouring FP8 value, and a near-tie argmax can flip (measured on the random tiny model: FP8 KV keeps
about half to all of 96 greedy tokens, BF16 KV all).

The sliding ring: the verify step writes k+1 entries. In a ring of exactly `window` slots they would overwrite
keys that the step's own first query still needs (TRT-LLM writes before it attends), and after a rejection the
next step would miss keys that the rejected drafts' writes replaced. A ring of window + max draft length holds
every key any query of the step or of the next round can see; the torch backend sizes its ring that way
(CacheConfig.max_draft_len; `check_ring` refuses a smaller one) and its cache raises if a slot it reads was
overwritten.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

import torch

from trt_gemma4.backends.torch_backend import TorchBackend


class Proposer(Protocol):
    """Something that drafts tokens from seeds (the MTP drafter; tests also use an oracle)."""

    def propose(self, seeds: Sequence[tuple[int, int, torch.Tensor]], ks: Sequence[int]) -> list[list[int]]:
        """seeds: (seq_id, last token, post-norm hidden of the last accepted token); up to ks[j] drafts each."""
        ...


@dataclass
class AcceptanceStats:
    """Acceptance of one sequence (or a sum over several)."""

    rounds: int = 0  # target verify steps (prefill not counted)
    drafted: int = 0  # draft tokens proposed
    accepted: int = 0  # draft tokens the target agreed with
    emitted: int = 0  # tokens emitted by verify steps (accepted drafts + one bonus token per round)
    accepted_per_round: list[int] = field(default_factory=list)

    @property
    def acceptance_length(self) -> float:
        """Mean tokens per target verify step (accepted drafts + the bonus token): 1.0 = no speed-up."""
        return self.emitted / self.rounds if self.rounds else 0.0

    @property
    def acceptance_rate(self) -> float:
        """Fraction of drafted tokens accepted."""
        return self.accepted / self.drafted if self.drafted else 0.0

    def add(self, other: AcceptanceStats) -> AcceptanceStats:
        return AcceptanceStats(
            self.rounds + other.rounds,
            self.drafted + other.drafted,
            self.accepted + other.accepted,
            self.emitted + other.emitted,
            self.accepted_per_round + other.accepted_per_round,
        )


@dataclass
class SpeculativeResult:
    tokens: list[list[int]]  # new tokens per prompt
    stats: list[AcceptanceStats]  # per prompt

    @property
    def total(self) -> AcceptanceStats:
        out = AcceptanceStats()
        for s in self.stats:
            out = out.add(s)
        return out


def accept(drafts: Sequence[int], target_choices: Sequence[int]) -> int:
    """Greedy acceptance: the number m of leading drafts that equal the target's choices (len(target) = k+1)."""
    m = 0
    while m < len(drafts) and drafts[m] == target_choices[m]:
        m += 1
    return m


def check_ring(backend: TorchBackend, k: int) -> None:
    """The sliding ring must hold window + k slots for verification of k drafts (module docstring)."""
    if k > backend.cache_cfg.max_draft_len and backend.spec.sliding_layers:
        raise ValueError(
            f"verifying {k} drafts needs a sliding ring of window + {k} slots; the cache was sized for "
            f"max_draft_len {backend.cache_cfg.max_draft_len} (CacheConfig(max_draft_len={k}))"
        )


@torch.no_grad()
def generate(
    backend: TorchBackend,
    proposer: Proposer,
    prompts: Sequence[Sequence[int]],
    max_new_tokens: int,
    k: int,
    *,
    stop_at_eos: bool = False,
    check_ring_size: bool = True,
) -> SpeculativeResult:
    """Greedy speculative generation of `max_new_tokens` per prompt with up to `k` drafts per round.

    Batched: one prefill step for all prompts, then each round drafts for every unfinished sequence and verifies
    them all in one target step (sequences may verify different numbers of drafts). check_ring_size=False skips
    the ring-size check (tests use it to show what an undersized ring does).
    """
    if k < 0 or max_new_tokens < 1:
        raise ValueError(f"need k >= 0 and max_new_tokens >= 1, not k={k}, max_new_tokens={max_new_tokens}")
    if check_ring_size:
        check_ring(backend, k)
    sids = [backend.add_sequence() for _ in prompts]
    try:
        out = backend.forward([(s, list(p)) for s, p in zip(sids, prompts)])
        new: list[list[int]] = [[int(lg[-1].argmax())] for lg in out.logits]
        seeds: dict[int, tuple[int, torch.Tensor]] = {j: (new[j][-1], out.hidden[j][-1]) for j in range(len(sids))}
        stats = [AcceptanceStats() for _ in prompts]
        active = [j for j in range(len(sids)) if not _finished(backend, new[j], max_new_tokens, stop_at_eos)]
        while active:
            # Never draft past what is still wanted: a round emits at most k + 1 tokens.
            ks = [max(0, min(k, max_new_tokens - len(new[j]) - 1)) for j in active]
            drafts = proposer.propose([(sids[j], *seeds[j]) for j in active], ks)
            lengths = [backend.length(sids[j]) for j in active]
            verify = backend.forward(
                [(sids[j], [seeds[j][0], *drafts[i][: ks[i]]]) for i, j in enumerate(active)], all_logits=True
            )
            still = []
            for i, j in enumerate(active):
                d = drafts[i][: ks[i]]
                choices = verify.logits[i].argmax(-1).tolist()
                m = accept(d, choices)
                backend.truncate(sids[j], lengths[i] + m + 1)  # keep the seed and the accepted drafts
                emitted = [*d[:m], choices[m]]
                st = stats[j]
                st.rounds += 1
                st.drafted += len(d)
                st.accepted += m
                st.emitted += len(emitted)
                st.accepted_per_round.append(m)
                for t in emitted:
                    new[j].append(t)
                    if _finished(backend, new[j], max_new_tokens, stop_at_eos):
                        break
                seeds[j] = (choices[m], verify.hidden[i][m])
                if not _finished(backend, new[j], max_new_tokens, stop_at_eos):
                    still.append(j)
            active = still
        return SpeculativeResult(new, stats)
    finally:
        for s in sids:
            backend.free(s)


def _finished(backend: TorchBackend, toks: list[int], max_new_tokens: int, stop_at_eos: bool) -> bool:
    return len(toks) >= max_new_tokens or (stop_at_eos and toks[-1] in backend.spec.eos_token_ids)
