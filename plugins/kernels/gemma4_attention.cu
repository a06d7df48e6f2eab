// Gemma-4 paged attention kernels. API and KV layout: gemma4_attention.cuh.
//
// Design (one kernel for every request kind):
// * A CTA owns one KV head and a tile of BM = 16*MT "query rows", a row being (new token, q head of the group).
//   For the 12B global layer (16 q heads, 1 KV head) one decode token fills exactly one 16-row MMA tile, so each
//   K/V tile is read from memory once for all 16 heads (MQA).
// * K/V tiles of BN = 64 tokens are copied raw (FP8 bytes) into shared memory with cp.async, STAGES deep, and
//   converted to the MMA type in registers while building fragments: FP8 E4M3 -> f16 is exact (every e4m3 value
//   is an f16 value), so FP8 caches run f16 MMAs with the KV scales applied to the fp32 results; BF16 caches run
//   bf16 MMAs.
// * 8 warps. S = Q K^T: warp w owns the 8 tokens [8w, 8w+8) of the tile and all of head_dim. O += P V: warp w owns
//   head_dim/8 output dims. The online-softmax max and sum are exchanged through shared memory (three barriers a
//   tile).
// * Long sequences are split across CTAs (grid.z, "flash-decoding"); a combine kernel merges the partial results.
//
// Fragment layout tricks (mma.sync m16n8k16, thread = (g = lane/4, t4 = lane%4)):
// * The contraction order of an MMA is free as long as A and B agree. For S = Q K^T a thread loads 8 contiguous
//   K dims [32c + 8*t4, +8) of its token in one 8-byte read and uses them as the k-slots {2t4, 2t4+1, 2t4+8, 2t4+9}
//   of two consecutive MMAs; the Q fragment is read with the same permutation (one 16-byte read per row).
// * For O += P V the k index is the token. V rows are token-major and 1 byte wide, which ldmatrix cannot
//   transpose, so the thread's four k-slots map to tokens {t4, t4+4, t4+8, t4+12} (conflict-free rows) and the
//   output n index is permuted too: n-tile nt, column n maps to dim base + NTG*n + nt, so one 4-byte read gives the
//   same token's dims for NTG = 4 n-tiles. P is written to shared memory in the matching permuted order.
// * Shared-memory rows are padded (K/V: +32 bytes, Q: +64 bytes) so that the 8-byte and 16-byte fragment reads of
//   a warp hit distinct banks.
#include "gemma4_attention.cuh"

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_fp8.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>

namespace trt_gemma4 {
namespace {

constexpr int kWarps = 8;
constexpr int kThreads = kWarps * 32;
constexpr int kBN = 64;          // KV tokens per tile
constexpr int kMaxSplits = 256;  // bound on KV splits per sequence
constexpr float kLog2e = 1.4426950408889634f;

// ---------------------------------------------------------------------------------------------------------------
// Small device helpers

__device__ __forceinline__ uint32_t smem_u32(const void* p) {
    return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// 16-byte async copy; src_bytes = 0 zero-fills the destination (tokens outside the range a CTA may read).
__device__ __forceinline__ void cp_async_16(void* dst, const void* src, int src_bytes) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_u32(dst)), "l"(src), "r"(src_bytes));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N>
__device__ __forceinline__ void cp_async_wait() {
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}

// Two e4m3 bytes (low byte -> low half) to f16x2; exact. One cvt instruction on sm_89+.
__device__ __forceinline__ uint32_t fp8x2_to_f16x2(uint32_t two_bytes) {
    __half2_raw h = __nv_cvt_fp8x2_to_halfraw2(static_cast<__nv_fp8x2_storage_t>(two_bytes & 0xffffu), __NV_E4M3);
    return static_cast<uint32_t>(h.x) | (static_cast<uint32_t>(h.y) << 16);
}

// The same pointer, with its provenance hidden from the optimiser (see the v4 tile loader).
template <typename T>
__device__ __forceinline__ const T* opaque(const T* p) {
    uint64_t v;
    asm("mov.b64 %0, %1;\n" : "=l"(v) : "l"(reinterpret_cast<uint64_t>(p)));
    return reinterpret_cast<const T*>(v);
}

// 2^x, one MUFU instruction (ex2.approx.ftz: ~2 ulp, -inf -> +0); exp2f adds a denormal-range fix-up around it.
__device__ __forceinline__ float ex2_approx(float x) {
    float y;
    asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
    return y;
}

// Four e4m3 bytes to two f16x2: bytes 0,1 -> *lo, bytes 2,3 -> *hi (low byte -> low half); exact. On sm_89+ the
// two cvt instructions read the 16-bit halves of w directly (no shift for the high half).
__device__ __forceinline__ void fp8x4_to_f16x2x2(uint32_t w, uint32_t& lo, uint32_t& hi) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 890
    asm("{\n .reg .b16 l, h;\n mov.b32 {l, h}, %2;\n cvt.rn.f16x2.e4m3x2 %0, l;\n cvt.rn.f16x2.e4m3x2 %1, h;\n}\n"
        : "=r"(lo), "=r"(hi)
        : "r"(w));
#else
    lo = fp8x2_to_f16x2(w);
    hi = fp8x2_to_f16x2(w >> 16);
#endif
}

