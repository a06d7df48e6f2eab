// Block-FP8 weight-only GEMM kernels. Interface, numerics and constraints: block_fp8_gemm.cuh.
//
// Two kernels, both on mma.sync.m16n8k16 (BF16 in, FP32 accumulate) with the WEIGHTS as the A operand (the
// 16-row side) and the TOKENS as the B operand (the 8-column side), so M = 1 wastes at most 7/8 of the tensor
// math (irrelevant: small M is memory-bound) and M needs no padding to 16:
//
//  * streamKernel (small M): no shared memory on the main path. Each thread loads its weight bytes with
//    16-byte non-allocating global loads straight into a register ring, DEPTH-1 k-blocks ahead of the math,
//    converts them to BF16 fragments in registers and feeds the tensor cores. Warps of a CTA share 16-row weight
//    groups and split K; an optional split-K across CTAs writes FP32 partials that a reduce pass sums. Its SMEM
//    form (kStreamSmem) keeps the weights in flight in a per-warp shared-memory ring filled by cp.async instead;
//    the dispatch uses it on Hopper where a grid at M ≤ 8 just misses one wave (qkv_global).
//  * tiledKernel (larger M): classic multi-stage cp.async pipeline; weight (FP8) and token (BF16) tiles in
//    shared memory, each warp converts its own weight fragments from shared memory.
// A third, bulkStreamKernel (sm_90+, cp.async.bulk into a shared-memory ring, streamKernel's math), was measured
// slower than streamKernel and is reachable only by hand-set configuration (its section below says why).
// On sm_90+ every kernel is launched with programmatic dependent launch: it prefetches its (constant) weights
// while the previous kernel in the stream drains, and touches activations/outputs only after griddepcontrol.wait.
// streamKernel lets its own dependents launch from its start (their CTAs take the SM slots its CTAs leave).
//
// On sm_90a the dispatch (blockFp8WoGemmDefaultConfig) sends M > 16 to the TMA + wgmma kernels of
// block_fp8_gemm_sm90.cu; these mma.sync kernels serve M <= 16 there and everything on the other architectures (where
// callers with their own BF16 GEMM switch to blockFp8DequantizeSplit from M = 512).
//
// ---- The K permutation that makes 16-byte weight loads line up with the mma fragment -------------------------
// The m16n8k16 A fragment wants, for thread (g = lane/4, t = lane%4), the elements of rows g and g+8 at logical
// k ∈ {2t, 2t+1, 2t+8, 2t+9}: 2-byte pieces, useless for streaming. But a dot product does not care in which
// order k is visited, as long as A and B use the same order. So within each 64-wide k chunk we DEFINE
//     mma step j (0..3), thread t:  logical k {2t, 2t+1, 2t+8, 2t+9}  <->  physical k 16t + 4j + {0, 2, 1, 3}
// which is a bijection of the 64 positions onto 4 mma steps. Thread (g, t) then needs physical bytes
// [16t, 16t+16) of rows g and g+8: ONE 16-byte load per row per 64-k chunk, covering 4 mma steps; the 4 lanes of
// a quad read 64 contiguous bytes of a row. The B fragment (tokens) needs the same permutation: thread (g, t)
// loads 16 contiguous BF16 of token g (32 bytes) and picks (x0, x2) and (x1, x3) with two PRMTs.
// The odd {0, 2, 1, 3} order pairs bytes (0, 2) and (1, 3) of each weight word, which the conversion below takes
// as they come.
//
// ---- FP8 (E4M3) -> BF16 conversion, 2 values per 32-bit word ---------------------------------------------------
// (block_fp8_gemm_detail.cuh has the details.) A PRMT that sign-extends two chosen FP8 bytes to 16-bit lanes, a
// shift left by 4 and one mask give BF16x2 = the two values times 2^-120, exactly (normals and subnormals); one BF16x2
// multiply by 2^120 (fma.rn.bf16x2 with -0 addend) undoes the 2^-120. On a word q = [b0 b1 b2 b3] (b0 = lowest
// address = lowest k) the pairs (b0, b2) and (b1, b3): the (k+0, k+2) and (k+1, k+3) of the {0, 2, 1, 3} order
// above. Cost: 6 integer ops + 2 HFMA2 per 4 values (7 + 2 before v19). The conversion instruction
// (cvt.rn.f16x2.e4m3x2) gives FP16, which the BF16 activations cannot meet without rounding; it is not used.
//
// ---- Scales --------------------------------------------------------------------------------------------------
// One FP32 scale per 128x128 weight block. Weight tiles never straddle a 128-row block (16-row groups, BN ≤ 128
// aligned), and each k-block of 128 is one scale, so a warp needs one scale per (row group, k-block):
//  * streamKernel: fresh FP32 partial accumulators per k-block, then acc += s * partial (FFMA per accumulator).
//  * tiledKernel: too many accumulators for a second set, so acc is kept in units of the current block scale:
//    acc *= s_prev / s_cur when the scale changes, acc *= s_last at the end; blocks with s = 0 are skipped.

#include "block_fp8_gemm.cuh"
#include "block_fp8_gemm_detail.cuh"

#include <algorithm>
#include <cstdint>
#include <cstdlib>

