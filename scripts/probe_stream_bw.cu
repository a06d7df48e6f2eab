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

// The streaming kernel's weight load (non-allocating in L1, 256-byte L2 fetch), into a uint4.
__device__ __forceinline__ void ldg16(uint4& r, const void* p) {
    trt_gemma4::detail::ldgStream128(reinterpret_cast<uint32_t(&)[4]>(r), p);
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
    // two; `rg2`: the classes (same mask) put on two row groups and three stages at M <= 8 (kernel kStream).
    struct Edit {
        const char* name;
        int m, mask, smem, smemRg2, rg2;
    };
    auto matClass = [](const Mat& m) {
        if (m.n == 8192) return 1;
        if (m.n == 8704) return 2;
        if (m.n == 30720) return 16;
        if (m.k == 4096) return 4;
        if (m.k == 8192) return 8;
        return 32;
    };
    for (const Edit e : {Edit{"x_k5d3_m1", 1, 63, 3, 3, 0}, Edit{"x_k5d3gu_m1", 1, 16, 3, 0, 0},
                         Edit{"x_k5d3qg_m1", 1, 2, 3, 0, 0}, Edit{"x_k5d3gu_org2_m1", 1, 16, 3, 0, 4 | 8 | 32},
                         Edit{"x_org2_m1", 1, 0, 0, 0, 4 | 8 | 32}, Edit{"x_drg2_m1", 1, 0, 0, 0, 32},
                         // deeper shared-memory rings where each warp has few k-blocks (o: 4, o_global: 8, down: 15):
                         // more of a warp's weights requested before the previous kernel ends
                         Edit{"x_k5d5o_m1", 1, 4 | 8, 5, 0, 0}, Edit{"x_k5d4o_m1", 1, 4 | 8, 4, 0, 0},
                         Edit{"x_k5d5od_m1", 1, 4 | 8 | 32, 5, 0, 0}, Edit{"x_k5d4d_m1", 1, 32, 4, 0, 0},
                         Edit{"x_k5d5q_m1", 1, 1, 5, 0, 0}, Edit{"x_k5d4q_m1", 1, 1, 4, 0, 0}}) {
        variants.push_back({e.name, [&, e](const Mat& m, cudaStream_t s) {
                                trt_gemma4::BlockFp8GemmConfig c = trt_gemma4::blockFp8WoGemmDefaultConfig(e.m, m.n, m.k);
                                if (c.kernel == trt_gemma4::BlockFp8GemmKernel::kStream) {
                                    if ((e.rg2 & matClass(m)) != 0 && c.tile == 1) {
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
    // Configuration edits for the classes in `mask` (as above; 63 = all): kernel, tile (token tiles of 8), row groups,
    // warps, depth, 0 = keep the default's; a set tile also sets split-K to 1 (a whole configuration). The K = 3840
    // classes' warp counts (w_*: 30 k-blocks over 4 warps leave two warps a k-block more; 3, 5 or 6 split them
    // evenly), one- and two-warp CTAs (w1_*, w2_*) and whole M = 16 configurations (s16_*).
    struct ConfigEdit {
        const char* name;
        int m, mask, kernel, tile, rowGroups, warps, depth;
    };
    for (const ConfigEdit e : {
         ConfigEdit{"w_q3d4_m1", 1, 1, 1, 0, 0, 3, 4},
         ConfigEdit{"w_q3d3_m1", 1, 1, 1, 0, 0, 3, 3},
         ConfigEdit{"w_q6s5_m1", 1, 1, 5, 0, 0, 6, 3},
         ConfigEdit{"w_qg3s4_m1", 1, 2, 5, 0, 0, 3, 4},
         ConfigEdit{"w_qg3s5_m1", 1, 2, 5, 0, 0, 3, 5},
         ConfigEdit{"w_gu3d3_m1", 1, 16, 1, 0, 0, 3, 3},
         ConfigEdit{"w_gu5d2_m1", 1, 16, 1, 0, 0, 5, 2},
         ConfigEdit{"w_gu6d2_m1", 1, 16, 1, 0, 0, 6, 2},
         ConfigEdit{"w_gu3d2_m1", 1, 16, 1, 0, 0, 3, 2},
         ConfigEdit{"w_q3_m16", 16, 1 | 2, 0, 0, 0, 3, 0},
         ConfigEdit{"w_q6_m16", 16, 1 | 2, 0, 0, 0, 6, 0},
         ConfigEdit{"w_q5_m16", 16, 1 | 2, 0, 0, 0, 5, 0},
         // one or two warps per CTA, each warp all of its rows' k-blocks (every class: mask 63)
         ConfigEdit{"w1_all_d3_m1", 1, 63, 1, 0, 0, 1, 3},
         ConfigEdit{"w1_all_d4_m1", 1, 63, 1, 0, 0, 1, 4},
         ConfigEdit{"w2_all_d3_m1", 1, 63, 1, 0, 0, 2, 3},
         ConfigEdit{"w1_all_r2d3_m1", 1, 63, 1, 0, 2, 1, 3},
         ConfigEdit{"w1_gu_d2_m1", 1, 16, 1, 0, 0, 1, 2},
         ConfigEdit{"w1_gu_d3_m1", 1, 16, 1, 0, 0, 1, 3},
         ConfigEdit{"w1_gu_r2d2_m1", 1, 16, 1, 0, 2, 1, 2},
         ConfigEdit{"w2_gu_d2_m1", 1, 16, 1, 0, 0, 2, 2},
         // M = 16: whole streaming configurations (the token tile too, so any default kernel is replaced)
         ConfigEdit{"s16_all_r1w2d2", 16, 63, 1, 2, 1, 2, 2},
         ConfigEdit{"s16_all_r2w2d2", 16, 63, 1, 2, 2, 2, 2},
         ConfigEdit{"s16_all_k5r2w2d3", 16, 63, 5, 2, 2, 2, 3},
         ConfigEdit{"s16_all_k5r2w3d3", 16, 63, 5, 2, 2, 3, 3},
         ConfigEdit{"s16_gu_r1w2d2", 16, 16, 1, 2, 1, 2, 2},
         ConfigEdit{"s16_gu_k5r2w3d2", 16, 16, 5, 2, 2, 3, 2},
         ConfigEdit{"s16_gu_r1w3d2", 16, 16, 1, 2, 1, 3, 2},
         ConfigEdit{"s16_qg_r1w3d2", 16, 2, 1, 2, 1, 3, 2},
         ConfigEdit{"s16_q_r1w2d2", 16, 1, 1, 2, 1, 2, 2},
         ConfigEdit{"s16_q_r2w4d2", 16, 1, 1, 2, 2, 4, 2},
         ConfigEdit{"s16_gu_r2w1d2", 16, 16, 1, 2, 2, 1, 2},
         ConfigEdit{"s16_gu_k5r2w1d3", 16, 16, 5, 2, 2, 1, 3},
         ConfigEdit{"s16_gu_r2w2d2", 16, 16, 1, 2, 2, 2, 2},
         ConfigEdit{"s16_gu_k5r2w2d2", 16, 16, 5, 2, 2, 2, 2},
         // each class back on the shared-memory ring of the v19 dispatch, one at a time
         ConfigEdit{"s16_q_k5r2w4d3", 16, 1, 5, 2, 2, 4, 3},
         ConfigEdit{"s16_qg_k5r2w4d2", 16, 2, 5, 2, 2, 4, 2},
         ConfigEdit{"s16_o_k5r2w8d3", 16, 4 | 8, 5, 2, 2, 8, 3},
         ConfigEdit{"s16_d_k5r2w8d3", 16, 32, 5, 2, 2, 8, 3},
         ConfigEdit{"s16_qg_r1w8d2", 16, 2, 1, 2, 1, 8, 2},
         ConfigEdit{"s16_qg_r2w4d2", 16, 2, 1, 2, 2, 4, 2}}) {
        variants.push_back({e.name, [&, e](const Mat& m, cudaStream_t s) {
                                trt_gemma4::BlockFp8GemmConfig c = trt_gemma4::blockFp8WoGemmDefaultConfig(e.m, m.n, m.k);
                                if ((e.mask & matClass(m)) != 0) {
                                    if (e.kernel != 0) c.kernel = static_cast<trt_gemma4::BlockFp8GemmKernel>(e.kernel);
                                    if (e.tile != 0) {
                                        c.tile = e.tile;
                                        c.splits = 1;
                                    }
                                    if (e.rowGroups != 0) c.rowGroups = e.rowGroups;
                                    if (e.warps != 0) c.warps = e.warps;
                                    if (e.depth != 0) c.depth = e.depth;
                                }
                                gemmWith(m, e.m, c, s);
                            }});
    }
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
