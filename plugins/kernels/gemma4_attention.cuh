// Gemma-4 attention over TensorRT-LLM 1.2's paged KV cache: the global layers' 512-d MQA (which no TRT-LLM 1.2.1
// kernel serves) and the drafter's read-only attention over the target's cache.
//
// Plain C++ launch API, no framework types: the TensorRT plugin calls it with TRT-LLM's raw pointers, the torch
// binding (plugins/torch/attention_ops.cpp) with tensor data pointers.
//
// KV layout (trt_gemma4/kv.py is the contract). A pool is
//     [num_blocks][layers_in_pool][2 (K|V)][pool_heads][tokens_per_block][head_size]
// in the KV dtype (FP8 E4M3, or BF16 for tests). `block_offsets[seq][kv][logical_block]` holds TRT-LLM's
// KVCacheIndex value `(mem_block * layers_in_pool) * 2 + kv`; the "unit" of layer `lip` is that value + lip*2, and a
// unit is `pool_heads * tokens_per_block * head_size` elements. A KV head of `head_dim` dims is stored as
// `head_dim / head_size` consecutive planes (the global layer's 512-d head: dims 0-255 in plane 0, 256-511 in plane
// 1), so KV head h, dim d of token slot s lives in plane `h * planes + d / head_size` at row `s % tokens_per_block`.
// Sliding layers keep a ring: position p lives at slot `p % cyclic_len`; cyclic_len = 0 means a linear cache.
// Only the primary pool is addressed (TRT-LLM's secondary-pool flag, the index MSB, must be clear).
// FP8 values are written fp8(x / scale) and read fp8 * scale (scale = kv_cache_scaling_factor, quant -> orig);
// BF16 storage ignores the scales, as trt_gemma4.kv does.
//
// Packed tokens ("remove input padding"): the new tokens of sequence b are rows cu_q_lens[b] .. cu_q_lens[b+1]-1 of
// q / k_raw / out. kv_lens[b] counts the tokens in the cache after this step (past + new), so for target attention
// the new token i of sequence b sits at position kv_lens[b] - q_len(b) + i. A context chunk after a cached prefix,
// a whole prompt, one decode token and several speculative tokens are all the same case; one launch serves a mixed
// batch.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

namespace trt_gemma4 {

enum class KvDtype : int32_t { kFp8E4M3 = 0, kBf16 = 1 };

// One layer of one pool, as TRT-LLM describes it in GPTAttentionPlugin::enqueue.
struct PagedKv {
    void* pool = nullptr;                    // primary pool base pointer (host_kv_cache_pool_pointers[pool][0])
    const int32_t* block_offsets = nullptr;  // device int32 [batch][2][max_blocks_per_seq] of this pool
    int32_t max_blocks_per_seq = 0;
    int32_t layer_in_pool = 0;               // host_kv_cache_pool_mapping[layer][1]
    int32_t pool_heads = 0;                  // declared KV heads per layer in this pool (planes for a global layer)
    int32_t head_size = 0;                   // the model's one declared head size (256 on the 12B)
    int32_t tokens_per_block = 0;            // power of two
    int32_t cyclic_len = 0;                  // ring length of a sliding pool (>= 64); 0 = linear
    KvDtype dtype = KvDtype::kFp8E4M3;
    float k_scale = 1.0f;                    // dequantisation multipliers (quant -> orig)
    float v_scale = 1.0f;
};

// The packed batch of new tokens.
struct TokenBatch {
    int32_t batch = 0;
    int32_t num_tokens = 0;                  // cu_q_lens[batch]
    const int32_t* cu_q_lens = nullptr;      // device int32 [batch + 1]
    const int32_t* kv_lens = nullptr;        // device int32 [batch]: cache length after this step
    int32_t max_q_len = 0;                   // host-side maxima, used only to size the grid
    int32_t max_kv_len = 0;
    int64_t sum_kv_len = 0;                  // host-side sum of kv_lens (0 = unknown: batch * max_kv_len assumed)
};

// Attention of new queries over the paged cache.
struct AttentionProblem {
    PagedKv kv;
    TokenBatch tokens;
    int32_t num_q_heads = 0;
    int32_t num_kv_heads = 0;                // real KV heads (pool_heads * head_size / head_dim)
    int32_t head_dim = 0;                    // 64, 128, 256 or 512
    // nullptr: target attention, causal, query i of sequence b at position kv_lens[b] - q_len + i.
    // non-null (device int32 [batch]): read-only drafter attention; every query of sequence b takes RoPE position
    // q_positions[b] and attends all cached positions [0, kv_lens[b]) (within the window).
    const int32_t* q_positions = nullptr;
    int32_t window = 0;                      // a query at causal limit L sees keys (L - window, L]; 0 = no window
    float scale = 1.0f;                      // softmax scale (Gemma-4: 1.0)
    // RoPE applied to q inside the kernel, NeoX pairs (i, i + head_dim/2): device fp32 [head_dim/2] inverse
    // frequencies (zeros for pairs that do not rotate). nullptr: q is used as given.
    const float* rope_inv_freq = nullptr;
    // Kernel for one-query-tile steps of 512-d heads (decode, drafter): 4 = v4 (16 warps, row-owned softmax), 3 = v3
    // (8 warps), 0 = v4 unless the environment variable TRT_GEMMA4_ATTN_DECODE is "v3" (read at every launch).
    int32_t decode_impl = 0;
};

// Number of KV-split blocks ("flash-decoding") the launch will use; 1 means no combine pass. num_sms = 0 reads it
// from the current device.
int32_t attention_num_splits(const AttentionProblem& p, int32_t num_sms = 0);

// Workspace bytes for `num_splits` (0 when num_splits == 1). The launch lowers the split count to what fits in the
// workspace it is given, so a plugin may size the workspace for a bound of its choice.
size_t attention_workspace_bytes(const AttentionProblem& p, int32_t num_splits);

// out[t][h][d] (bf16) = softmax_j(scale * RoPE(q[t][h]) . K[j]) V[j] over the keys that query may see.
// q: device bf16 [num_tokens][num_q_heads][head_dim]; out: device bf16, same shape. Query heads
// kv_head*group .. kv_head*group + group-1 share KV head kv_head (group = num_q_heads / num_kv_heads).
// Nothing is written to the cache.
cudaError_t attention(const AttentionProblem& p, const void* q, void* out, void* workspace, size_t workspace_bytes,
                      cudaStream_t stream);

// Global-layer K/V of the new tokens into the cache (one KV head of head_dim = 128, 256 or 512 dims):
//   x = k_raw (bf16 [num_tokens][head_dim]); xn = x / sqrt(mean(x^2) + eps) (fp32)
//   V = xn;  K = RoPE(xn * k_norm_weight) at the token's position (kv_lens[b] - q_len + i)
// then quantised with the K and V scales of `kv` and stored at the token's slot.
// k_norm_weight: device fp32 [head_dim]; rope_inv_freq: device fp32 [head_dim/2] or nullptr (no RoPE).
cudaError_t write_global_kv(const PagedKv& kv, const TokenBatch& tokens, int32_t head_dim, const void* k_raw,
                            const float* k_norm_weight, const float* rope_inv_freq, float eps, cudaStream_t stream);

}  // namespace trt_gemma4