namespace trt_gemma4 {
namespace {

using namespace detail;

constexpr int kBlock = 128;              // scale block edge

// --------------------------------------------------------------------------------------------------------------
// Small device helpers (all sm_80+ PTX).

// Two BF16x2 words holding x[k+0..3] -> the B fragment registers (x0, x2) and (x1, x3).
__device__ __forceinline__ void bf16x4ToFrag(uint32_t x01, uint32_t x23, uint32_t& even, uint32_t& odd) {
    even = __byte_perm(x01, x23, 0x5410);
    odd = __byte_perm(x01, x23, 0x7632);
}

__device__ __forceinline__ void mmaBf16(float (&c)[4], uint32_t a0, uint32_t a1, uint32_t a2, uint32_t a3,
                                        uint32_t b0, uint32_t b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}

__device__ __forceinline__ void lds128Addr(uint32_t (&r)[4], uint32_t a) {
    asm volatile("ld.shared.v4.u32 {%0,%1,%2,%3}, [%4];" : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(a));
}

__device__ __forceinline__ float lds32Addr(uint32_t a) {
    float v;
    asm volatile("ld.shared.f32 %0, [%1];" : "=f"(v) : "r"(a));
    return v;
}

__device__ __forceinline__ void lds128(uint32_t (&r)[4], const void* p) { lds128Addr(r, smemAddr(p)); }

// cp.async of 16 bytes, zero-filled when !valid (src-size 0: nothing is read).
__device__ __forceinline__ void cpAsync16(void* smemDst, const void* src, bool valid) {
    const uint32_t d = static_cast<uint32_t>(__cvta_generic_to_shared(smemDst));
    const int n = valid ? 16 : 0;
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;" ::"r"(d), "l"(src), "r"(n));
}
// cp.async of 16 weight bytes (read once): bypass L1, ask L2 for the whole 256-byte segment; zero-filled when !valid.
__device__ __forceinline__ void cpAsync16Stream(uint32_t smemDst, const void* src, bool valid) {
    const int n = valid ? 16 : 0;
    asm volatile("cp.async.cg.shared.global.L2::256B [%0], [%1], 16, %2;" ::"r"(smemDst), "l"(src), "r"(n));
}
// cp.async of 4 bytes (through L1: 32 lanes read the same scale), zero-filled when !valid.
__device__ __forceinline__ void cpAsync4(uint32_t smemDst, const void* src, bool valid) {
    const int n = valid ? 4 : 0;
    asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;" ::"r"(smemDst), "l"(src), "r"(n));
}
__device__ __forceinline__ void cpAsyncCommit() { asm volatile("cp.async.commit_group;"); }
template <int N>
__device__ __forceinline__ void cpAsyncWait() {
    asm volatile("cp.async.wait_group %0;" ::"n"(N));
}

// bar.sync on a named barrier (id 1..15) for `threads` threads (a multiple of 32).
[[maybe_unused]] __device__ __forceinline__ void namedBarrierSync(int id, int threads) {
    asm volatile("bar.sync %0, %1;" ::"r"(id), "r"(threads) : "memory");
}

__device__ __forceinline__ void zero4(uint32_t (&r)[4]) { r[0] = r[1] = r[2] = r[3] = 0u; }

// --------------------------------------------------------------------------------------------------------------
// streamKernel: small M.
//
// Grid: x = token tiles of 8*NT (fastest, so the CTAs that share weight rows run back to back and the second
// reads them from L2), y = weight row tiles of 16*RG, z = split-K. Block: `warps` warps; all warps own the same
// 16*RG rows and the same tokens and take k-blocks round-robin (warp w of split z does k-blocks
// z*warps + w, + warps*splits, ...), so at any moment the warps of a CTA read neighbouring 128-byte pieces of
// the same rows. A k-block is prefetched into the other register buffer while the current one is multiplied.
// At the end the warps' accumulators are summed through shared memory.

// Activation row pointers of the B fragment: thread (g, t) of token tile nt reads token m0 + 8*nt + g from k = 16t;
// tokens past M read token `spare` instead (their mma columns are never stored).
template <int NT>
__device__ __forceinline__ void tokenRows(const __nv_bfloat16* X, int M, int K, int m0, int g, int t, int spare,
                                          const __nv_bfloat16* (&xRow)[NT], bool (&tokOk)[NT]) {
#pragma unroll
    for (int nt = 0; nt < NT; ++nt) {
        const int tok = m0 + 8 * nt + g;
        tokOk[nt] = tok < M;
        xRow[nt] = X + static_cast<size_t>(tokOk[nt] ? tok : spare) * K + 16 * t;
    }
}

template <int NT, int RG>
struct StreamFrag {
    uint32_t w[RG][2][2][4];  // [row group][row g / g+8][64-k chunk][word] : 16 FP8 per (row, chunk)
    uint32_t x[NT][2][2][4];  // [token tile][64-k chunk][half][word]     : 16 BF16 per (token, chunk)
    float s[RG];              // block scale per row group
};

// FULL: every k-block is whole (K % 128 == 0) and every row group of every CTA exists (N % (16 * RG) == 0), the
// case of all the model's shapes: the loads then need no bounds checks and no zero fill; tokens past M read token
// M-1 instead of zeros (their columns of the mma are never stored). At M = 1 (NT = 1, RG = 1, DEPTH = 2) that takes
// the main loop from 263 to 213 instructions per k-block (SASS), and the 12B stack from 3443 to 3164 µs on an H200
// (same process, scripts/probe_stream_bw.sh with PROBE_FLAGS=-DTRT_GEMMA4_PROBE_SWITCHES).
//
// SMEM (kernel kStreamSmem): the weights and scales of the k-blocks in flight wait in a per-warp shared-memory ring
// filled with cp.async instead of in registers; the activations stay in a register ring beside it. Same arithmetic
// in the same order (bit-identical results), ~RG*16 registers less per stage, so deeper rings or more warps per
// SM; which one is faster depends on the shape (bench/NOTES_gemm.md v18).
template <int NT, int RG, int DEPTH, bool FULL, bool SMEM, bool PF = false>
__global__ void __launch_bounds__(256) streamKernel(const __nv_bfloat16* __restrict__ X,
                                                    const uint8_t* __restrict__ W, const float* __restrict__ S,
                                                    __nv_bfloat16* __restrict__ Y, float* __restrict__ partial,
                                                    int M, int N, int K) {
    extern __shared__ __align__(16) float dynSmem[];
    const int kBlocks = (K + kBlock - 1) / kBlock;
    const int warps = blockDim.x >> 5;
    const int warp = threadIdx.x >> 5;
    const int lane = threadIdx.x & 31;
    const int g = lane >> 2;
    const int t = lane & 3;
    const int m0 = blockIdx.x * (8 * NT);
    const int n0 = blockIdx.y * (16 * RG);
    const int split = blockIdx.z;
    const int stride = warps * gridDim.z;

    // Per-thread base pointers; invalid rows/tokens point at element 0 and are never dereferenced.
    const uint8_t* wRow[RG];
    const uint8_t* wRow8[RG];  // row g + 8
    const float* sRow[RG];
    bool rowOk[RG];
#pragma unroll
    for (int r = 0; r < RG; ++r) {
        rowOk[r] = FULL || n0 + 16 * r < N;  // N % 16 == 0: a 16-row group is all in or all out
        const int row = rowOk[r] ? n0 + 16 * r + g : 0;
        wRow[r] = W + static_cast<size_t>(row) * K + 16 * t;
        wRow8[r] = wRow[r] + static_cast<size_t>(8) * K;
        sRow[r] = S + static_cast<size_t>(rowOk[r] ? (n0 + 16 * r) / kBlock : 0) * kBlocks;
    }
    const __nv_bfloat16* xRow[NT];
    bool tokOk[NT];
    tokenRows<NT>(X, M, K, m0, g, t, FULL ? M - 1 : 0, xRow, tokOk);

    // Weights and scales of k-block kb (constants: may be read before the previous kernel finished).
    auto loadW = [&](StreamFrag<NT, RG>& f, int kb) {
        if constexpr (FULL) {
            const uint32_t k = static_cast<uint32_t>(kb) * kBlock;
#pragma unroll
            for (int r = 0; r < RG; ++r) {
#pragma unroll
                for (int c = 0; c < 2; ++c) {
                    ldgStream128(f.w[r][0][c], wRow[r] + k + 64 * c);
                    ldgStream128(f.w[r][1][c], wRow8[r] + k + 64 * c);
                }
                f.s[r] = __ldg(sRow[r] + kb);
            }
        } else {
#pragma unroll
            for (int c = 0; c < 2; ++c) {
                const int k = kb * kBlock + 64 * c;
                const bool kOk = k + 16 * t < K;  // K % 16 == 0: a thread's 16 values are all in or all out
#pragma unroll
                for (int r = 0; r < RG; ++r) {
                    if (kOk && rowOk[r]) {
                        ldgStream128(f.w[r][0][c], wRow[r] + k);
                        ldgStream128(f.w[r][1][c], wRow8[r] + k);
                    } else {
                        zero4(f.w[r][0][c]);
                        zero4(f.w[r][1][c]);
                    }
                }
            }
#pragma unroll
            for (int r = 0; r < RG; ++r) f.s[r] = rowOk[r] ? __ldg(sRow[r] + kb) : 0.f;
        }
    };
    // Activations of k-block kb (only after waitForPrerequisite()).
    auto loadX = [&](StreamFrag<NT, RG>& f, int kb) {
        if constexpr (FULL) {
            const uint32_t k = static_cast<uint32_t>(kb) * kBlock;
#pragma unroll
            for (int nt = 0; nt < NT; ++nt)
#pragma unroll
                for (int c = 0; c < 2; ++c) {
                    ldgCached128(f.x[nt][c][0], xRow[nt] + k + 64 * c);
                    ldgCached128(f.x[nt][c][1], xRow[nt] + k + 64 * c + 8);
                }
        } else {
#pragma unroll
            for (int c = 0; c < 2; ++c) {
                const int k = kb * kBlock + 64 * c;
                const bool kOk = k + 16 * t < K;
#pragma unroll
                for (int nt = 0; nt < NT; ++nt) {
                    if (kOk && tokOk[nt]) {
                        ldgCached128(f.x[nt][c][0], xRow[nt] + k);
                        ldgCached128(f.x[nt][c][1], xRow[nt] + k + 8);
                    } else {
                        zero4(f.x[nt][c][0]);
                        zero4(f.x[nt][c][1]);
                    }
                }
            }
        }
    };

    float acc[RG][NT][4];
#pragma unroll
    for (int r = 0; r < RG; ++r)
#pragma unroll
        for (int nt = 0; nt < NT; ++nt)
#pragma unroll
            for (int i = 0; i < 4; ++i) acc[r][nt][i] = 0.f;

    auto compute = [&](const StreamFrag<NT, RG>& f) {
        float part[RG][NT][4];
#pragma unroll
        for (int r = 0; r < RG; ++r)
#pragma unroll
            for (int nt = 0; nt < NT; ++nt)
#pragma unroll
                for (int i = 0; i < 4; ++i) part[r][nt][i] = 0.f;
#pragma unroll
        for (int c = 0; c < 2; ++c) {
#pragma unroll
            for (int j = 0; j < 4; ++j) {
                uint32_t b0[NT], b1[NT];
#pragma unroll
                for (int nt = 0; nt < NT; ++nt)
                    bf16x4ToFrag(f.x[nt][c][j >> 1][(j & 1) * 2], f.x[nt][c][j >> 1][(j & 1) * 2 + 1], b0[nt],
                                 b1[nt]);
#pragma unroll
                for (int r = 0; r < RG; ++r) {
                    uint32_t a0, a1, a2, a3;  // a0/a2: row g, a1/a3: row g+8 (fragment register order)
                    fp8x4ToBf16Frag(f.w[r][0][c][j], a0, a2);
                    fp8x4ToBf16Frag(f.w[r][1][c][j], a1, a3);
#pragma unroll
                    for (int nt = 0; nt < NT; ++nt) mmaBf16(part[r][nt], a0, a1, a2, a3, b0[nt], b1[nt]);
                }
            }
        }
#pragma unroll
        for (int r = 0; r < RG; ++r)
#pragma unroll
            for (int nt = 0; nt < NT; ++nt)
#pragma unroll
                for (int i = 0; i < 4; ++i) acc[r][nt][i] = fmaf(f.s[r], part[r][nt][i], acc[r][nt][i]);
    };

    // Let the next kernel's CTAs queue from the start: they take the slots our CTAs leave and start their own weight
    // prefetch during our tail (H200, M = 1 stack: 3306 -> 3211 µs against triggering after the main loop).
    allowDependents();
    int kb = split * warps + warp;
    float* red = dynSmem;
    // SMEM: shared-memory ring [warp][stage][piece][lane] of 16-byte pieces, piece = (row group, row g / g+8, 64-k
    // chunk), then one FP32 scale per (row group, lane). Each thread reads back only the bytes it copied itself, so no
    // barrier is needed (cp.async.wait_group alone), and a warp's copies and ld.shared of one piece are 512 contiguous
    // bytes (no bank conflicts). The scales come through the ring too (4-byte cp.async): the only global loads of the
    // main loop are then the activations, which the warp's loads return in issue order behind (measured: activations
    // loaded at their use instead of with their k-block cost 10-15%). The reduction buffer follows the rings.
    constexpr int kStage = RG * 4 * 32 + RG * 8;  // 16-byte units per warp and stage
    const uint32_t ringWarp = smemAddr(dynSmem) + 16u * static_cast<uint32_t>(warp * DEPTH * kStage);
    const uint32_t ring = ringWarp + 16u * static_cast<uint32_t>(lane);
    const uint32_t ringScale = ringWarp + 16u * (RG * 4 * 32) + 4u * static_cast<uint32_t>(lane);
    if constexpr (SMEM) red = dynSmem + 4 * warps * DEPTH * kStage;
    // SMEM: one commit group per call, empty past the last k-block, so that the wait_group count stays uniform.
    auto issue = [&](int st, int k2) {
        if (k2 < kBlocks) {
            const uint32_t k = static_cast<uint32_t>(k2) * kBlock;
#pragma unroll
            for (int r = 0; r < RG; ++r) {
#pragma unroll
                for (int c = 0; c < 2; ++c) {
                    const bool ok = FULL || (rowOk[r] && static_cast<int>(k) + 64 * c + 16 * t < K);
                    const uint32_t dst = ring + 16u * static_cast<uint32_t>(st * kStage + (r * 4 + c) * 32);
                    cpAsync16Stream(dst, wRow[r] + (ok ? k + 64 * c : 0), ok);
                    cpAsync16Stream(dst + 16u * 64u, wRow8[r] + (ok ? k + 64 * c : 0), ok);
                }
                cpAsync4(ringScale + 16u * static_cast<uint32_t>(st * kStage) + 128u * r, sRow[r] + k2,
                         FULL || rowOk[r]);
            }
        }
        cpAsyncCommit();
    };

    // Ring of DEPTH k-blocks: DEPTH-1 blocks are in flight while one is multiplied. The ring index is a compile-time
    // constant in the unrolled inner loop, so the buffers stay in registers (SMEM: only the activations wait there;
    // each step reads its weights and scale back from shared memory into the slot's .w and .s).
    StreamFrag<NT, RG> buf[DEPTH];
#pragma unroll
    for (int d = 0; d < DEPTH - 1; ++d) {
        if constexpr (SMEM)
            issue(d, kb + d * stride);
        else if (kb + d * stride < kBlocks)
            loadW(buf[d], kb + d * stride);
    }
    static_assert(!PF || FULL, "the L2 prefetch addresses whole rows and k-blocks: FULL instantiations only");
    if constexpr (PF) {
        // PF (FULL only): the warp's later k-blocks, past the DEPTH-1 requested above, prefetched into L2 before
        // waiting for the previous kernel, so that they stream from HBM during its tail. Lanes 0-15 take one row each
        // of every second k-block, lanes 16-31 the others (a row's k-block is one 128-byte line). config.prefetch; the
        // dispatch sets it for split-K 16-token tiles only: elsewhere it measured slower, in the 12B stack too (NOTES
        // v24, v25).
        const uint8_t* rowBase = W + static_cast<size_t>(n0 + (lane & 15)) * K;
        for (int d = DEPTH - 1 + (lane >> 4); kb + d * stride < kBlocks; d += 2) {
            const size_t k = static_cast<size_t>(kb + d * stride) * kBlock;
#pragma unroll
            for (int r = 0; r < RG; ++r) prefetchL2(rowBase + static_cast<size_t>(16 * r) * K + k);
        }
    }
    waitForPrerequisite();
#pragma unroll
    for (int d = 0; d < DEPTH - 1; ++d)
        if (kb + d * stride < kBlocks) loadX(buf[d], kb + d * stride);
    bool done = kb >= kBlocks;
    while (!done) {
#pragma unroll
        for (int d = 0; d < DEPTH; ++d) {
            if (kb >= kBlocks) {
                done = true;
                break;
            }
            const int kf = kb + (DEPTH - 1) * stride;  // refill the slot consumed one step ago
            StreamFrag<NT, RG>& refill = buf[(d + DEPTH - 1) % DEPTH];
            if constexpr (SMEM) {
                issue((d + DEPTH - 1) % DEPTH, kf);
                if (kf < kBlocks) loadX(refill, kf);
                cpAsyncWait<DEPTH - 1>();  // this thread's pieces of stage d landed
#pragma unroll
                for (int r = 0; r < RG; ++r) {
#pragma unroll
                    for (int h = 0; h < 2; ++h)
#pragma unroll
                        for (int c = 0; c < 2; ++c)
                            lds128Addr(buf[d].w[r][h][c],
                                       ring + 16u * static_cast<uint32_t>(d * kStage + (r * 4 + h * 2 + c) * 32));
                    buf[d].s[r] = lds32Addr(ringScale + 16u * static_cast<uint32_t>(d * kStage) + 128u * r);
                }
            } else if (kf < kBlocks) {
                loadW(refill, kf);
                loadX(refill, kf);
            }
            compute(buf[d]);
            kb += stride;
        }
    }
    if constexpr (SMEM) cpAsyncWait<0>();

    // Accumulator element e = (r*NT + nt)*4 + i of lane `ln` is C(row, token) of the m16n8 fragment:
    // i = 0,1 -> row g, tokens 2t, 2t+1; i = 2,3 -> row g+8.
    constexpr int kElems = RG * NT * 4;
    auto store = [&](int e, int ln, float v) {
        const int r = e / (NT * 4);
        const int nt = (e / 4) % NT;
        const int i = e % 4;
        const int row = n0 + 16 * r + (ln >> 2) + ((i & 2) ? 8 : 0);
        const int tok = m0 + 8 * nt + 2 * (ln & 3) + (i & 1);
        if (row < N && tok < M) {
            if (gridDim.z == 1) {
                Y[static_cast<size_t>(tok) * N + row] = __float2bfloat16_rn(v);
            } else {
                partial[(static_cast<size_t>(split) * M + tok) * N + row] = v;
            }
        }
    };
    if (warps == 1) {
#pragma unroll
        for (int e = 0; e < kElems; ++e) store(e, lane, (&acc[0][0][0])[e]);
        return;
    }
    // Layout red[warp][e][lane]: conflict-free writes, and the reduction below reads consecutive lanes.
#pragma unroll
    for (int e = 0; e < kElems; ++e) red[(warp * kElems + e) * 32 + lane] = (&acc[0][0][0])[e];
    __syncthreads();
    for (int idx = threadIdx.x; idx < kElems * 32; idx += blockDim.x) {
        float v = 0.f;
        for (int w = 0; w < warps; ++w) v += red[w * kElems * 32 + idx];
        store(idx >> 5, idx & 31, v);
    }
}

// --------------------------------------------------------------------------------------------------------------
// bulkStreamKernel (kBulk): small M on sm_90+, the weights through shared memory.
//
// MEASURED SLOWER than streamKernel, so not dispatched (reachable by hand-set configuration, kept for the record and
// for further work; bench/NOTES_gemm.md v17). streamKernel keeps one or two k-blocks per warp in flight in
// registers and streams the 12B weights at M = 1 at 2.7-3.6 TB/s on an H200; a pure read kernel feeding a
// shared-memory ring with cp.async.bulk reads them at 3.9-4.7 TB/s (whole stack 2395-2445 µs, under the copy-
// bandwidth floor; scripts/probe_stream_bw.cu). This kernel is that reader with the fragment math of streamKernel
// on the consumer side. Its producer keeps up (consumers reduced to waiting and releasing: stack 2539 µs), but the
// consumers' FP8 -> BF16 conversion and mma work caps it at 3556-3940 µs (4-8 consumer warps, 2-3 stages) against
// 3211 µs for streamKernel: with two CTAs per SM it has at most 16 math warps per SM, as streamKernel does, plus
// the ring's synchronization. Design:
//  * Persistent CTAs (as many as fit, two per SM on sm_90) walk units u = blockIdx.x, + gridDim.x, ...; a unit is
//    (token tile of 8*NT, 16-row group, k split), token tile fastest so CTAs sharing weight rows run together.
//  * Warp 0 produces: per stage, 16 rows x kBulkChunk bytes of k, one cp.async.bulk per row (lanes 0-15), all
//    completing on the stage's `full` mbarrier. It never waits for the previous kernel (weights and scales are
//    constants), so the ring fills while that kernel drains.
//  * Warps 1..C consume: they take the stage's k-blocks round-robin and run streamKernel's fragment math on them
//    (the K permutation: thread (g, t) reads bytes [16t, 16t+16) of each 64-k piece of rows g and g+8, here from
//    shared memory; the row pitch kBulkPitch = chunk + 64 bytes puts rows g and g+1 on different bank halves, so
//    a quarter-warp's 16-byte reads do not conflict), then release the stage with one arrive per warp on its
//    `empty` mbarrier. Activations come from global memory (L1-cached, re-read by every row group), scales with
//    __ldg; both only after griddepcontrol.wait.
//  * At the end of a unit the consumers' FP32 accumulators are summed through shared memory in a fixed order
//    (deterministic) and stored as BF16 (or as FP32 partials for the reduce pass when splits > 1).
#ifndef TRT_GEMMA4_BULK_PROBE  // timing probes only (scripts/probe_stream_bw.sh): 1 = no consumer math, 2 = no x loads
#define TRT_GEMMA4_BULK_PROBE 0
#endif
constexpr int kBulkChunk = 2048;             // k bytes per row per stage: 16 k-blocks
constexpr int kBulkPitch = kBulkChunk + 64;  // shared-memory row pitch (bank spread, see above)
constexpr int kBulkStage = 16 * kBulkPitch;  // 33,792 bytes per stage
[[maybe_unused]] constexpr int kBulkPair = 2;  // k-blocks a consumer warp works on at once

[[maybe_unused]] __device__ __forceinline__ void bulkCopy(uint32_t dst, const void* src, uint32_t bytes, uint32_t bar) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];" ::"r"(dst),
                 "l"(src), "r"(bytes), "r"(bar)
                 : "memory");
