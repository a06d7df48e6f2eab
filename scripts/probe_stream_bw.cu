// Read-bandwidth probe for the M = 1 path (see scripts/probe_stream_bw.sh): how fast can ANY kernel read the 12B
// weights, one launch per matrix, back to back in a CUDA graph with programmatic dependent launch? Times, in one
// process on one card: the device copy bandwidth, the streaming GEMM at M = 1 (the library's default
// configuration), and pure read kernels that only XOR the bytes they load:
//   * ldg U:   every thread keeps U 16-byte non-allocating loads in flight (grid-stride, 8 x 256 threads per SM);
//   * bulk S B C: C CTAs per SM, one thread feeding S shared-memory stages of B bytes with cp.async.bulk, four
//              warps reading them back (each CTA streams one contiguous range);
// each per matrix (o 3840x4096, qkv 8192x3840, gate_up 30720x3840) and over the whole 48-layer linear stack (one
// launch per matrix, 192 per token). "early": the kernel lets its dependents launch at its start instead of at its
// end. gemm_m1 is the library's default dispatch at M = 1; gemm_bulk_* the bulk-copy GEMM (kBulk) by hand-set
// configuration; with -DTRT_GEMMA4_PROBE_SWITCHES (PROBE_FLAGS), stream_m{1,16}_{full,checked} the streaming kernel's
// whole-block and bounds-checked forms at M = 1 and 16. Prints one JSON object per line.
#include "../plugins/kernels/block_fp8_gemm.cuh"
#include "../plugins/kernels/block_fp8_gemm_detail.cuh"  // mbarrier, PDL and launch wrappers
#include "cuda_check.h"

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <string>
#include <utility>
#include <vector>

#ifdef TRT_GEMMA4_PROBE_SWITCHES
namespace trt_gemma4 {
extern int gProbeStreamFull;  // block_fp8_gemm.cu: 0 = the streaming kernel's general (bounds-checked) form
}
#endif

