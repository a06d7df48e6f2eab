// Helpers shared by the block-FP8 GEMM translation units (block_fp8_gemm.cu: the portable mma.sync kernels;
// block_fp8_gemm_sm90.cu: the Hopper wgmma kernel). Internal: not part of the API in block_fp8_gemm.cuh.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <cstdlib>

namespace trt_gemma4 {
namespace detail {

// ---- FP8 (E4M3) -> BF16 conversion, 2 values per 32-bit word -------------------------------------------------
// E4M3 = s eeee mmm (bias 7); BF16 = s eeeeeeee mmmmmmm (bias 127). PRMT in its sign-replicating mode (selector
// nibble bit 3 set: the byte becomes 8 copies of the selected byte's sign bit) sign-extends two chosen FP8 bytes to
// 16-bit lanes, s ssssssss eeeemmm; shifting that left by 4 puts the 7 exponent+mantissa bits in the low 4 bits of
// the BF16 exponent and the top 3 mantissa bits, and the mask 0x87F0 keeps them and one copy of the sign (bit 15)
// and clears the rest (including the sign bits the shift carries over from the low lane into the high one). The
// result is the same number times 2^(7-127) = 2^-120, for normals and subnormals alike (BF16 has the exponent range
// to hold every E4M3 value exactly): 3 integer ops per pair (PRMT, shift, LOP3), any two bytes of two words.
// The 2^-120 is undone with one exact BF16x2 multiply by 2^120 (fma.rn.bf16x2 with a -0 addend) per pair.
// Folding 2^120 into the FP32 scale instead would push products of small weights and activations into the FP32
// subnormal range inside the tensor core; folding it into the activations (x * 2^k at their use) measured within
// noise of the multiply (bench/NOTES_gemm.md v19), so we pay the multiply.
// Against the previous form (7 integer ops per 4 values: shifts and masks of q and q << 8), same H200, same call,
// scripts/bench_gemm.py: the 12B linear stack 3014 -> 2961-2967 µs at M = 1, 3989 -> 3866-3886 at M = 16; same bits.
constexpr uint32_t kBf16x2Pow120 = 0x7B807B80u;  // BF16 2^120 = exponent 127+120 = 0xF7, in both halves
constexpr uint32_t kBf16x2NegZero = 0x80008000u;

// PRMT selector that takes byte i of {b, a} (0..7, a = bytes 0-3) into the low 16-bit lane and byte j into the high
// one, each sign-extended.
constexpr uint32_t fp8PairSel(uint32_t i, uint32_t j) { return i | (i | 8u) << 4 | j << 8 | (j | 8u) << 12; }

// FP8 bytes selected by `sel` (fp8PairSel) from {b, a} -> BF16x2 scaled by 2^-120.
__device__ __forceinline__ uint32_t fp8PairToBf16x2(uint32_t a, uint32_t b, uint32_t sel) {
    uint32_t v;
    asm("prmt.b32 %0, %1, %2, %3;" : "=r"(v) : "r"(a), "r"(b), "r"(sel));
    return (v << 4) & 0x87F087F0u;
}

__device__ __forceinline__ uint32_t bf16x2Mul(uint32_t a, uint32_t b) {
    uint32_t d;
    asm("fma.rn.bf16x2 %0, %1, %2, %3;" : "=r"(d) : "r"(a), "r"(b), "r"(kBf16x2NegZero));
    return d;
}

// Converts the 4 FP8 values of q = [b0 b1 b2 b3] to BF16x2 (b0, b2) -> even and (b1, b3) -> odd, exactly.
__device__ __forceinline__ void fp8x4ToBf16Frag(uint32_t q, uint32_t& even, uint32_t& odd) {
    even = bf16x2Mul(fp8PairToBf16x2(q, 0u, fp8PairSel(0, 2)), kBf16x2Pow120);
    odd = bf16x2Mul(fp8PairToBf16x2(q, 0u, fp8PairSel(1, 3)), kBf16x2Pow120);
}

// ---- 16-byte global loads of the streaming kernels (sm_80+ PTX) ----------------------------------------------
// 16-byte streaming load of weights: read once, so do not allocate in L1 (keeps L1 for the activations); ask L2
// to fetch the whole 256-byte segment (the neighbouring warps of the CTA read the rest of it next).
__device__ __forceinline__ void ldgStream128(uint32_t (&r)[4], const void* p) {
    asm volatile("ld.global.nc.L1::no_allocate.L2::256B.v4.u32 {%0,%1,%2,%3}, [%4];"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "l"(p));
}

// Prefetch of the 128-byte line holding p into L2 (no register, no completion to wait for).
__device__ __forceinline__ void prefetchL2(const void* p) { asm volatile("prefetch.global.L2 [%0];" ::"l"(p)); }

// 16-byte load of activations (L1-cached: re-read by every warp that works on the same k range). A plain coherent
// ld.global, NOT the read-only .nc path: the activations are written by the previous kernel, which may still be
// running when this one starts (programmatic dependent launch), and ptxas treats .nc loads as constants that it may
// schedule above griddepcontrol.wait. With ld.global.nc it did, in 9 of the 50 streaming-kernel instantiations
// (SASS: activation LDG.E.128.CONSTANT before ACQBULK), i.e. those could read activations before their producer
// finished; plain loads stay after the wait (tests/test_kernels_compile.py checks the SASS of every kernel).
__device__ __forceinline__ void ldgCached128(uint32_t (&r)[4], const void* p) {
    asm volatile("ld.global.v4.u32 {%0,%1,%2,%3}, [%4];" : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "l"(p));
}

// ---- mbarrier and bulk-copy wrappers (sm_90+ PTX; empty bodies in builds for older targets, never called there) ----
__device__ __forceinline__ uint32_t smemAddr(const void* p) { return static_cast<uint32_t>(__cvta_generic_to_shared(p)); }

__device__ __forceinline__ void mbarInit(uint32_t bar, uint32_t count) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;" ::"r"(bar), "r"(count) : "memory");
#endif
}
__device__ __forceinline__ void mbarExpectTx(uint32_t bar, uint32_t bytes) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;" ::"r"(bar), "r"(bytes) : "memory");
#endif
}
__device__ __forceinline__ void mbarArrive(uint32_t bar) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];" ::"r"(bar) : "memory");
#endif
}
__device__ __forceinline__ void mbarWait(uint32_t bar, uint32_t parity) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    uint32_t done = 0;
    do {
        asm volatile(
            "{\n.reg .pred p;\nmbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\nselp.u32 %0, 1, 0, p;\n}\n"
            : "=r"(done)
            : "r"(bar), "r"(parity)
            : "memory");
    } while (!done);