#endif
}

template <int NT, bool XS>
__global__ void __launch_bounds__(288, NT == 1 ? 2 : 1) bulkStreamKernel(const __nv_bfloat16* __restrict__ X,
                                                        const uint8_t* __restrict__ W, const float* __restrict__ S,
                                                        __nv_bfloat16* __restrict__ Y, float* __restrict__ partial,
                                                        int M, int N, int K, int stages, int kPerSplit, int splits) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    constexpr int kElems = NT * 4;
    extern __shared__ __align__(128) uint8_t smem[];
    const int consumers = static_cast<int>(blockDim.x >> 5) - 1;
    float* red = reinterpret_cast<float*>(smem + stages * kBulkStage);  // [consumer warp][element][lane]
    const uint32_t fullBar = smemAddr(red + consumers * kElems * 32);
    const uint32_t emptyBar = fullBar + 8 * stages;
    uint8_t* xs = smem + stages * kBulkStage + consumers * kElems * 32 * 4 + 16 * stages;  // XS: [M][K] permuted
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    allowDependents();  // the next kernel's CTAs may queue now; they take our SMs' slots as our CTAs leave
    if (threadIdx.x == 0) {
        for (int s = 0; s < stages; ++s) {
            mbarInit(fullBar + 8 * s, 1);
            mbarInit(emptyBar + 8 * s, consumers);
        }
        asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
    }
    __syncthreads();
    const int kBlocks = (K + kBlock - 1) / kBlock;
    const int tokTiles = (M + 8 * NT - 1) / (8 * NT);
    const int rowGroups = N / 16;
    const int units = tokTiles * rowGroups * splits;

    if (warp == 0) {  // producer
        int i = 0;
        for (int u = blockIdx.x; u < units; u += gridDim.x) {
            const int rg = (u / tokTiles) % rowGroups, z = u / (tokTiles * rowGroups);
            const int kBeg = z * kPerSplit, kEnd = min(K, kBeg + kPerSplit);
            const uint8_t* row = W + static_cast<size_t>(16 * rg + (lane & 15)) * K;
            for (int k0 = kBeg; k0 < kEnd; k0 += kBulkChunk, ++i) {
                const int s = i % stages;
                const int len = min(kBulkChunk, kEnd - k0);
                if (lane == 0) {
                    if (i >= stages) mbarWait(emptyBar + 8 * s, ((i / stages) - 1) & 1);
                    mbarExpectTx(fullBar + 8 * s, 16 * len);
                }
                __syncwarp();
                if (lane < 16) bulkCopy(smemAddr(smem + s * kBulkStage + lane * kBulkPitch), row + k0, len, fullBar + 8 * s);
            }
        }
        return;
    }

    const int cw = warp - 1;
    const int g = lane >> 2, t = lane & 3;
    waitForPrerequisite();
    if constexpr (XS) {
        // One token tile (M <= 8): the activations go to shared memory once, each group of 4 stored as
        // (x0, x2, x1, x3), i.e. already in the B fragment's register order (no PRMT per mma, no global load
        // on the consumers' critical path).
        for (int idx = threadIdx.x - 32; idx < M * K / 8; idx += consumers * 32) {
            uint32_t v[4], o[4];
            ldgCached128(v, X + static_cast<size_t>(idx) * 8);
            bf16x4ToFrag(v[0], v[1], o[0], o[1]);
            bf16x4ToFrag(v[2], v[3], o[2], o[3]);
            asm volatile("st.shared.v4.u32 [%0], {%1,%2,%3,%4};" ::"r"(smemAddr(xs + 16 * idx)), "r"(o[0]), "r"(o[1]),
                         "r"(o[2]), "r"(o[3])
                         : "memory");
        }
        namedBarrierSync(1, consumers * 32);
    }
    int i = 0;
    for (int u = blockIdx.x; u < units; u += gridDim.x) {
        const int tt = u % tokTiles, rg = (u / tokTiles) % rowGroups, z = u / (tokTiles * rowGroups);
        const int kBeg = z * kPerSplit, kEnd = min(K, kBeg + kPerSplit);
        const int n0 = 16 * rg, m0 = tt * 8 * NT;
        const float* sRow = S + static_cast<size_t>(n0 / kBlock) * kBlocks;
        const __nv_bfloat16* xRow[NT];
        bool tokOk[NT];
        tokenRows<NT>(X, M, K, m0, g, t, 0, xRow, tokOk);
        float acc[NT][4];
#pragma unroll
        for (int nt = 0; nt < NT; ++nt)
#pragma unroll
            for (int e = 0; e < 4; ++e) acc[nt][e] = 0.f;
        for (int k0 = kBeg; k0 < kEnd; k0 += kBulkChunk, ++i) {
            const int s = i % stages;
            const int nkb = (min(kBulkChunk, kEnd - k0) + kBlock - 1) / kBlock;
            mbarWait(fullBar + 8 * s, (i / stages) & 1);
            const uint8_t* st = smem + s * kBulkStage;
            // kBulkPair k-blocks per step (kbl, kbl + consumers, ...): all their loads are issued before any math,
            // so their latencies overlap and the mma chains of the k-blocks are independent.
            for (int kbl = cw; kbl < nkb && TRT_GEMMA4_BULK_PROBE != 1; kbl += kBulkPair * consumers) {
                float sc[kBulkPair];
                uint32_t w[kBulkPair][2][2][4];      // [k-block][row g / g+8][64-k piece][word]
                uint32_t x[kBulkPair][NT][2][2][4];  // [k-block][token tile][64-k piece][half][word]
#pragma unroll
                for (int p = 0; p < kBulkPair; ++p) {
                    const int kb = kbl + p * consumers;
                    sc[p] = kb < nkb ? __ldg(sRow + k0 / kBlock + kb) : 0.f;
#pragma unroll
                    for (int c = 0; c < 2; ++c) {
                        const int kk = kb * kBlock + 64 * c + 16 * t;        // byte offset in the chunk
                        const bool kOk = kb < nkb && k0 + kk < kEnd;       // a 16-byte piece is all in or all out
#pragma unroll
                        for (int nt = 0; nt < NT; ++nt) {
                            if (XS && kOk && tokOk[nt]) {
                                const uint8_t* xp = xs + 2 * (static_cast<size_t>(m0 + 8 * nt + g) * K + k0 + kk);
                                lds128(x[p][nt][c][0], xp);
                                lds128(x[p][nt][c][1], xp + 16);
                            } else if (TRT_GEMMA4_BULK_PROBE != 2 && kOk && tokOk[nt]) {
                                ldgCached128(x[p][nt][c][0], xRow[nt] + k0 + kk - 16 * t);
                                ldgCached128(x[p][nt][c][1], xRow[nt] + k0 + kk - 16 * t + 8);
                            } else {
                                zero4(x[p][nt][c][0]);
                                zero4(x[p][nt][c][1]);
                            }
                        }
                    }
                }
#pragma unroll
                for (int p = 0; p < kBulkPair; ++p) {
                    const int kb = kbl + p * consumers;
#pragma unroll
                    for (int c = 0; c < 2; ++c) {
                        const int kk = kb * kBlock + 64 * c + 16 * t;
                        if (kb < nkb && k0 + kk < kEnd) {
                            lds128(w[p][0][c], st + g * kBulkPitch + kk);
                            lds128(w[p][1][c], st + (g + 8) * kBulkPitch + kk);
                        } else {
                            zero4(w[p][0][c]);
                            zero4(w[p][1][c]);
                        }
                        if (TRT_GEMMA4_BULK_PROBE == 2) {
#pragma unroll
                            for (int nt = 0; nt < NT; ++nt) {
                                x[p][nt][c][0][0] = x[p][nt][c][1][1] = w[p][0][c][1];
                                x[p][nt][c][0][1] = x[p][nt][c][1][0] = w[p][1][c][0];
                                x[p][nt][c][0][2] = x[p][nt][c][0][3] = 0x3f803f80u;
                                x[p][nt][c][1][2] = x[p][nt][c][1][3] = 0x3f803f80u;
                            }
                        }
                    }
                }
                // Independent partial sums per (k-block, 64-k piece): short dependent mma chains.
                float part[kBulkPair][2][NT][4];
#pragma unroll
                for (int p = 0; p < kBulkPair; ++p)
#pragma unroll
                    for (int c = 0; c < 2; ++c)
#pragma unroll
                        for (int nt = 0; nt < NT; ++nt)
#pragma unroll
                            for (int e = 0; e < 4; ++e) part[p][c][nt][e] = 0.f;
#pragma unroll
                for (int j = 0; j < 4; ++j) {
#pragma unroll
                    for (int p = 0; p < kBulkPair; ++p) {
#pragma unroll
                        for (int c = 0; c < 2; ++c) {
                            uint32_t a0, a1, a2, a3;  // a0/a2: row g, a1/a3: row g+8 (fragment register order)
                            fp8x4ToBf16Frag(w[p][0][c][j], a0, a2);
                            fp8x4ToBf16Frag(w[p][1][c][j], a1, a3);
#pragma unroll
                            for (int nt = 0; nt < NT; ++nt) {
                                uint32_t b0, b1;
                                if (XS) {
                                    b0 = x[p][nt][c][j >> 1][(j & 1) * 2];
                                    b1 = x[p][nt][c][j >> 1][(j & 1) * 2 + 1];
                                } else {
                                    bf16x4ToFrag(x[p][nt][c][j >> 1][(j & 1) * 2],
                                                 x[p][nt][c][j >> 1][(j & 1) * 2 + 1], b0, b1);
                                }
                                mmaBf16(part[p][c][nt], a0, a1, a2, a3, b0, b1);
                            }
                        }
                    }
                }
#pragma unroll
                for (int p = 0; p < kBulkPair; ++p)
#pragma unroll
                    for (int nt = 0; nt < NT; ++nt)
#pragma unroll
                        for (int e = 0; e < 4; ++e)
                            acc[nt][e] = fmaf(sc[p], part[p][0][nt][e] + part[p][1][nt][e], acc[nt][e]);
            }
            __syncwarp();
            if (lane == 0) mbarArrive(emptyBar + 8 * s);
        }
        // Sum the consumer warps' accumulators (red[warp][e][lane]: conflict-free) and store. Element e of lane
        // `ln` is C(row, token) of the m16n8 fragment: e = 0,1 -> row g, tokens 2t, 2t+1; e = 2,3 -> row g+8.
#pragma unroll
        for (int nt = 0; nt < NT; ++nt)
#pragma unroll
            for (int e = 0; e < 4; ++e) red[(cw * kElems + nt * 4 + e) * 32 + lane] = acc[nt][e];
        namedBarrierSync(1, consumers * 32);
        for (int idx = threadIdx.x - 32; idx < kElems * 32; idx += consumers * 32) {
            float v = 0.f;
            for (int w = 0; w < consumers; ++w) v += red[w * kElems * 32 + idx];
            const int e = idx >> 5, ln = idx & 31;
            const int row = n0 + (ln >> 2) + ((e & 2) ? 8 : 0);
            const int tok = m0 + 8 * (e >> 2) + 2 * (ln & 3) + (e & 1);
            if (tok < M) {
                if (splits == 1) {
                    Y[static_cast<size_t>(tok) * N + row] = __float2bfloat16_rn(v);
                } else {
                    partial[(static_cast<size_t>(z) * M + tok) * N + row] = v;
                }
            }
        }
        namedBarrierSync(1, consumers * 32);  // red is written again by the next unit
    }
