// torch binding of the Gemma-4 paged attention kernels (plugins/kernels/gemma4_attention.cuh).
//
//   torch.ops.trt_gemma4.gemma4_write_global_kv(k_raw, k_norm_weight, pool, block_offsets, layer_in_pool,
//       cyclic_len, cu_q_lens, kv_lens, inv_freq, k_scale, v_scale, eps) -> ()          (writes pool in place)
//   torch.ops.trt_gemma4.gemma4_paged_attention(out, q, pool, block_offsets, layer_in_pool, cyclic_len, cu_q_lens,
//       kv_lens, q_positions, inv_freq, num_kv_heads, window, k_scale, v_scale, scale, max_q_len, max_kv_len,
//       sum_kv_len) -> ()                                                        (writes out, bf16 like q)
//
// `pool` is one pool tensor in trt_gemma4.kv's layout, [num_blocks, layers_in_pool, 2, pool_heads, T, head_size],
// float8_e4m3fn or bfloat16. Shapes and dtypes are checked here; trt_gemma4/kernels/attention.py documents the
// semantics and holds the CPU reference.
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAGuard.h>
#include <ATen/ATen.h>
#include <torch/library.h>

#include "../kernels/gemma4_attention.cuh"
#include "check.h"

namespace trt_gemma4 {
namespace {

void check_cuda(cudaError_t err, const char* what) {
    TG4_CHECK(err == cudaSuccess, what, " failed: ", cudaGetErrorString(err));
}

PagedKv paged_kv_of(const at::Tensor& pool, const at::Tensor& block_offsets, int64_t layer_in_pool,
                    int64_t cyclic_len, double k_scale, double v_scale) {
    TG4_CHECK(pool.is_cuda() && pool.dim() == 6 && pool.is_contiguous(),
              "pool must be a contiguous CUDA tensor [num_blocks, layers_in_pool, 2, heads, T, head_size], got ",
              pool.sizes());
    TG4_CHECK(pool.scalar_type() == at::kFloat8_e4m3fn || pool.scalar_type() == at::kBFloat16,
              "pool dtype must be float8_e4m3fn or bfloat16, got ", pool.scalar_type());
    TG4_CHECK(pool.size(2) == 2, "pool dim 2 must be K|V (2), got ", pool.size(2));
    TG4_CHECK(layer_in_pool >= 0 && layer_in_pool < pool.size(1), "layer_in_pool ", layer_in_pool,
              " outside the pool's ", pool.size(1), " layers");
    TG4_CHECK(block_offsets.is_cuda() && block_offsets.scalar_type() == at::kInt && block_offsets.dim() == 3 &&
                  block_offsets.size(1) == 2 && block_offsets.is_contiguous(),
              "block_offsets must be contiguous CUDA int32 [batch, 2, max_blocks], got ", block_offsets.sizes());
    PagedKv kv;
    kv.pool = pool.data_ptr();
    kv.block_offsets = block_offsets.data_ptr<int32_t>();
    kv.max_blocks_per_seq = static_cast<int32_t>(block_offsets.size(2));
    kv.layer_in_pool = static_cast<int32_t>(layer_in_pool);
    kv.pool_heads = static_cast<int32_t>(pool.size(3));
    kv.tokens_per_block = static_cast<int32_t>(pool.size(4));
    kv.head_size = static_cast<int32_t>(pool.size(5));
    kv.cyclic_len = static_cast<int32_t>(cyclic_len);
    kv.dtype = pool.scalar_type() == at::kFloat8_e4m3fn ? KvDtype::kFp8E4M3 : KvDtype::kBf16;
    kv.k_scale = static_cast<float>(k_scale);
    kv.v_scale = static_cast<float>(v_scale);
    return kv;
}

TokenBatch token_batch_of(const at::Tensor& cu_q_lens, const at::Tensor& kv_lens, int64_t num_tokens,
                          int64_t max_q_len, int64_t max_kv_len, int64_t sum_kv_len) {
    TG4_CHECK(cu_q_lens.is_cuda() && cu_q_lens.scalar_type() == at::kInt && cu_q_lens.dim() == 1 &&
                  cu_q_lens.is_contiguous(),
              "cu_q_lens must be contiguous CUDA int32 [batch + 1]");
    TG4_CHECK(kv_lens.is_cuda() && kv_lens.scalar_type() == at::kInt && kv_lens.dim() == 1 &&
                  kv_lens.size(0) + 1 == cu_q_lens.size(0) && kv_lens.is_contiguous(),
              "kv_lens must be contiguous CUDA int32 [batch]");
    TokenBatch tb;
    tb.batch = static_cast<int32_t>(kv_lens.size(0));
    tb.num_tokens = static_cast<int32_t>(num_tokens);
    tb.cu_q_lens = cu_q_lens.data_ptr<int32_t>();
    tb.kv_lens = kv_lens.data_ptr<int32_t>();
    tb.max_q_len = static_cast<int32_t>(max_q_len);
    tb.max_kv_len = static_cast<int32_t>(max_kv_len);
    tb.sum_kv_len = sum_kv_len;
    return tb;
}

const float* inv_freq_of(const std::optional<at::Tensor>& inv_freq, int64_t head_dim) {
    if (!inv_freq.has_value()) return nullptr;
    const at::Tensor& f = *inv_freq;
    TG4_CHECK(f.is_cuda() && f.scalar_type() == at::kFloat && f.numel() == head_dim / 2 && f.is_contiguous(),
              "inv_freq must be contiguous CUDA float32 [head_dim/2 = ", head_dim / 2, "]");
    return f.data_ptr<float>();
}

void write_global_kv_op(const at::Tensor& k_raw, const at::Tensor& k_norm_weight, at::Tensor& pool,
                        const at::Tensor& block_offsets, int64_t layer_in_pool, int64_t cyclic_len,
                        const at::Tensor& cu_q_lens, const at::Tensor& kv_lens,
                        const std::optional<at::Tensor>& inv_freq, double k_scale, double v_scale, double eps) {
    TG4_CHECK(k_raw.is_cuda() && k_raw.scalar_type() == at::kBFloat16 && k_raw.dim() == 2 && k_raw.is_contiguous(),
              "k_raw must be contiguous CUDA bfloat16 [num_tokens, head_dim]");
    const int64_t head_dim = k_raw.size(1);
    TG4_CHECK(k_norm_weight.is_cuda() && k_norm_weight.scalar_type() == at::kFloat &&
                  k_norm_weight.numel() == head_dim && k_norm_weight.is_contiguous(),
              "k_norm_weight must be contiguous CUDA float32 [", head_dim, "]");
    const c10::cuda::CUDAGuard guard(k_raw.device());
    const PagedKv kv = paged_kv_of(pool, block_offsets, layer_in_pool, cyclic_len, k_scale, v_scale);
    TG4_CHECK(kv.pool_heads * kv.head_size == head_dim, "a global layer stores one KV head: pool heads ",
              kv.pool_heads, " x head_size ", kv.head_size, " != head_dim ", head_dim);
    const TokenBatch tb = token_batch_of(cu_q_lens, kv_lens, k_raw.size(0), 0, 0, 0);
    check_cuda(write_global_kv(kv, tb, static_cast<int32_t>(head_dim), k_raw.data_ptr(),
                               k_norm_weight.data_ptr<float>(), inv_freq_of(inv_freq, head_dim),
                               static_cast<float>(eps), c10::cuda::getCurrentCUDAStream()),
               "gemma4_write_global_kv");
}

void paged_attention_op(at::Tensor& out, const at::Tensor& q, const at::Tensor& pool, const at::Tensor& block_offsets,
                              int64_t layer_in_pool, int64_t cyclic_len, const at::Tensor& cu_q_lens,
                              const at::Tensor& kv_lens, const std::optional<at::Tensor>& q_positions,
                              const std::optional<at::Tensor>& inv_freq, int64_t num_kv_heads, int64_t window,
                              double k_scale, double v_scale, double scale, int64_t max_q_len, int64_t max_kv_len,
                              int64_t sum_kv_len) {
    TG4_CHECK(q.is_cuda() && q.scalar_type() == at::kBFloat16 && q.dim() == 3 && q.is_contiguous(),
              "q must be contiguous CUDA bfloat16 [num_tokens, num_q_heads, head_dim]");
    TG4_CHECK(out.is_cuda() && out.scalar_type() == at::kBFloat16 && out.sizes() == q.sizes() && out.is_contiguous(),
              "out must be contiguous CUDA bfloat16 shaped like q");
    const c10::cuda::CUDAGuard guard(q.device());
    AttentionProblem p;
    p.kv = paged_kv_of(pool, block_offsets, layer_in_pool, cyclic_len, k_scale, v_scale);
    p.tokens = token_batch_of(cu_q_lens, kv_lens, q.size(0), max_q_len, max_kv_len, sum_kv_len);
    p.num_q_heads = static_cast<int32_t>(q.size(1));
    p.num_kv_heads = static_cast<int32_t>(num_kv_heads);
    p.head_dim = static_cast<int32_t>(q.size(2));
    p.window = static_cast<int32_t>(window);
    p.scale = static_cast<float>(scale);
    p.rope_inv_freq = inv_freq_of(inv_freq, p.head_dim);
    if (q_positions.has_value()) {
        const at::Tensor& qp = *q_positions;
        TG4_CHECK(qp.is_cuda() && qp.scalar_type() == at::kInt && qp.numel() == p.tokens.batch &&
                      qp.is_contiguous(),
                  "q_positions must be contiguous CUDA int32 [batch]");
        p.q_positions = qp.data_ptr<int32_t>();
    }
    TG4_CHECK(p.kv.pool_heads * p.kv.head_size == p.num_kv_heads * p.head_dim, "pool heads ", p.kv.pool_heads,
              " x head_size ", p.kv.head_size, " != num_kv_heads ", p.num_kv_heads, " x head_dim ", p.head_dim);
    const int32_t splits = attention_num_splits(p);
    const size_t ws_bytes = attention_workspace_bytes(p, splits);
    at::Tensor ws = at::empty({static_cast<int64_t>(std::max<size_t>(ws_bytes, 1))},
                              q.options().dtype(at::kByte));
    check_cuda(attention(p, q.data_ptr(), out.data_ptr(), ws.data_ptr(), ws_bytes, c10::cuda::getCurrentCUDAStream()),
               "gemma4_paged_attention");
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(trt_gemma4, m) {
    m.def(
        "gemma4_write_global_kv(Tensor k_raw, Tensor k_norm_weight, Tensor(a!) pool, Tensor block_offsets, "
        "int layer_in_pool, int cyclic_len, Tensor cu_q_lens, Tensor kv_lens, Tensor? inv_freq, float k_scale, "
        "float v_scale, float eps) -> ()");
    m.def(
        "gemma4_paged_attention(Tensor(a!) out, Tensor q, Tensor pool, Tensor block_offsets, int layer_in_pool, int cyclic_len, "
        "Tensor cu_q_lens, Tensor kv_lens, Tensor? q_positions, Tensor? inv_freq, int num_kv_heads, int window, "
        "float k_scale, float v_scale, float scale, int max_q_len, int max_kv_len, int sum_kv_len) -> ()");
}

TORCH_LIBRARY_IMPL(trt_gemma4, CUDA, m) {
    m.impl("gemma4_write_global_kv", &write_global_kv_op);
    m.impl("gemma4_paged_attention", &paged_attention_op);
}

}  // namespace trt_gemma4