#endif
}

// ---- Thread-block clusters (sm_90+; never reached in builds for older targets, where they trap) -------------------
// Split-K inside one launch (the wgmma token-tile kernel, block_fp8_gemm_sm90.cu): the CTAs holding the k-splits of
// one output tile form a cluster, each leaves its FP32 partial tile in its own shared memory, and after clusterSync()
// every CTA sums a 1/splits share of the tile from all of them (distributed shared memory, in split order 0, 1, ...:
// the reduce pass's order, so the same bits) and stores BF16. A second clusterSync() keeps every CTA's shared memory
// alive until the others have read it (relaxed: clusterSyncRelaxed).
__device__ __forceinline__ void clusterSync() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("barrier.cluster.arrive.release;\nbarrier.cluster.wait.acquire;" ::: "memory");
#elif defined(__CUDA_ARCH__)
    __trap();
#endif
}
// The cluster barrier without release semantics, for the end of the split-K epilogue: there it only keeps this CTA's
// shared memory alive until the peers have read it, and a peer's loads of our tile have returned before it arrives
// (their values feed the sums and the stores it issues before arriving). The release form would first wait for this
// thread's global stores to be acknowledged GPU-wide (MEMBAR.ALL.GPU in SASS); nothing needs that here.
__device__ __forceinline__ void clusterSyncRelaxed() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("barrier.cluster.arrive.relaxed;\nbarrier.cluster.wait;" ::: "memory");
#elif defined(__CUDA_ARCH__)
    __trap();
#endif
}
// Address of the same shared-memory location in cluster CTA `rank`.
__device__ __forceinline__ uint32_t clusterMapShared(uint32_t addr, uint32_t rank) {
    uint32_t r = 0;
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("mapa.shared::cluster.u32 %0, %1, %2;" : "=r"(r) : "r"(addr), "r"(rank));
#endif
    return r;
}
__device__ __forceinline__ float4 ldsCluster128(uint32_t addr) {
    float4 v = make_float4(0.f, 0.f, 0.f, 0.f);
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("ld.shared::cluster.v4.f32 {%0,%1,%2,%3}, [%4];"
                 : "=f"(v.x), "=f"(v.y), "=f"(v.z), "=f"(v.w)
                 : "r"(addr)
                 : "memory");
#endif
    return v;
}
// CTAs in this CTA's cluster (1 without a cluster launch; 1 before sm_90).
__device__ __forceinline__ uint32_t clusterCtas() {
    uint32_t n = 1;
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("mov.u32 %0, %%cluster_nctarank;" : "=r"(n));
#endif
    return n;
}

// ---- Programmatic dependent launch (sm_90+) ------------------------------------------------------------------
// Our kernels are launched with programmatic stream serialization, so a GEMM may start while the previous kernel
// in the stream is still running. Weights and scales are constants and are read before waiting; activations are
// read and outputs/workspace written only after waitForPrerequisite(), which returns once the previous grid has
// completed and its memory is visible. allowDependents() lets the next kernel's CTAs start their own weight
// prefetch during our tail. Both are no-ops without the launch attribute and compile to nothing before sm_90.
__device__ __forceinline__ void waitForPrerequisite() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}
__device__ __forceinline__ void allowDependents() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}