#endif
}

// Sums the split-K FP32 partials [splits][M][N] and writes BF16, 4 outputs per thread.
__global__ void splitKReduceKernel(const float* __restrict__ partial, __nv_bfloat16* __restrict__ Y, size_t mn,
                                   int splits) {
    waitForPrerequisite();
    allowDependents();
    const size_t i = (static_cast<size_t>(blockIdx.x) * blockDim.x + threadIdx.x) * 4;
    if (i >= mn) return;
    float4 acc = *reinterpret_cast<const float4*>(partial + i);
    for (int z = 1; z < splits; ++z) {
        const float4 p = *reinterpret_cast<const float4*>(partial + z * mn + i);
        acc.x += p.x;
        acc.y += p.y;
        acc.z += p.z;
        acc.w += p.w;
    }
    __nv_bfloat162 lo = __floats2bfloat162_rn(acc.x, acc.y);
    __nv_bfloat162 hi = __floats2bfloat162_rn(acc.z, acc.w);
    uint2 out;
    out.x = *reinterpret_cast<uint32_t*>(&lo);
    out.y = *reinterpret_cast<uint32_t*>(&hi);
    *reinterpret_cast<uint2*>(Y + i) = out;
}

// --------------------------------------------------------------------------------------------------------------
// tiledKernel: larger M.
//
// CTA tile BN weight rows x BM tokens, one 128-wide k-block per pipeline stage (so one scale per stage: BN ≤ 128
// and the tile is aligned, hence inside one 128-row scale block). Warps form a (BN/WN) x (BM/WM) grid.
// Shared memory per stage:
//   W tile: BN rows x 128 B (FP8). 16-byte chunk c of row r is stored at chunk c ^ ((r & 1) << 2). A quarter
//           warp's LDS.128 reads rows g, g+1 (one even, one odd) at chunks t or 4+t: the swizzle puts the odd row
//           on the other 4 chunks, so the 8 addresses hit 32 distinct banks.
//   X tile: BM rows x 256 B (BF16). Chunk c of row r is stored at c ^ (r & 1); reads are chunks 2t + h of rows
//           g, g+1, the swizzle moves the odd row by one chunk: conflict-free again.
// Rows/tokens/k beyond the edges are zero-filled by cp.async (src-size 0).

template <int BN_, int BM_, int WN_, int WM_, int STAGES_>
struct TiledShape {
    static constexpr int BN = BN_, BM = BM_, WN = WN_, WM = WM_, STAGES = STAGES_;
    static constexpr int WARPS_N = BN / WN, WARPS_M = BM / WM, WARPS = WARPS_N * WARPS_M, THREADS = WARPS * 32;
    static constexpr int RGS = WN / 16, NTS = WM / 8;
    static constexpr int W_STAGE = BN * kBlock, X_STAGE = BM * kBlock * 2, STAGE = W_STAGE + X_STAGE;
    static constexpr int SMEM = STAGE * STAGES;
    static_assert(BN <= kBlock && kBlock % BN == 0, "a CTA tile must sit inside one 128-row scale block");
    static_assert(WN % 16 == 0 && WM % 8 == 0, "warp tile must be whole mma tiles");
};

template <class T>
__global__ void __launch_bounds__(T::THREADS) tiledKernel(const __nv_bfloat16* __restrict__ X,
                                                          const uint8_t* __restrict__ W, const float* __restrict__ S,
                                                          __nv_bfloat16* __restrict__ Y, float* __restrict__ partial,
                                                          int M, int N, int K) {
    extern __shared__ __align__(128) uint8_t smem[];
    const int kBlocks = (K + kBlock - 1) / kBlock;
    const int m0 = blockIdx.x * T::BM;
    const int n0 = blockIdx.y * T::BN;
    const int split = blockIdx.z;
    const int kbBegin = static_cast<int>(static_cast<long long>(kBlocks) * split / gridDim.z);
    const int kbEnd = static_cast<int>(static_cast<long long>(kBlocks) * (split + 1) / gridDim.z);
    const int tid = threadIdx.x;
    const int warp = tid >> 5;
    const int lane = tid & 31;
    const int g = lane >> 2;
    const int t = lane & 3;
    const int wn = warp % T::WARPS_N;
    const int wm = warp / T::WARPS_N;
    const float* sRow = S + static_cast<size_t>(n0 / kBlock) * kBlocks;

    auto loadStage = [&](int slot, int kb) {
        uint8_t* ws = smem + slot * T::STAGE;
        uint8_t* xs = ws + T::W_STAGE;
        const int kBase = kb * kBlock;
#pragma unroll
        for (int i = tid; i < T::BN * 8; i += T::THREADS) {
            const int r = i >> 3, c = i & 7;
            const int row = n0 + r, k = kBase + 16 * c;
            const bool ok = row < N && k < K;
            cpAsync16(ws + r * 128 + ((c ^ ((r & 1) << 2)) << 4), ok ? W + static_cast<size_t>(row) * K + k : W, ok);
        }
#pragma unroll
        for (int i = tid; i < T::BM * 16; i += T::THREADS) {
            const int r = i >> 4, c = i & 15;
            const int tok = m0 + r, k = kBase + 8 * c;
            const bool ok = tok < M && k < K;
            cpAsync16(xs + r * 256 + ((c ^ (r & 1)) << 4), ok ? X + static_cast<size_t>(tok) * K + k : X, ok);
        }
    };

    float acc[T::RGS][T::NTS][4];
#pragma unroll
    for (int r = 0; r < T::RGS; ++r)
#pragma unroll
        for (int nt = 0; nt < T::NTS; ++nt)
#pragma unroll
            for (int i = 0; i < 4; ++i) acc[r][nt][i] = 0.f;

    auto compute = [&](int slot) {
        const uint8_t* ws = smem + slot * T::STAGE;
        const uint8_t* xs = ws + T::W_STAGE;
#pragma unroll
        for (int kc = 0; kc < 2; ++kc) {
            uint32_t a[T::RGS][2][4];  // raw FP8: [row group][row g / g+8][word j]
#pragma unroll
            for (int rg = 0; rg < T::RGS; ++rg)
#pragma unroll
                for (int hh = 0; hh < 2; ++hh) {
                    const int r = wn * T::WN + rg * 16 + g + 8 * hh;
                    lds128(a[rg][hh], ws + r * 128 + (((kc * 4 + t) ^ ((r & 1) << 2)) << 4));
                }
#pragma unroll
            for (int h = 0; h < 2; ++h) {
                uint32_t b[T::NTS][4];  // BF16 x[16t + 8h .. +7] of token g of each token tile
#pragma unroll
                for (int nt = 0; nt < T::NTS; ++nt) {
                    const int r = wm * T::WM + nt * 8 + g;
                    lds128(b[nt], xs + r * 256 + (((kc * 8 + 2 * t + h) ^ (r & 1)) << 4));
                }
#pragma unroll
                for (int jj = 0; jj < 2; ++jj) {
                    const int j = 2 * h + jj;
                    uint32_t b0[T::NTS], b1[T::NTS];
#pragma unroll
                    for (int nt = 0; nt < T::NTS; ++nt) bf16x4ToFrag(b[nt][2 * jj], b[nt][2 * jj + 1], b0[nt], b1[nt]);
#pragma unroll
                    for (int rg = 0; rg < T::RGS; ++rg) {
                        uint32_t a0, a1, a2, a3;
                        fp8x4ToBf16Frag(a[rg][0][j], a0, a2);
                        fp8x4ToBf16Frag(a[rg][1][j], a1, a3);
#pragma unroll
                        for (int nt = 0; nt < T::NTS; ++nt) mmaBf16(acc[rg][nt], a0, a1, a2, a3, b0[nt], b1[nt]);
                    }
                }
            }
        }
    };

    waitForPrerequisite();
#pragma unroll
    for (int s = 0; s < T::STAGES - 1; ++s) {
        if (kbBegin + s < kbEnd) loadStage(s, kbBegin + s);
        cpAsyncCommit();
    }
    float unit = 0.f;  // acc holds sum / unit (see "Scales" at the top)
    for (int kb = kbBegin, it = 0; kb < kbEnd; ++kb, ++it) {
        cpAsyncWait<T::STAGES - 2>();
        __syncthreads();  // stage `it` landed for everyone; stage it-1 is free for the next prefetch
        const int pf = kb + T::STAGES - 1;
        if (pf < kbEnd) loadStage((it + T::STAGES - 1) % T::STAGES, pf);
        cpAsyncCommit();
        const float s = __ldg(sRow + kb);
        if (s != 0.f) {  // CTA-uniform branch
            if (unit != 0.f && s != unit) {
                const float ratio = unit / s;
#pragma unroll
                for (int r = 0; r < T::RGS; ++r)
#pragma unroll
                    for (int nt = 0; nt < T::NTS; ++nt)
#pragma unroll
                        for (int i = 0; i < 4; ++i) acc[r][nt][i] *= ratio;
            }
            unit = s;
            compute(it % T::STAGES);
        }
    }
    cpAsyncWait<0>();
    allowDependents();

#pragma unroll
    for (int rg = 0; rg < T::RGS; ++rg)
#pragma unroll
        for (int nt = 0; nt < T::NTS; ++nt)
#pragma unroll
            for (int i = 0; i < 4; ++i) {
                const int row = n0 + wn * T::WN + rg * 16 + g + ((i & 2) ? 8 : 0);
                const int tok = m0 + wm * T::WM + nt * 8 + 2 * t + (i & 1);
                if (row < N && tok < M) {
                    const float v = acc[rg][nt][i] * unit;
                    if (gridDim.z == 1) {
                        Y[static_cast<size_t>(tok) * N + row] = __float2bfloat16_rn(v);
                    } else {
                        partial[(static_cast<size_t>(split) * M + tok) * N + row] = v;
                    }
                }
            }
}

