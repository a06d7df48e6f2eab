"""The engine plan: memory and KV-pool figures for Gemma-4-12B on H100 80GB and H200 141GB, worked out by hand."""

from __future__ import annotations

import json

import pytest

from trt_gemma4.cli import main
from trt_gemma4.errors import Gemma4Error
from trt_gemma4.plan import GIB, MIB, Plan, load_preset, make_plan, plan_arguments, window_list
from trt_gemma4.spec import GEMMA4_12B

SPEC = GEMMA4_12B.with_drafter(None)
H, I, V = 3840, 15360, 262144  # hidden, intermediate, vocab


def scale_bytes(n: int, k: int) -> int:
    """One fp32 scale per 128x128 block."""
    return 4 * (-(-n // 128)) * (-(-k // 128))


# ---- weights of one GPU (tp=1), by hand --------------------------------------------------------------------
# Sliding layer: q [16*256=4096, H], k and v [8*256=2048, H], o [H, 4096], gate|up [2I, H], down [H, I].
SLIDING_LINEAR = sum(
    [
        4096 * H + scale_bytes(4096, H),  # q: 15,728,640 + 3,840
        2 * (2048 * H + scale_bytes(2048, H)),  # k, v: 2 x (7,864,320 + 1,920)
        H * 4096 + scale_bytes(H, 4096),  # o: 15,728,640 + 3,840
        2 * I * H + scale_bytes(2 * I, H),  # gate|up: 117,964,800 + 28,800
        H * I + scale_bytes(H, I),  # down: 58,982,400 + 14,400
    ]
)  # = 224,187,840
# Global layer: q [16*512=8192, H], k [512, H] (K=V: no v_proj), o [H, 8192], same MLP.
GLOBAL_LINEAR = sum(
    [
        8192 * H + scale_bytes(8192, H),  # q: 31,457,280 + 7,680
        512 * H + scale_bytes(512, H),  # k: 1,966,080 + 480
        H * 8192 + scale_bytes(H, 8192),  # o: 31,457,280 + 7,680
        2 * I * H + scale_bytes(2 * I, H),  # gate|up
        H * I + scale_bytes(H, I),  # down
    ]
)  # = 241,886,880
LINEAR = 40 * SLIDING_LINEAR + 8 * GLOBAL_LINEAR  # = 10,902,608,640
# bf16: four block norms [H], q/k norms [head_dim], layer_scalar [1] per layer, then the final norm.
OTHER = 2 * (40 * (4 * H + 2 * 256 + 1) + 8 * (4 * H + 2 * 512 + 1) + H)  # = 1,539,680
EMBEDDING = V * H * 2  # bf16 = 2,013,265,920; the tied LM head is a second copy by default
# Activations: per token 2 bytes x (residual H + normed H + gate|up 2I + gelu I + widest q 8192), fp32 logits.
ACTIVATIONS = 8192 * 2 * (2 * H + 3 * I + 8192) + 64 * V * 4  # = 1,015,021,568 + 67,108,864
ALLOWANCE = 2 * GIB
USED = LINEAR + OTHER + 2 * EMBEDDING + ACTIVATIONS + ALLOWANCE  # = 18,160,294,240

# KV bytes per token (FP8, one byte per element): K and V x heads x 256.
SLIDING_PER_TOKEN = 40 * 2 * 8 * 256  # 40 sliding layers x 8 heads = 163,840
GLOBAL_PER_TOKEN = 8 * 2 * 2 * 256  # 8 global layers x 2 planes of 256 (one 512-d head) = 8,192
# TRT-LLM's share of each window: window x bytes per token -> 1024 x 163,840 : 32768 x 8,192 = 5 : 8.
SLIDING_SHARE, GLOBAL_SHARE = 5 / 13, 8 / 13


def expected_pools(total: int) -> tuple[int, int, int]:
    budget = int(0.9 * (total - USED))
    sliding_blocks = int(SLIDING_SHARE * budget) // (32 * SLIDING_PER_TOKEN)  # blocks of 5 MiB
    global_blocks = int(GLOBAL_SHARE * budget) // (32 * GLOBAL_PER_TOKEN)  # blocks of 256 KiB
    return budget, sliding_blocks, global_blocks


def plan_for(gpu: str, **kw: object) -> Plan:
    return make_plan(SPEC, model="gemma-4-12b", arch="sm_90", gpu=gpu, **kw)  # type: ignore[arg-type]


def test_weight_figures_match_the_hand_count() -> None:
    assert SLIDING_LINEAR == 224_187_840 and GLOBAL_LINEAR == 241_886_880
    m = plan_for("h100").memory
    assert m.linear_weight_bytes == LINEAR == 10_902_608_640
    assert m.other_weight_bytes == OTHER == 1_539_680
    assert m.embedding_bytes == m.lm_head_bytes == EMBEDDING
    assert m.activation_bytes == ACTIVATIONS == 1_082_130_432
    assert m.weight_bytes + m.activation_bytes + m.runtime_allowance_bytes == USED == 18_160_294_240


@pytest.mark.parametrize(
    ("gpu", "total", "budget", "sliding_blocks", "global_blocks", "full_sequences"),
    [
        # H100 80GB: 81,559 MiB; free 67,360,515,744 B; 90% = 60,624,464,169 B.
        ("h100", 81_559 * MIB, 60_624_464_169, 4447, 142_316, 138),
        # H200 141GB: 143,771 MiB; free 132,594,525,856 B; 90% = 119,335,073,270 B.
        ("h200", 143_771 * MIB, 119_335_073_270, 8754, 280_139, 273),
    ],
)
def test_kv_pools_on_h100_and_h200(
    gpu: str, total: int, budget: int, sliding_blocks: int, global_blocks: int, full_sequences: int
) -> None:
    assert expected_pools(total) == (budget, sliding_blocks, global_blocks)
    plan = plan_for(gpu)
    assert plan.memory.gpu_memory_bytes == total
    assert plan.memory.kv_budget_bytes == budget
    sliding, glob = plan.pools
    assert (sliding.kind, sliding.window, len(sliding.layers)) == ("sliding ring", 1024, 40)
    assert (glob.kind, glob.window, len(glob.layers)) == ("global", 32768, 8)
    assert sliding.bytes_per_token == SLIDING_PER_TOKEN and glob.bytes_per_token == GLOBAL_PER_TOKEN
    assert sliding.share == pytest.approx(SLIDING_SHARE) and glob.share == pytest.approx(GLOBAL_SHARE)
    assert (sliding.blocks, glob.blocks) == (sliding_blocks, global_blocks)
    # A sequence needs 1024/32 = 32 ring blocks and 32768/32 = 1024 global blocks: the shares balance both.
    assert (sliding.blocks_per_full_sequence, glob.blocks_per_full_sequence) == (32, 1024)
    assert sliding.max_full_sequences == glob.max_full_sequences == full_sequences


def test_bf16_cache_doubles_bytes_and_keeps_paged_context_fmha() -> None:
    fp8, bf16 = plan_for("h200"), plan_for("h200", kv_cache_dtype="bf16")
    assert [p.bytes_per_token for p in bf16.pools] == [2 * p.bytes_per_token for p in fp8.pools]
    assert bf16.memory.kv_budget_bytes == fp8.memory.kv_budget_bytes
    assert bf16.pools[0].max_full_sequences == 136  # 4377 ring blocks // 32: half of FP8's, to a block
    assert not fp8.use_paged_context_fmha and not fp8.enable_kv_cache_reuse and not fp8.enable_chunked_context
    assert bf16.use_paged_context_fmha and bf16.enable_kv_cache_reuse and bf16.enable_chunked_context
    assert any("turns paged context FMHA off" in c and "--kv-cache-dtype bf16" in c for c in fp8.consequences)


def test_fp8_cache_caps_prompts_at_max_num_tokens() -> None:
    plan = plan_for("h100", max_num_tokens=4096)
    assert plan.max_input_len == 4096
    with pytest.raises(Gemma4Error, match="max_input_len 8192 > max_num_tokens 4096"):
        plan_for("h100", max_num_tokens=4096, max_input_len=8192)
    # The override and a BF16 cache both lift the cap to max_seq_len - 1.
    assert plan_for("h100", max_num_tokens=4096, paged_context_fmha_override=True).max_input_len == 32767
    assert plan_for("h100", max_num_tokens=4096, kv_cache_dtype="bf16").max_input_len == 32767


def test_window_list_and_positions_follow_max_seq_len() -> None:
    plan = plan_for("h100", max_seq_len=65536)
    assert plan.max_attention_window == ([1024] * 5 + [65536]) * 8
    assert plan.window_csv().startswith("1024,1024,1024,1024,1024,65536,1024")
    assert plan.max_position_embeddings == 65536
    assert window_list(SPEC, 512) == [512] * 48  # a ring never exceeds the sequence


def test_tp2_replicates_the_global_kv_head() -> None:
    one, two = plan_for("h100"), plan_for("h100", tp=2)
    assert two.num_kv_heads_per_layer[:6] == [8, 8, 8, 8, 8, 4]  # 2 planes x tp for the global layer
    assert two.pools[0].kv_heads_per_layer == 4 and two.pools[1].kv_heads_per_layer == 2
    assert two.pools[1].bytes_per_token == one.pools[1].bytes_per_token  # whole global head on each rank
    global_k = 512 * H + scale_bytes(512, H)  # replicated, not halved
    assert one.memory.linear_weight_bytes - two.memory.linear_weight_bytes == (LINEAR - 8 * global_k) // 2


def test_shared_lm_head_frees_one_embedding_copy() -> None:
    base, shared = plan_for("h100"), plan_for("h100", lm_head_shares_embedding=True)
    assert shared.memory.lm_head_bytes == 0
    assert shared.memory.kv_budget_bytes - base.memory.kv_budget_bytes == pytest.approx(0.9 * EMBEDDING, abs=2)


def test_impossible_plans_are_refused() -> None:
    with pytest.raises(Gemma4Error, match="more than the 16.00 GiB"):
        plan_for("h100", gpu_memory_gb=16)
    with pytest.raises(Gemma4Error, match="power of two"):
        plan_for("h100", tokens_per_block=48)
    with pytest.raises(Gemma4Error, match="max_position_embeddings 262144"):
        plan_for("h100", max_seq_len=300_000)
    with pytest.raises(Gemma4Error, match="GPU preset 'a100'"):
        plan_for("a100")
    with pytest.raises(Gemma4Error, match="needs the drafter"):
        plan_for("h100", max_draft_len=4)


def test_plan_round_trips_through_json(tmp_path) -> None:
    plan = plan_for("h200", kv_cache_dtype="bf16")
    assert Plan.from_dict(json.loads(json.dumps(plan.to_dict()))) == plan
    plan.save(tmp_path / "plan.json")
    assert Plan.load(tmp_path / "plan.json") == plan
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(Gemma4Error, match="not a trt-gemma4 plan"):
        Plan.load(tmp_path / "bad.json")


@pytest.mark.parametrize("arch", ["sm_90", "sm_100", "sm_120"])
def test_presets_make_valid_plans(arch: str) -> None:
    preset = load_preset(arch)
    plan = make_plan(SPEC, model="gemma-4-12b", arch=arch, **plan_arguments(preset, {}))
    assert plan.arch == arch and plan.max_seq_len == preset["max_seq_len"]
    assert all(p.max_full_sequences > 0 for p in plan.pools)


def test_gpu_flag_overrides_a_preset_memory_figure() -> None:
    args = plan_arguments(load_preset("sm_100"), {"gpu": "h200"})
    assert args["gpu"] == "h200" and args["gpu_memory_gb"] is None


def test_plan_command_writes_json(tmp_path, capsys) -> None:
    out = tmp_path / "p.json"
    assert main(["plan", "--gpu", "h200", "--kv-cache-dtype", "bf16", "-o", str(out)]) == 0
    assert "BF16 KV cache" in capsys.readouterr().out
    assert Plan.load(out).memory.gpu_memory_bytes == 143_771 * MIB
    assert main(["plan", "--arch", "sm_70"]) == 1
    assert "expected one of sm_90, sm_100, sm_120" in capsys.readouterr().err
