"""The engine-side settings for the drafter inside the target engine, behind TRT-LLM 1.2's EAGLE contract.

What is settled here (docs/speculative_engine.md has the sources and what is still missing):
  * the checkpoint/engine config fields the C++ runtime reads for an EAGLE engine
    (`cpp/tensorrt_llm/runtime/gptJsonConfig.cpp`: build_config.speculative_decoding_mode must be EAGLE,
    build_config.max_draft_len > 0, pretrained_config.num_eagle_layers > 0, max_non_leaves_per_layer > 0 and
    eagle_net_config.num_hidden_layers, which the runtime adds to the KV-cache layer count);
  * the draft tree: a chain (one draft per level, top-1), written as EAGLE choices [[0], [0, 0], ...];
  * the Triton `tensorrt_llm` model parameters (`decoding_mode: eagle`, `eagle_choices` in the backend's
    "{0}, {0, 0}" string form; without them the backend falls back to Medusa's mc_sim_7b_63 tree);
  * the builder's rules for EAGLE engines (tensorrt_llm/builder.py) and the sliding ring the verify step needs;
  * the drafter's KV length after acceptance, in terms of the engine's own tensors.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, TypeVar

import torch

from trt_gemma4.spec import Gemma4Spec

T = TypeVar("T", int, torch.Tensor)

# tensorrt_llm/models/modeling_utils.py: SpeculativeDecodingMode(IntFlag) = NONE, DRAFT_TOKENS_EXTERNAL, MEDUSA,
# LOOKAHEAD_DECODING, EXPLICIT_DRAFT_TOKENS, EAGLE, ... with auto() values 1, 2, 4, 8, 16, 32 ("KEEP IN SYNC with
# cpp/tensorrt_llm/runtime/speculativeDecodingMode.h"). The engine's config.json stores the integer.
SPECULATIVE_DECODING_MODE_EAGLE = 1 << 5
MAX_DRAFT_LEN_LIMIT = 256  # tensorrt_llm/builder.py asserts max_draft_len <= 256 for EAGLE
MAX_BATCH_SIZE_LIMIT = 512  # and max_batch_size <= 512


def chain_choices(max_draft_len: int) -> list[list[int]]:
    """EAGLE choices of a chain of `max_draft_len` drafts: each level keeps the top-1 token of the previous one."""
    return [[0] * depth for depth in range(1, max_draft_len + 1)]


def choices_string(choices: list[list[int]]) -> str:
    """The Triton tensorrt_llm backend's form of a choices tree: "{0}, {0, 0}, {0, 0, 0}"."""
    return ", ".join("{" + ", ".join(str(c) for c in path) + "}" for path in choices)


@dataclass(frozen=True)
class SpeculativeEngineConfig:
    """The drafter in the target engine: `max_draft_len` chained MTP steps per verify step."""

    max_draft_len: int = 4

    def __post_init__(self) -> None:
        if not 1 <= self.max_draft_len <= MAX_DRAFT_LEN_LIMIT:
            raise ValueError(f"max_draft_len must be in 1..{MAX_DRAFT_LEN_LIMIT}, not {self.max_draft_len}")

    @property
    def choices(self) -> list[list[int]]:
        return chain_choices(self.max_draft_len)

    def pretrained_config_fields(self) -> dict[str, Any]:
        """Fields for the engine's pretrained_config. The drafter has no KV layers of its own (it reads target
        layers read-only), so eagle_net_config declares 0 layers and the KV cache gains none."""
        return {
            "num_eagle_layers": self.max_draft_len,  # one drafter pass per chain level
            "max_draft_len": self.max_draft_len,
            "max_non_leaves_per_layer": 1,  # a chain: one node per level is expanded
            "eagle_net_config": {"num_hidden_layers": 0},
        }

    def build_config_fields(self) -> dict[str, Any]:
        return {"speculative_decoding_mode": SPECULATIVE_DECODING_MODE_EAGLE, "max_draft_len": self.max_draft_len}

    def triton_parameters(self) -> dict[str, str]:
        """`parameters` of the Triton tensorrt_llm model (config.pbtxt), as strings."""
        return {"decoding_mode": "eagle", "eagle_choices": choices_string(self.choices)}

    def executor_eagle_config(self) -> dict[str, Any]:
        """tensorrt_llm.bindings.executor.EagleConfig keyword arguments (greedy acceptance)."""
        return {"eagle_choices": self.choices, "greedy_sampling": True}

    def sliding_ring(self, spec: Gemma4Spec) -> int:
        """Slots the sliding layers' ring needs: window + max_draft_len (trt_gemma4/speculative/decoding.py)."""
        return spec.sliding_window + self.max_draft_len

    def check_build(self, max_batch_size: int, max_num_tokens: int) -> list[str]:
        """Problems with the build limits for this draft length (empty when fine)."""
        problems = []
        if max_batch_size > MAX_BATCH_SIZE_LIMIT:
            problems.append(f"max_batch_size {max_batch_size} > {MAX_BATCH_SIZE_LIMIT} (TRT-LLM's EAGLE limit)")
        need = max_batch_size * (self.max_draft_len + 1)
        if max_num_tokens < need:
            problems.append(f"max_num_tokens {max_num_tokens} < max_batch_size x (max_draft_len + 1) = {need}")
        return problems

    def plan_notes(self, spec: Gemma4Spec) -> list[str]:
        """Consequences of turning the drafter on, for the build plan."""
        return [
            f"every generation step verifies up to {self.max_draft_len} drafts: max_seq_len grows by "
            f"max_draft_len + num_eagle_layers = {2 * self.max_draft_len} and max_num_tokens must be at least "
            f"max_batch_size x {self.max_draft_len + 1}",
            "TRT-LLM forces paged context FMHA on for EAGLE engines, after the FP8-KV logic that turns it off on "
            "non-FP8 models: that combination is untested upstream",
            f"the sliding layers need a ring of window + max_draft_len = {self.sliding_ring(spec)} slots with a "
            f"mask window of {spec.sliding_window}; stock gpt_attention uses one number for both",
            "Triton: decoding_mode eagle, eagle_choices " + choices_string(self.choices),
        ]


def drafter_kv_lengths(sequence_length: T, draft_lens: T, num_accepted_tokens: T) -> T:
    """The drafter's KV length after acceptance, from the engine's tensors (the read-only plugin's kv_lens).

    The target step cached past + 1 + draft_len entries (`sequence_length`); what stays valid is the seed token
    plus the accepted drafts, past + num_accepted_tokens (EagleSampleAndAcceptDraftTokens counts the bonus token:
    num_accepted_tokens = accepted drafts + 1 >= 1). A context request has draft_len 0 and num_accepted_tokens 1,
    which gives its prompt length. Works on ints and on int tensors alike.
    """
    return sequence_length - draft_lens + num_accepted_tokens - 1