template <bool kF16>
__device__ __forceinline__ void mma_16816(float (&c)[4], uint32_t a0, uint32_t a1, uint32_t a2, uint32_t a3,
                                          uint32_t b0, uint32_t b1) {
    if constexpr (kF16) {
        asm volatile(
            "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
            "{%0,%1,%2,%3};\n"
            : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
            : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
    } else {
        asm volatile(
            "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
            "{%0,%1,%2,%3};\n"
            : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
            : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
    }
}

// Pack two fp32 into the MMA's 16-bit pair type (low element first).
template <bool kF16>
__device__ __forceinline__ uint32_t pack2(float lo, float hi) {
    if constexpr (kF16) {
        __half2 h = __floats2half2_rn(lo, hi);
        return *reinterpret_cast<uint32_t*>(&h);
    } else {
        __nv_bfloat162 h = __floats2bfloat162_rn(lo, hi);
        return *reinterpret_cast<uint32_t*>(&h);
    }
}
template <bool kF16>
__device__ __forceinline__ uint16_t to16(float x) {
    if constexpr (kF16) {
        return __half_as_ushort(__float2half_rn(x));
    } else {
        return __bfloat16_as_ushort(__float2bfloat16_rn(x));
    }
}

// Address arithmetic of the paged cache, shared by the write and attention kernels.
struct KvAddr {
    const uint8_t* pool;
    const int32_t* block_offsets;
    int64_t unit_bytes;   // pool_heads * T * head_size * esz
    int64_t plane_bytes;  // T * head_size * esz
    int32_t row_bytes;    // head_size * esz
    int32_t max_blocks;
    int32_t lip2;
    int32_t t_shift;      // log2(tokens_per_block)
    int32_t head_size;
    int32_t planes;       // head_dim / head_size
    int32_t cyclic_len;
    int32_t esz;

    // Byte address of element (kv, kv_head, dim d) of logical position pos of sequence b. d must not cross a plane.
    __device__ __forceinline__ const uint8_t* at(int b, int kv, int pos, int kv_head, int d) const {
        const int slot = cyclic_len > 0 ? pos % cyclic_len : pos;
        const int64_t unit =
            static_cast<int64_t>(block_offsets[(static_cast<int64_t>(b) * 2 + kv) * max_blocks + (slot >> t_shift)]) +
            lip2;
        const int plane = kv_head * planes + d / head_size;
        return pool + unit * unit_bytes + plane * plane_bytes +
               static_cast<int64_t>(slot & ((1 << t_shift) - 1)) * row_bytes +
               static_cast<int64_t>(d % head_size) * esz;
    }
};

KvAddr make_addr(const PagedKv& kv, int head_dim) {
    KvAddr a{};
    a.pool = static_cast<const uint8_t*>(kv.pool);
    a.block_offsets = kv.block_offsets;
    a.esz = kv.dtype == KvDtype::kFp8E4M3 ? 1 : 2;
    a.plane_bytes = static_cast<int64_t>(kv.tokens_per_block) * kv.head_size * a.esz;
    a.unit_bytes = a.plane_bytes * kv.pool_heads;
    a.row_bytes = kv.head_size * a.esz;
    a.max_blocks = kv.max_blocks_per_seq;
    a.lip2 = kv.layer_in_pool * 2;
    int s = 0;
    while ((1 << s) < kv.tokens_per_block) ++s;
    a.t_shift = s;
    a.head_size = kv.head_size;
    a.planes = head_dim / kv.head_size;
    a.cyclic_len = kv.cyclic_len;
    return a;
}

__device__ __forceinline__ int find_sequence(const int32_t* cu, int batch, int token) {
    int lo = 0, hi = batch - 1;  // largest b with cu[b] <= token
    while (lo < hi) {
        const int mid = (lo + hi + 1) >> 1;
        if (cu[mid] <= token) lo = mid; else hi = mid - 1;
    }
    return lo;
}

// ---------------------------------------------------------------------------------------------------------------
// K/V write: one warp per new token. Lane l owns dims [l*E, l*E+E) and their RoPE partners [D/2 + l*E, +E).

template <int D, bool kFp8>
__global__ void __launch_bounds__(128) write_global_kv_kernel(KvAddr addr, TokenBatch tb, const __nv_bfloat16* k_raw,
                                                              const float* __restrict__ k_norm_weight,
                                                              const float* __restrict__ inv_freq, float eps,
                                                              float k_quant, float v_quant) {
    constexpr int E = D / 64;
    const int lane = threadIdx.x & 31;
    const int token = blockIdx.x * 4 + (threadIdx.x >> 5);
    if (token >= tb.num_tokens) return;
    const int b = find_sequence(tb.cu_q_lens, tb.batch, token);
    const int q_len = tb.cu_q_lens[b + 1] - tb.cu_q_lens[b];
    const int pos = tb.kv_lens[b] - q_len + (token - tb.cu_q_lens[b]);

    float lo[E], hi[E];
    const __nv_bfloat16* x = k_raw + static_cast<int64_t>(token) * D;
    float ss = 0.f;
#pragma unroll
    for (int e = 0; e < E; ++e) {
        lo[e] = __bfloat162float(x[lane * E + e]);
        hi[e] = __bfloat162float(x[D / 2 + lane * E + e]);
        ss += lo[e] * lo[e] + hi[e] * hi[e];
    }
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) ss += __shfl_xor_sync(0xffffffffu, ss, o);
    const float rstd = 1.0f / sqrtf(ss / D + eps);

    float vlo[E], vhi[E], klo[E], khi[E];
#pragma unroll
    for (int e = 0; e < E; ++e) {
        const int d = lane * E + e;
        vlo[e] = lo[e] * rstd;
        vhi[e] = hi[e] * rstd;
        const float a = vlo[e] * k_norm_weight[d];
        const float c = vhi[e] * k_norm_weight[d + D / 2];
        float sn = 0.f, cs = 1.f;
        if (inv_freq != nullptr) sincosf(static_cast<float>(pos) * inv_freq[d], &sn, &cs);
        klo[e] = a * cs - c * sn;
        khi[e] = c * cs + a * sn;
    }

    // E contiguous dims never cross a plane (head_size is a multiple of 64 >= E).
#pragma unroll
    for (int half = 0; half < 2; ++half) {
        const int d0 = half * (D / 2) + lane * E;
        const float* kx = half ? khi : klo;
        const float* vx = half ? vhi : vlo;
        uint8_t* kp = const_cast<uint8_t*>(addr.at(b, 0, pos, 0, d0));
        uint8_t* vp = const_cast<uint8_t*>(addr.at(b, 1, pos, 0, d0));
#pragma unroll
        for (int e = 0; e < E; e += 2) {
            if constexpr (kFp8) {
                // Saturating round-to-nearest-even, like torch's clamp(-448, 448).to(float8_e4m3fn).
                const __nv_fp8x2_storage_t kq = __nv_cvt_float2_to_fp8x2(
                    make_float2(kx[e] * k_quant, kx[e + 1] * k_quant), __NV_SATFINITE, __NV_E4M3);
                const __nv_fp8x2_storage_t vq = __nv_cvt_float2_to_fp8x2(
                    make_float2(vx[e] * v_quant, vx[e + 1] * v_quant), __NV_SATFINITE, __NV_E4M3);
                *reinterpret_cast<__nv_fp8x2_storage_t*>(kp + e) = kq;
                *reinterpret_cast<__nv_fp8x2_storage_t*>(vp + e) = vq;
            } else {
                *reinterpret_cast<__nv_bfloat162*>(kp + 2 * e) = __floats2bfloat162_rn(kx[e], kx[e + 1]);
                *reinterpret_cast<__nv_bfloat162*>(vp + 2 * e) = __floats2bfloat162_rn(vx[e], vx[e + 1]);
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Attention

struct AttnParams {
    KvAddr addr;
    TokenBatch tb;
    const __nv_bfloat16* q;
    __nv_bfloat16* out;
    const float* inv_freq;
    const int32_t* q_positions;
    float* ws_o;    // [splits][num_tokens * num_q_heads][D] unnormalised partial outputs
    float2* ws_ml;  // [splits][num_tokens * num_q_heads] (running max, running sum)
    int32_t num_q_heads;
    int32_t group;
    int32_t window;
    int32_t num_splits;
    int32_t split_tiles;  // KV tiles per split
    int32_t qtiles;       // query tiles per sequence in the grid (grid.x = batch * qtiles)
    float qk_scale;       // scale * k_scale (FP8) or scale (BF16)
    float v_scale;
};

// ---- Pieces shared by paged_attention_kernel and decode_attention_kernel -----------------------------------------

// The keys a CTA's query rows see, and this split's share of their 64-key tiles.
struct KeyRange {
    int j_lo, j_hi;  // first and last visible key of the tile's rows (j_hi < j_lo: none)
    int tile_first;  // first 64-key tile of [j_lo, j_hi]
    int my_first;    // this split's first tile, relative to tile_first
    int n_tiles;     // this split's tiles
};

// Which keys new token i of a sequence sees: up to its causal limit, from limit - window + 1 (window > 0); draft
// (read-only) queries all sit at kv_len - 1.
struct Visibility {
    bool draft;
    int q_len, kv_len, window;
    __device__ __forceinline__ int limit(int i) const { return draft ? kv_len - 1 : kv_len - q_len + i; }
    __device__ __forceinline__ int lo(int i) const { return window > 0 ? max(0, limit(i) - window + 1) : 0; }
};

// Rows row0..row0+BM-1 of a sequence (row = token * group + head in group).
__device__ __forceinline__ KeyRange key_range(const Visibility& vis, int G, int row0, int BM, int split,
                                              int split_tiles) {
    const int tok_first = row0 / G;
    const int tok_last = min(vis.q_len * G - 1, row0 + BM - 1) / G;
    KeyRange r;
    r.j_lo = vis.lo(tok_first);
    r.j_hi = min(vis.limit(tok_last), vis.kv_len - 1);
    r.tile_first = r.j_lo / kBN;
    const int n_tiles_all = r.j_hi >= r.j_lo ? r.j_hi / kBN - r.tile_first + 1 : 0;
    r.my_first = split * split_tiles;
    r.n_tiles = max(0, min(n_tiles_all - r.my_first, split_tiles));
    return r;
}

// Q tile [BM rows][D] into shared memory (rows of kQRow bytes): RoPE in fp32 on the pairs (i, i + D/2), then rounded
// to the MMA type; rows past the sequence's tokens are zeros.
template <int D, bool kF16, int kQRow, int kThreadsQ>
__device__ __forceinline__ void stage_q_tile(const AttnParams& p, uint8_t* q_s, int BM, int row0, int q_begin,
                                             int q_len, int kv_len, int kv_head, int b, bool draft, int tid) {
    const int G = p.group;
    constexpr int kChunks = D / 2 / 8;  // 8-dim chunks per half row
    for (int w = tid; w < BM * kChunks; w += kThreadsQ) {
        const int r = w / kChunks, c = w % kChunks;
        const int row = row0 + r;
        const int i = row / G;
        uint4 lo_out = make_uint4(0, 0, 0, 0), hi_out = make_uint4(0, 0, 0, 0);
        if (i < q_len) {
            const int head = kv_head * G + row % G;
            const __nv_bfloat16* src = p.q + (static_cast<int64_t>(q_begin + i) * p.num_q_heads + head) * D + c * 8;
            const uint4 lo_raw = *reinterpret_cast<const uint4*>(src);
            const uint4 hi_raw = *reinterpret_cast<const uint4*>(src + D / 2);
            const __nv_bfloat16* lo_h = reinterpret_cast<const __nv_bfloat16*>(&lo_raw);
            const __nv_bfloat16* hi_h = reinterpret_cast<const __nv_bfloat16*>(&hi_raw);
            const int pos = draft ? p.q_positions[b] : kv_len - q_len + i;
            uint16_t lo16[8], hi16[8];
#pragma unroll
            for (int e = 0; e < 8; ++e) {
                const float a = __bfloat162float(lo_h[e]);
                const float h = __bfloat162float(hi_h[e]);
                float sn = 0.f, cs = 1.f;
                if (p.inv_freq != nullptr) sincosf(static_cast<float>(pos) * p.inv_freq[c * 8 + e], &sn, &cs);
                lo16[e] = to16<kF16>(a * cs - h * sn);
                hi16[e] = to16<kF16>(h * cs + a * sn);
            }
            lo_out = *reinterpret_cast<uint4*>(lo16);
            hi_out = *reinterpret_cast<uint4*>(hi16);
        }
        *reinterpret_cast<uint4*>(q_s + r * kQRow + c * 16) = lo_out;
        *reinterpret_cast<uint4*>(q_s + r * kQRow + D + c * 16) = hi_out;
    }
}

// Byte offset, inside a cache unit, of the 16-byte column chunk ld_chunk of a K/V row of KV head kv_head (a 512-d
// head is stored as planes of head_size dims).
template <int kEsz>
__device__ __forceinline__ int kv_dim_offset(const KvAddr& A, int kv_head, int ld_chunk) {
    const int d = ld_chunk * 16 / kEsz;
    return (kv_head * A.planes + d / A.head_size) * static_cast<int>(A.plane_bytes) + (d % A.head_size) * kEsz;
}

// The general tile loader (linear cache, or a ring of cyclic_len slots; kRing: known to be a ring): rows
// j_first + k * kRowsPerPass of one 16-byte column chunk, K to k_dst and V to v_dst (rows kKvRow bytes apart);
// rows outside [j_lo, j_hi] copy 0 bytes (zero fill).
template <int kRowsPerPass, int kKvRow, bool kRing = false>
__device__ __forceinline__ void load_kv_rows(uint8_t* k_dst, uint8_t* v_dst, int j_first, int j_lo, int j_hi,
                                             const KvAddr& A, const int32_t* k_offsets, const int32_t* v_offsets,
                                             int unit_bytes, int ld_dim_off, int cyc, int t_mask) {
    int slot = kRing || cyc > 0 ? j_first % cyc : j_first;
#pragma unroll
    for (int k = 0; k < kBN / kRowsPerPass; ++k) {
        const int j = j_first + k * kRowsPerPass;
        const bool ok = j >= j_lo && j <= j_hi;
        const uint8_t* ks = A.pool;
        const uint8_t* vs = A.pool;
        if (ok) {
            const int blk = slot >> A.t_shift;
            const int in_unit = (slot & t_mask) * A.row_bytes + ld_dim_off;
            ks = A.pool + static_cast<int64_t>(k_offsets[blk] + A.lip2) * unit_bytes + in_unit;
            vs = A.pool + static_cast<int64_t>(v_offsets[blk] + A.lip2) * unit_bytes + in_unit;
        }
        cp_async_16(k_dst + k * kRowsPerPass * kKvRow, ks, ok ? 16 : 0);
        cp_async_16(v_dst + k * kRowsPerPass * kKvRow, vs, ok ? 16 : 0);
        slot += kRowsPerPass;
        if ((kRing || cyc > 0) && slot >= cyc) slot -= cyc;  // cyclic_len >= 64 >= kRowsPerPass (host-checked)
    }
}

// The cp.async ring of both kernels: STAGES - 1 tiles requested before the loop (ring_prologue); at the top of
// tile t (ring_advance) wait for tile t, synchronise the CTA, and request tile t + STAGES - 1 into the slot tile
// t - 1 used. STAGES = 1 loads and waits for each tile in turn (the caller adds a barrier at the end of the tile).
template <int STAGES, class Load>
__device__ __forceinline__ void ring_prologue(int n_tiles, Load& load_tile) {
#pragma unroll
    for (int s = 0; s < STAGES - 1; ++s) {
        if (s < n_tiles) load_tile(s, s);
        cp_async_commit();
    }
}
template <int STAGES, class Load>
__device__ __forceinline__ void ring_advance(int t, int n_tiles, Load& load_tile) {
    if constexpr (STAGES == 1) {
        load_tile(t, 0);
        cp_async_commit();
        cp_async_wait<0>();
        __syncthreads();
    } else {
        cp_async_wait<STAGES - 2>();
        __syncthreads();  // tile t landed for every thread; the slot refilled below was consumed at t - 1
        if (t + STAGES - 1 < n_tiles) load_tile(t + STAGES - 1, (t + STAGES - 1) % STAGES);
        cp_async_commit();
    }
}

// Shared memory of one CTA: Q tile, STAGES x (K tile + V tile), P tile, max/sum exchange.
constexpr int attn_smem_bytes(int D, int esz, int MT, int stages) {
    return 16 * MT * (D * 2 + 64) + stages * 2 * kBN * (D * esz + 32) + 16 * MT * kBN * 2 + 2 * kWarps * 16 * MT * 4;
}

template <int D, bool kFp8, int MT, int STAGES>
struct AttnCfg {
    static constexpr int BM = 16 * MT;
    static constexpr int kEsz = kFp8 ? 1 : 2;
    static constexpr int kKvRow = D * kEsz + 32;  // padded shared row (bytes): row stride = 32 mod 128
    static constexpr int kQRow = D * 2 + 64;      // padded shared row (bytes): row stride = 64 mod 128
    static constexpr int kDW = D / kWarps;        // output dims per warp
    static constexpr int kGW = kDW >= 32 ? 32 : kDW;
    static constexpr int kNTG = kGW / 8;          // n-tiles sharing one V read
    static constexpr int kGroups = kDW / kGW;
    static constexpr int kQBytes = BM * kQRow;
    static constexpr int kTileBytes = kBN * kKvRow;
    static constexpr int kStageBytes = 2 * kTileBytes;
    static constexpr int kPBytes = BM * kBN * 2;
    static constexpr int kRedBytes = 2 * kWarps * BM * 4;
    static constexpr int kSmem = kQBytes + STAGES * kStageBytes + kPBytes + kRedBytes;
    static_assert(kSmem == attn_smem_bytes(D, kEsz, MT, STAGES), "shared-memory layout");
    static_assert(D % 64 == 0 && kDW % 8 == 0, "head_dim must be a multiple of 64");
};

template <int D, bool kFp8, int MT, int STAGES>
__global__ void __launch_bounds__(kThreads, 1) paged_attention_kernel(const AttnParams p) {
    using C = AttnCfg<D, kFp8, MT, STAGES>;
    constexpr bool kF16 = kFp8;  // MMA operand type: f16 for FP8 caches (exact conversion), bf16 for BF16 caches
    constexpr int BM = C::BM;
    extern __shared__ __align__(128) uint8_t smem[];
    uint8_t* q_s = smem;
    uint8_t* kv_s = smem + C::kQBytes;
    uint16_t* p_s = reinterpret_cast<uint16_t*>(kv_s + STAGES * C::kStageBytes);
    float* red_max = reinterpret_cast<float*>(reinterpret_cast<uint8_t*>(p_s) + C::kPBytes);
    float* red_sum = red_max + kWarps * BM;

    const int tid = threadIdx.x;
    const int warp = tid >> 5, lane = tid & 31, g = lane >> 2, t4 = lane & 3;
    const int b = blockIdx.x / p.qtiles;
    const int qtile = blockIdx.x % p.qtiles;
    const int kv_head = blockIdx.y;
    const int split = blockIdx.z;
    const int G = p.group;

    const int q_begin = p.tb.cu_q_lens[b];
    const int q_len = p.tb.cu_q_lens[b + 1] - q_begin;
    const int kv_len = p.tb.kv_lens[b];
    const int row0 = qtile * BM;
    if (row0 >= q_len * G) return;  // tile beyond this sequence's rows (grid sized for the longest)
    const bool draft = p.q_positions != nullptr;

    // Visible keys of the tile's rows (causal limit, window) and this split's share of their tiles.
    const Visibility vis{draft, q_len, kv_len, p.window};
    const KeyRange kr = key_range(vis, G, row0, BM, split, p.split_tiles);
    const int j_lo = kr.j_lo, j_hi = kr.j_hi, tile_first = kr.tile_first, my_first = kr.my_first;
    const int n_tiles = kr.n_tiles;

    // ---- Q tile: RoPE in fp32, then rounded to the MMA type. Rows past the sequence's tokens are zeros.
    stage_q_tile<D, kF16, C::kQRow, kThreads>(p, q_s, BM, row0, q_begin, q_len, kv_len, kv_head, b, draft, tid);

    // ---- K/V tile loader: tile t (relative to this split's first) into stage st; keys outside [j_lo, j_hi] are
    // zero-filled so that stale or never-written cache bytes (possibly NaN patterns) never reach an MMA.
    // Each thread always copies the same 16-byte column chunk of rows ld_row, ld_row + kRowsPerPass, ..., so its
    // plane/dim offset is computed once, the ring slot advances by addition (one modulo per tile), and the address
    // is one 32x32->64-bit multiply-add: issuing the copies must stay cheap next to the MMA work of a tile.
    constexpr int kChunksPerRow = D * C::kEsz / 16;
    static_assert(kThreads % kChunksPerRow == 0, "a row's chunks must divide the CTA");
    constexpr int kRowsPerPass = kThreads / kChunksPerRow;
    const int ld_chunk = tid % kChunksPerRow;
    const int ld_row = tid / kChunksPerRow;
    const KvAddr& A = p.addr;
    const int ld_dim_off = kv_dim_offset<C::kEsz>(A, kv_head, ld_chunk);
    const int unit_bytes = static_cast<int>(A.unit_bytes);
    const int32_t* k_offsets = A.block_offsets + static_cast<int64_t>(b) * 2 * A.max_blocks;
    const int32_t* v_offsets = k_offsets + A.max_blocks;
    const int t_mask = (1 << A.t_shift) - 1;
    const int cyc = A.cyclic_len;
    auto load_tile = [&](int t, int st) {
        uint8_t* k_dst = kv_s + st * C::kStageBytes + ld_row * C::kKvRow + ld_chunk * 16;
        const int j_first = (tile_first + my_first + t) * kBN + ld_row;
        load_kv_rows<kRowsPerPass, C::kKvRow>(k_dst, k_dst + C::kTileBytes, j_first, j_lo, j_hi, A, k_offsets,
                                              v_offsets, unit_bytes, ld_dim_off, cyc, t_mask);
    };

    // Per-thread rows: (mt, h) -> row 16*mt + g + 8*h of the tile.
    int row_lim[MT][2], row_lo[MT][2];
#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
#pragma unroll
        for (int h = 0; h < 2; ++h) {
            const int i = (row0 + 16 * mt + g + 8 * h) / G;
            row_lim[mt][h] = i < q_len ? min(vis.limit(i), kv_len - 1) : -1;
            row_lo[mt][h] = i < q_len ? vis.lo(i) : 0;
        }

    float o_acc[MT][C::kGroups][C::kNTG][4];
#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
#pragma unroll
        for (int gi = 0; gi < C::kGroups; ++gi)
#pragma unroll
            for (int nt = 0; nt < C::kNTG; ++nt)
#pragma unroll
                for (int e = 0; e < 4; ++e) o_acc[mt][gi][nt][e] = 0.f;
    float m_run[MT][2], l_run[MT][2];
#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
#pragma unroll
        for (int h = 0; h < 2; ++h) {
            m_run[mt][h] = -INFINITY;
            l_run[mt][h] = 0.f;
        }

    ring_prologue<STAGES>(n_tiles, load_tile);

    for (int t = 0; t < n_tiles; ++t) {
        const int st = t % STAGES;
        ring_advance<STAGES>(t, n_tiles, load_tile);
        const uint8_t* k_s = kv_s + st * C::kStageBytes;
        const uint8_t* v_s = k_s + C::kTileBytes;
        const int j0 = (tile_first + my_first + t) * kBN;

        // ---- S = Q K^T for this warp's 8 tokens. Four independent accumulator chains per m-tile (MMA of the even /
        // odd half of each 32-dim chunk, even / odd chunk) so that consecutive MMAs do not wait on each other
        // (only 2 warps per scheduler hide latency: one CTA per SM).
        float s_part[MT][4][4];
#pragma unroll
        for (int mt = 0; mt < MT; ++mt)
#pragma unroll
            for (int ch = 0; ch < 4; ++ch)
#pragma unroll
                for (int e = 0; e < 4; ++e) s_part[mt][ch][e] = 0.f;
        const uint8_t* k_row = k_s + (warp * 8 + g) * C::kKvRow;
#pragma unroll 4
        for (int c = 0; c < D / 32; ++c) {
            uint32_t kb[4];
            if constexpr (kFp8) {
                const uint2 raw = *reinterpret_cast<const uint2*>(k_row + c * 32 + t4 * 8);
                kb[0] = fp8x2_to_f16x2(raw.x);
                kb[1] = fp8x2_to_f16x2(raw.x >> 16);
                kb[2] = fp8x2_to_f16x2(raw.y);
                kb[3] = fp8x2_to_f16x2(raw.y >> 16);
            } else {
                const uint4 raw = *reinterpret_cast<const uint4*>(k_row + (c * 32 + t4 * 8) * 2);
                kb[0] = raw.x; kb[1] = raw.y; kb[2] = raw.z; kb[3] = raw.w;
            }
            const int ch = (c & 1) * 2;
#pragma unroll
            for (int mt = 0; mt < MT; ++mt) {
                const uint4 qa = *reinterpret_cast<const uint4*>(q_s + (16 * mt + g) * C::kQRow + (c * 32 + t4 * 8) * 2);
                const uint4 qb =
                    *reinterpret_cast<const uint4*>(q_s + (16 * mt + g + 8) * C::kQRow + (c * 32 + t4 * 8) * 2);
                mma_16816<kF16>(s_part[mt][ch], qa.x, qb.x, qa.y, qb.y, kb[0], kb[1]);
                mma_16816<kF16>(s_part[mt][ch + 1], qa.z, qb.z, qa.w, qb.w, kb[2], kb[3]);
            }
        }
        float s_acc[MT][4];
#pragma unroll
        for (int mt = 0; mt < MT; ++mt)
#pragma unroll
            for (int e = 0; e < 4; ++e)
                s_acc[mt][e] = (s_part[mt][0][e] + s_part[mt][1][e]) + (s_part[mt][2][e] + s_part[mt][3][e]);

        // ---- Scale, mask, tile row max.
#pragma unroll
        for (int mt = 0; mt < MT; ++mt)
#pragma unroll
            for (int h = 0; h < 2; ++h) {
                float mx = -INFINITY;
#pragma unroll
                for (int e = 0; e < 2; ++e) {
                    const int j = j0 + warp * 8 + 2 * t4 + e;
                    float& s = s_acc[mt][2 * h + e];
                    s = (j >= row_lo[mt][h] && j <= row_lim[mt][h]) ? s * p.qk_scale : -INFINITY;
                    mx = fmaxf(mx, s);
                }
                mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
                mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
                if (t4 == 0) red_max[warp * BM + 16 * mt + g + 8 * h] = mx;
            }
        __syncthreads();

        // ---- New running max, P = exp(S - m) into shared memory (permuted, see top), tile row sums.
        float alpha[MT][2];
#pragma unroll
        for (int mt = 0; mt < MT; ++mt)
#pragma unroll
            for (int h = 0; h < 2; ++h) {
                const int r = 16 * mt + g + 8 * h;
                float m_new = m_run[mt][h];
#pragma unroll
                for (int w = 0; w < kWarps; ++w) m_new = fmaxf(m_new, red_max[w * BM + r]);
                const float m_use = m_new == -INFINITY ? 0.f : m_new;
                alpha[mt][h] = exp2f((m_run[mt][h] - m_use) * kLog2e);
                m_run[mt][h] = m_new;
                float sum = 0.f;
#pragma unroll
                for (int e = 0; e < 2; ++e) {
                    const float pv = exp2f((s_acc[mt][2 * h + e] - m_use) * kLog2e);
                    sum += pv;
                    const int tk = warp * 8 + 2 * t4 + e;  // token within the tile
                    const int kc = tk >> 4, w16 = tk & 15;
                    p_s[((r * (kBN / 16) + kc) * 4 + (w16 & 3)) * 4 + (w16 >> 2)] = to16<kF16>(pv);
                }
                sum += __shfl_xor_sync(0xffffffffu, sum, 1);
                sum += __shfl_xor_sync(0xffffffffu, sum, 2);
                if (t4 == 0) red_sum[warp * BM + r] = sum;
            }
        __syncthreads();

#pragma unroll
        for (int mt = 0; mt < MT; ++mt)
#pragma unroll
            for (int h = 0; h < 2; ++h) {
                const int r = 16 * mt + g + 8 * h;
                float sum = 0.f;
#pragma unroll
                for (int w = 0; w < kWarps; ++w) sum += red_sum[w * BM + r];
                l_run[mt][h] = l_run[mt][h] * alpha[mt][h] + sum;
#pragma unroll
                for (int gi = 0; gi < C::kGroups; ++gi)
#pragma unroll
                    for (int nt = 0; nt < C::kNTG; ++nt) {
                        o_acc[mt][gi][nt][2 * h] *= alpha[mt][h];
                        o_acc[mt][gi][nt][2 * h + 1] *= alpha[mt][h];
                    }
            }

        // ---- O += P V over this warp's output dims.
#pragma unroll
        for (int kc = 0; kc < kBN / 16; ++kc) {
            uint32_t pa[MT][4];
#pragma unroll
            for (int mt = 0; mt < MT; ++mt) {
                const uint2 x = *reinterpret_cast<const uint2*>(p_s + (((16 * mt + g) * (kBN / 16) + kc) * 4 + t4) * 4);
                const uint2 y =
                    *reinterpret_cast<const uint2*>(p_s + (((16 * mt + g + 8) * (kBN / 16) + kc) * 4 + t4) * 4);
                pa[mt][0] = x.x; pa[mt][1] = y.x; pa[mt][2] = x.y; pa[mt][3] = y.y;
            }
#pragma unroll
            for (int gi = 0; gi < C::kGroups; ++gi) {
                const int dbase = warp * C::kDW + gi * C::kGW + C::kNTG * g;
                // This thread's 4 tokens, kNTG consecutive dims each (up to 8 bytes: two words).
                uint32_t lo[4], hi[4];
#pragma unroll
                for (int e = 0; e < 4; ++e) {
                    const uint8_t* src = v_s + (kc * 16 + t4 + 4 * e) * C::kKvRow + dbase * C::kEsz;
                    constexpr int kBytes = C::kNTG * C::kEsz;
                    hi[e] = 0;
                    if constexpr (kBytes == 8) {
                        const uint2 w = *reinterpret_cast<const uint2*>(src);
                        lo[e] = w.x;
                        hi[e] = w.y;
                    } else if constexpr (kBytes == 4) {
                        lo[e] = *reinterpret_cast<const uint32_t*>(src);
                    } else if constexpr (kBytes == 2) {
                        lo[e] = *reinterpret_cast<const uint16_t*>(src);
                    } else {
                        lo[e] = *src;
                    }
                }
#pragma unroll
                for (int nt = 0; nt < C::kNTG; ++nt) {
                    // B fragment: (token e=0, e=1) and (e=2, e=3) of output dim n-tile nt, gathered with byte_perm.
                    uint32_t b0, b1;
                    if constexpr (kFp8) {
                        const uint32_t sel = nt | ((nt + 4) << 4);  // byte nt of each word -> low 16 bits
                        b0 = fp8x2_to_f16x2(__byte_perm(lo[0], lo[1], sel));
                        b1 = fp8x2_to_f16x2(__byte_perm(lo[2], lo[3], sel));
                    } else {
                        const int h = nt & 1;
                        const uint32_t sel = (2 * h) | ((2 * h + 1) << 4) | ((4 + 2 * h) << 8) | ((5 + 2 * h) << 12);
                        b0 = nt < 2 ? __byte_perm(lo[0], lo[1], sel) : __byte_perm(hi[0], hi[1], sel);
                        b1 = nt < 2 ? __byte_perm(lo[2], lo[3], sel) : __byte_perm(hi[2], hi[3], sel);
                    }
#pragma unroll
                    for (int mt = 0; mt < MT; ++mt)
                        mma_16816<kF16>(o_acc[mt][gi][nt], pa[mt][0], pa[mt][1], pa[mt][2], pa[mt][3], b0, b1);
                }
            }
        }
        if constexpr (STAGES == 1) __syncthreads();
    }
    cp_async_wait<0>();

    // ---- Epilogue: normalised bf16 output (one split) or partial results for the combine kernel.
#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
#pragma unroll
        for (int h = 0; h < 2; ++h) {
            const int row = row0 + 16 * mt + g + 8 * h;
            const int i = row / G;
            if (i >= q_len) continue;
            const int64_t out_row = static_cast<int64_t>(q_begin + i) * p.num_q_heads + kv_head * G + row % G;
            if (p.num_splits == 1) {
                const float inv = l_run[mt][h] > 0.f ? p.v_scale / l_run[mt][h] : 0.f;
#pragma unroll
                for (int gi = 0; gi < C::kGroups; ++gi)
#pragma unroll
                    for (int nt = 0; nt < C::kNTG; ++nt)
#pragma unroll
                        for (int e = 0; e < 2; ++e) {
                            const int d = warp * C::kDW + gi * C::kGW + C::kNTG * (2 * t4 + e) + nt;
                            p.out[out_row * D + d] = __float2bfloat16_rn(o_acc[mt][gi][nt][2 * h + e] * inv);
                        }
            } else {
                const int64_t ws_row = static_cast<int64_t>(split) * p.tb.num_tokens * p.num_q_heads + out_row;
#pragma unroll
                for (int gi = 0; gi < C::kGroups; ++gi)
#pragma unroll
                    for (int nt = 0; nt < C::kNTG; ++nt)
#pragma unroll
                        for (int e = 0; e < 2; ++e) {
                            const int d = warp * C::kDW + gi * C::kGW + C::kNTG * (2 * t4 + e) + nt;
                            p.ws_o[ws_row * D + d] = o_acc[mt][gi][nt][2 * h + e];
                        }
                if (warp == 0 && t4 == 0) p.ws_ml[ws_row] = make_float2(m_run[mt][h], l_run[mt][h]);
            }
        }
}

// ---------------------------------------------------------------------------------------------------------------
// Decode attention, v4 (one 16-row query tile, 512-d heads: the 12B global layer's decode and drafter steps).
//
// Why a second kernel: v3 runs 8 warps per SM (one CTA; 3 stages of 64-token K/V tiles fill shared memory), i.e.
// 2 warps per scheduler, and its profile is issue/latency-bound, not memory-bound. v4 keeps the 3-stage ring but
// runs 16 warps in the CTA (4 per scheduler) and reshapes the work so that each warp does half as much per tile:
// * S = Q K^T: warp w owns the 16 tokens [16 tg, 16 tg + 16) (tg = w % 4) and the head_dim quarter kq = w / 4
//   (128 dims). Its slice of Q (16 rows x 128 dims) lives in 32 registers for the whole kernel, so the tile loop
//   reads no Q from shared memory (v3: every warp re-read the 16 KB Q tile every tile). The four partial S tiles
//   (one per quarter) go to shared memory.
// * Softmax: warp w owns query row w (16 rows, 16 warps). Lane l sums the four partials of tokens 2l, 2l+1; the
//   row max is a warp shuffle reduction and the running max stays in registers; the running sum stays a per-lane
//   partial (all lanes of a row see the same alpha) and is reduced once, after the last tile. No max/sum exchange
//   through shared memory; the warp writes the row's P and its rescale factor alpha.
// * O += P V: warp w owns the 32 output dims [32 w, 32 w + 32) (4 n-tiles; one 4-byte V read gives a token's 4
//   dims, see the top of the file).
// Barriers per tile: (1) tile landed / ring slot free, (2) partial S complete, (3) P and alpha complete.
// Shared-memory traffic: the partial-S rows are padded (+8 floats) so that the fragment stores and row reads are
// conflict-free, and P is stored in MMA A-fragment order (one 16-byte load per 16-token chunk; v3's P reads had
// 4-way bank conflicts and needed register moves to assemble the fragment).
// Copies: a linear cache's tile loader does one block-table read and one 32-bit multiply-add per copy (see
// load_tile); the softmax uses ex2.approx directly (scores are pre-scaled by log2 e).
constexpr int kDecWarps = 16;
constexpr int kDecThreads = kDecWarps * 32;

constexpr int decode_smem_bytes(int D, int esz, int stages) {
    // ring + max(partial S, Q staging) + P + alpha + final row sums
    return stages * 2 * kBN * (D * esz + 32) +
           (4 * 16 * (kBN + 8) * 4 > 16 * (D * 2 + 64) ? 4 * 16 * (kBN + 8) * 4 : 16 * (D * 2 + 64)) +
           16 * kBN * 2 + 16 * 4 + 16 * 4;
}

template <int D, bool kFp8, int STAGES>
struct DecCfg {
    static constexpr int kEsz = kFp8 ? 1 : 2;
    static constexpr int kKvRow = D * kEsz + 32;  // as AttnCfg: row stride = 32 mod 128 bytes
    static constexpr int kQRow = D * 2 + 64;      // Q staging row (bytes)
    static constexpr int kKq = D / 4;             // QK dims per warp
    static constexpr int kQChunks = kKq / 32;     // 32-dim chunks per warp (each: two MMAs per n-tile)
    static constexpr int kDW = D / kDecWarps;     // PV output dims per warp
    static constexpr int kSRow = kBN + 8;         // partial-S row (floats): stride = 8 mod 32 banks
    static constexpr int kTileBytes = kBN * kKvRow;
    static constexpr int kStageBytes = 2 * kTileBytes;
    static constexpr int kSBytes = 4 * 16 * kSRow * 4;
    static constexpr int kQBytes = 16 * kQRow;
    static constexpr int kScratch = kSBytes > kQBytes ? kSBytes : kQBytes;  // Q staging aliases the S partials
    static constexpr int kPBytes = 16 * kBN * 2;  // A-fragment order, no padding (see p_w)
    static constexpr int kSmem = STAGES * kStageBytes + kScratch + kPBytes + 16 * 4 + 16 * 4;
    static_assert(kSmem == decode_smem_bytes(D, kEsz, STAGES), "shared-memory layout");
    static_assert(D == 512, "the v4 decode kernel is written for 512-d heads (32 output dims per warp)");
    static_assert(kDW == 32 && kQChunks * 32 == kKq, "warp tiling");
};

template <int D, bool kFp8, int STAGES>
__global__ void __launch_bounds__(kDecThreads, 1) decode_attention_kernel(const AttnParams p) {
    using C = DecCfg<D, kFp8, STAGES>;
    constexpr bool kF16 = kFp8;  // MMA operand type, as in paged_attention_kernel
    constexpr int BM = 16;
    extern __shared__ __align__(128) uint8_t smem[];
    uint8_t* kv_s = smem;
    float* s_s = reinterpret_cast<float*>(smem + STAGES * C::kStageBytes);  // [4 quarters][16 rows][kSRow]
    uint8_t* q_s = smem + STAGES * C::kStageBytes;                          // Q staging (before the loop only)
    uint16_t* p_s = reinterpret_cast<uint16_t*>(smem + STAGES * C::kStageBytes + C::kScratch);  // see p_w
    float* alpha_s = reinterpret_cast<float*>(reinterpret_cast<uint8_t*>(p_s) + C::kPBytes);    // [16]
    float* l_s = alpha_s + BM;                                                                  // [16]

    const int tid = threadIdx.x;
    const int warp = tid >> 5, lane = tid & 31, g = lane >> 2, t4 = lane & 3;
    const int tg = warp & 3, kq = warp >> 2;  // QK roles: token group, dim quarter
    const int b = blockIdx.x / p.qtiles;
    const int qtile = blockIdx.x % p.qtiles;
    const int kv_head = blockIdx.y;
    const int split = blockIdx.z;
    const int G = p.group;

    const int q_begin = p.tb.cu_q_lens[b];
    const int q_len = p.tb.cu_q_lens[b + 1] - q_begin;
    const int kv_len = p.tb.kv_lens[b];
    const int row0 = qtile * BM;
    if (row0 >= q_len * G) return;  // whole CTA: before any barrier
    const bool draft = p.q_positions != nullptr;

    // Visible keys, as in paged_attention_kernel.
    const Visibility vis{draft, q_len, kv_len, p.window};
    const KeyRange kr = key_range(vis, G, row0, BM, split, p.split_tiles);
    const int j_lo = kr.j_lo, j_hi = kr.j_hi, tile_first = kr.tile_first, my_first = kr.my_first;
    const int n_tiles = kr.n_tiles;

    // ---- Q tile staged in shared memory (RoPE in fp32, rounded to the MMA type; rows past the tokens are zeros),
    // then each warp keeps its quarter as MMA A fragments in registers.
    stage_q_tile<D, kF16, C::kQRow, kDecThreads>(p, q_s, BM, row0, q_begin, q_len, kv_len, kv_head, b, draft, tid);
    __syncthreads();
    // A fragments with the contraction permutation of the top of the file: chunk c's 8 dims [32c' + 8 t4, +8)
    // (c' = the warp's chunk) are k-slots {2t4, 2t4+1, 2t4+8, 2t4+9} of two MMAs: qf[c][0..3] and qf[c][4..7].
    uint32_t qf[C::kQChunks][8];
#pragma unroll
    for (int c = 0; c < C::kQChunks; ++c) {
        const int dim = kq * C::kKq + c * 32 + t4 * 8;
        const uint4 qa = *reinterpret_cast<const uint4*>(q_s + g * C::kQRow + dim * 2);
        const uint4 qb = *reinterpret_cast<const uint4*>(q_s + (g + 8) * C::kQRow + dim * 2);
        qf[c][0] = qa.x; qf[c][1] = qb.x; qf[c][2] = qa.y; qf[c][3] = qb.y;
        qf[c][4] = qa.z; qf[c][5] = qb.z; qf[c][6] = qa.w; qf[c][7] = qb.w;
    }
    // The staging area becomes the S partials: the first writes come after barrier (1) of tile 0.

    // ---- K/V tile loader. Each thread copies the same 16-byte column chunk of rows ld_row + kRowsPerPass * k
    // (FP8: 16 rows per pass, 4 passes). Linear cache, or a ring not yet wrapped (every global layer): per pass one
    // block-table entry for K and one for V (the same address across the pass: L1 broadcast) and one 32x32 -> 64-bit
    // multiply-add per copy; masked rows read a clamped, valid entry and copy 0 bytes (zero fill). A wrapping ring
    // (the drafter's reads of a sliding pool) takes v3's path.
    constexpr int kChunksPerRow = D * C::kEsz / 16;
    static_assert(kDecThreads % kChunksPerRow == 0, "a row's chunks must divide the CTA");
    constexpr int kRowsPerPass = kDecThreads / kChunksPerRow;
    const int ld_chunk = tid % kChunksPerRow;
    const int ld_row = tid / kChunksPerRow;
    const KvAddr& A = p.addr;
    const int ld_dim_off = kv_dim_offset<C::kEsz>(A, kv_head, ld_chunk);
    const int unit_bytes = static_cast<int>(A.unit_bytes);
    const int32_t* k_offsets = A.block_offsets + static_cast<int64_t>(b) * 2 * A.max_blocks;
    const int32_t* v_offsets = k_offsets + A.max_blocks;
    const int t_mask = (1 << A.t_shift) - 1;
    const int cyc = A.cyclic_len;
    // A ring the sequence has not wrapped (the TensorRT plugin passes a global layer's ring length, max_seq_len, so
    // every global layer's ring) is addressed exactly like the linear cache: slot = position. CTA-uniform.
    const bool linear = cyc == 0 || j_hi < cyc;
    // opaque(): the compiler otherwise re-derives these pointers from their 64-bit parts in every pass (4 extra
    // instructions per address); opaque, each address below is one IMAD.WIDE.U32 off a fixed base.
    const uint8_t* layer_base = opaque(A.pool + static_cast<int64_t>(A.lip2) * A.unit_bytes + ld_dim_off);
    const uint32_t* k_table = opaque(reinterpret_cast<const uint32_t*>(k_offsets));
    const uint32_t* v_table = opaque(reinterpret_cast<const uint32_t*>(v_offsets));
    const uint32_t unit_u32 = static_cast<uint32_t>(unit_bytes);
    const uint32_t row_bytes = static_cast<uint32_t>(A.row_bytes);
    auto load_tile = [&](int t, int st) {
        uint8_t* k_dst = kv_s + st * C::kStageBytes + ld_row * C::kKvRow + ld_chunk * 16;
        uint8_t* v_dst = k_dst + C::kTileBytes;
        const int j_first = (tile_first + my_first + t) * kBN + ld_row;
        if (linear) {
#pragma unroll
            for (int k = 0; k < kBN / kRowsPerPass; ++k) {
                // Unsigned 32-bit indices and offsets (all non-negative): single IMAD.WIDE.U32 address steps.
                const int j = j_first + k * kRowsPerPass;
                const bool ok = j >= j_lo && j <= j_hi;
                const uint32_t jc = static_cast<uint32_t>(min(max(j, j_lo), j_hi));
                const uint32_t blk = jc >> A.t_shift;
                const uint8_t* row = layer_base + (jc & static_cast<uint32_t>(t_mask)) * row_bytes;
                const uint8_t* ks = row + static_cast<uint64_t>(__ldg(k_table + blk)) * unit_u32;
                const uint8_t* vs = row + static_cast<uint64_t>(__ldg(v_table + blk)) * unit_u32;
                cp_async_16(k_dst + k * kRowsPerPass * C::kKvRow, ks, ok ? 16 : 0);
                cp_async_16(v_dst + k * kRowsPerPass * C::kKvRow, vs, ok ? 16 : 0);
            }
            return;
        }
        load_kv_rows<kRowsPerPass, C::kKvRow, true>(k_dst, v_dst, j_first, j_lo, j_hi, A, k_offsets, v_offsets,
                                                    unit_bytes, ld_dim_off, cyc, t_mask);
    };

    // Softmax state of the warp's own row (lane-replicated max, per-lane partial sum).
    const int my_row = row0 + warp;
    const int my_i = my_row / G;
    const int my_lim = my_i < q_len ? min(vis.limit(my_i), kv_len - 1) : -1;
    const int my_lo = my_i < q_len ? vis.lo(my_i) : 0;
    float m_run = -INFINITY, l_part = 0.f;

    float o_acc[4][4];
#pragma unroll
    for (int nt = 0; nt < 4; ++nt)
#pragma unroll
        for (int e = 0; e < 4; ++e) o_acc[nt][e] = 0.f;

    ring_prologue<STAGES>(n_tiles, load_tile);

    // Fixed per-thread shared-memory offsets of the tile loop.
    const int k_off = (16 * tg + g) * C::kKvRow + (kq * C::kKq + 8 * t4) * C::kEsz;  // K: token 16tg+g, 8 dims
    float* s_w = s_s + (kq * BM + g) * C::kSRow + 16 * tg + 2 * t4;                   // partial S: row g, 2 tokens
    const float* s_r = s_s + warp * C::kSRow + 2 * lane;                              // row `warp`, tokens 2l, 2l+1
    // P is stored in A-fragment order: 16-token chunk kc, lane (g, t4) of the PV warps owns the 16 bytes at
    // kc*256 + lane*8 halves = {a0, a1, a2, a3} = {row g: tokens t4, t4+4 | row g+8: same | row g: t4+8, t4+12 |
    // row g+8: same} (the token order of the V fragments, top of the file), so the PV loop reads it with one
    // conflict-free 16-byte load per chunk and feeds the MMA without register moves. Token tk of row r goes to
    // kc*256 + ((r%8)*4 + tk%4)*8 + (((tk%16)/8)*2 + r/8)*2 + (tk/4)%2, with kc = tk/16; lane l writes tokens 2l
    // and 2l+1 (the latter 8 halves on).
    uint16_t* p_w = p_s + (lane >> 3) * 256 + ((warp & 7) * 4 + 2 * (lane & 1)) * 8 +
                    (((lane >> 2) & 1) * 2 + (warp >> 3)) * 2 + ((lane >> 1) & 1);
    const uint16_t* p_r = p_s + lane * 8;
    const int v_off = t4 * C::kKvRow + (warp * C::kDW + 4 * g) * C::kEsz;  // V: token t4 (+4e), 4 dims
    const float qk_l2 = p.qk_scale * kLog2e;  // scores kept in log2 units from here on

    for (int t = 0; t < n_tiles; ++t) {
        const int st = t % STAGES;
        ring_advance<STAGES>(t, n_tiles, load_tile);  // barrier (1)
        const uint8_t* k_s = kv_s + st * C::kStageBytes;
        const uint8_t* v_s = k_s + C::kTileBytes;
        const int j0 = (tile_first + my_first + t) * kBN;

        // ---- Partial S over the warp's dim quarter: 2 n-tiles x 2 MMAs per 32-dim chunk = 4 independent chains.
        float sp[2][2][4];
#pragma unroll
        for (int nt = 0; nt < 2; ++nt)
#pragma unroll
            for (int h = 0; h < 2; ++h)
#pragma unroll
                for (int e = 0; e < 4; ++e) sp[nt][h][e] = 0.f;
#pragma unroll
        for (int c = 0; c < C::kQChunks; ++c)
#pragma unroll
            for (int nt = 0; nt < 2; ++nt) {
                const uint8_t* src = k_s + k_off + nt * 8 * C::kKvRow + c * 32 * C::kEsz;
                uint32_t kb[4];
                if constexpr (kFp8) {
                    const uint2 raw = *reinterpret_cast<const uint2*>(src);
                    fp8x4_to_f16x2x2(raw.x, kb[0], kb[1]);
                    fp8x4_to_f16x2x2(raw.y, kb[2], kb[3]);
                } else {
                    const uint4 raw = *reinterpret_cast<const uint4*>(src);
                    kb[0] = raw.x; kb[1] = raw.y; kb[2] = raw.z; kb[3] = raw.w;
                }
                mma_16816<kF16>(sp[nt][0], qf[c][0], qf[c][1], qf[c][2], qf[c][3], kb[0], kb[1]);
                mma_16816<kF16>(sp[nt][1], qf[c][4], qf[c][5], qf[c][6], qf[c][7], kb[2], kb[3]);
            }
#pragma unroll
        for (int nt = 0; nt < 2; ++nt) {
            *reinterpret_cast<float2*>(s_w + 8 * nt) =
                make_float2(sp[nt][0][0] + sp[nt][1][0], sp[nt][0][1] + sp[nt][1][1]);
            *reinterpret_cast<float2*>(s_w + 8 * C::kSRow + 8 * nt) =
                make_float2(sp[nt][0][2] + sp[nt][1][2], sp[nt][0][3] + sp[nt][1][3]);
        }
        __syncthreads();  // (2) partial S complete

        // ---- Row `warp`: scores of tokens 2l, 2l+1, masked, in log2 units; online softmax in registers.
        {
            float s0 = 0.f, s1 = 0.f;
#pragma unroll
            for (int q4 = 0; q4 < 4; ++q4) {
                const float2 v = *reinterpret_cast<const float2*>(s_r + q4 * BM * C::kSRow);
                s0 += v.x;
                s1 += v.y;
            }
            const int j = j0 + 2 * lane;
            s0 = (j >= my_lo && j <= my_lim) ? s0 * qk_l2 : -INFINITY;
            s1 = (j + 1 >= my_lo && j + 1 <= my_lim) ? s1 * qk_l2 : -INFINITY;
            float mx = fmaxf(s0, s1);
#pragma unroll
            for (int o = 16; o > 0; o >>= 1) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, o));
            const float m_new = fmaxf(m_run, mx);
            const float m_use = m_new == -INFINITY ? 0.f : m_new;
            const float alpha = ex2_approx(m_run - m_use);
            m_run = m_new;
            const float p0 = ex2_approx(s0 - m_use), p1 = ex2_approx(s1 - m_use);
            l_part = l_part * alpha + (p0 + p1);
            p_w[0] = to16<kF16>(p0);
            p_w[8] = to16<kF16>(p1);
            if (lane == 0) alpha_s[warp] = alpha;
        }
        __syncthreads();  // (3) P and alpha complete

        // ---- O = alpha O + P V over the warp's 32 output dims.
        {
            const float a_lo = alpha_s[g], a_hi = alpha_s[g + 8];
#pragma unroll
            for (int nt = 0; nt < 4; ++nt) {
                o_acc[nt][0] *= a_lo;
                o_acc[nt][1] *= a_lo;
                o_acc[nt][2] *= a_hi;
                o_acc[nt][3] *= a_hi;
            }
        }
#pragma unroll
        for (int kc = 0; kc < kBN / 16; ++kc) {
            const uint4 pa = *reinterpret_cast<const uint4*>(p_r + kc * 256);
            uint32_t lo[4], hi[4];
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                const uint8_t* src = v_s + v_off + (kc * 16 + 4 * e) * C::kKvRow;
                if constexpr (kFp8) {
                    lo[e] = *reinterpret_cast<const uint32_t*>(src);
                    hi[e] = 0;
                } else {
                    const uint2 w = *reinterpret_cast<const uint2*>(src);
                    lo[e] = w.x;
                    hi[e] = w.y;
                }
            }
            // FP8: one byte_perm gathers the (token e, token e+1) byte pairs of two n-tiles: bytes {nt of lo[0],
            // nt of lo[1], nt+1 of lo[0], nt+1 of lo[1]}, selector 0x5140 (nt = 0) or 0x7362 (nt = 2).
            uint32_t bf[4][2];
            if constexpr (kFp8) {
#pragma unroll
                for (int np = 0; np < 2; ++np) {
                    const uint32_t sel = np == 0 ? 0x5140u : 0x7362u;
                    fp8x4_to_f16x2x2(__byte_perm(lo[0], lo[1], sel), bf[2 * np][0], bf[2 * np + 1][0]);
                    fp8x4_to_f16x2x2(__byte_perm(lo[2], lo[3], sel), bf[2 * np][1], bf[2 * np + 1][1]);
                }
            }
#pragma unroll
            for (int nt = 0; nt < 4; ++nt) {
                uint32_t b0, b1;
                if constexpr (kFp8) {
                    b0 = bf[nt][0];
                    b1 = bf[nt][1];
                } else {
                    const int h = nt & 1;
                    const uint32_t sel = (2 * h) | ((2 * h + 1) << 4) | ((4 + 2 * h) << 8) | ((5 + 2 * h) << 12);
                    b0 = nt < 2 ? __byte_perm(lo[0], lo[1], sel) : __byte_perm(hi[0], hi[1], sel);
                    b1 = nt < 2 ? __byte_perm(lo[2], lo[3], sel) : __byte_perm(hi[2], hi[3], sel);
                }
                mma_16816<kF16>(o_acc[nt], pa.x, pa.y, pa.z, pa.w, b0, b1);
            }
        }
        if constexpr (STAGES == 1) __syncthreads();
    }
    cp_async_wait<0>();

    // ---- Epilogue. Row sums: the warp's lane partials, published for the warps that own the row's output dims.
    float l_row = l_part;
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) l_row += __shfl_xor_sync(0xffffffffu, l_row, o);
    if (lane == 0) {
        l_s[warp] = l_row;
        if (p.num_splits > 1 && my_i < q_len) {
            const int64_t out_row = static_cast<int64_t>(q_begin + my_i) * p.num_q_heads + kv_head * G + my_row % G;
            // The combine kernel takes the max in natural units (v3's); m_run is in log2 units.
            p.ws_ml[static_cast<int64_t>(split) * p.tb.num_tokens * p.num_q_heads + out_row] =
                make_float2(m_run * (1.0f / kLog2e), l_row);
        }
    }
    __syncthreads();
    // The thread's 8 values of a row are the contiguous dims 32w + 8t4 + (4e + nt): one 16-byte (bf16) or two
    // 16-byte (fp32) stores.
#pragma unroll
    for (int h = 0; h < 2; ++h) {
        const int r = g + 8 * h;
        const int row = row0 + r;
        const int i = row / G;
        if (i >= q_len) continue;
        const int64_t out_row = static_cast<int64_t>(q_begin + i) * p.num_q_heads + kv_head * G + row % G;
        const int d0 = warp * C::kDW + 8 * t4;
        if (p.num_splits == 1) {
            const float inv = l_s[r] > 0.f ? p.v_scale / l_s[r] : 0.f;
            __align__(16) __nv_bfloat16 v[8];
#pragma unroll
            for (int e = 0; e < 2; ++e)
#pragma unroll
                for (int nt = 0; nt < 4; ++nt) v[4 * e + nt] = __float2bfloat16_rn(o_acc[nt][2 * h + e] * inv);
            *reinterpret_cast<uint4*>(p.out + out_row * D + d0) = *reinterpret_cast<const uint4*>(v);
        } else {
            const int64_t ws_row = static_cast<int64_t>(split) * p.tb.num_tokens * p.num_q_heads + out_row;
            float* dst = p.ws_o + ws_row * D + d0;
#pragma unroll
            for (int e = 0; e < 2; ++e)
                *reinterpret_cast<float4*>(dst + 4 * e) =
                    make_float4(o_acc[0][2 * h + e], o_acc[1][2 * h + e], o_acc[2][2 * h + e], o_acc[3][2 * h + e]);
        }
    }
}

// Merge the splits of one (token, q head) row: out = sum_s e^(m_s - m) O_s / sum_s e^(m_s - m) l_s.
template <int D>
__global__ void __launch_bounds__(128) combine_splits_kernel(const float* __restrict__ ws_o,
                                                             const float2* __restrict__ ws_ml, __nv_bfloat16* out,
                                                             int rows, int num_splits, float v_scale) {
    constexpr int E = (D + 127) / 128;
    const int row = blockIdx.x;
    float m = -INFINITY;
    for (int s = 0; s < num_splits; ++s) {
        const float2 ml = ws_ml[static_cast<int64_t>(s) * rows + row];
        if (ml.y > 0.f) m = fmaxf(m, ml.x);
    }
    float acc[E] = {};
    float l = 0.f;
    for (int s = 0; s < num_splits; ++s) {
        const float2 ml = ws_ml[static_cast<int64_t>(s) * rows + row];
        if (!(ml.y > 0.f)) continue;  // empty split: its partial output was never written
        const float w = exp2f((ml.x - m) * kLog2e);
        l += w * ml.y;
        const float* o = ws_o + (static_cast<int64_t>(s) * rows + row) * D;
#pragma unroll
        for (int e = 0; e < E; ++e) {
            const int d = threadIdx.x + 128 * e;
            if (d < D) acc[e] += w * o[d];
        }
    }
    const float inv = l > 0.f ? v_scale / l : 0.f;
#pragma unroll
    for (int e = 0; e < E; ++e) {
        const int d = threadIdx.x + 128 * e;
        if (d < D) out[static_cast<int64_t>(row) * D + d] = __float2bfloat16_rn(acc[e] * inv);
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Host side

int rows_per_token(const AttentionProblem& p) { return p.num_q_heads / p.num_kv_heads; }
int mt_for(const AttentionProblem& p) { return p.tokens.max_q_len * rows_per_token(p) <= 16 ? 1 : 2; }
int num_qtiles(const AttentionProblem& p) {
    const int bm = 16 * mt_for(p);
    return std::max(1, (p.tokens.max_q_len * rows_per_token(p) + bm - 1) / bm);
}
int max_kv_tiles(const AttentionProblem& p) { return (p.tokens.max_kv_len + kBN - 1) / kBN + 1; }

// Pipeline depth: the deepest that fits the device's per-block shared memory, up to 3 for the 512-d head (one CTA
// per SM: the stages are all the loads an SM has in flight) and 2 for smaller heads (several CTAs per SM).
template <int D, bool kFp8, int MT, int S>
const void* kernel_with_stages(int max_smem, int* smem) {
    constexpr int kBytes = attn_smem_bytes(D, kFp8 ? 1 : 2, MT, S);
    if constexpr (S > 1) {
        if (kBytes > max_smem || kBytes > 227 * 1024) return kernel_with_stages<D, kFp8, MT, S - 1>(max_smem, smem);
    }
    if constexpr (kBytes <= 227 * 1024) {
        *smem = kBytes;
        return reinterpret_cast<const void*>(&paged_attention_kernel<D, kFp8, MT, S>);
    } else {
        return nullptr;
    }
}

template <int D, bool kFp8>
const void* kernel_ptr(int mt, int max_smem, int* smem) {
    constexpr int kMaxStages = D == 512 ? 3 : 2;
    return mt == 1 ? kernel_with_stages<D, kFp8, 1, kMaxStages>(max_smem, smem)
                   : kernel_with_stages<D, kFp8, 2, kMaxStages>(max_smem, smem);
}

// The v4 decode kernel: the deepest ring (up to 3 stages) that fits: FP8 3 stages on H100/H200 (230 KB of 227 KiB),
// 2 on A100 (163 KB); BF16 (tests) 1 stage. nullptr: not even one (the caller falls back to v3).
template <bool kFp8, int S>
const void* decode_kernel_with_stages(int max_smem, int* smem) {
    constexpr int kBytes = decode_smem_bytes(512, kFp8 ? 1 : 2, S);
    if constexpr (kBytes <= 227 * 1024) {
        if (kBytes <= max_smem) {
            *smem = kBytes;
            return reinterpret_cast<const void*>(&decode_attention_kernel<512, kFp8, S>);
        }
    }
    if constexpr (S > 1) {
        return decode_kernel_with_stages<kFp8, S - 1>(max_smem, smem);
    } else {
        return nullptr;
    }
}

int device_max_smem() {
    int dev = 0, bytes = 48 * 1024;
    if (cudaGetDevice(&dev) != cudaSuccess) return bytes;
    if (cudaDeviceGetAttribute(&bytes, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev) != cudaSuccess) return 48 * 1024;
    return bytes;
}

// Which decode kernel: AttentionProblem::decode_impl, or (0) the environment variable TRT_GEMMA4_ATTN_DECODE
// ("v3" or "3" selects v3; anything else, or unset, v4). Read at every launch so that one process (the benchmark,
// the tests) can time and check both.
int decode_impl_of(const AttentionProblem& p) {
    if (p.decode_impl == 3 || p.decode_impl == 4) return p.decode_impl;
    const char* env = std::getenv("TRT_GEMMA4_ATTN_DECODE");
    if (env != nullptr && (std::strcmp(env, "v3") == 0 || std::strcmp(env, "3") == 0)) return 3;
    return 4;
}

// The kernel, its dynamic shared memory and its block size. v4 serves one 16-row query tile (mt 1) of a 512-d head
// (every decode step and drafter step of the 12B global layer); everything else, and v4 where it does not fit, runs
// paged_attention_kernel.
const void* select_kernel(const AttentionProblem& p, int* smem, int* threads) {
    const bool fp8 = p.kv.dtype == KvDtype::kFp8E4M3;
    const int mt = mt_for(p);
    const int max_smem = device_max_smem();
    *threads = kThreads;
    if (p.head_dim == 512 && mt == 1 && decode_impl_of(p) == 4) {
        const void* fn = fp8 ? decode_kernel_with_stages<true, 3>(max_smem, smem)
                             : decode_kernel_with_stages<false, 3>(max_smem, smem);
        if (fn != nullptr) {
            *threads = kDecThreads;
            return fn;
        }
    }
    switch (p.head_dim) {
        case 64: return fp8 ? kernel_ptr<64, true>(mt, max_smem, smem) : kernel_ptr<64, false>(mt, max_smem, smem);
        case 128: return fp8 ? kernel_ptr<128, true>(mt, max_smem, smem) : kernel_ptr<128, false>(mt, max_smem, smem);
        case 256: return fp8 ? kernel_ptr<256, true>(mt, max_smem, smem) : kernel_ptr<256, false>(mt, max_smem, smem);
        case 512: return fp8 ? kernel_ptr<512, true>(mt, max_smem, smem) : kernel_ptr<512, false>(mt, max_smem, smem);
        default: return nullptr;
    }
}

cudaError_t check_problem(const AttentionProblem& p) {
    const PagedKv& kv = p.kv;
    if (p.num_kv_heads <= 0 || p.num_q_heads % p.num_kv_heads != 0) return cudaErrorInvalidValue;
    if (p.head_dim != 64 && p.head_dim != 128 && p.head_dim != 256 && p.head_dim != 512) return cudaErrorInvalidValue;
    if (kv.head_size <= 0 || kv.head_size % 64 != 0 || p.head_dim % kv.head_size != 0) return cudaErrorInvalidValue;
    if (kv.pool_heads * kv.head_size != p.num_kv_heads * p.head_dim) return cudaErrorInvalidValue;
    if (kv.tokens_per_block <= 0 || (kv.tokens_per_block & (kv.tokens_per_block - 1))) return cudaErrorInvalidValue;
    if (p.tokens.batch <= 0 || kv.pool == nullptr || kv.block_offsets == nullptr) return cudaErrorInvalidValue;
    if (kv.cyclic_len != 0 && kv.cyclic_len < kBN) return cudaErrorInvalidValue;  // ring slot advances by < kBN
    // 32-bit offsets inside a unit (see the tile loader).
    const int64_t unit = static_cast<int64_t>(kv.pool_heads) * kv.tokens_per_block * kv.head_size *
                         (kv.dtype == KvDtype::kFp8E4M3 ? 1 : 2);
    if (unit > (int64_t{1} << 30)) return cudaErrorInvalidValue;
    return cudaSuccess;
}

int device_sms() {
    int dev = 0, sms = 0;
    if (cudaGetDevice(&dev) != cudaSuccess) return 1;
    if (cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev) != cudaSuccess) return 1;
    return std::max(1, sms);
}

}  // namespace

int32_t attention_num_splits(const AttentionProblem& p, int32_t num_sms) {
    if (check_problem(p) != cudaSuccess || p.tokens.max_kv_len <= 0) return 1;
    if (num_sms <= 0) num_sms = device_sms();
    int smem = 0, threads = kThreads;
    const void* fn = select_kernel(p, &smem, &threads);
    int per_sm = 1;
    if (fn == nullptr || cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, fn, threads, smem) != cudaSuccess)
        per_sm = 1;
    const int64_t slots = static_cast<int64_t>(num_sms) * std::max(1, per_sm);
    const int64_t base = static_cast<int64_t>(p.tokens.batch) * num_qtiles(p) * p.num_kv_heads;
    const int max_tiles = max_kv_tiles(p);
    if (base >= slots || max_tiles <= 4) return 1;
    // Split the longest sequence so that all CTAs together fill the slots about once: the longest gets
    // slots * (its tiles / all tiles) splits, shorter ones proportionally fewer (same tiles per split).
    const int64_t sum_kv = p.tokens.sum_kv_len > 0 ? p.tokens.sum_kv_len
                                                   : static_cast<int64_t>(p.tokens.batch) * p.tokens.max_kv_len;
    const int64_t sum_tiles = (sum_kv + kBN - 1) / kBN + p.tokens.batch;
    int64_t splits = slots * max_tiles / std::max<int64_t>(1, sum_tiles * num_qtiles(p) * p.num_kv_heads);
    splits = std::min<int64_t>(splits, (max_tiles + 3) / 4);  // at least ~4 tiles per split
    splits = std::min<int64_t>(splits, kMaxSplits);
    return static_cast<int32_t>(std::max<int64_t>(1, splits));
}