// Compute capability major of the current device (0 if unknown).
inline int deviceMajor() {
    int dev = 0, major = 0;
    if (cudaGetDevice(&dev) != cudaSuccess) return 0;
    if (cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev) != cudaSuccess) return 0;
    return major;
}

// Multiprocessors of the current device (132, an H100/H200's count, if the query fails).
inline int smCount() {
    int dev = 0, sms = 132;
    if (cudaGetDevice(&dev) == cudaSuccess) cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev);
    return sms;
}

// Programmatic dependent launch is used on sm_90+ unless TRT_GEMMA4_NO_PDL=1 (debugging aid).
inline bool usePdl() {
    static const bool envOff = [] {
        const char* v = std::getenv("TRT_GEMMA4_NO_PDL");
        return v != nullptr && v[0] == '1';
    }();
    return !envOff && deviceMajor() >= 9;
}

// pdl = false: a plain launch, fully ordered after the previous stream operation (used where that operation is
// not a kernel, e.g. a memset the kernel depends on).
// cluster: thread-block cluster dimensions (sm_90+; {1, 1, 1} = no cluster); the grid must be a multiple of them.
template <class... KArgs, class... Args>
cudaError_t launchClusterEx(bool pdl, dim3 cluster, void (*kernel)(KArgs...), dim3 grid, int threads, int smem,
                            cudaStream_t stream, Args... args) {
    cudaLaunchConfig_t cfg = {};
    cfg.gridDim = grid;
    cfg.blockDim = dim3(threads);
    cfg.dynamicSmemBytes = static_cast<size_t>(smem);
    cfg.stream = stream;
    cudaLaunchAttribute attr[2];
    unsigned n = 0;
    if (pdl) {
        attr[n].id = cudaLaunchAttributeProgrammaticStreamSerialization;
        attr[n].val.programmaticStreamSerializationAllowed = 1;
        ++n;
    }
    if (cluster.x * cluster.y * cluster.z > 1) {
        attr[n].id = cudaLaunchAttributeClusterDimension;
        attr[n].val.clusterDim.x = cluster.x;
        attr[n].val.clusterDim.y = cluster.y;
        attr[n].val.clusterDim.z = cluster.z;
        ++n;
    }
    cfg.attrs = attr;
    cfg.numAttrs = n;
    return cudaLaunchKernelEx(&cfg, kernel, static_cast<KArgs>(args)...);
}

template <class... KArgs, class... Args>
cudaError_t launchEx(bool pdl, void (*kernel)(KArgs...), dim3 grid, int threads, int smem, cudaStream_t stream,
                     Args... args) {
    return launchClusterEx(pdl, dim3(1, 1, 1), kernel, grid, threads, smem, stream, args...);
}

template <class... KArgs, class... Args>
cudaError_t launch(void (*kernel)(KArgs...), dim3 grid, int threads, int smem, cudaStream_t stream, Args... args) {
    return launchEx(usePdl(), kernel, grid, threads, smem, stream, args...);
}

// True when the Hopper wgmma kernels (block_fp8_gemm_sm90.cu) can run on the current device: an sm_90 GPU, the
// tensor-map encoder, and kernel code built for sm_90a (checked once per device; host queries only).
bool wgmmaAvailable();

// Runs the Hopper wgmma kernels with token tile `tokTile` (16, 32, 64, 128; 256 = the persistent kernel,
// splits = 1) and `splits` k-splits: partial != nullptr when splits > 1 (FP32 partials [splits][M][N], summed by
// the caller's reduce pass), except with `cluster` (token tiles 16-128, splits 2..8: the splits of a tile are one
// thread-block cluster that sums them in the kernel; partial == nullptr). splits = 0: the stream-K kernel (tokTile
// 128 or 256), `partial` = its workspace of wgmmaStreamKWorkspace(tokTile) bytes, its flags in `sem` when given
// (else zeroed in the workspace by a memset), no reduce pass. `half` (token tiles 16-128): 64-row CTA tiles whose two
// consumer warpgroups split the k-blocks (config.rowGroups = 2). cudaErrorNotSupported where wgmmaAvailable() is
// false.
size_t wgmmaStreamKWorkspace(int tokTile);  // bytes for the current device's SM count
cudaError_t launchWgmmaGemm(const void* X, const uint8_t* W, const float* S, void* Y, float* partial, int* sem, int M,
                            int N, int K, int tokTile, int splits, bool cluster, bool half, cudaStream_t stream);

}  // namespace detail
}  // namespace trt_gemma4