using Tile0 = TiledShape<128, 64, 64, 32, 4>;
using Tile1 = TiledShape<128, 128, 64, 64, 3>;
using Tile2 = TiledShape<64, 64, 32, 32, 4>;
using Tile3 = TiledShape<128, 256, 64, 64, 2>;
// Warps side by side along N only, so that each weight is converted once per CTA and the token tile in shared
// memory is read by all warps (memory-bound mid M).
using Tile4 = TiledShape<128, 64, 32, 64, 4>;
using Tile5 = TiledShape<128, 32, 32, 32, 4>;

// --------------------------------------------------------------------------------------------------------------
// Dequantize to BF16 [N, K]: 16 weights per thread (one 16-byte load, two 16-byte stores). w·s is computed in
// FP32 and rounded once to BF16, like the eager reference (q.float() * s).bfloat16().

__global__ void dequantKernel(const uint8_t* __restrict__ W, const float* __restrict__ S, __nv_bfloat16* __restrict__ Wout,
                              int N, int K) {
    const size_t i = (static_cast<size_t>(blockIdx.x) * blockDim.x + threadIdx.x) * 16;
    const size_t total = static_cast<size_t>(N) * K;
    if (i >= total) return;
    const int n = static_cast<int>(i / K);
    const int k = static_cast<int>(i % K);
    const int kBlocks = (K + kBlock - 1) / kBlock;
    const float s = __ldg(S + static_cast<size_t>(n / kBlock) * kBlocks + k / kBlock);
    uint32_t q[4];
    ldgStream128(q, W + i);
    uint32_t out[8];
#pragma unroll
    for (int w = 0; w < 4; ++w) {
        // lo/hi give (b0, b2) and (b1, b3) scaled by 2^-120; BF16 -> FP32 is a 16-bit shift.
        const uint32_t lo = fp8PairToBf16x2(q[w], 0u, fp8PairSel(0, 2));
        const uint32_t hi = fp8PairToBf16x2(q[w], 0u, fp8PairSel(1, 3));
        const float v0 = __uint_as_float(lo << 16) * 0x1p120f * s;
        const float v2 = __uint_as_float(lo & 0xFFFF0000u) * 0x1p120f * s;
        const float v1 = __uint_as_float(hi << 16) * 0x1p120f * s;
        const float v3 = __uint_as_float(hi & 0xFFFF0000u) * 0x1p120f * s;
        __nv_bfloat162 p01 = __floats2bfloat162_rn(v0, v1);
        __nv_bfloat162 p23 = __floats2bfloat162_rn(v2, v3);
        out[2 * w] = *reinterpret_cast<uint32_t*>(&p01);
        out[2 * w + 1] = *reinterpret_cast<uint32_t*>(&p23);
    }
    uint4* dst = reinterpret_cast<uint4*>(Wout + i);
    dst[0] = make_uint4(out[0], out[1], out[2], out[3]);
    dst[1] = make_uint4(out[4], out[5], out[6], out[7]);
}

// Split dequantization for callers that run the GEMM in BF16 but must keep the FP32-scale accuracy:
// v = q·s (FP32), hi = bf16(v), lo = bf16(v - hi), written as row n = [hi(0..K-1) | lo(0..K-1)] of a [N, 2K]
// matrix. Then [X | X] · [Whi | Wlo]ᵀ, one BF16 GEMM with K' = 2K and FP32 accumulation, equals X · (hi + lo)ᵀ,
// and hi + lo carries 16 significant bits of w·s (error ~2^-17, far below the BF16 output rounding).
__global__ void dequantSplitKernel(const uint8_t* __restrict__ W, const float* __restrict__ S,
                                   __nv_bfloat16* __restrict__ Wout, int N, int K) {
    const size_t i = (static_cast<size_t>(blockIdx.x) * blockDim.x + threadIdx.x) * 16;
    const size_t total = static_cast<size_t>(N) * K;
    if (i >= total) return;
    const int n = static_cast<int>(i / K);
    const int k = static_cast<int>(i % K);
    const int kBlocks = (K + kBlock - 1) / kBlock;
    const float s = __ldg(S + static_cast<size_t>(n / kBlock) * kBlocks + k / kBlock);
    uint32_t q[4];
    ldgStream128(q, W + i);
    uint32_t hiOut[8], loOut[8];
#pragma unroll
    for (int w = 0; w < 4; ++w) {
        const uint32_t lo = fp8PairToBf16x2(q[w], 0u, fp8PairSel(0, 2));
        const uint32_t hi = fp8PairToBf16x2(q[w], 0u, fp8PairSel(1, 3));
        const float v[4] = {__uint_as_float(lo << 16) * 0x1p120f * s, __uint_as_float(hi << 16) * 0x1p120f * s,
                            __uint_as_float(lo & 0xFFFF0000u) * 0x1p120f * s,
                            __uint_as_float(hi & 0xFFFF0000u) * 0x1p120f * s};  // k+0, k+1, k+2, k+3
#pragma unroll
        for (int p = 0; p < 2; ++p) {
            __nv_bfloat162 h = __floats2bfloat162_rn(v[2 * p], v[2 * p + 1]);
            __nv_bfloat162 l = __floats2bfloat162_rn(v[2 * p] - __low2float(h), v[2 * p + 1] - __high2float(h));
            hiOut[2 * w + p] = *reinterpret_cast<uint32_t*>(&h);
            loOut[2 * w + p] = *reinterpret_cast<uint32_t*>(&l);
        }
    }
    uint4* dstHi = reinterpret_cast<uint4*>(Wout + static_cast<size_t>(n) * 2 * K + k);
    uint4* dstLo = reinterpret_cast<uint4*>(Wout + static_cast<size_t>(n) * 2 * K + K + k);
    dstHi[0] = make_uint4(hiOut[0], hiOut[1], hiOut[2], hiOut[3]);
    dstHi[1] = make_uint4(hiOut[4], hiOut[5], hiOut[6], hiOut[7]);
    dstLo[0] = make_uint4(loOut[0], loOut[1], loOut[2], loOut[3]);
    dstLo[1] = make_uint4(loOut[4], loOut[5], loOut[6], loOut[7]);
}

// --------------------------------------------------------------------------------------------------------------
// Host side.

int ceilDiv(long long a, long long b) { return static_cast<int>((a + b - 1) / b); }

bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15u) == 0; }

struct TileDims {
    int bn, bm;
};
TileDims tileDims(int tile) {
    switch (tile) {
        case 0: return {Tile0::BN, Tile0::BM};
        case 1: return {Tile1::BN, Tile1::BM};
        case 2: return {Tile2::BN, Tile2::BM};
        case 3: return {Tile3::BN, Tile3::BM};
        case 4: return {Tile4::BN, Tile4::BM};
        default: return {Tile5::BN, Tile5::BM};
    }
}

template <class T>
cudaError_t launchTiled(dim3 grid, const __nv_bfloat16* X, const uint8_t* W, const float* S, __nv_bfloat16* Y,
                        float* partial, int M, int N, int K, cudaStream_t stream) {
    cudaError_t err = cudaFuncSetAttribute(tiledKernel<T>, cudaFuncAttributeMaxDynamicSharedMemorySize, T::SMEM);
    if (err != cudaSuccess) return err;
    return launch(tiledKernel<T>, grid, T::THREADS, T::SMEM, stream, X, W, S, Y, partial, M, N, K);
}

}  // namespace
#ifdef TRT_GEMMA4_PROBE_SWITCHES
int gProbeStreamFull = 1;
#endif
namespace {

// Dynamic shared memory of a streaming-kernel launch: the kStreamSmem rings, then the cross-warp reduction buffer.
int streamSmemBytes(int nt, int rg, int depth, bool smemRing, int warps) {
    const int ring = smemRing ? warps * depth * (rg * 4 * 32 + rg * 8) * 16 : 0;
    return ring + (warps > 1 ? warps * rg * nt * 4 * 32 * static_cast<int>(sizeof(float)) : 0);
}

template <int NT, int RG, int DEPTH, bool SMEM>
cudaError_t launchStream(dim3 grid, int warps, bool prefetch, const __nv_bfloat16* X, const uint8_t* W,
                         const float* S, __nv_bfloat16* Y, float* partial, int M, int N, int K, cudaStream_t stream) {
    const int smem = streamSmemBytes(NT, RG, DEPTH, SMEM, warps);
    bool full = K % kBlock == 0 && N % (16 * RG) == 0;
#ifdef TRT_GEMMA4_PROBE_SWITCHES  // scripts/probe_stream_bw.cu only: A/B of the two forms in one process
    full = full && gProbeStreamFull != 0;
#endif
    auto kernel = full ? streamKernel<NT, RG, DEPTH, true, SMEM> : streamKernel<NT, RG, DEPTH, false, SMEM>;
    // config.prefetch: the L2-prefetching instantiation (16-token tiles, whole rows and k-blocks: the caller checks,
    // prefetchApplies).
    if constexpr (NT == 2 && !SMEM) {
        if (prefetch) kernel = streamKernel<NT, RG, DEPTH, true, SMEM, true>;
    }
    if (smem > 48 * 1024) {
        const cudaError_t err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem);
        if (err != cudaSuccess) return err;
    }
    return launch(kernel, grid, warps * 32, smem, stream, X, W, S, Y, partial, M, N, K);
}

// kBulk: `consumers` consumer warps, `stages` ring stages, `splits` k-splits (> 1: FP32 partials, reduce pass).
// Persistent: as many CTAs as fit on the device, capped at the unit count. With one token tile (M <= 8), NT = 1,
// the activations are staged in shared memory when that still leaves two CTAs per SM. cudaErrorNotSupported
// before sm_90.
template <int NT, bool XS>
cudaError_t launchBulkAs(int consumers, int stages, int splits, int smem, const __nv_bfloat16* X, const uint8_t* W,
                         const float* S, __nv_bfloat16* Y, float* partial, int M, int N, int K, cudaStream_t stream) {
    cudaError_t err = cudaFuncSetAttribute(bulkStreamKernel<NT, XS>, cudaFuncAttributeMaxDynamicSharedMemorySize, smem);
    if (err != cudaSuccess) return err;
    const int threads = (consumers + 1) * 32;
    int perSm = 0;
    err = cudaOccupancyMaxActiveBlocksPerMultiprocessor(&perSm, bulkStreamKernel<NT, XS>, threads, smem);
    if (err != cudaSuccess) return err;
    if (perSm < 1) return cudaErrorInvalidValue;
    const int kBlocks = ceilDiv(K, kBlock);
    const int kPerSplit = ceilDiv(kBlocks, splits) * kBlock;
    const long long units = static_cast<long long>(ceilDiv(M, 8 * NT)) * (N / 16) * splits;
    if (units > 2147483647ll) return cudaErrorInvalidValue;
    const int grid = static_cast<int>(std::min<long long>(units, static_cast<long long>(perSm) * smCount()));
    return launch(bulkStreamKernel<NT, XS>, dim3(grid), threads, smem, stream, X, W, S, Y, partial, M, N, K, stages,
                  kPerSplit, splits);
}