size_t attention_workspace_bytes(const AttentionProblem& p, int32_t num_splits) {
    if (num_splits <= 1) return 0;
    const size_t rows = static_cast<size_t>(p.tokens.num_tokens) * p.num_q_heads;
    return static_cast<size_t>(num_splits) * rows * (p.head_dim * sizeof(float) + sizeof(float2)) + 256;
}

cudaError_t attention(const AttentionProblem& p, const void* q, void* out, void* workspace, size_t workspace_bytes,
                      cudaStream_t stream) {
    cudaError_t err = check_problem(p);
    if (err != cudaSuccess) return err;
    if (p.tokens.num_tokens == 0) return cudaSuccess;
    int splits = attention_num_splits(p);
    while (splits > 1 && attention_workspace_bytes(p, splits) > workspace_bytes) splits = splits / 2;
    const int max_tiles = max_kv_tiles(p);
    const int split_tiles = splits > 1 ? (max_tiles + splits - 1) / splits : max_tiles + 1;
    if (splits > 1) splits = (max_tiles + split_tiles - 1) / split_tiles;

    AttnParams ap{};
    ap.addr = make_addr(p.kv, p.head_dim);
    ap.tb = p.tokens;
    ap.q = static_cast<const __nv_bfloat16*>(q);
    ap.out = static_cast<__nv_bfloat16*>(out);
    ap.inv_freq = p.rope_inv_freq;
    ap.q_positions = p.q_positions;
    ap.num_q_heads = p.num_q_heads;
    ap.group = rows_per_token(p);
    ap.window = p.window;
    ap.num_splits = splits;
    ap.split_tiles = split_tiles;
    ap.qtiles = num_qtiles(p);
    const bool fp8 = p.kv.dtype == KvDtype::kFp8E4M3;
    ap.qk_scale = fp8 ? p.scale * p.kv.k_scale : p.scale;
    ap.v_scale = fp8 ? p.kv.v_scale : 1.0f;
    const size_t rows = static_cast<size_t>(p.tokens.num_tokens) * p.num_q_heads;
    if (splits > 1) {
        ap.ws_o = static_cast<float*>(workspace);
        const size_t o_bytes = static_cast<size_t>(splits) * rows * p.head_dim * sizeof(float);
        ap.ws_ml = reinterpret_cast<float2*>(static_cast<uint8_t*>(workspace) + ((o_bytes + 255) / 256) * 256);
    }

    int smem = 0, threads = kThreads;
    const void* fn = select_kernel(p, &smem, &threads);
    if (fn == nullptr) return cudaErrorInvalidConfiguration;  // not even one stage fits this device
    err = cudaFuncSetAttribute(fn, cudaFuncAttributeMaxDynamicSharedMemorySize, smem);
    if (err != cudaSuccess) return err;
    const dim3 grid(p.tokens.batch * num_qtiles(p), p.num_kv_heads, splits);
    void* args[] = {&ap};
    err = cudaLaunchKernel(fn, grid, dim3(threads), args, smem, stream);
    if (err != cudaSuccess) return err;
    if (splits > 1) {
        const int r = static_cast<int>(rows);
        switch (p.head_dim) {
            case 64: combine_splits_kernel<64><<<r, 128, 0, stream>>>(ap.ws_o, ap.ws_ml, ap.out, r, splits, ap.v_scale); break;
            case 128: combine_splits_kernel<128><<<r, 128, 0, stream>>>(ap.ws_o, ap.ws_ml, ap.out, r, splits, ap.v_scale); break;
            case 256: combine_splits_kernel<256><<<r, 128, 0, stream>>>(ap.ws_o, ap.ws_ml, ap.out, r, splits, ap.v_scale); break;
            default: combine_splits_kernel<512><<<r, 128, 0, stream>>>(ap.ws_o, ap.ws_ml, ap.out, r, splits, ap.v_scale); break;
        }
        err = cudaGetLastError();
    }
    return err;
}