namespace {

using trt_gemma4::detail::allowDependents;
using trt_gemma4::detail::mbarArrive;
using trt_gemma4::detail::mbarExpectTx;
using trt_gemma4::detail::mbarInit;
using trt_gemma4::detail::mbarWait;
using trt_gemma4::detail::smemAddr;
using trt_gemma4::detail::waitForPrerequisite;

__device__ __forceinline__ void ldg16(uint4& r, const void* p) {
    asm volatile("ld.global.nc.L1::no_allocate.L2::256B.v4.u32 {%0,%1,%2,%3}, [%4];"
                 : "=r"(r.x), "=r"(r.y), "=r"(r.z), "=r"(r.w)
                 : "l"(p));
}

template <int U>
__global__ void __launch_bounds__(256) readLdg(const uint4* __restrict__ p, size_t n16, unsigned* out, int early) {
    if (early) allowDependents();
    unsigned acc = 0;
    const size_t stride = size_t(gridDim.x) * blockDim.x;
    size_t i = size_t(blockIdx.x) * blockDim.x + threadIdx.x;
    for (; i + (U - 1) * stride < n16; i += U * stride) {
        uint4 r[U];
#pragma unroll
        for (int u = 0; u < U; ++u) ldg16(r[u], p + i + u * stride);
#pragma unroll
        for (int u = 0; u < U; ++u) acc ^= r[u].x ^ r[u].y ^ r[u].z ^ r[u].w;
    }
    for (; i < n16; i += stride) {
        uint4 r;
        ldg16(r, p + i);
        acc ^= r.x ^ r.y ^ r.z ^ r.w;
    }
    if (!early) allowDependents();
    waitForPrerequisite();
    if (acc == 0x9e3779b9u) out[0] = acc;  // keeps the loads; practically never taken
}

__device__ __forceinline__ void bulkLoad(uint32_t dst, const void* src, uint32_t bytes, uint32_t bar) {
    asm volatile("cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];" ::"r"(dst),
                 "l"(src), "r"(bytes), "r"(bar)
                 : "memory");
}

constexpr int kMaxStages = 16;

// Warp 0 lane 0 produces, warps 1..4 consume. The CTA streams chunks [c0, c1) of stageBytes each.
__global__ void __launch_bounds__(160) readBulk(const uint8_t* __restrict__ p, size_t bytes, int stageBytes,
                                                int stages, unsigned* out, int early) {
    extern __shared__ __align__(128) uint8_t smem[];
    __shared__ __align__(8) uint64_t bars[2 * kMaxStages];
    if (early) allowDependents();
    const size_t chunks = (bytes + stageBytes - 1) / stageBytes;
    const size_t c0 = chunks * blockIdx.x / gridDim.x, c1 = chunks * (blockIdx.x + 1) / gridDim.x;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const uint32_t full = smemAddr(bars), empty = full + 8 * kMaxStages;
    if (threadIdx.x == 0) {
        for (int s = 0; s < stages; ++s) {
            mbarInit(full + 8 * s, 1);
            mbarInit(empty + 8 * s, 4);
        }
        asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
    }
    __syncthreads();
    unsigned acc = 0;
    if (warp == 0) {
        if (lane == 0) {
            for (size_t c = c0; c < c1; ++c) {
                const int i = int(c - c0), s = i % stages;
                if (i >= stages) mbarWait(empty + 8 * s, ((i / stages) - 1) & 1);
                const uint32_t n = uint32_t(std::min<size_t>(stageBytes, bytes - c * stageBytes));
                mbarExpectTx(full + 8 * s, n);
                bulkLoad(smemAddr(smem + size_t(s) * stageBytes), p + c * stageBytes, n, full + 8 * s);
            }
        }
    } else {
        const int ct = threadIdx.x - 32;
        for (size_t c = c0; c < c1; ++c) {
            const int i = int(c - c0), s = i % stages;
            mbarWait(full + 8 * s, (i / stages) & 1);
            const int n = int(std::min<size_t>(stageBytes, bytes - c * stageBytes));
            const uint4* q = reinterpret_cast<const uint4*>(smem + size_t(s) * stageBytes);
            for (int j = ct; j < n / 16; j += 128) {
                const uint4 r = q[j];
                acc ^= r.x ^ r.y ^ r.z ^ r.w;
            }
            __syncwarp();
            if (lane == 0) mbarArrive(empty + 8 * s);
        }
    }
    if (!early) allowDependents();
    waitForPrerequisite();
    if (acc == 0x9e3779b9u) out[0] = acc;
}

// Every probe kernel is launched with programmatic stream serialization (block_fp8_gemm_detail.cuh).
template <class... KArgs, class... Args>
void launchPdl(void (*k)(KArgs...), dim3 grid, int threads, int smem, cudaStream_t st, Args... args) {
    CHECK(trt_gemma4::detail::launchEx(true, k, grid, threads, smem, st, args...));
}

// Median µs per call of a graph running calls[i % n] for `reps` calls (at least every call once).
float graphUs(const std::vector<std::function<void(cudaStream_t)>>& calls, int reps, cudaStream_t st) {
    reps = std::max<int>(reps, int(calls.size()));
    cudaGraph_t g;
    cudaGraphExec_t ge;
    CHECK(cudaStreamBeginCapture(st, cudaStreamCaptureModeThreadLocal));
    for (int i = 0; i < reps; ++i) calls[i % calls.size()](st);
    CHECK(cudaStreamEndCapture(st, &g));
    CHECK(cudaGraphInstantiate(&ge, g, 0));
    cudaEvent_t a, b;
    CHECK(cudaEventCreate(&a));
    CHECK(cudaEventCreate(&b));
    std::vector<float> t;
    for (int r = 0; r < 6; ++r) {
        CHECK(cudaEventRecord(a, st));
        CHECK(cudaGraphLaunch(ge, st));
        CHECK(cudaEventRecord(b, st));
        CHECK(cudaEventSynchronize(b));
        float ms = 0.f;
        CHECK(cudaEventElapsedTime(&ms, a, b));
        if (r > 0) t.push_back(ms);
    }
    std::sort(t.begin(), t.end());
    CHECK(cudaGraphExecDestroy(ge));
    CHECK(cudaGraphDestroy(g));
    CHECK(cudaEventDestroy(a));
    CHECK(cudaEventDestroy(b));
    return 1000.f * t[t.size() / 2] / reps;
}

// ---- Experiment kernels (TRT_GEMMA4_STREAM_EXP): the streaming kernel's M <= 8 whole-block form (NT = 1),
// copied here with compile-time edits, timed against the library's kernel in one process. EXP bits:
//   1 weights read from a tiled layout (one contiguous 2 KB tile per (row group, k-block) in lane order: each warp
//     load instruction covers 512 contiguous bytes); the bytes read are not the library's layout, timing only
//   2 no BF16x2 multiply by 2^120 per weight pair (2^120 folded elsewhere); the activation fragments take one
//     instead, at their use
//   8 loads through loop-carried pointers bumped per k-block (no address recomputation in the main loop)
// 128 loads at the kernel's base pointers plus 32-bit offsets computed once (row * K + 16 t, ...)
//   4 FP8 -> BF16 as ((__byte_perm(q, 0, sel) << 4) & 0x87F087F0), 3 ops per pair; __byte_perm drops the
//     selector's sign-replication bit, so the signs are wrong (timing only)
// 512 the same through the library's fp8PairToBf16x2 (prmt.b32 with sign replication: exact)
//  16 no conversion at all (the FP8 words fed to the mma as they are; timing only)
//  32 cvt.rn.f16x2.e4m3x2 per weight pair and an F16 mma (activations taken as F16 bits; timing only)
//  64 no activation loads in the main loop (fragments from the first k-block reused; timing only)
#ifdef TRT_GEMMA4_STREAM_EXP
namespace xp {
__device__ __forceinline__ void ldgS(uint32_t (&r)[4], const void* p) {
    asm volatile("ld.global.nc.L1::no_allocate.L2::256B.v4.u32 {%0,%1,%2,%3}, [%4];"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "l"(p));
}
// Activations: a coherent load, as the library's ldgCached128 (with ld.global.nc ptxas moved some of these above
// griddepcontrol.wait; the runs before this change, probe runs 33-36 of bench/NOTES_gemm.md v19, had that in some
// variants, so their e* times are comparable with each other only where both did).
__device__ __forceinline__ void ldgC(uint32_t (&r)[4], const void* p) {
    asm volatile("ld.global.v4.u32 {%0,%1,%2,%3}, [%4];" : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "l"(p));
}
template <bool F16>
__device__ __forceinline__ void mma(float (&c)[4], uint32_t a0, uint32_t a1, uint32_t a2, uint32_t a3, uint32_t b0,
                                    uint32_t b1) {
    if constexpr (F16)
        asm volatile(
            "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};"
            : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
            : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
    else
        asm volatile(
            "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};"
            : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
            : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}
__device__ __forceinline__ uint32_t bmul(uint32_t a, uint32_t b) {
    uint32_t d;
    asm("fma.rn.bf16x2 %0, %1, %2, %3;" : "=r"(d) : "r"(a), "r"(b), "r"(0x80008000u));
    return d;
}
__device__ __forceinline__ uint32_t cvtF16x2(uint16_t v) {
    uint32_t d;
    asm("cvt.rn.f16x2.e4m3x2 %0, %1;" : "=r"(d) : "h"(v));
    return d;
}
template <int EXP>
__device__ __forceinline__ void conv(uint32_t q, uint32_t& even, uint32_t& odd) {
    if constexpr ((EXP & 16) != 0) {
        even = q;
        odd = q;
        return;
    } else if constexpr ((EXP & 32) != 0) {
        even = cvtF16x2(static_cast<uint16_t>(q));
        odd = cvtF16x2(static_cast<uint16_t>(q >> 16));
        return;
    } else {
        if constexpr ((EXP & 512) != 0) {  // the library's form (prmt.b32 in its sign-replicating mode)
            even = trt_gemma4::detail::fp8PairToBf16x2(q, 0u, trt_gemma4::detail::fp8PairSel(0, 2));
            odd = trt_gemma4::detail::fp8PairToBf16x2(q, 0u, trt_gemma4::detail::fp8PairSel(1, 3));
        } else if constexpr ((EXP & 4) != 0) {
            // __byte_perm keeps only the low 3 bits of each selector nibble: no sign replication, so the sign is
            // wrong; same instructions as the exact form (timing only)
            even = (__byte_perm(q, 0u, 0xA280) << 4) & 0x87F087F0u;
            odd = (__byte_perm(q, 0u, 0xB391) << 4) & 0x87F087F0u;
        } else {
            const uint32_t e = q << 8;
            even = (e & 0x80008000u) | ((e & 0x7F007F00u) >> 4);
            odd = (q & 0x80008000u) | ((q & 0x7F007F00u) >> 4);
        }
        if constexpr ((EXP & 2) == 0) {
            even = bmul(even, 0x7B807B80u);
            odd = bmul(odd, 0x7B807B80u);
        }
    }
}
}  // namespace xp

template <int RG, int DEPTH, int EXP>
__global__ void __launch_bounds__(256, (EXP & 136) != 0 && RG == 1 ? 2 : 1) expStream(const __nv_bfloat16* __restrict__ X, const uint8_t* __restrict__ W,
                                                 const float* __restrict__ S, __nv_bfloat16* __restrict__ Y, int M,
                                                 int N, int K) {
    extern __shared__ __align__(16) float red[];
    constexpr bool kF16 = (EXP & 32) != 0;
    const int kBlocks = K / 128;
    const int warps = blockDim.x >> 5, warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    const int n0 = blockIdx.y * (16 * RG);
    const int stride = warps;
    const uint8_t* wRow[RG];
    const uint8_t* wRow8[RG];
    const uint8_t* wTile[RG];
    const float* sRow[RG];
#pragma unroll
    for (int r = 0; r < RG; ++r) {
        const int row = n0 + 16 * r + g;
        wRow[r] = W + static_cast<size_t>(row) * K + 16 * t;
        wRow8[r] = wRow[r] + static_cast<size_t>(8) * K;
        wTile[r] = W + static_cast<size_t>((n0 / 16 + r) * kBlocks) * 2048 + 16 * lane;
        sRow[r] = S + static_cast<size_t>((n0 + 16 * r) / 128) * kBlocks;
    }
    const __nv_bfloat16* xRow = X + static_cast<size_t>(min(g, M - 1)) * K + 16 * t;
    struct Frag {
        uint32_t w[RG][2][2][4];
        uint32_t x[2][2][4];
        float s[RG];
    };
    // EXP & 8: cursors (loop-carried pointers, opaque to the compiler) at the next k-block to load.
    const uint8_t* cw[RG];
    const uint8_t* cw8[RG];
    const float* cs[RG];
#pragma unroll
    for (int r = 0; r < RG; ++r) {
        cw[r] = wRow[r] + warp * 128;
        cw8[r] = wRow8[r] + warp * 128;
        cs[r] = sRow[r] + warp;
    }
    const __nv_bfloat16* cx = xRow + warp * 128;
    // EXP & 128: 32-bit element offsets from the kernel's base pointers, computed once (row * K + 16 t etc.).
    uint32_t oW[RG], oW8[RG], oS[RG];
#pragma unroll
    for (int r = 0; r < RG; ++r) {
        oW[r] = static_cast<uint32_t>(n0 + 16 * r + g) * static_cast<uint32_t>(K) + 16u * t;
        oW8[r] = oW[r] + 8u * static_cast<uint32_t>(K);
        oS[r] = static_cast<uint32_t>((n0 + 16 * r) / 128) * static_cast<uint32_t>(kBlocks);
    }
    const uint32_t oX = static_cast<uint32_t>(min(g, M - 1)) * static_cast<uint32_t>(K) + 16u * t;
    auto loadW = [&](Frag& f, int kb) {
        const uint32_t k = static_cast<uint32_t>(kb) * 128;
        if constexpr ((EXP & 128) != 0) {
#pragma unroll
            for (int r = 0; r < RG; ++r) {
                const uint8_t* p = W + (oW[r] + k);
                const uint8_t* p8 = W + (oW8[r] + k);
#pragma unroll
                for (int c = 0; c < 2; ++c) {
                    xp::ldgS(f.w[r][0][c], p + 64 * c);
                    xp::ldgS(f.w[r][1][c], p8 + 64 * c);
                }
                f.s[r] = __ldg(S + (oS[r] + static_cast<uint32_t>(kb)));
            }
            return;
        }
        if constexpr ((EXP & 8) != 0) {
#pragma unroll
            for (int r = 0; r < RG; ++r) {
#pragma unroll
                for (int c = 0; c < 2; ++c) {
                    xp::ldgS(f.w[r][0][c], cw[r] + 64 * c);
                    xp::ldgS(f.w[r][1][c], cw8[r] + 64 * c);
                }
                f.s[r] = __ldg(cs[r]);
                cw[r] += stride * 128;
                cw8[r] += stride * 128;
                cs[r] += stride;
                asm volatile("" : "+l"(cw[r]), "+l"(cw8[r]), "+l"(cs[r]));
            }
            return;
        }
#pragma unroll
        for (int r = 0; r < RG; ++r) {
#pragma unroll
            for (int c = 0; c < 2; ++c) {
                if constexpr ((EXP & 1) != 0) {
                    xp::ldgS(f.w[r][0][c], wTile[r] + kb * 2048 + c * 512);
                    xp::ldgS(f.w[r][1][c], wTile[r] + kb * 2048 + 1024 + c * 512);
                } else {
                    xp::ldgS(f.w[r][0][c], wRow[r] + k + 64 * c);
                    xp::ldgS(f.w[r][1][c], wRow8[r] + k + 64 * c);
                }
            }
            f.s[r] = __ldg(sRow[r] + kb);
        }
    };
    auto loadX = [&](Frag& f, int kb) {
        const uint32_t k = static_cast<uint32_t>(kb) * 128;
        if constexpr ((EXP & 128) != 0) {
            const __nv_bfloat16* p = X + (oX + k);
#pragma unroll
            for (int c = 0; c < 2; ++c) {
                xp::ldgC(f.x[c][0], p + 64 * c);
                xp::ldgC(f.x[c][1], p + 64 * c + 8);
            }
        } else if constexpr ((EXP & 8) != 0) {
#pragma unroll
            for (int c = 0; c < 2; ++c) {
                xp::ldgC(f.x[c][0], cx + 64 * c);
                xp::ldgC(f.x[c][1], cx + 64 * c + 8);
            }
            cx += stride * 128;
            asm volatile("" : "+l"(cx));
        } else {
#pragma unroll
            for (int c = 0; c < 2; ++c) {
                xp::ldgC(f.x[c][0], xRow + k + 64 * c);
                xp::ldgC(f.x[c][1], xRow + k + 64 * c + 8);
            }
        }
    };
    float acc[RG][4] = {};
    auto compute = [&](const Frag& f) {
        float part[RG][4] = {};
#pragma unroll
        for (int c = 0; c < 2; ++c) {
#pragma unroll
            for (int j = 0; j < 4; ++j) {
                const uint32_t x01 = f.x[c][j >> 1][(j & 1) * 2], x23 = f.x[c][j >> 1][(j & 1) * 2 + 1];
                uint32_t b0 = __byte_perm(x01, x23, 0x5410), b1 = __byte_perm(x01, x23, 0x7632);
                if constexpr ((EXP & 2) != 0) {  // the activations take the 2^120 (at their use)
                    b0 = xp::bmul(b0, 0x3F803F80u);
                    b1 = xp::bmul(b1, 0x3F803F80u);
                }
#pragma unroll
                for (int r = 0; r < RG; ++r) {
                    uint32_t a0, a1, a2, a3;
                    xp::conv<EXP>(f.w[r][0][c][j], a0, a2);
                    xp::conv<EXP>(f.w[r][1][c][j], a1, a3);
                    xp::mma<kF16>(part[r], a0, a1, a2, a3, b0, b1);
                }
            }
        }
#pragma unroll
        for (int r = 0; r < RG; ++r)
#pragma unroll
            for (int i = 0; i < 4; ++i) acc[r][i] = fmaf(f.s[r], part[r][i], acc[r][i]);
    };
    allowDependents();
    int kb = warp;
    Frag buf[DEPTH];
#pragma unroll
    for (int d = 0; d < DEPTH - 1; ++d)
        if (kb + d * stride < kBlocks) loadW(buf[d], kb + d * stride);
    waitForPrerequisite();
#pragma unroll
    for (int d = 0; d < DEPTH - 1; ++d)
        if (kb + d * stride < kBlocks) loadX(buf[d], kb + d * stride);
    if constexpr ((EXP & 64) != 0) {
#pragma unroll
        for (int d = 1; d < DEPTH; ++d)
#pragma unroll
            for (int c = 0; c < 2; ++c)
#pragma unroll
                for (int h = 0; h < 2; ++h)
#pragma unroll
                    for (int i = 0; i < 4; ++i) buf[d].x[c][h][i] = buf[0].x[c][h][i];
    }
    bool done = kb >= kBlocks;
    while (!done) {
#pragma unroll
        for (int d = 0; d < DEPTH; ++d) {
            if (kb >= kBlocks) {
                done = true;
                break;
            }
            const int kf = kb + (DEPTH - 1) * stride;
            Frag& refill = buf[(d + DEPTH - 1) % DEPTH];
            if (kf < kBlocks) {
                loadW(refill, kf);
                if constexpr ((EXP & 64) == 0) loadX(refill, kf);
            }
            compute(buf[d]);
            kb += stride;
        }
    }
    constexpr int kElems = RG * 4;
    auto store = [&](int e, int ln, float v) {
        const int r = e / 4, i = e % 4;
        const int row = n0 + 16 * r + (ln >> 2) + ((i & 2) ? 8 : 0);
        const int tok = 2 * (ln & 3) + (i & 1);
        if (tok < M) Y[static_cast<size_t>(tok) * N + row] = __float2bfloat16_rn(v);
    };
    if (warps == 1) {
#pragma unroll
        for (int e = 0; e < kElems; ++e) store(e, lane, (&acc[0][0])[e]);
        return;
    }
#pragma unroll
    for (int e = 0; e < kElems; ++e) red[(warp * kElems + e) * 32 + lane] = (&acc[0][0])[e];
    __syncthreads();
    for (int idx = threadIdx.x; idx < kElems * 32; idx += blockDim.x) {
        float v = 0.f;
        for (int w = 0; w < warps; ++w) v += red[w * kElems * 32 + idx];
        store(idx >> 5, idx & 31, v);
    }
}

template <int EXP>
bool launchExp(const trt_gemma4::BlockFp8GemmConfig& c, const __nv_bfloat16* x, const uint8_t* w, const float* s,
               __nv_bfloat16* y, int n, int k, cudaStream_t st) {
    if (c.kernel != trt_gemma4::BlockFp8GemmKernel::kStream || c.tile != 1 || c.splits != 1 || k % 128 != 0 ||
        n % (16 * c.rowGroups) != 0 || c.depth < 2 || c.depth > 3)
        return false;
    const dim3 grid(1, n / (16 * c.rowGroups), 1);
    const int smem = c.warps > 1 ? c.warps * c.rowGroups * 4 * 32 * 4 : 0;
    if (c.rowGroups == 1 && c.depth == 2) launchPdl(expStream<1, 2, EXP>, grid, c.warps * 32, smem, st, x, w, s, y, 1, n, k);
    if (c.rowGroups == 1 && c.depth == 3) launchPdl(expStream<1, 3, EXP>, grid, c.warps * 32, smem, st, x, w, s, y, 1, n, k);
    if (c.rowGroups == 2 && c.depth == 2) launchPdl(expStream<2, 2, EXP>, grid, c.warps * 32, smem, st, x, w, s, y, 1, n, k);
    if (c.rowGroups == 2 && c.depth == 3) launchPdl(expStream<2, 3, EXP>, grid, c.warps * 32, smem, st, x, w, s, y, 1, n, k);
    return true;
}
#endif

struct Mat {
    int n, k;
    uint8_t* w;
    float* s;
};

}  // namespace

int main() {
    int dev = 0, sms = 0, l2 = 0;
    CHECK(cudaGetDevice(&dev));
    CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev));
    CHECK(cudaDeviceGetAttribute(&l2, cudaDevAttrL2CacheSize, dev));
    cudaDeviceProp prop;
    CHECK(cudaGetDeviceProperties(&prop, dev));
    cudaStream_t st;
    CHECK(cudaStreamCreateWithFlags(&st, cudaStreamNonBlocking));
    CHECK(cudaFuncSetAttribute(readBulk, cudaFuncAttributeMaxDynamicSharedMemorySize, 200 * 1024));
    unsigned* out;
    CHECK(cudaMalloc(&out, 64));
    {  // copy bandwidth, read + written bytes, as scripts/bench_gemm.py counts it
        const size_t n = size_t(1) << 31;
        uint8_t *a, *b;
        CHECK(cudaMalloc(&a, n));
        CHECK(cudaMalloc(&b, n));
        CHECK(cudaMemset(a, 1, n));
        const float us = graphUs({[&](cudaStream_t s) { CHECK(cudaMemcpyAsync(b, a, n, cudaMemcpyDeviceToDevice, s)); }}, 10, st);
        cudaEvent_t e0, e1;
        CHECK(cudaEventCreate(&e0));
        CHECK(cudaEventCreate(&e1));
        CHECK(cudaEventRecord(e0, st));
        for (int i = 0; i < 10; ++i) CHECK(cudaMemcpyAsync(b, a, n, cudaMemcpyDeviceToDevice, st));
        CHECK(cudaEventRecord(e1, st));
        CHECK(cudaEventSynchronize(e1));
        float ms = 0.f;
        CHECK(cudaEventElapsedTime(&ms, e0, e1));
        std::printf("{\"card\": \"%s\", \"sms\": %d, \"l2\": %d, \"copy_gbps_graph\": %.0f, "
                    "\"copy_gbps_eager\": %.0f}\n",
                    prop.name, sms, l2, 2.0 * n / (us * 1e-6) / 1e9,
                    2.0 * n * 10 / (ms * 1e-3) / 1e9);
        CHECK(cudaFree(a));
        CHECK(cudaFree(b));
    }
    // The 48-layer stack: 40 sliding + 8 global layers, (qkv, o, gate_up, down) each.
    std::vector<Mat> stack;
    for (int l = 0; l < 48; ++l) {
        const bool global = l % 6 == 5;
        const int dims[4][2] = {{global ? 8704 : 8192, 3840}, {3840, global ? 8192 : 4096}, {30720, 3840}, {3840, 15360}};
        for (auto& d : dims) {
            Mat m{d[0], d[1], nullptr, nullptr};
            CHECK(cudaMalloc(&m.w, size_t(m.n) * m.k));
            CHECK(cudaMemset(m.w, 0x31, size_t(m.n) * m.k));
            const size_t ns = size_t((m.n + 127) / 128) * ((m.k + 127) / 128);
            CHECK(cudaMalloc(&m.s, ns * 4));
            CHECK(cudaMemset(m.s, 0, ns * 4));
            stack.push_back(m);
        }
    }
    __nv_bfloat16 *x, *y;
    CHECK(cudaMalloc(&x, 16 * 15360 * 2));
    CHECK(cudaMemset(x, 0, 16 * 15360 * 2));
    CHECK(cudaMalloc(&y, 16 * 30720 * 2));
    size_t wsBytes = size_t(8) * 16 * 30720 * 4;  // split-K partials of any default configuration up to M = 16
    void* ws = nullptr;
    CHECK(cudaMalloc(&ws, wsBytes));
    size_t stackBytes = 0;
    for (auto& m : stack) stackBytes += size_t(m.n) * m.k;