template <int NT>
cudaError_t launchBulk(int consumers, int stages, int splits, const __nv_bfloat16* X, const uint8_t* W,
                       const float* S, __nv_bfloat16* Y, float* partial, int M, int N, int K, cudaStream_t stream) {
    if (deviceMajor() < 9) return cudaErrorNotSupported;
    if (consumers < 1 || consumers > 8 || stages < 2 || stages > 8) return cudaErrorInvalidValue;
    const int smem = stages * kBulkStage + consumers * NT * 4 * 32 * static_cast<int>(sizeof(float)) + 16 * stages;
    if (NT == 1 && M <= 8) {
        int dev = 0, perSmBytes = 0, reserved = 0;
        cudaGetDevice(&dev);
        cudaDeviceGetAttribute(&perSmBytes, cudaDevAttrMaxSharedMemoryPerMultiprocessor, dev);
        cudaDeviceGetAttribute(&reserved, cudaDevAttrReservedSharedMemoryPerBlock, dev);
        const long long xBytes = 2ll * M * K;
        if (2 * (smem + xBytes + reserved) <= perSmBytes)
            return launchBulkAs<1, true>(consumers, stages, splits, smem + static_cast<int>(xBytes), X, W, S, Y,
                                         partial, M, N, K, stream);
    }
    return launchBulkAs<NT, false>(consumers, stages, splits, smem, X, W, S, Y, partial, M, N, K, stream);
}

// Measured dispatch: bench/NOTES_gemm.md has the sweep (scripts/bench_gemm.py --tune) these rules summarize.
constexpr int kDequantMinM = 512;  // callers with a BF16 GEMM: split-dequantize + cuBLAS from here

// CTAs of one streaming-kernel instantiation that fit on an SM at once (0 if unknown).
int streamResidentCtasPerSm(int nt, int rg, int depth, int warps) {
    const int smem = streamSmemBytes(nt, rg, depth, false, warps);
    int blocks = 0;
    cudaError_t err = cudaErrorInvalidValue;
    if (nt == 1 && rg == 1 && depth == 2)
        err = cudaOccupancyMaxActiveBlocksPerMultiprocessor(&blocks, streamKernel<1, 1, 2, true, false>, warps * 32, smem);
    else if (nt == 1 && rg == 1 && depth == 3)
        err = cudaOccupancyMaxActiveBlocksPerMultiprocessor(&blocks, streamKernel<1, 1, 3, true, false>, warps * 32, smem);
    else if (nt == 2 && rg == 2 && depth == 2)
        err = cudaOccupancyMaxActiveBlocksPerMultiprocessor(&blocks, streamKernel<2, 2, 2, true, false>, warps * 32, smem);
    return err == cudaSuccess ? blocks : 0;
}

// Where config.prefetch can apply: the register-streaming 16-token tiles over whole k-blocks and row groups.
bool prefetchApplies(const BlockFp8GemmConfig& c, int N, int K) {
    return c.kernel == BlockFp8GemmKernel::kStream && c.tile == 2 && K % kBlock == 0 && N % (16 * c.rowGroups) == 0;
}

// Smallest power-of-two split-K (≤ cap) that gives the grid at least `targetCtas` CTAs, keeping at least
// `minBlocks` k-blocks per split.
int chooseSplits(int ctas, int targetCtas, int cap, int kBlocks, int minBlocks) {
    int splits = 1;
    while (2 * splits <= cap && ctas * splits < targetCtas && kBlocks >= minBlocks * 2 * splits) splits *= 2;
    return splits;
}

// Hopper (sm_90a), M > 16: the TMA + wgmma kernels (block_fp8_gemm_sm90.cu), measured on H200 against the mma.sync
// kernels and cuBLAS (bench/NOTES_gemm.md, v7-v10):
//  * M <= 128: the smallest token tile of 16/32/64/128 that holds M, split-K while the CTAs still fit one wave (the
//    weights are read once either way; idle SMs are what costs);
//  * M > 128: the persistent 256-token kernel, with stream-K where its last round would be at most half full and
//    the rounds are few, else data-parallel unless its tile count leaves a last round mostly empty where the
//    128-token kernel's waves fit better. The 256-token kernel does ~1.12x the work per unit time of the 128-token
//    one (same run), so compare rounds x 256 / 1.12 against waves x 128.
BlockFp8GemmConfig wgmmaConfig(int M, int N, int K, int sms) {
    BlockFp8GemmConfig c;
    c.kernel = BlockFp8GemmKernel::kWgmma;
    c.rowGroups = 1;
    c.warps = 1;
    c.depth = 2;
    const int tilesN = ceilDiv(N, 128);
    const int kBlocks = ceilDiv(K, kBlock);
    auto splitsFor = [&](int ctas) {
        int sp = 1;
        while (sp < 8 && ctas * sp * 2 <= sms && kBlocks >= 4 * sp) sp *= 2;
        return sp;
    };
    // 64-row tiles whose two consumer warpgroups split the k-blocks (rowGroups 2), where twice the 128-row tiles
    // still fit one wave and K is at most 64 k-blocks: each CTA widens half the weights, and the split-K that filled
    // the SMs before shrinks or goes (its cluster exchange moves half the bytes). Split until the grid fills one wave
    // while each warpgroup keeps at least 8 k-blocks. H200, same-run tunes and sweeps (bench/NOTES_gemm.md v26), µs,
    // 128-row tiles -> 64-row tiles: qkv M = 17 / 33 / 64 / 96 / 128 12.9 / 13.9 / 14.1 / 17.9 / 18.1 -> 12.2 / 13.1 /
    // 13.3 / 17.6 / 18.0, o M = 33 / 96 / 128 10.0 / 12.6 / 12.8 -> 9.1 / 11.9 / 12.0, drafter 4096 x 1024 M = 64 / 128
    // 5.1 / 6.1 -> 4.1 / 5.7, 1024 x 8192 M = 64 / 128 8.2 / 11.1 -> 8.0 / 10.5. Longer K loses (down's 120 k-blocks at
    // every M, o_global's 64 on the H100, below): each 64-row CTA reads the whole token tile, twice the activation
    // traffic per weight (down M = 128: 33.5 vs 31.6).
    // Returns whether they apply; h (the 128-row configuration with its token tile) then holds them.
    auto tryHalf = [&](BlockFp8GemmConfig& h) {
        const long long ctasH = static_cast<long long>(ceilDiv(N, 64)) * ceilDiv(M, h.tile);
        if (kBlocks > 64 || ctasH > sms) return false;
        h.rowGroups = 2;
        h.splits = 1;
        while (h.splits < 8 && ctasH * h.splits * 2 <= sms && kBlocks >= 32 * h.splits) h.splits *= 2;
        return true;
    };
    // Short K (at most 8 k-blocks: the drafter's 4096 x 1024) up to M = 256, where 64-token tiles still fit one wave:
    // no split-K (a split of 2-4 k-blocks costs more than it spreads; H200, 4096 x 1024: M = 128 7.0 vs 9.6 µs for
    // 128 tokens split 4, M = 256 8.1 vs 10.6).
    // M = 33..64 there: 32-token tiles (twice the CTAs, each widening its weight tile; H200 4096 x 1024 M = 64, three
    // same-run tunes: 5.6-5.7 µs vs 6.2-6.4 for one 64-token tile; M = 96: 6.6 vs 6.8, M = 128 7.2-7.3 vs 6.6-6.8).
    // (One 64-token tile split in two inside a cluster measured 10% faster in one H200 tune at v25, level on the H100,
    // and 1-2% slower in an A/B of the two dispatches on another H200: not taken.)
    if (M <= 256 && kBlocks <= 8 && tilesN * ceilDiv(M, 64) <= sms && M > 32) {
        c.tile = M <= 64 && tilesN * ceilDiv(M, 32) <= sms ? 32 : 64;
        c.splits = 1;
        // 64-row tiles where they fit one wave: 64-token tiles (4096 x 1024, M = 40 / 64: 4.1 µs against 4.8-5.1 for 32
        // tokens on 64-row tiles, same-run tunes)
        BlockFp8GemmConfig h = c;
        h.tile = 64;
        return tryHalf(h) ? h : c;
    }
    if (M <= 128) {
        c.tile = M <= 16 ? 16 : (M <= 32 ? 32 : (M <= 64 ? 64 : 128));
        c.splits = splitsFor(tilesN * ceilDiv(M, c.tile));
        // Few row tiles (the drafter's 1024 x 8192: 8) at M = 65..128, where even 8 splits of 128-token tiles leave
        // half the SMs idle: 64-token tiles, split until the grid fills one wave (up to 8, the reduce pass; M = 128,
        // same-run tunes: H200 11.4 µs against 12.2 for 128 tokens x 8 splits, H100 11.5 vs 12.1).
        if (c.tile == 128 && tilesN * 8 * 2 <= sms) {
            c.tile = 64;
            const int ctas = tilesN * ceilDiv(M, 64);
            c.splits = 1;
            while (c.splits < 8 && ctas * c.splits * 2 <= sms && kBlocks >= 8 * c.splits) c.splits *= 2;
        }
        // 64-row tiles (M = 17..128) for few row tiles (M = 33..128, on 64-token tiles), and for K of at most 32
        // k-blocks where the token tile is at most 64 or the 128-row tiles split K 4 ways or more. Measured slower on
        // the H100 (same-call A/B, bench/NOTES_gemm.md v26): o_global's 64 k-blocks (M = 17-32 / 96-128 2-5%), qkv's
        // 128-token tiles, which split K only twice (M = 128 18.7 -> 19.2 µs; level on the H200).
        if (M > 16) {
            BlockFp8GemmConfig h = c;
            const bool fewRows = M > 32 && tilesN * 8 * 2 <= sms;
            if (fewRows) h.tile = 64;
            if ((fewRows || (kBlocks <= 32 && (c.tile <= 64 || c.splits >= 4))) && tryHalf(h)) return h;
        }
        // Stream-K over the token tiles where the 128-row tiles fill more than half of the SMs but neither a split nor
        // 64-row tiles fit one wave (N = 8704: 68 tiles, 136 CTAs split or halved, on 132 SMs): every SM takes an
        // even share of all tiles' k-blocks. Same-call A/B against the data-parallel tiles, graph replay, µs
        // (bench/NOTES_gemm.md v28): qkv_global M = 17 / 33 / 64 / 96 / 128, H200 17.7 / 19.6 / 19.7 / 26.8 / 26.9
        // -> 16.3 / 17.9 / 18.2 / 23.3 / 23.7, H100 18.6-18.8 / 20.0-20.3 / 20.1-20.5 / 27.0-27.1 / 27.1-27.3 ->
        // 18.7-18.8 / 19.1-19.3 / 19.7-19.8 / 23.9-24.1 / 24.8-24.9.
        const long long ctas = static_cast<long long>(tilesN) * ceilDiv(M, c.tile);
        if (M > 16 && c.splits == 1 && 2 * ctas > sms && ctas < sms && kBlocks >= 16) c.splits = 0;
        return c;
    }
    // Stream-K (whole tiles for all but the last one to two rounds, then k-block pieces) where a data-parallel walk
    // of 256-token tiles would leave its last round at most 60% full (N = 8704: 68 row tiles on 132 SMs), given at
    // least half a round and fewer than 8 rounds of tiles. The stream-K instantiation runs each k-block ~7% slower
    // than the data-parallel one (same work, 8448 x 3840 at M = 2048: 214 vs 200 µs, a compiler scheduling
    // difference) and pays a memset without PDL, so it wins only where a large part of a round is idle: qkv_global
    // M = 512: 70.0 vs 82.2 µs, M = 1024: 123.0 vs 137.7, M = 2048: 238.1 vs 246.7; M = 4096: 459.0 vs 447.3 (lost).
    const long long tiles256 = static_cast<long long>(tilesN) * ceilDiv(M, 256);
    const long long lastRound = tiles256 % sms;
    if (2 * tiles256 >= sms && tiles256 < 8ll * sms && lastRound != 0 && 10 * lastRound <= 6ll * sms) {
        // Up to M = 384 on the token tiles' stream-K (128 tokens): qkv_global M = 192 / 256 / 384, µs, H200 (both
        // forms in one process) 41.3-41.4 / 39.7-40.0 / 60.1-60.2 on the persistent kernel's -> 35.6-35.8 / 36.7-37.5 /
        // 53.1-53.2; H100 (against the previous dispatch) 49.2-49.7 / 44.9-45.2 / 63.0-63.7 -> 36.4-36.5 / 36.8-36.9 /
        // 52.9-53.3.
        c.tile = M <= 384 ? 128 : 256;
        c.splits = 0;
        return c;
    }
    const long long rounds256 = ceilDiv(tiles256, sms);
    const int ctas128 = tilesN * ceilDiv(M, 128);
    const long long waves128 = ceilDiv(ctas128, sms);
    if (rounds256 * 256 * 100 <= waves128 * 128 * 112) {
        c.tile = 256;
        c.splits = 1;
    } else {
        c.tile = 128;
        c.splits = splitsFor(ctas128);
    }
    return c;
}

}  // namespace