cudaError_t write_global_kv(const PagedKv& kv, const TokenBatch& tokens, int32_t head_dim, const void* k_raw,
                            const float* k_norm_weight, const float* rope_inv_freq, float eps, cudaStream_t stream) {
    if (head_dim != 128 && head_dim != 256 && head_dim != 512) return cudaErrorInvalidValue;
    if (kv.head_size <= 0 || kv.head_size % 64 != 0 || head_dim % kv.head_size != 0) return cudaErrorInvalidValue;
    if (kv.pool_heads * kv.head_size != head_dim) return cudaErrorInvalidValue;  // one KV head
    if (kv.tokens_per_block <= 0 || (kv.tokens_per_block & (kv.tokens_per_block - 1))) return cudaErrorInvalidValue;
    if (kv.pool == nullptr || kv.block_offsets == nullptr || k_norm_weight == nullptr) return cudaErrorInvalidValue;
    if (tokens.num_tokens == 0) return cudaSuccess;
    const KvAddr a = make_addr(kv, head_dim);
    const bool fp8 = kv.dtype == KvDtype::kFp8E4M3;
    // Same multiplier as trt_gemma4.kv.quantize: fp32(1 / scale) computed in double.
    const float kq = static_cast<float>(1.0 / static_cast<double>(kv.k_scale));
    const float vq = static_cast<float>(1.0 / static_cast<double>(kv.v_scale));
    const dim3 grid((tokens.num_tokens + 3) / 4);
    const auto* x = static_cast<const __nv_bfloat16*>(k_raw);
#define TRT_GEMMA4_WRITE(D)                                                                                      \
    if (fp8) write_global_kv_kernel<D, true><<<grid, 128, 0, stream>>>(a, tokens, x, k_norm_weight, rope_inv_freq, \
                                                                       eps, kq, vq);                              \
    else write_global_kv_kernel<D, false><<<grid, 128, 0, stream>>>(a, tokens, x, k_norm_weight, rope_inv_freq,   \
                                                                    eps, kq, vq);
    switch (head_dim) {
        case 128: TRT_GEMMA4_WRITE(128) break;
        case 256: TRT_GEMMA4_WRITE(256) break;
        default: TRT_GEMMA4_WRITE(512) break;
    }
#undef TRT_GEMMA4_WRITE
    return cudaGetLastError();
}

}  // namespace trt_gemma4