    struct Variant {
        std::string name;
        std::function<void(const Mat&, cudaStream_t)> run;
    };
    std::vector<Variant> variants;
    variants.push_back({"gemm_m1", [&](const Mat& m, cudaStream_t s) {
                            CHECK(trt_gemma4::blockFp8WoGemm(x, reinterpret_cast<const __nv_fp8_e4m3*>(m.w), m.s, y, 1,
                                                             m.n, m.k, nullptr, 0, s));
                        }});
    // One GEMM on matrix m with a hand-set configuration (the split-K workspace covers every default up to M = 16).
    auto gemmWith = [&](const Mat& m, int mm, const trt_gemma4::BlockFp8GemmConfig& c, cudaStream_t s) {
        CHECK(trt_gemma4::blockFp8WoGemmWithConfig(x, reinterpret_cast<const __nv_fp8_e4m3*>(m.w), m.s, y, mm, m.n,
                                                   m.k, c, ws, wsBytes, s));
    };
#ifdef TRT_GEMMA4_PROBE_SWITCHES
    // The streaming kernel's general form (bounds checks) against its whole-block form, same process; M = 1 and 16.
    for (int mm : {1, 16}) {
        for (int full = 0; full < 2; ++full) {
            variants.push_back({"stream_m" + std::to_string(mm) + (full ? "_full" : "_checked"),
                                [&, mm, full](const Mat& m, cudaStream_t s) {
                                    trt_gemma4::gProbeStreamFull = full;
                                    gemmWith(m, mm, trt_gemma4::blockFp8WoGemmDefaultConfig(mm, m.n, m.k), s);
                                    trt_gemma4::gProbeStreamFull = 1;
                                }});
        }
    }
#endif
    // Dispatch candidates for the stack (the per-matrix tune cannot see how consecutive kernels overlap): the default
    // configuration with the streaming kernel's choices edited for some matrices (mask: 1 qkv, 2 qkv_global, 4 o,
    // 8 o_global, 16 gate_up, 32 down): `smem` = kStreamSmem at this depth for one row group (0 = keep), `smemRg2` for
    // two; `oRg2`: o and down at M <= 8 on two row groups and three stages (kernel kStream).
    struct Edit {
        const char* name;
        int m, mask, smem, smemRg2;
        bool oRg2;
    };
    auto matClass = [](const Mat& m) {
        if (m.n == 8192) return 1;
        if (m.n == 8704) return 2;
        if (m.n == 30720) return 16;
        if (m.k == 4096) return 4;
        if (m.k == 8192) return 8;
        return 32;
    };
    for (const Edit e : {Edit{"x_k5d3_m1", 1, 63, 3, 3, false}, Edit{"x_k5d3gu_m1", 1, 16, 3, 0, false},
                         Edit{"x_k5d3qg_m1", 1, 2, 3, 0, false}, Edit{"x_k5d3gu_org2_m1", 1, 16, 3, 0, true},
                         Edit{"x_org2_m1", 1, 0, 0, 0, true}}) {
        variants.push_back({e.name, [&, e](const Mat& m, cudaStream_t s) {
                                trt_gemma4::BlockFp8GemmConfig c = trt_gemma4::blockFp8WoGemmDefaultConfig(e.m, m.n, m.k);
                                if (c.kernel == trt_gemma4::BlockFp8GemmKernel::kStream) {
                                    if (e.oRg2 && m.n == 3840 && c.tile == 1) {
                                        c.rowGroups = 2;
                                        c.depth = 3;
                                    }
                                    const int d = c.rowGroups == 1 ? e.smem : e.smemRg2;
                                    if (d > 0 && (e.mask & matClass(m)) != 0) {
                                        c.kernel = trt_gemma4::BlockFp8GemmKernel::kStreamSmem;
                                        c.depth = d;
                                    }
                                }
                                gemmWith(m, e.m, c, s);
                            }});
    }
#ifdef TRT_GEMMA4_STREAM_EXP
    auto addExp = [&](const char* name, auto launcher) {
        variants.push_back({name, [&, launcher](const Mat& m, cudaStream_t s) {
                                const trt_gemma4::BlockFp8GemmConfig c = trt_gemma4::blockFp8WoGemmDefaultConfig(1, m.n, m.k);
                                if (!launcher(c, m, s)) gemmWith(m, 1, c, s);
                            }});
    };
#define TRT_GEMMA4_EXP(E)                                                                                           \
    addExp("e" #E, [&](const trt_gemma4::BlockFp8GemmConfig& c, const Mat& m, cudaStream_t s) {                     \
        return launchExp<E>(c, x, m.w, m.s, y, m.n, m.k, s);                                                        \
    })
    TRT_GEMMA4_EXP(0);
    TRT_GEMMA4_EXP(1);
    TRT_GEMMA4_EXP(2);
    TRT_GEMMA4_EXP(4);
    TRT_GEMMA4_EXP(6);
    TRT_GEMMA4_EXP(8);
    TRT_GEMMA4_EXP(12);
    TRT_GEMMA4_EXP(14);
    TRT_GEMMA4_EXP(24);
    TRT_GEMMA4_EXP(132);
    TRT_GEMMA4_EXP(134);
    TRT_GEMMA4_EXP(512);