// Dispatch rules measured on Hopper only (H200 and H100) and taken only there: the shared-memory weight ring for
// M <= 8's over-wave case (its 8-warp forms need up to 120 KB of shared memory, over sm_120's 99 KB) and the one-warp
// CTAs at M = 9..16. At M = 9..16 the ring was dispatched from v18 to v19 because the 12B stack preferred it (4526 ->
// 4018 µs) while gate_up ran the wgmma 16-token tile; with gate_up on one-warp streaming CTAs (v20) the register ring
// is faster in the stack too (H200, probe run 45: 3349 vs 3604 µs; this dispatch 3293-3305, run 46), as it always was
// per matrix.
bool hopperRules() { return deviceMajor() == 9; }

BlockFp8GemmConfig withSmemRing(BlockFp8GemmConfig c, int depth) {
    c.kernel = BlockFp8GemmKernel::kStreamSmem;
    c.depth = depth;
    return c;
}

namespace {
BlockFp8GemmConfig defaultConfigUnclustered(int M, int N, int K) {
    const int sms = smCount();
    const int kBlocks = ceilDiv(K, kBlock);
    const long long weightBytes = static_cast<long long>(N) * K;
    BlockFp8GemmConfig c;
    // M = 9..16 with at least ~one wave of 128-row tiles (gate_up, the drafter's 16384 x 1024), on Hopper: ONE warp
    // per CTA, each streaming every k-block of its rows, so that the many CTAs fill the SMs without splitting K
    // (H200, same-run tunes at v20, bench/NOTES_gemm.md): long K (gate_up) with two row groups and two stages, M = 16:
    // 32.3 µs against 37.2 for the wgmma kernel's 16-token tile that was dispatched here before (H100: 43.4 vs 44.2);
    // short K (16384 x 1024) with one row group and three stages, M = 9 / 12 / 16: 6.8 / 6.9 / 7.1 vs 8.1 µs (H100
    // M = 16: 8.0 vs 9.1).
    if (M > 8 && M <= 16 && ceilDiv(N, 128) * 10 >= sms * 9 && hopperRules()) {
        c.kernel = BlockFp8GemmKernel::kStream;
        c.tile = 2;
        c.warps = 1;
        c.splits = 1;
        c.rowGroups = kBlocks > 8 ? 2 : 1;
        c.depth = kBlocks > 8 ? 2 : 3;
        return c;
    }
    // M ≤ 16, and M ≤ 32 for small weights without the wgmma kernels (on Hopper their 64-row tiles are faster there:
    // H200 M = 17 / 32, µs, streaming -> wgmma: o 9.2 / 9.7 -> 8.9 / 9.1, drafter 4096 x 1024 4.0 / 4.2 -> 3.5 / 3.4,
    // 1024 x 8192 7.1 / 7.4 -> 7.0 / 7.0; bench/NOTES_gemm.md v26): the register-streaming kernel.
    if (M <= 16 || (M <= 32 && weightBytes < (16ll << 20) && !wgmmaAvailable())) {
        c.kernel = BlockFp8GemmKernel::kStream;
        c.tile = M <= 8 ? 1 : (M <= 16 ? 2 : 4);
        c.rowGroups = c.tile == 2 ? 2 : 1;  // M ≤ 16: two row groups share each activation fragment
        int ctas = ceilDiv(N, 16 * c.rowGroups) * ceilDiv(M, 8 * c.tile);
        // Many row tiles: fewer, longer k-streams per CTA; M = 17..32 with few row tiles (1024 x 8192): 8 warps
        // split K inside the CTA (M = 24: 8.4 vs 12.4 µs with 4 warps and split-K 2).
        c.warps = (c.tile == 4 ? 2 * ctas >= sms : N >= 8192) ? 4 : 8;
        c.depth = 2;
        // Wave quantization: a grid just over one resident wave (e.g. N = 8704: 544 CTAs for 528 slots) runs a
        // nearly empty second wave. M ≤ 8: two row groups per warp halve the grid back into one wave. M = 9..16
        // (already two row groups: 272 CTAs for 264 slots): one row group per warp, 3 warps (H200 qkv_global M = 16,
        // same-run tunes at v20: 13.4 µs; 14.3 for the shared-memory ring with two row groups, the rule at v19; 15.1
        // for 8 warps; H100 14.4 vs 15.2 for the ring).
        const int slots = streamResidentCtasPerSm(c.tile, c.rowGroups, c.depth, c.warps) * sms;
        const bool overWave = slots > 0 && ctas > slots && 4 * ctas <= 5 * slots;
        if (c.tile == 1 && overWave) {
            c.rowGroups = 2;
            c.depth = 2;
            ctas = ceilDiv(N, 32) * ceilDiv(M, 8);
        } else if (c.tile == 2 && overWave && kBlocks >= 4) {
            c.rowGroups = 1;
            c.warps = 3;
            return c;
        }
        c.splits = chooseSplits(ctas, (9 * sms) / 10, 8, kBlocks, c.warps);
        // M = 9..16 where two row groups per warp leave each warp fewer than 4 k-blocks (the drafter's short K or
        // few rows): one row group, 8 warps; three stages where each warp then still has several k-blocks (H200 M =
        // 16, same-run tune at v19: 1024 x 8192 6.3 µs), two where it has one (4096 x 1024: 3.1 vs 3.4 for 4 warps and
        // three stages, the rule before, whose 2.7 µs at v17 came from a build that scheduled that instantiation's
        // activation loads above griddepcontrol.wait, see ldgCached128).
        if (c.tile == 2 && c.rowGroups == 2 && kBlocks < 4 * c.warps * c.splits) {
            c.rowGroups = 1;
            c.warps = 8;
            c.depth = kBlocks <= 8 ? 2 : 3;
            c.splits = chooseSplits(ceilDiv(N, 16) * ceilDiv(M, 16), (9 * sms) / 10, 8, kBlocks, c.warps);
        }
        // M ≤ 8, one row group per warp: a third register stage (two k-blocks in flight per warp) wherever the grid
        // still fits one wave at that stage's occupancy (H200, M = 1, same run: qkv 9.2 vs 10.7 µs, o 5.6 vs 6.2,
        // down 16.5 vs 17.4, drafter 1024 x 8192 5.4 vs 5.6). Where it misses by less than a quarter wave
        // (qkv_global, 544 CTAs for 528 slots), on Hopper the shared-memory ring at three stages, whose 92-95
        // registers keep the grid in one wave (same-run tunes at v19, M = 1: H200 9.6 vs 10.5 µs, H100 11.8 vs 12.8;
        // M = 8, H100: 12.1 vs 12.7); else two register stages (gate_up, many waves: 31.0 vs 31.9 for three; the
        // shared-memory ring there, H100 M = 1 / 8: 40.4 / 41.5 vs 40.1 / 40.4; drafter 16384 x 1024: 7.4 vs 7.0).
        if (c.tile == 1 && c.rowGroups == 1) {
            // Fewer than two k-blocks per warp at 8 warps (the drafter's 4096 x 1024): 4 warps, four stages (M = 1,
            // same-run tunes at v19: H200 2.2 vs 2.5 µs, H100 2.3 vs 2.7).
            if (c.warps == 8 && c.splits == 1 && kBlocks < 2 * c.warps) {
                c.warps = 4;
                c.depth = 4;
                return c;
            }
            const long long grid = static_cast<long long>(ctas) * c.splits;
            const int slots3 = streamResidentCtasPerSm(1, 1, 3, c.warps) * sms;
            // Short K (at most 8 k-blocks) whose grid misses one wave at 4 warps and three stages (the drafter's
            // 16384 x 1024: 1024 CTAs): 2 warps of 4 k-blocks each, three stages, where that fits one wave (H200,
            // M = 1, same-run tunes at v20: 5.7 vs 6.3 µs for 4 warps and two stages; H100 6.3 vs 7.0).
            if (c.warps == 4 && c.splits == 1 && kBlocks <= 8 && slots3 > 0 && grid > slots3) {
                const int slots3w2 = streamResidentCtasPerSm(1, 1, 3, 2) * sms;
                if (slots3w2 > 0 && grid <= slots3w2) {
                    c.warps = 2;
                    c.depth = 3;
                    return c;
                }
            }
            if (slots3 > 0 && grid <= slots3)
                c.depth = 3;
            else if (slots3 > 0 && 4 * grid <= 5ll * slots3 && hopperRules())
                return withSmemRing(c, 3);
        }
        return c;
    }
    if (wgmmaAvailable()) return wgmmaConfig(M, N, K, sms);
    c.kernel = BlockFp8GemmKernel::kTiled;
    if (M <= 64) {
        c.tile = 5;  // 128 x 32, warps side by side along N
        const TileDims d = tileDims(c.tile);
        const int ctas = ceilDiv(N, d.bn) * ceilDiv(M, d.bm);
        c.splits = chooseSplits(ctas, (18 * sms) / 10, M <= 32 ? 8 : 4, kBlocks, 2);
    } else if (M <= 128) {
        // 128 x 128, or 64 x 64 where 128-row tiles would leave most SMs idle (small N, or small K that
        // cannot be split much).
        const bool few = ceilDiv(N, 128) * ceilDiv(M, 128) < 48 && (K < 8192 || N <= 2048);
        c.tile = few ? 2 : 1;
        const TileDims d = tileDims(c.tile);
        const int ctas = ceilDiv(N, d.bn) * ceilDiv(M, d.bm);
        // Still memory-bound: a split's FP32 partials (written, read back) must stay small next to the weights.
        const int trafficCap = few ? 8 : std::max(1, K / (8 * M));
        c.splits = chooseSplits(ctas, (18 * sms) / 10, std::min(few ? 8 : 4, trafficCap), kBlocks, 2);
    } else {
        // 128 x 256 with 8 warps; 128 x 128 with a deeper split where N is too small for that.
        const bool few = ceilDiv(N, 128) * ceilDiv(M, 256) < 24;
        c.tile = few ? 1 : 3;
        const TileDims d = tileDims(c.tile);
        const int ctas = ceilDiv(N, d.bn) * ceilDiv(M, d.bm);
        c.splits = chooseSplits(ctas, (9 * sms) / 10, few ? 8 : 4, kBlocks, 2);
    }
    return c;
}
}  // namespace

// Split-K of the wgmma token tiles sums its partials inside the GEMM, across a thread-block cluster (config.cluster):
// no FP32 round trip through the workspace and no reduce-pass launch (M = 32-256 where K is split: up to 9% faster on
// an H200, 12% on an H100; bench/NOTES_gemm.md v23). Clusters of 2-4 CTAs; of 5-8 only where the whole grid is at
// most 64 CTAs (8 clusters: with one CTA per SM a GPC holds few clusters of 8). The drafter's 1024 x 8192 split 8,
// same-run tunes (v25): M = 40-64, 64 CTAs: H200 8.5-8.6 µs clustered vs 9.0-9.1 with the reduce pass, H100 8.8-9.1
// vs 9.3-9.5; M = 96-128, 128 CTAs: H200 11.6-11.8 vs 11.1-11.2; M = 256: 24.5 vs 14.8 (v23). The streaming kernels
// (M <= 16) keep the reduce pass: their cluster form measured no faster (v20, v23).
//
// The L2 prefetch (config.prefetch) of the 16-token streaming tiles where K is split across CTAs (the drafter's
// 1024 x 8192 at M = 9..16; M = 16, same call: H200 5.86 µs against 6.20-6.23, H100 6.07-6.13 against 6.60-6.70;
// bench/NOTES_gemm.md v24). Elsewhere it measured slower, in the 12B stack too (v24; by configuration class, v25).
BlockFp8GemmConfig blockFp8WoGemmDefaultConfig(int M, int N, int K) {
    BlockFp8GemmConfig c = defaultConfigUnclustered(M, N, K);
    if (c.kernel == BlockFp8GemmKernel::kWgmma && c.tile <= 128 && c.splits >= 2 && deviceMajor() == 9) {
        const long long ctas =
            static_cast<long long>(ceilDiv(N, c.rowGroups == 2 ? 64 : 128)) * ceilDiv(M, c.tile) * c.splits;
        // 64-row tiles: clusters of 2, or of up to 8 in grids of at most 64 CTAs (the drafter's 1024 x 8192 split 4:
        // M = 64, 64 CTAs: 8.0 µs clustered, over 9 without; M = 128, 128 CTAs: 10.5 without, over 11.3 clustered).
        if (c.rowGroups == 2 ? c.splits == 2 || (c.splits <= 8 && ctas <= 64)
                             : c.splits <= 4 || (c.splits <= 8 && ctas <= 64))
            c.cluster = 1;
    }
    if (c.splits > 1 && prefetchApplies(c, N, K)) c.prefetch = 1;
    return c;
}

size_t blockFp8WoGemmWorkspaceFor(const BlockFp8GemmConfig& config, int M, int N, int /*K*/) {
    if (config.kernel == BlockFp8GemmKernel::kWgmma && config.splits == 0) return wgmmaStreamKWorkspace(config.tile);
    if (config.splits <= 1 || config.cluster != 0) return 0;
    return static_cast<size_t>(config.splits) * M * N * sizeof(float);
}

size_t blockFp8WoGemmWorkspace(int M, int N, int K) {
    return blockFp8WoGemmWorkspaceFor(blockFp8WoGemmDefaultConfig(M, N, K), M, N, K);
}

bool blockFp8WoGemmPrefersDequant(int M, int /*N*/, int /*K*/) {
    return !wgmmaAvailable() && M >= kDequantMinM;  // Hopper: the wgmma kernels beat the split dequantize
}

cudaError_t blockFp8WoGemmWithConfig(const __nv_bfloat16* X, const __nv_fp8_e4m3* Wq, const float* S,
                                     __nv_bfloat16* Y, int M, int N, int K, const BlockFp8GemmConfig& config,
                                     void* workspace, size_t workspaceBytes, cudaStream_t stream, int* semaphores) {
    if (M < 1 || N < 16 || K < 16 || N % 16 != 0 || K % 16 != 0) return cudaErrorInvalidValue;
    if (!X || !Wq || !S || !Y || !aligned16(X) || !aligned16(Wq) || !aligned16(Y)) return cudaErrorInvalidValue;
    const bool streamK = config.kernel == BlockFp8GemmKernel::kWgmma && config.splits == 0;
    if (config.prefetch != 0 && !prefetchApplies(config, N, K)) return cudaErrorInvalidValue;
    if ((config.splits < 1 && !streamK) || config.splits > 16) return cudaErrorInvalidValue;
    // Cluster split-K: 2..8 splits (the portable cluster size) of the wgmma token-tile kernel (sm_90).
    const bool cluster = config.cluster != 0;
    if (cluster) {
        const bool kernelOk = config.kernel == BlockFp8GemmKernel::kWgmma && config.tile <= 128;
        if (!kernelOk || config.splits < 2 || config.splits > 8) return cudaErrorInvalidValue;
        if (deviceMajor() < 9) return cudaErrorNotSupported;
    }
    const uint8_t* W = reinterpret_cast<const uint8_t*>(Wq);
    float* partial = nullptr;
    if ((config.splits > 1 && !cluster) || streamK) {
        if (!workspace || !aligned16(workspace) || workspaceBytes < blockFp8WoGemmWorkspaceFor(config, M, N, K))
            return cudaErrorInvalidValue;
        partial = static_cast<float*>(workspace);
    }
    cudaError_t err = cudaSuccess;
    if (config.kernel == BlockFp8GemmKernel::kStream || config.kernel == BlockFp8GemmKernel::kStreamSmem) {
        const bool smemRing = config.kernel == BlockFp8GemmKernel::kStreamSmem;
        const int nt = config.tile, rg = config.rowGroups, warps = config.warps, depth = config.depth;
        if (warps < 1 || warps > 8) return cudaErrorInvalidValue;
        const bool prefetch = config.prefetch != 0;
        const dim3 grid(ceilDiv(M, 8 * nt), ceilDiv(N, 16 * rg), config.splits);
        if (grid.x > 2147483647u || grid.y > 65535u) return cudaErrorInvalidValue;
        bool found = false;
#define TRT_GEMMA4_STREAM_CASE(SMEM_, NT_, RG_, DEPTH_)                                                         \
    if (!found && smemRing == SMEM_ && nt == NT_ && rg == RG_ && depth == DEPTH_) {                              \
        found = true;                                                                                            \
        err = launchStream<NT_, RG_, DEPTH_, SMEM_>(grid, warps, prefetch, X, W, S, Y, partial, M, N, K, stream); \
    }
        TRT_GEMMA4_STREAM_CASE(false, 1, 1, 2)
        TRT_GEMMA4_STREAM_CASE(false, 1, 1, 3)
        TRT_GEMMA4_STREAM_CASE(false, 1, 1, 4)
        TRT_GEMMA4_STREAM_CASE(false, 1, 2, 2)
        TRT_GEMMA4_STREAM_CASE(false, 1, 2, 3)
        TRT_GEMMA4_STREAM_CASE(false, 2, 1, 2)
        TRT_GEMMA4_STREAM_CASE(false, 2, 1, 3)
        TRT_GEMMA4_STREAM_CASE(false, 2, 2, 2)
        TRT_GEMMA4_STREAM_CASE(false, 4, 1, 2)
        TRT_GEMMA4_STREAM_CASE(true, 1, 1, 3)
        TRT_GEMMA4_STREAM_CASE(true, 1, 1, 4)
        TRT_GEMMA4_STREAM_CASE(true, 1, 1, 5)
        TRT_GEMMA4_STREAM_CASE(true, 1, 2, 2)
        TRT_GEMMA4_STREAM_CASE(true, 1, 2, 3)
        TRT_GEMMA4_STREAM_CASE(true, 2, 1, 3)
        TRT_GEMMA4_STREAM_CASE(true, 2, 1, 4)
        TRT_GEMMA4_STREAM_CASE(true, 2, 2, 2)
        TRT_GEMMA4_STREAM_CASE(true, 2, 2, 3)
        TRT_GEMMA4_STREAM_CASE(true, 4, 1, 2)
        TRT_GEMMA4_STREAM_CASE(true, 4, 1, 3)
#undef TRT_GEMMA4_STREAM_CASE
        if (!found) return cudaErrorInvalidValue;
    } else if (config.kernel == BlockFp8GemmKernel::kTiled) {
        if (config.tile < 0 || config.tile >= kBlockFp8TiledTiles) return cudaErrorInvalidValue;
        const TileDims d = tileDims(config.tile);
        const dim3 grid(ceilDiv(M, d.bm), ceilDiv(N, d.bn), config.splits);
        if (grid.y > 65535u) return cudaErrorInvalidValue;
        switch (config.tile) {
            case 0: err = launchTiled<Tile0>(grid, X, W, S, Y, partial, M, N, K, stream); break;
            case 1: err = launchTiled<Tile1>(grid, X, W, S, Y, partial, M, N, K, stream); break;
            case 2: err = launchTiled<Tile2>(grid, X, W, S, Y, partial, M, N, K, stream); break;
            case 3: err = launchTiled<Tile3>(grid, X, W, S, Y, partial, M, N, K, stream); break;
            case 4: err = launchTiled<Tile4>(grid, X, W, S, Y, partial, M, N, K, stream); break;
            default: err = launchTiled<Tile5>(grid, X, W, S, Y, partial, M, N, K, stream); break;
        }
    } else if (config.kernel == BlockFp8GemmKernel::kBulk) {
        if (config.tile == 1) {
            err = launchBulk<1>(config.warps, config.depth, config.splits, X, W, S, Y, partial, M, N, K, stream);
        } else if (config.tile == 2) {
            err = launchBulk<2>(config.warps, config.depth, config.splits, X, W, S, Y, partial, M, N, K, stream);
        } else {
            return cudaErrorInvalidValue;
        }
    } else if (config.kernel == BlockFp8GemmKernel::kWgmma) {
        // rowGroups 2: 64-row tiles whose two consumer warpgroups split the k-blocks (token tiles 16-128).
        const bool half = config.rowGroups == 2;
        if ((config.rowGroups != 1 && !half) || (half && (config.tile > 128 || config.splits < 1)))
            return cudaErrorInvalidValue;
        err = launchWgmmaGemm(X, W, S, Y, partial, config.splits == 0 ? semaphores : nullptr, M, N, K, config.tile,
                              config.splits, cluster, half, stream);
    } else {
        return cudaErrorInvalidValue;
    }
    // 0: stream-K, and cluster split-K: combined inside the kernel.
    if (err != cudaSuccess || config.splits <= 1 || cluster) return err;
    const size_t mn = static_cast<size_t>(M) * N;
    const int threads = 256;
    return launch(splitKReduceKernel, dim3(ceilDiv(static_cast<long long>(mn / 4), threads)), threads, 0, stream,
                  static_cast<const float*>(partial), Y, mn, config.splits);
}

cudaError_t blockFp8WoGemm(const __nv_bfloat16* X, const __nv_fp8_e4m3* W, const float* S, __nv_bfloat16* Y, int M,
                           int N, int K, void* workspace, size_t workspaceBytes, cudaStream_t stream,
                           int* semaphores) {
    return blockFp8WoGemmWithConfig(X, W, S, Y, M, N, K, blockFp8WoGemmDefaultConfig(M, N, K), workspace,
                                    workspaceBytes, stream, semaphores);
}

cudaError_t blockFp8Dequantize(const __nv_fp8_e4m3* W, const float* S, __nv_bfloat16* Wout, int N, int K,
                               cudaStream_t stream) {
    if (N < 16 || K < 16 || N % 16 != 0 || K % 16 != 0 || !W || !S || !Wout || !aligned16(W) || !aligned16(Wout))
        return cudaErrorInvalidValue;
    const size_t total = static_cast<size_t>(N) * K;
    const int threads = 256;
    dequantKernel<<<ceilDiv(static_cast<long long>(total / 16), threads), threads, 0, stream>>>(
        reinterpret_cast<const uint8_t*>(W), S, Wout, N, K);
    return cudaGetLastError();
}

}  // namespace trt_gemma4

namespace trt_gemma4 {

cudaError_t blockFp8DequantizeSplit(const __nv_fp8_e4m3* W, const float* S, __nv_bfloat16* Wout, int N, int K,
                                    cudaStream_t stream) {
    if (N < 16 || K < 16 || N % 16 != 0 || K % 16 != 0 || !W || !S || !Wout || !aligned16(W) || !aligned16(Wout))
        return cudaErrorInvalidValue;
    const size_t total = static_cast<size_t>(N) * K;
    const int threads = 256;
    dequantSplitKernel<<<ceilDiv(static_cast<long long>(total / 16), threads), threads, 0, stream>>>(
        reinterpret_cast<const uint8_t*>(W), S, Wout, N, K);
    return cudaGetLastError();
}

}  // namespace trt_gemma4