#undef TRT_GEMMA4_EXP
#endif
    // M = 1 with down (K = 15360) alone on two row groups and three stages.
    variants.push_back({"x_drg2_m1", [&](const Mat& m, cudaStream_t s) {
                            trt_gemma4::BlockFp8GemmConfig c = trt_gemma4::blockFp8WoGemmDefaultConfig(1, m.n, m.k);
                            if (c.kernel == trt_gemma4::BlockFp8GemmKernel::kStream && m.k == 15360) {
                                c.rowGroups = 2;
                                c.depth = 3;
                            }
                            gemmWith(m, 1, c, s);
                        }});
    // M = 16 as dispatched before kStreamSmem (the register ring, two stages).
    variants.push_back({"x_k1_m16", [&](const Mat& m, cudaStream_t s) {
                            trt_gemma4::BlockFp8GemmConfig c = trt_gemma4::blockFp8WoGemmDefaultConfig(16, m.n, m.k);
                            if (c.kernel == trt_gemma4::BlockFp8GemmKernel::kStreamSmem) {
                                c.kernel = trt_gemma4::BlockFp8GemmKernel::kStream;
                                c.depth = 2;
                            }
                            gemmWith(m, 16, c, s);
                        }});
    // The bulk-copy GEMM (kBulk, M = 1) with other consumer-warp and stage counts: (warps, stages).
    for (auto wst : {std::pair<int, int>{4, 3}, {8, 3}, {8, 2}, {2, 4}, {4, 4}, {6, 3}}) {
        variants.push_back({"gemm_bulk_w" + std::to_string(wst.first) + "_s" + std::to_string(wst.second),
                            [&, wst](const Mat& m, cudaStream_t s) {
                                trt_gemma4::BlockFp8GemmConfig c;
                                c.kernel = trt_gemma4::BlockFp8GemmKernel::kBulk;
                                c.tile = 1;
                                c.warps = wst.first;
                                c.depth = wst.second;
                                c.splits = 1;
                                gemmWith(m, 1, c, s);
                            }});
    }
    for (int early = 0; early < 2; ++early) {
        for (int u : {2, 4, 8}) {
            variants.push_back({"ldg" + std::to_string(u) + (early ? "_early" : ""), [&, u, early](const Mat& m, cudaStream_t s) {
                                    const size_t n16 = size_t(m.n) * m.k / 16;
                                    const dim3 grid(sms * 8);
                                    auto p = reinterpret_cast<const uint4*>(m.w);
                                    if (u == 2) launchPdl(readLdg<2>, grid, 256, 0, s, p, n16, out, early);
                                    if (u == 4) launchPdl(readLdg<4>, grid, 256, 0, s, p, n16, out, early);
                                    if (u == 8) launchPdl(readLdg<8>, grid, 256, 0, s, p, n16, out, early);
                                }});
        }
        // (stages, stage bytes, CTAs per SM)
        const int cfgs[][3] = {{6, 16384, 1}, {12, 16384, 1}, {6, 32768, 1}, {4, 16384, 2}, {6, 16384, 2}, {3, 32768, 2}};
        for (auto& c : cfgs) {
            const int stages = c[0], sb = c[1], cps = c[2];
            variants.push_back({"bulk_" + std::to_string(stages) + "x" + std::to_string(sb / 1024) + "k_" +
                                    std::to_string(cps) + (early ? "_early" : ""),
                                [&, stages, sb, cps, early](const Mat& m, cudaStream_t s) {
                                    launchPdl(readBulk, dim3(sms * cps), 160, stages * sb, s,
                                              static_cast<const uint8_t*>(m.w), size_t(m.n) * m.k, sb, stages, out,
                                              early);
                                }});
        }
    }
    if (const char* only = std::getenv("PROBE_VARIANTS")) {  // comma-separated name prefixes
        std::vector<Variant> kept;
        for (auto& v : variants) {
            std::string list = std::string(",") + only + ",";
            for (size_t a = 1, b; (b = list.find(',', a)) != std::string::npos; a = b + 1)
                if (b > a && v.name.rfind(list.substr(a, b - a), 0) == 0) {
                    kept.push_back(v);
                    break;
                }
        }
        variants = kept;
    }
    // Per matrix: rotate over the stack's copies of that matrix (48 distinct weights; none stays in L2).
    const char* names[3] = {"o_sliding", "qkv_sliding", "gate_up"};
    const int which[3] = {1, 0, 2};
    for (int r = 0; r < 2; ++r) {  // two rounds: the spread between them is the noise
        for (auto& v : variants) {
            for (int wi = 0; wi < 3; ++wi) {
                std::vector<std::function<void(cudaStream_t)>> calls;
                size_t bytes = 0;
                for (int l = 0; l < 48; ++l) {
                    if (l % 6 == 5) continue;
                    const Mat& m = stack[4 * l + which[wi]];
                    bytes = size_t(m.n) * m.k;
                    calls.push_back([&, m](cudaStream_t s) { v.run(m, s); });
                }
                const float us = graphUs(calls, 120, st);
                std::printf("{\"round\": %d, \"variant\": \"%s\", \"matrix\": \"%s\", \"us\": %.2f, \"gbps\": %.0f}\n", r,
                            v.name.c_str(), names[wi], us, bytes / (us * 1e-6) / 1e9);
            }
            std::vector<std::function<void(cudaStream_t)>> calls;
            for (const Mat& m : stack) calls.push_back([&, m](cudaStream_t s) { v.run(m, s); });
            const float us = graphUs(calls, int(calls.size()), st) * float(calls.size());
            std::printf("{\"round\": %d, \"variant\": \"%s\", \"matrix\": \"stack\", \"us\": %.1f, \"gbps\": %.0f}\n", r,
                        v.name.c_str(), us, stackBytes / (us * 1e-6) / 1e9);
            std::fflush(stdout);
        }
    }
    CHECK(cudaDeviceSynchronize());
    return 0;
}
