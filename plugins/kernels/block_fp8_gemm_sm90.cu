// Hopper (sm_90a) block-FP8 weight-only GEMM: TMA + warp-specialized wgmma. Interface and numerics:
// block_fp8_gemm.cuh (BlockFp8GemmKernel::kWgmma); launched through blockFp8WoGemmWithConfig.
//
// Y = X · dequant(W, S)ᵀ is computed as Yᵀ = W · Xᵀ ("swap AB"): the WEIGHT tile is the wgmma's A operand (the
// 64-row M side, one warpgroup = 64 weight rows) and comes from REGISTERS, the TOKEN tile is the B operand (the
// N side, T = 16..128 tokens) and comes from shared memory. Only an A operand may live in registers, and only in
// registers can the FP8 bytes be widened to BF16 on their way to the tensor cores, once per CTA tile.
//
// CTA = 3 warpgroups, one CTA per SM:
//   warpgroup 0   producer: one thread issues the bulk tensor copies (TMA) of each k-block's tiles into a ring of
//                 STAGES shared-memory stages; the other 127 threads only give their registers away (setmaxnreg).
//   warpgroups 1,2 consumers: 64 weight rows each (128 per CTA, inside one 128-row scale block), all T tokens;
//                 or (the token-tile kernel's HALF form, config.rowGroups 2) the same 64 rows, taking alternate
//                 k-blocks, their two sums added in shared memory at the end.
// A stage holds one 128-wide k-block = one scale per consumer: the weight tile [128 (64) rows][128 B] FP8 and the
// token tile as two [T rows][64 bf16] halves, all three with the 128-byte swizzle (16-byte chunk c of 128-byte row r
// stored at chunk c ^ (r & 7)), which the wgmma descriptor understands for B and which makes the weight reads
// below conflict-free. Barriers: full[s] (TMA transaction bytes), empty[s] (the 8 (HALF: 4) consumer warps of the
// stage release it).
//
// ---- Weight fragments: shared memory -> registers, FP8 -> BF16 ------------------------------------------------
// The register A fragment of wgmma m64nNk16 is mma.sync's m16n8k16 A fragment per warp (rows 16w..16w+15 of the
// warpgroup): thread (g = lane/4, t = lane%4) holds rows g and g+8 at k {2t, 2t+1} and {2t+8, 2t+9}. B is read
// by the tensor core in its natural k order, so no k permutation is possible here (unlike the mma.sync kernels):
// the thread loads the 32-bit words holding bytes 2t..2t+1 and 2t+8..2t+9 of the 16-byte chunk (words t/2 and
// 2+t/2; lanes t and t^1 read the same two words), one PRMT gathers its four bytes as [k0 k8 k1 k9] and the bit
// conversion of block_fp8_gemm_detail.cuh turns that word into exactly the two BF16x2 registers (k0, k1) and
// (k8, k9). Per 16-wide k step: 4 LDS.32 + 2 PRMT + 2 conversions (~9 ops each) per thread.
//
// ---- Scales: FP32 promotion per k-block (never folded into BF16 weights) -----------------------------------
// Each k-block's 8 wgmmas accumulate into fresh FP32 registers (the first with scale-d = 0), then
// acc += s[kb] · partial in FP32 (DeepGEMM's promotion). So the result is the exact-FP8 × BF16 product with FP32
// accumulation, the block scale applied to FP32 partial sums: the same numerics as the mma.sync kernels.
// Software pipeline per consumer: issue k-block i's wgmmas, then (while they run) wait for stage i+1 and convert
// its weight fragments into the second register set, then wait for the wgmmas, release stage i, promote.
//
// ---- Edges -----------------------------------------------------------------------------------------------------
// TMA zero-fills rows >= N and k >= K, so partial 128-blocks need no code. Tokens >= M are not loaded at all: the last
// token tile comes through a tensor map whose box holds only the tokens that exist (the TMA's zero fill costs in
// proportion to the rows it fills), so its rows past M hold stale shared memory, which only their own (never stored)
// output columns read. The epilogue skips tokens >= M and rows >= N (N % 16 == 0: an 8-row store is all in or all out).
// Split-K: CTA z takes a contiguous range of k-blocks and writes FP32 partials that the reduce pass of
// block_fp8_gemm.cu sums, or (config.cluster, the Hopper default for 2-4 splits) the splits of a tile run as one
// thread-block cluster and sum their partials through distributed shared memory in the same order, so the same bits,
// with no workspace and no second launch.
//
// The kernel body exists only in the sm_90a compilation (__CUDA_ARCH_FEAT_SM90_ALL); any other device compile
// traps. The host side (wgmmaAvailable) launches only on an sm_90 device whose loaded image was compiled from
// PTX 9.0 or later; a plain sm_90 (non-"a") build passes that check and traps loudly (our build paths always
// use sm_90a).
#include "block_fp8_gemm.cuh"
#include "block_fp8_gemm_detail.cuh"

#include <cuda.h>
#include <cudaTypedefs.h>

#include <algorithm>
#include <atomic>
#include <cstdint>

namespace trt_gemma4 {
namespace detail {
namespace {

#if defined(__CUDA_ARCH__) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define TRT_GEMMA4_SM90A_DEVICE 1
#endif

// Speed-of-light probes for the benchmark notes (scripts/sol_gemm_sm90.sh builds them; never set in a real build):
// bit 1 skips the FP8 -> BF16 conversion, bit 2 also the weight loads from shared memory, bit 4 the accumulator
// rescale, bit 8 both stream-K kernels' fix-up of cut tiles (partials, flags, waits), bit 16 replaces the conversion
// by the hardware one (cvt.rn.f16x2.e4m3x2 from 16-bit loads; bench/NOTES_gemm.md v21: why that is not a kernel);
// token-tile kernel only: bit 32 skips the activation (token tile) loads, bit 64 the cluster split-K epilogue's sums
// and stores (bench/NOTES_gemm.md v24), bit 128 loads half of each activation k-block (v26); both stream-K kernels
// (v28): bit 256 skips the owners' waits and partial reads, bit 512 only their reads, bit 1024 the partials' stores.
#ifndef TRT_GEMMA4_SOL
#define TRT_GEMMA4_SOL 0
#endif

constexpr int kRows = 128;     // weight rows per CTA (2 consumer warpgroups x 64)
constexpr int kKBlock = 128;   // k per stage = one scale block

// The token-tile kernel's shape. HALF (config.rowGroups = 2): a CTA covers 64 weight rows instead of 128 and its two
// consumer warpgroups take alternate k-blocks of those rows (an intra-CTA split-K, summed in shared memory at the
// end), so each warpgroup widens half the weight tiles of a 128-row CTA: twice the CTAs for the same grid of
// weights, each with half the conversion and half the wgmma work per k-block range.
template <int T, bool HALF = false>
struct WgShape {
    static constexpr int ROWS = HALF ? 64 : kRows;     // weight rows per CTA
    static constexpr int W_BYTES = ROWS * kKBlock;     // 16 KB (8 KB) FP8
    static constexpr int X_HALF = T * 128;             // [T][64] bf16
    static constexpr int STAGE = W_BYTES + 2 * X_HALF; // a multiple of 1024: every tile stays 1024-aligned
    static constexpr int STAGES = HALF ? (T <= 16 ? 16 : (T <= 32 ? 12 : (T <= 64 ? 8 : 5)))
                                       : (T <= 16 ? 10 : (T <= 32 ? 8 : (T <= 64 ? 6 : 4)));
    static constexpr int X_BARS = HALF ? 2 : 1;        // first-round stages whose activations have their own barrier
    static constexpr int BARS = STAGES * STAGE;        // barrier area offset
    static constexpr int SMEM = BARS + 2 * STAGES * 8 + 8 * X_BARS + 1024;  // full, empty, first X; + align slack
    static constexpr int EPI_ROW = 64 * 2 + 16;        // epilogue staging row: 64 bf16 + 16 B pad (banks)
    static_assert(STAGE % 1024 == 0, "stage tiles must stay 1024-byte aligned for the 128-byte swizzle");
    static_assert(2 * T * EPI_ROW <= STAGES * STAGE, "epilogue staging must fit in the stage ring");
    static constexpr int CLU_PITCH = ROWS + 4;         // cluster split-K: floats per token row (+4: banks)
    static_assert(T * CLU_PITCH * 4 <= STAGES * STAGE, "the cluster partial tile must fit in the stage ring");
    // HALF: the second warpgroup's FP32 accumulators for the first to add, [T/2][128 threads], behind the epilogue's
    // staging area (the first warpgroup writes that while it may still read these); the 64-token tiles' split epilogue
    // (SPLIT in the kernel): each warpgroup's half for the other, [2][T/4][128], behind both warpgroups' staging.
    static constexpr int COMB = 40 * 1024;
    static_assert(!HALF || (T * EPI_ROW <= COMB && T * CLU_PITCH * 4 <= COMB &&
                            COMB + T * 256 <= STAGES * STAGE), "the warpgroups' sum area must fit in the ring");
    static_assert(SMEM <= 227 * 1024, "shared memory over the sm_90 limit");
    static_assert(!HALF || T != 64 || 2 * T * EPI_ROW <= COMB, "both warpgroups' staging must end before the sums");
};

#ifdef TRT_GEMMA4_SM90A_DEVICE
// ---- PTX wrappers (sm_90a) -----------------------------------------------------------------------------------
// 2-D bulk tensor copy global -> shared, completing `bar`'s transaction bytes. c0 = innermost (k) coordinate.
__device__ __forceinline__ void tmaLoad2d(uint32_t dst, const CUtensorMap* map, int c0, int c1, uint32_t bar) {
    asm volatile(
        "cp.async.bulk.tensor.2d.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1, {%2, %3}], [%4];"
        ::"r"(dst), "l"(reinterpret_cast<uint64_t>(map)), "r"(c0), "r"(c1), "r"(bar)
        : "memory");
}

__device__ __forceinline__ void wgmmaFence() { asm volatile("wgmma.fence.sync.aligned;" ::: "memory"); }
__device__ __forceinline__ void wgmmaCommit() { asm volatile("wgmma.commit_group.sync.aligned;" ::: "memory"); }
__device__ __forceinline__ void wgmmaWaitAll() { asm volatile("wgmma.wait_group.sync.aligned 0;" ::: "memory"); }

// Keeps the compiler from moving register reads/writes across the asynchronous wgmma (CUTLASS's
// warpgroup_fence_operand): the registers are "redefined" here, so every use stays on its side of the fence.
template <int N>
__device__ __forceinline__ void fenceRegs(float (&r)[N]) {
#pragma unroll
    for (int i = 0; i < N; ++i) asm volatile("" : "+f"(r[i])::"memory");
}

__device__ __forceinline__ void namedBarrier(int id, int threads) {
    asm volatile("bar.sync %0, %1;" ::"r"(id), "r"(threads) : "memory");
}
__device__ __forceinline__ void namedBarrierArrive(int id, int threads) {
    asm volatile("bar.arrive %0, %1;" ::"r"(id), "r"(threads) : "memory");
}

// Ping-pong between the two consumer warpgroups: they take turns ISSUING their k-block's wgmmas (warpgroup 0 on
// barrier kTurn0, warpgroup 1 on kTurn1), so the tensor pipe runs one warpgroup's whole batch, then the other's,
// and each rescales/promotes/converts while the other's batch runs. Left free-running, the two fall into step,
// finish their batches together and leave the tensor pipe idle while both do their FP32 work.
constexpr int kTurn0 = 4, kTurn1 = 5;
constexpr int kProducerPark = 6;  // cluster split-K: the producer warpgroup waits here for the epilogue
__device__ __forceinline__ void waitTurn(int cw) { namedBarrier(cw == 0 ? kTurn0 : kTurn1, 256); }
__device__ __forceinline__ void passTurn(int cw) { namedBarrierArrive(cw == 0 ? kTurn1 : kTurn0, 256); }

// Shared-memory matrix descriptor, K-major operand with the 128-byte swizzle: start address >> 4 (bits 0-13),
// stride between 8-row core-matrix groups 1024 B (bits 32-45), layout type 1 = SWIZZLE_128B (bits 62-63); the
// leading offset is unused for swizzled K-major layouts. Advancing 16 k (32 B) inside the 128-byte row adds 2 to
// the address field, as CUTLASS/DeepGEMM do for K-major SW128 tiles.
__device__ __forceinline__ uint64_t descSw128(uint32_t addr) {
    return static_cast<uint64_t>((addr & 0x3FFFFu) >> 4) | (static_cast<uint64_t>(1024 >> 4) << 32) |
           (static_cast<uint64_t>(1) << 62);
}

// wgmma m64nNk16, A (weights, BF16) from registers, B (tokens, BF16, K-major) from shared memory, FP32 accumulate;
// accumulate = 0 overwrites d.
__device__ __forceinline__ void wgmmaRs(float (&d)[8], const uint32_t (&a)[4], uint64_t descB, int accumulate) {
    asm volatile(
        "{\n.reg .pred p;\n"
        "setp.ne.b32 p, %13, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n16k16.f32.bf16.bf16 "
        "{"
        "%0, %1, %2, %3, %4, %5, %6, %7"
        "}, {%8, %9, %10, %11}, %12, p, 1, 1, 0;\n}\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(descB), "r"(accumulate));
}

__device__ __forceinline__ void wgmmaRs(float (&d)[16], const uint32_t (&a)[4], uint64_t descB, int accumulate) {
    asm volatile(
        "{\n.reg .pred p;\n"
        "setp.ne.b32 p, %21, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n32k16.f32.bf16.bf16 "
        "{"
        "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15"
        "}, {%16, %17, %18, %19}, %20, p, 1, 1, 0;\n}\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(descB), "r"(accumulate));
}

__device__ __forceinline__ void wgmmaRs(float (&d)[32], const uint32_t (&a)[4], uint64_t descB, int accumulate) {
    asm volatile(
        "{\n.reg .pred p;\n"
        "setp.ne.b32 p, %37, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 "
        "{"
        "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, "
        "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31"
        "}, {%32, %33, %34, %35}, %36, p, 1, 1, 0;\n}\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(descB), "r"(accumulate));
}

__device__ __forceinline__ void wgmmaRs(float (&d)[64], const uint32_t (&a)[4], uint64_t descB, int accumulate) {
    asm volatile(
        "{\n.reg .pred p;\n"
        "setp.ne.b32 p, %69, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 "
        "{"
        "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, "
        "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, "
        "%32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, "
        "%48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63"
        "}, {%64, %65, %66, %67}, %68, p, 1, 1, 0;\n}\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]), "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]), "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]), "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(descB), "r"(accumulate));
}

__device__ __forceinline__ void wgmmaRs(float (&d)[128], const uint32_t (&a)[4], uint64_t descB, int accumulate) {
    asm volatile(
        "{\n.reg .pred p;\n"
        "setp.ne.b32 p, %133, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n256k16.f32.bf16.bf16 "
        "{"
        "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, "
        "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, "
        "%32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, "
        "%48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63, "
        "%64, %65, %66, %67, %68, %69, %70, %71, %72, %73, %74, %75, %76, %77, %78, %79, "
        "%80, %81, %82, %83, %84, %85, %86, %87, %88, %89, %90, %91, %92, %93, %94, %95, "
        "%96, %97, %98, %99, %100, %101, %102, %103, %104, %105, %106, %107, %108, %109, %110, %111, "
        "%112, %113, %114, %115, %116, %117, %118, %119, %120, %121, %122, %123, %124, %125, %126, %127"
        "}, {%128, %129, %130, %131}, %132, p, 1, 1, 0;\n}\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]),
          "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]),
          "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]),
          "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]),
          "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]),
          "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]),
          "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]),
          "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63]),
          "+f"(d[64]), "+f"(d[65]), "+f"(d[66]), "+f"(d[67]), "+f"(d[68]), "+f"(d[69]), "+f"(d[70]), "+f"(d[71]),
          "+f"(d[72]), "+f"(d[73]), "+f"(d[74]), "+f"(d[75]), "+f"(d[76]), "+f"(d[77]), "+f"(d[78]), "+f"(d[79]),
          "+f"(d[80]), "+f"(d[81]), "+f"(d[82]), "+f"(d[83]), "+f"(d[84]), "+f"(d[85]), "+f"(d[86]), "+f"(d[87]),
          "+f"(d[88]), "+f"(d[89]), "+f"(d[90]), "+f"(d[91]), "+f"(d[92]), "+f"(d[93]), "+f"(d[94]), "+f"(d[95]),
          "+f"(d[96]), "+f"(d[97]), "+f"(d[98]), "+f"(d[99]), "+f"(d[100]), "+f"(d[101]), "+f"(d[102]), "+f"(d[103]),
          "+f"(d[104]), "+f"(d[105]), "+f"(d[106]), "+f"(d[107]), "+f"(d[108]), "+f"(d[109]), "+f"(d[110]), "+f"(d[111]),
          "+f"(d[112]), "+f"(d[113]), "+f"(d[114]), "+f"(d[115]), "+f"(d[116]), "+f"(d[117]), "+f"(d[118]), "+f"(d[119]),
          "+f"(d[120]), "+f"(d[121]), "+f"(d[122]), "+f"(d[123]), "+f"(d[124]), "+f"(d[125]), "+f"(d[126]), "+f"(d[127])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(descB), "r"(accumulate));
}

// Weight fragments of STEPS k steps of 16 for this thread, from a swizzled FP8 tile with ROW_BYTES-byte rows
// (128: one k-block, 128-byte swizzle; 64: half a k-block, 64-byte swizzle). rowAddr: shared-memory address of
// the thread's row g of the tile; offs[j] = ((j << 4) ^ swizzle XOR of rows g and g+8) + 4 * (t / 2), computed once.
// The loads are explicit ld.shared (a generic pointer here compiles to 64-bit generic loads).
__device__ __forceinline__ uint32_t lds32(uint32_t addr) {
    uint32_t v;
    asm volatile("ld.shared.u32 %0, [%1];" : "=r"(v) : "r"(addr));
    return v;
}

#if TRT_GEMMA4_SOL & 16
__device__ __forceinline__ uint16_t solLds16(uint32_t addr) {
    uint16_t v;
    asm volatile("ld.shared.u16 %0, [%1];" : "=h"(v) : "r"(addr));
    return v;
}
__device__ __forceinline__ uint32_t solCvtE4m3x2(uint16_t v) {
    uint32_t d;
    asm("cvt.rn.f16x2.e4m3x2 %0, %1;" : "=r"(d) : "h"(v));
    return d;
}
#endif

// sel: fragSel(t), the two PRMT selectors that take the thread's pairs (k 2t, 2t+1) and (k 2t+8, 2t+9) straight
// from the two loaded words. mult: BF16x2 2^120 (exact conversion, block_fp8_gemm_detail.cuh) or 0 (an all-zero
// block: zero fragments).
template <int STEPS, int ROW_BYTES>
__device__ __forceinline__ void loadWeightFrags(uint32_t (&a)[STEPS][4], uint32_t rowAddr, const uint32_t (&offs)[STEPS],
                                                uint32_t sel, uint32_t mult = kBf16x2Pow120) {
#pragma unroll
    for (int j = 0; j < STEPS; ++j) {
        const uint32_t p0 = rowAddr + offs[j];   // row g, chunk j
        const uint32_t p1 = p0 + 8 * ROW_BYTES;  // row g + 8, same chunk
#if TRT_GEMMA4_SOL & 2  // speed-of-light probe: no shared-memory loads, no conversion (wrong results)
        a[j][0] = a[j][1] = a[j][2] = a[j][3] = mult ^ p0;
        continue;
#elif TRT_GEMMA4_SOL & 1  // probe: the loads, no conversion (wrong results)
        a[j][0] = lds32(p0);
        a[j][2] = lds32(p0 + 8);
        a[j][1] = lds32(p1);
        a[j][3] = lds32(p1 + 8);
        continue;
#elif TRT_GEMMA4_SOL & 16  // probe: the hardware conversion (FP16 bits into the BF16 wgmma: wrong results)
        {
            const uint32_t h = 2u * (threadIdx.x & 1u);  // the thread's pair inside the word
            a[j][0] = solCvtE4m3x2(solLds16(p0 + h));
            a[j][2] = solCvtE4m3x2(solLds16(p0 + 8 + h));
            a[j][1] = solCvtE4m3x2(solLds16(p1 + h));
            a[j][3] = solCvtE4m3x2(solLds16(p1 + 8 + h));
        }
        continue;
#endif
        const uint32_t r0 = lds32(p0), r0b = lds32(p0 + 8), r1 = lds32(p1), r1b = lds32(p1 + 8);
        // row g: (k 2t, 2t+1), (k 2t+8, 2t+9); row g+8 likewise
        a[j][0] = bf16x2Mul(fp8PairToBf16x2(r0, r0b, sel & 0xFFFFu), mult);
        a[j][2] = bf16x2Mul(fp8PairToBf16x2(r0, r0b, sel >> 16), mult);
        a[j][1] = bf16x2Mul(fp8PairToBf16x2(r1, r1b, sel & 0xFFFFu), mult);
        a[j][3] = bf16x2Mul(fp8PairToBf16x2(r1, r1b, sel >> 16), mult);
    }
}

// The words loaded for thread t hold k 4(t/2) .. 4(t/2)+3 (first word) and the same + 8 (second word); the thread's
// pairs are bytes (0, 1) and (4, 5) for even t, (2, 3) and (6, 7) for odd t: PRMT selectors, low half for the
// first pair, high half for the second.
__device__ __forceinline__ uint32_t fragSel(int t) {
    return (t & 1) ? (fp8PairSel(2, 3) | fp8PairSel(6, 7) << 16) : (fp8PairSel(0, 1) | fp8PairSel(4, 5) << 16);
}

template <int STEPS>
__device__ __forceinline__ void fenceFrags(uint32_t (&r)[STEPS][4]) {
#pragma unroll
    for (int j = 0; j < STEPS; ++j)
#pragma unroll
        for (int i = 0; i < 4; ++i) asm volatile("" : "+r"(r[j][i])::"memory");
}

// ---- Kernel scaffolding shared by both kernels ------------------------------------------------------------------
// The dynamic shared memory, aligned to 1024 bytes (the 128-byte swizzle repeats every 8 rows of 128 bytes).
__device__ __forceinline__ uint8_t* alignedSmem(uint8_t* raw) {
    return reinterpret_cast<uint8_t*>((reinterpret_cast<uintptr_t>(raw) + 1023) & ~uintptr_t(1023));
}

// Grouped rasterization: consecutive tile indices take kGroupN weight-row tiles x all token tiles, so a wave (or
// a round of persistent CTAs) shares a few weight tiles and a few token tiles through L2 instead of streaming one of
// them whole. Returns the tile's first weight row and first token.
__device__ __forceinline__ void groupedTileOrigin(int tile, int tilesN, int tilesT, int tokensPerTile, int& n0,
                                                  int& m0, int rowsPerTile = kRows) {
    constexpr int kGroupN = 8;
    const int perGroup = kGroupN * tilesT;
    const int group = tile / perGroup;
    const int firstN = group * kGroupN;
    const int groupSize = min(tilesN - firstN, kGroupN);
    const int local = tile - group * perGroup;
    n0 = (firstN + local % groupSize) * rowsPerTile;
    m0 = (local / groupSize) * tokensPerTile;
}

// Thread 0 initialises the stage ring's barriers (full: the producer's arrival + TMA bytes; empty: one arrival per
// consumer warp of the stage, `releasers`), then the whole CTA synchronises.
// xBar (0: none): xBars more barriers, count 1 each (the token-tile kernel's first activations).
__device__ __forceinline__ void initStageBarriers(uint32_t fullBar, uint32_t emptyBar, int stages, uint32_t xBar = 0,
                                                  int xBars = 1, int releasers = 8) {
    if (threadIdx.x == 0) {
#pragma unroll 1
        for (int s = 0; s < stages; ++s) {
            mbarInit(fullBar + 8 * s, 1);
            mbarInit(emptyBar + 8 * s, releasers);
        }
        if (xBar != 0)
            for (int b = 0; b < xBars; ++b) mbarInit(xBar + 8 * b, 1);
        asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
    }
    __syncthreads();
}

__device__ __forceinline__ void prefetchTensorMaps(const CUtensorMap* a, const CUtensorMap* b,
                                                   const CUtensorMap* c = nullptr) {
    asm volatile("prefetch.tensormap [%0];" ::"l"(reinterpret_cast<uint64_t>(a)) : "memory");
    asm volatile("prefetch.tensormap [%0];" ::"l"(reinterpret_cast<uint64_t>(b)) : "memory");
    if (c != nullptr) asm volatile("prefetch.tensormap [%0];" ::"l"(reinterpret_cast<uint64_t>(c)) : "memory");
}
#endif  // TRT_GEMMA4_SM90A_DEVICE

// The 64-row 64-token tiles (the drafter's short K at M = 33-128, its 1024 x 8192 at M = 65-128 with the reduce pass,
// qkv at M = 33-64) finish their epilogue in both warpgroups (SPLIT below). Their cluster split-K form is a separate
// instantiation (CLU) that compiles the code every other token tile does: sharing one kernel with the split epilogue
// measured 1% slower on it (bench/NOTES_gemm.md v27).
template <int T, bool HALF, bool CLU = false>
__global__ void __launch_bounds__(384, 1)
    wgmmaGemmKernel(const __grid_constant__ CUtensorMap tmW, const __grid_constant__ CUtensorMap tmX,
                    const __grid_constant__ CUtensorMap tmXTail, const float* __restrict__ S,
                    __nv_bfloat16* __restrict__ Y, float* __restrict__ partial, int M, int N, int K, int tilesN,
                    int tilesT, int kbPerSplit, int tailRows) {
#ifdef TRT_GEMMA4_SM90A_DEVICE
    using Sh = WgShape<T, HALF>;
    constexpr int STAGES = Sh::STAGES;
    constexpr int ROWS = Sh::ROWS;
    // k-blocks between one warpgroup's consecutive steps: HALF, warpgroup cw takes k-blocks cw, cw + 2, ...
    constexpr int KSTEP = HALF ? 2 : 1;
    extern __shared__ uint8_t smemRaw[];
    uint8_t* smem = alignedSmem(smemRaw);
    const uint32_t sbase = smemAddr(smem);
    const uint32_t fullBar = sbase + Sh::BARS;  // full[s] at fullBar + 8 s, empty[s] at emptyBar + 8 s
    const uint32_t emptyBar = fullBar + 8 * STAGES;
    // The first stage completes its weights (requested before the previous kernel ended) on full[0] and its
    // activations on xBar, so that the consumers widen the first weight tile while the activations are on their way:
    // that widening leaves the critical path after the dependency wait (H200, same call: M = 128 0.4-3% faster on the
    // 12B shapes, 7% on the drafter's 4096 x 1024; down at M = 32 2-5% slower; all first-round stages split this way
    // measured slower; bench/NOTES_gemm.md v25). HALF: the first stage of each warpgroup (stages 0 and 1), at xBar
    // + 8 i.
    const uint32_t xBar = emptyBar + 8 * STAGES;
    auto ownX = [](int i) { return HALF ? i < Sh::X_BARS : i == 0; };  // stage i's activations on xBar + 8 i

    int n0, m0;
    groupedTileOrigin(static_cast<int>(blockIdx.x), tilesN, tilesT, T, n0, m0, ROWS);
    const int kBlocks = (K + kKBlock - 1) / kKBlock;
    const int kb0 = static_cast<int>(blockIdx.y) * kbPerSplit;
    const int nkb = max(0, min(kBlocks, kb0 + kbPerSplit) - kb0);

    initStageBarriers(fullBar, emptyBar, STAGES, xBar, Sh::X_BARS, HALF ? 4 : 8);
    // Split-K summed in the kernel: the gridDim.y splits of this tile are one thread-block cluster (launchTokTile).
    // SPLIT (the 64-row 64-token tiles without the cluster split-K): the epilogue below in both warpgroups; their
    // cluster form (CLU) compiles the same code as every other token tile.
    constexpr bool SPLIT = HALF && T == 64 && !CLU;
    static_assert(!CLU || (HALF && T == 64), "CLU: the 64-row 64-token tiles only");
    const bool clustered = SPLIT ? false : partial == nullptr && gridDim.y > 1;
    if (SPLIT && partial == nullptr && gridDim.y > 1) __trap();  // a cluster launch takes the CLU instantiation
    if (clustered && clusterCtas() != gridDim.y) __trap();  // launched without its cluster: never sum half a tile

    const int wg = threadIdx.x >> 7;
    if (wg == 0) {
        // ---- producer ----
        asm volatile("setmaxnreg.dec.sync.aligned.u32 40;");
        if (threadIdx.x == 0) {
            // The last token tile when M % T != 0 (tailRows = M % T): its activations through tmXTail, whose box
            // has only the tokens that exist. Rows past M are then left as they were in shared memory instead of
            // zero-filled by the TMA, which costs in proportion to the rows it fills (H200, qkv 8192 x 3840, 64-row
            // tiles: M = 96 22.4 µs, M = 128 18.0; bench/NOTES_gemm.md v26). Harmless: token j of Yᵀ = W·Xᵀ is column
            // j, which reads only row j of the token tile, and the columns past M are never stored. The k edge
            // (K % 128) keeps its zero fill: a weight zero times a stale Inf would be NaN.
            const bool tail = tailRows > 0 && m0 + T > M;
            const CUtensorMap* xMap = tail ? &tmXTail : &tmX;
            prefetchTensorMaps(&tmW, xMap);
            // (probe 128: only the first 64 k of each token k-block, half the activation reads, wrong results)
            const uint32_t xBytes =
                (tail ? 256u * static_cast<uint32_t>(tailRows) : 2u * Sh::X_HALF) >> ((TRT_GEMMA4_SOL & 128) ? 1 : 0);
            const int pre = min(STAGES, nkb);
            // Weights are constants: the first stages' weight tiles are requested before the previous kernel has
            // finished (PDL); the activations only after it has.
#pragma unroll 1
            for (int i = 0; i < pre; ++i) {
                mbarExpectTx(fullBar + 8 * i, (TRT_GEMMA4_SOL & 32) || ownX(i) ? Sh::W_BYTES : Sh::W_BYTES + xBytes);
                tmaLoad2d(sbase + i * Sh::STAGE, &tmW, (kb0 + i) * kKBlock, n0, fullBar + 8 * i);
            }
            waitForPrerequisite();
#pragma unroll 1
            for (int i = 0; i < pre; ++i) {
                const uint32_t xs = sbase + i * Sh::STAGE + Sh::W_BYTES;
                const uint32_t bar = ownX(i) ? xBar + 8 * i : fullBar + 8 * i;
                if (TRT_GEMMA4_SOL & 32) {  // (probe 32: no activation loads, wrong results)
                    if (ownX(i)) mbarArrive(bar);
                    continue;
                }
                if (ownX(i)) mbarExpectTx(bar, xBytes);
                tmaLoad2d(xs, xMap, (kb0 + i) * kKBlock, m0, bar);
                if (!(TRT_GEMMA4_SOL & 128)) tmaLoad2d(xs + Sh::X_HALF, xMap, (kb0 + i) * kKBlock + 64, m0, bar);
            }
#pragma unroll 1
            for (int i = pre; i < nkb; ++i) {
                const int s = i % STAGES;
                mbarWait(emptyBar + 8 * s, ((i / STAGES) - 1) & 1);
                const uint32_t st = sbase + s * Sh::STAGE;
                mbarExpectTx(fullBar + 8 * s, (TRT_GEMMA4_SOL & 32) ? Sh::W_BYTES : Sh::W_BYTES + xBytes);
                tmaLoad2d(st, &tmW, (kb0 + i) * kKBlock, n0, fullBar + 8 * s);
                if (TRT_GEMMA4_SOL & 32) continue;  // (probe 32: no activation loads, wrong results)
                tmaLoad2d(st + Sh::W_BYTES, xMap, (kb0 + i) * kKBlock, m0, fullBar + 8 * s);
                if (TRT_GEMMA4_SOL & 128) continue;
                tmaLoad2d(st + Sh::W_BYTES + Sh::X_HALF, xMap, (kb0 + i) * kKBlock + 64, m0, fullBar + 8 * s);
            }
        }
        allowDependents();
        if (clustered) {  // the consumers' two cluster barriers count every thread of the cluster
            // Parked on a CTA barrier until the consumers reach the epilogue rather than in barrier.cluster.wait
            // through the main loop (measured the same either way: the 1.7x slowdown of the first cluster form was
            // its epilogue's stores, bench/NOTES_gemm.md v23).
            namedBarrier(kProducerPark, 384);
            clusterSync();
            clusterSyncRelaxed();
        }
        return;
    }

    // ---- consumers ----
    asm volatile("setmaxnreg.inc.sync.aligned.u32 232;");
    const int cw = wg - 1;  // consumer warpgroup: weight rows 64 cw .. 64 cw + 63 of the tile (HALF: rows 0..63)
    const int tid = threadIdx.x & 127;
    const int w4 = tid >> 5, lane = tid & 31, g = lane >> 2, t = lane & 3;
    const uint32_t rowAddr = sbase + ((HALF ? 0 : 64 * cw) + 16 * w4 + g) * 128;
    uint32_t offs[8];  // 128-byte swizzle: rows g and g+8 XOR the chunk index with g
#pragma unroll
    for (int j = 0; j < 8; ++j) offs[j] = (static_cast<uint32_t>(j ^ g) << 4) + static_cast<uint32_t>(t >> 1) * 4;
    const uint32_t sel = fragSel(t);
    const float* sRow = S + static_cast<size_t>(n0 / kRows) * kBlocks + kb0;

    float acc[T / 2];
    float part[T / 2];
#pragma unroll
    for (int r = 0; r < T / 2; ++r) acc[r] = 0.f;
    uint32_t fragA[8][4], fragB[8][4];

    // One k-block: wgmmas on `cur`, the next stage's weights into `nxt` meanwhile, then promotion.
    auto step = [&](int i, uint32_t (&cur)[8][4], uint32_t (&nxt)[8][4]) {
        const int s = i % STAGES;
        const float scale = __ldg(sRow + i);
        const uint32_t xs = sbase + s * Sh::STAGE + Sh::W_BYTES;
        // The first stage's activations (HALF: each warpgroup's first) have their own barrier.
        if (ownX(i)) mbarWait(xBar + 8 * i, 0);
        fenceRegs(part);
        waitTurn(cw);
        wgmmaFence();
#pragma unroll
        for (int j = 0; j < 8; ++j)
            wgmmaRs(part, cur[j], descSw128(xs + (j >> 2) * Sh::X_HALF + (j & 3) * 32), j > 0 ? 1 : 0);
        wgmmaCommit();
        passTurn(cw);
        if (i + KSTEP < nkb) {
            const int s1 = (i + KSTEP) % STAGES;
            mbarWait(fullBar + 8 * s1, ((i + KSTEP) / STAGES) & 1);
            loadWeightFrags<8, 128>(nxt, rowAddr + s1 * Sh::STAGE, offs, sel);
        }
        wgmmaWaitAll();
        fenceRegs(part);
        fenceFrags(cur);
        __syncwarp();
        if (lane == 0) mbarArrive(emptyBar + 8 * s);
#pragma unroll
        for (int r = 0; r < T / 2; ++r) acc[r] = fmaf(scale, part[r], acc[r]);
    };

    if constexpr (HALF) {
        // Warpgroup cw takes k-blocks cw, cw + 2, ... (its first: stage cw, first round).
        const int first = cw;
        if (first < nkb) {
            mbarWait(fullBar + 8 * first, 0);
            loadWeightFrags<8, 128>(fragA, rowAddr + first * Sh::STAGE, offs, sel);
        }
        if (nkb > 0 && cw == 1) passTurn(cw);  // warpgroup 0 goes first
#pragma unroll 1
        for (int i = first; i < nkb; i += 2 * KSTEP) {
            step(i, fragA, fragB);
            if (i + KSTEP < nkb) step(i + KSTEP, fragB, fragA);
        }
        // The turn barriers end balanced: warpgroup 0 takes warpgroup 1's last pass, or (an odd k-block count: one
        // step more for warpgroup 0) warpgroup 1 takes warpgroup 0's.
        if (nkb > 0 && cw == (nkb & 1)) waitTurn(cw);
    } else {
        if (nkb > 0) {
            mbarWait(fullBar, 0);
            loadWeightFrags<8, 128>(fragA, rowAddr, offs, sel);
            if (cw == 1) passTurn(cw);  // warpgroup 0 goes first
        }
#pragma unroll 1
        for (int i = 0; i < nkb; i += 2) {
            step(i, fragA, fragB);
            if (i + 1 < nkb) step(i + 1, fragB, fragA);
        }
        if (nkb > 0 && cw == 0) waitTurn(cw);  // takes warpgroup 1's last pass: the turn barriers end balanced
    }
    // SPLIT: warpgroup cw finishes tokens [cw T/2, (cw + 1) T/2) of the tile, accumulator registers [cw H, cw H + H).
    constexpr int H = T / 4;
    [[maybe_unused]] auto mine = [&](int j) { return !SPLIT || (4 * j) / H == cw; };  // 8-token group j
    if constexpr (SPLIT) {
        // Intra-CTA split-K: each warpgroup hands the other the half of its sums that the other finishes, through
        // shared memory behind the epilogue's staging area, and adds the other's: sum = warpgroup 0's + warpgroup
        // 1's (FP32 addition commutes: the same bits in either warpgroup, deterministic). Both then store their
        // half of the tokens (H100, four alternating runs, medians: the drafter's 4096 x 1024 at M = 96 / 128 5.66 /
        // 5.80 -> 5.58 / 5.71 µs, 1024 x 8192 10.30 / 10.54 -> 10.05 / 10.29; bench/NOTES_gemm.md v27).
        namedBarrier(1, 256);  // both consumer warpgroups are past their last wgmma: the stage ring is free
        float* comb = reinterpret_cast<float*>(smem + Sh::COMB);
        float* give = comb + cw * H * 128 + tid;  // [warpgroup][H][128 threads]
        const float* take = comb + (1 - cw) * H * 128 + tid;
        if (cw == 0) {
#pragma unroll
            for (int r = 0; r < H; ++r) give[r * 128] = acc[H + r];
        } else {
#pragma unroll
            for (int r = 0; r < H; ++r) give[r * 128] = acc[r];
        }
        namedBarrier(1, 256);
        if (cw == 0) {
#pragma unroll
            for (int r = 0; r < H; ++r) acc[r] += take[r * 128];
        } else {
#pragma unroll
            for (int r = 0; r < H; ++r) acc[H + r] += take[r * 128];
        }
    } else if constexpr (HALF) {
        // Intra-CTA split-K: warpgroup 0's sum plus warpgroup 1's, in that order (deterministic), through shared
        // memory behind the epilogue's staging area; then warpgroup 0 holds the tile's 64 rows.
        namedBarrier(1, 256);  // both consumer warpgroups are past their last wgmma: the stage ring is free
        float* comb = reinterpret_cast<float*>(smem + Sh::COMB);
        if (cw == 1) {
#pragma unroll
            for (int r = 0; r < T / 2; ++r) comb[r * 128 + tid] = acc[r];
        }
        namedBarrier(1, 256);
        if (cw == 0) {
#pragma unroll
            for (int r = 0; r < T / 2; ++r) acc[r] += comb[r * 128 + tid];
        }
        if (cw == 1 && !clustered) return;  // only the cluster's barriers and sums still need it
    }

    waitForPrerequisite();  // already true (the producer waited before loading activations); orders our stores
    allowDependents();
    // Accumulator layout (wgmma m64nN, FP32): acc[4j + {0,1,2,3}] = (row 16 w4 + g (+8 for 2,3), token 8j + 2t
    // (+1 for 1,3)); rows are output features n, tokens are output rows m.
    const int feat = 16 * w4 + g;
    if (partial == nullptr && !clustered) {
        // Stage the BF16 tile as [token][64 features] (rows padded to 144 B: the 2-byte stores of a warp hit 16
        // distinct words), then write 16-byte pieces: each token's 64 features are 128 contiguous bytes of Y.
        if (!HALF) namedBarrier(1, 256);  // both consumer warpgroups are past their last wgmma: the ring is free
        uint8_t* ep = smem + cw * (T * Sh::EPI_ROW);
#pragma unroll
        for (int j = 0; j < T / 8; ++j) {
            if (!mine(j)) continue;
            uint8_t* p = ep + (8 * j + 2 * t) * Sh::EPI_ROW + feat * 2;
            *reinterpret_cast<__nv_bfloat16*>(p) = __float2bfloat16_rn(acc[4 * j]);
            *reinterpret_cast<__nv_bfloat16*>(p + Sh::EPI_ROW) = __float2bfloat16_rn(acc[4 * j + 1]);
            *reinterpret_cast<__nv_bfloat16*>(p + 16) = __float2bfloat16_rn(acc[4 * j + 2]);
            *reinterpret_cast<__nv_bfloat16*>(p + Sh::EPI_ROW + 16) = __float2bfloat16_rn(acc[4 * j + 3]);
        }
        namedBarrier(2 + cw, 128);
#pragma unroll 1
        for (int idx = tid; idx < (SPLIT ? T / 2 : T) * 8; idx += 128) {
            const int tok = (SPLIT ? cw * (T / 2) : 0) + (idx >> 3), c = idx & 7;
            const int m = m0 + tok, n = n0 + (SPLIT ? 0 : 64 * cw) + 8 * c;
            if (m < M && n < N)
                *reinterpret_cast<uint4*>(Y + static_cast<size_t>(m) * N + n) =
                    *reinterpret_cast<const uint4*>(ep + tok * Sh::EPI_ROW + c * 16);
        }
    } else if (clustered) {
        // This CTA's FP32 partial tile into the free stage ring as [token][128 features (+4 pad: the writes of a
        // warp hit 32 distinct banks)]; then each CTA of the cluster takes a contiguous 1/splits share of the
        // tile's 4-feature pieces, sums each over all splits in split order (the reduce pass's order: the same bits)
        // through distributed shared memory, and stores it as 8 bytes of BF16: a warp writes one token's 128
        // features, 256 contiguous bytes of Y. (Storing single 2-byte values from the accumulator layout instead,
        // 32 tokens per warp store, made the kernel 1.7x slower than the reduce pass: bench/NOTES_gemm.md v23.)
        namedBarrier(1, 256);  // both consumer warpgroups are past their last wgmma: the stage ring is free
        namedBarrierArrive(kProducerPark, 384);  // release the parked producer warpgroup into the cluster barriers
        float* tile = reinterpret_cast<float*>(smem);
        const int f = 64 * cw + feat;
        if (!HALF || cw == 0) {
#pragma unroll
            for (int j = 0; j < T / 8; ++j) {
                float* r = tile + (8 * j + 2 * t) * Sh::CLU_PITCH + f;
                r[0] = acc[4 * j];
                r[Sh::CLU_PITCH] = acc[4 * j + 1];
                r[8] = acc[4 * j + 2];
                r[Sh::CLU_PITCH + 8] = acc[4 * j + 3];
            }
        }
        clusterSync();
        const int nz = static_cast<int>(gridDim.y), z = static_cast<int>(blockIdx.y);
        constexpr int kPieces = T * (ROWS / 4);
        const int share = (kPieces + nz - 1) / nz;
        const int end = (TRT_GEMMA4_SOL & 64) ? 0 : min(kPieces, (z + 1) * share);  // (probe 64: no sums, no stores)
        const uint32_t base = smemAddr(smem);
        if (nz == 2) {
            // Two splits: kBatch pieces per thread at a time, each split's loads of the batch issued together, one
            // distributed shared-memory round trip per split and batch (H200, qkv M = 128: 0.91x the reduce-pass
            // form's time, 0.93x one piece at a time); with 4 splits the batched form measured slower than one piece
            // at a time (bench/NOTES_gemm.md v23).
            constexpr int kBatch = 8;
#pragma unroll 1
            for (int p0 = z * share + cw * 128 + tid; p0 < end; p0 += 256 * kBatch) {
                uint32_t a[kBatch];
                float4 v[kBatch];
#pragma unroll
                for (int b = 0; b < kBatch; ++b) {
                    const int p = p0 + 256 * b;  // pieces past the share are neither loaded nor stored
                    a[b] = base + static_cast<uint32_t>(((p / (ROWS / 4)) * Sh::CLU_PITCH + 4 * (p % (ROWS / 4))) * 4);
                    v[b] = p < end ? ldsCluster128(clusterMapShared(a[b], 0)) : make_float4(0.f, 0.f, 0.f, 0.f);
                }
                for (int r = 1; r < nz; ++r) {
                    float4 u[kBatch];
#pragma unroll
                    for (int b = 0; b < kBatch; ++b)
                        u[b] = p0 + 256 * b < end ? ldsCluster128(clusterMapShared(a[b], r)) : make_float4(0.f, 0.f, 0.f, 0.f);
#pragma unroll
                    for (int b = 0; b < kBatch; ++b) {
                        v[b].x += u[b].x;
                        v[b].y += u[b].y;
                        v[b].z += u[b].z;
                        v[b].w += u[b].w;
                    }
                }
#pragma unroll
                for (int b = 0; b < kBatch; ++b) {
                    const int p = p0 + 256 * b;
                    const int m = m0 + p / (ROWS / 4), n = n0 + 4 * (p % (ROWS / 4));
                    if (p < end && m < M && n < N) {  // N % 16 == 0: a 4-feature piece is all in or all out
                        const __nv_bfloat162 lo = __floats2bfloat162_rn(v[b].x, v[b].y);
                        const __nv_bfloat162 hi = __floats2bfloat162_rn(v[b].z, v[b].w);
                        uint2 out;
                        out.x = *reinterpret_cast<const uint32_t*>(&lo);
                        out.y = *reinterpret_cast<const uint32_t*>(&hi);
                        *reinterpret_cast<uint2*>(Y + static_cast<size_t>(m) * N + n) = out;
                    }
                }
            }
        } else {
#pragma unroll 1
            for (int p = z * share + cw * 128 + tid; p < end; p += 256) {
                const int tok = p / (ROWS / 4), q = p % (ROWS / 4);
                const uint32_t a = base + static_cast<uint32_t>((tok * Sh::CLU_PITCH + 4 * q) * 4);
                // All splits' loads of the piece issued before the first add, then summed in split order (with the
                // relaxed last barrier below: H200 1-4.5% faster than the loads one split at a time with the release
                // barrier; this part alone measured within noise, bench/NOTES_gemm.md v24).
                float4 u[8];  // nz <= 8: the launcher takes cluster split-K of 2..8 splits only
#pragma unroll
                for (int r = 0; r < 8; ++r)
                    if (r < nz) u[r] = ldsCluster128(clusterMapShared(a, r));
                float4 v = u[0];
#pragma unroll
                for (int r = 1; r < 8; ++r) {
                    if (r < nz) {
                        v.x += u[r].x;
                        v.y += u[r].y;
                        v.z += u[r].z;
                        v.w += u[r].w;
                    }
                }
                const int m = m0 + tok, n = n0 + 4 * q;
                if (m < M && n < N) {  // N % 16 == 0: a 4-feature piece is all in or all out
                    const __nv_bfloat162 lo = __floats2bfloat162_rn(v.x, v.y), hi = __floats2bfloat162_rn(v.z, v.w);
                    uint2 out;
                    out.x = *reinterpret_cast<const uint32_t*>(&lo);
                    out.y = *reinterpret_cast<const uint32_t*>(&hi);
                    *reinterpret_cast<uint2*>(Y + static_cast<size_t>(m) * N + n) = out;
                }
            }
        }
        // Our partial tile stays readable until every CTA of the cluster is done with it. This barrier only keeps
        // shared memory alive, so it is relaxed: the release form (MEMBAR.ALL.GPU in SASS) waited here for this
        // thread's output stores to be acknowledged before arriving.
        clusterSyncRelaxed();
    } else {
        float* P = partial + static_cast<size_t>(blockIdx.y) * M * N;
        const int n = n0 + (SPLIT ? 0 : 64 * cw) + feat;
#pragma unroll
        for (int j = 0; j < T / 8; ++j) {
            if (!mine(j)) continue;
            const int m = m0 + 8 * j + 2 * t;
            if (n < N) {
                if (m < M) P[static_cast<size_t>(m) * N + n] = acc[4 * j];
                if (m + 1 < M) P[static_cast<size_t>(m + 1) * N + n] = acc[4 * j + 1];
            }
            if (n + 8 < N) {
                if (m < M) P[static_cast<size_t>(m) * N + n + 8] = acc[4 * j + 2];
                if (m + 1 < M) P[static_cast<size_t>(m + 1) * N + n + 8] = acc[4 * j + 3];
            }
        }
    }
#elif defined(__CUDA_ARCH__)
    __trap();  // no sm_90a code in this image (e.g. a plain sm_90 build): fail loudly, never leave Y unwritten
#endif
}

#ifdef TRT_GEMMA4_SM90A_DEVICE
// A persistent kernel's producer: stage number c (continuous over the CTA's tiles) gets 64-k slice k64 of the
// weight tile at row n0 and of the token tile at token m0. PDL: the first weights are requested before the previous
// kernel ends, the activations only after it has (`waited`). tmX: the token map, or for the last token tile when
// M % T != 0 the map whose box has only the tokens that exist, xBytes its bytes per slice (the token-tile kernel's
// producer says why: no TMA zero fill past M).
template <int STAGES, int STAGE, int W_BYTES>
__device__ __forceinline__ void produceStage(int c, int k64, int n0, int m0, bool& waited, uint32_t sbase,
                                             uint32_t fullBar, uint32_t emptyBar, const CUtensorMap* tmW,
                                             const CUtensorMap* tmX, uint32_t xBytes) {
    const int s = c % STAGES;
    if (c >= STAGES) mbarWait(emptyBar + 8 * s, ((c / STAGES) - 1) & 1);
    const uint32_t st = sbase + s * STAGE;
    mbarExpectTx(fullBar + 8 * s, W_BYTES + xBytes);
    tmaLoad2d(st, tmW, k64 * 64, n0, fullBar + 8 * s);
    if (!waited) {
        waitForPrerequisite();
        waited = true;
    }
    tmaLoad2d(st + W_BYTES, tmX, k64 * 64, m0, fullBar + 8 * s);
}

// Fragment-load offsets into a [rows][64 B] weight stage with the 64-byte swizzle: rows g and g+8 XOR the chunk
// index with (g / 2) % 4; sel: fragSel(t) (see loadWeightFrags).
__device__ __forceinline__ void persistentFragOffsets(int g, int t, uint32_t (&offs)[4], uint32_t& sel) {
#pragma unroll
    for (int j = 0; j < 4; ++j)
        offs[j] = (static_cast<uint32_t>(j ^ ((g >> 1) & 3)) << 4) + static_cast<uint32_t>(t >> 1) * 4;
    sel = fragSel(t);
}

// Stores a 64 x T accumulator (acc[4j + {0,1,2,3}] = row n (+8 for 2,3), token m + 8j (+1 for 1,3)) times `scale`
// as BF16 straight from registers: a warp's store covers 4 tokens x 8 consecutive features (16 bytes each), rows
// >= N and tokens >= M skipped.
template <int T>
__device__ __forceinline__ void storeAccTile(__nv_bfloat16* __restrict__ Y, const float (&acc)[T / 2], float scale,
                                             int M, int N, int n, int m) {
#pragma unroll
    for (int j = 0; j < T / 8; ++j) {
        const int mj = m + 8 * j;
        if (mj < M) {
            __nv_bfloat16* y = Y + static_cast<size_t>(mj) * N + n;
            if (n < N) y[0] = __float2bfloat16_rn(acc[4 * j] * scale);
            if (n + 8 < N) y[8] = __float2bfloat16_rn(acc[4 * j + 2] * scale);
        }
        if (mj + 1 < M) {
            __nv_bfloat16* y = Y + static_cast<size_t>(mj + 1) * N + n;
            if (n < N) y[0] = __float2bfloat16_rn(acc[4 * j + 1] * scale);
            if (n + 8 < N) y[8] = __float2bfloat16_rn(acc[4 * j + 3] * scale);
        }
    }
}

// Conversion multiplier for a k-block with scale s: BF16x2 2^120 (exact conversion), or 0 for an all-zero block
// (s = 0: zero fragments, so the wgmmas still run unconditionally and leave the accumulator's unit alone).
__device__ __forceinline__ uint32_t fragMult(float scale) { return scale != 0.f ? kBf16x2Pow120 : 0u; }

// One k-block (two 64-k stages, one scale) of a persistent kernel's consumer warpgroup, shared by the wide and the
// stream-K kernels. Stage counter c; f0 holds the k-block's first stage (converted), f1 receives its second, g0 the
// next k-block's first stage when `more`. The accumulator is kept in units of the current block scale: rescaled here
// (acc *= unit / s) while it is idle, since the previous k-block ended with a wait. The wgmmas are issued
// unconditionally (branches around them make ptxas serialize).
template <int T, int STAGES, int STAGE, int W_BYTES>
__device__ __forceinline__ void persistentKBlock(float (&acc)[T / 2], float& unit, int& c, int kb, bool more,
                                                 int kStages, const float* sRow, uint32_t sbase, uint32_t fullBar,
                                                 uint32_t emptyBar, uint32_t rowAddr, const uint32_t (&offs)[4],
                                                 uint32_t sel, int cw, int lane, uint32_t (&f0)[4][4],
                                                 uint32_t (&f1)[4][4], uint32_t (&g0)[4][4]) {
    const float sc = __ldg(sRow + kb);
    const float scNext = more ? __ldg(sRow + kb + 1) : 0.f;
    const bool two = 2 * kb + 1 < kStages;
    const int s0 = c % STAGES, s1 = (c + 1) % STAGES;
    if (sc != 0.f && sc != unit) {
        if (unit != 0.f && !(TRT_GEMMA4_SOL & 4)) {  // (probe 4: no rescale, wrong results)
            const float ratio = unit / sc;
#pragma unroll
            for (int r = 0; r < T / 2; ++r) acc[r] *= ratio;
        }
        unit = sc;
    }
    fenceRegs(acc);
    waitTurn(cw);
    wgmmaFence();
    {
        const uint32_t xs = sbase + s0 * STAGE + W_BYTES;
#pragma unroll
        for (int j = 0; j < 4; ++j) wgmmaRs(acc, f0[j], descSw128(xs + j * 32), 1);
    }
    wgmmaCommit();
    if (two) {
        mbarWait(fullBar + 8 * s1, ((c + 1) / STAGES) & 1);
        loadWeightFrags<4, 64>(f1, rowAddr + s1 * STAGE, offs, sel, fragMult(sc));
        const uint32_t xs = sbase + s1 * STAGE + W_BYTES;
        wgmmaFence();  // f1 was written since the last fence
#pragma unroll
        for (int j = 0; j < 4; ++j) wgmmaRs(acc, f1[j], descSw128(xs + j * 32), 1);
        wgmmaCommit();
    }
    passTurn(cw);
    const int cn = c + (two ? 2 : 1);
    if (more) {
        mbarWait(fullBar + 8 * (cn % STAGES), (cn / STAGES) & 1);
        loadWeightFrags<4, 64>(g0, rowAddr + (cn % STAGES) * STAGE, offs, sel, fragMult(scNext));
    }
    wgmmaWaitAll();
    fenceRegs(acc);
    fenceFrags(f0);
    fenceFrags(f1);
    __syncwarp();
    if (lane == 0) {
        mbarArrive(emptyBar + 8 * s0);
        if (two) mbarArrive(emptyBar + 8 * s1);
    }
    c = cn;
}
#endif  // TRT_GEMMA4_SM90A_DEVICE

// ---- The wide kernel: 256 tokens per CTA, persistent, for large M ---------------------------------------------
// Same roles and fragment path as wgmmaGemmKernel, with three differences that matter at large M:
//  * 128 weight rows x 256 tokens per tile (wgmma m64n256k16): each converted weight fragment feeds twice the
//    tensor work, and the shared-memory traffic per FLOP (TMA writes + fragment loads + the wgmma's B reads) drops
//    to what the smem port sustains;
//  * the accumulator is kept in units of the current block scale (acc *= s_prev / s_cur when the k-block's scale
//    changes, acc *= s_last at the end; k-blocks with s = 0 contribute zero fragments and leave the unit alone), so
//    one 128-register accumulator holds the whole 64x256 tile: exact up to FP32 rounding as long as acc / s stays in
//    the FP32 range for every nonzero block scale s of the row block (true for s = amax / 448 of real weights; a
//    quantizer that stores a denormal-sized scale for an all-zero block would overflow it);
//  * persistent CTAs (one per SM) walk the tiles in the grouped order; the producer runs into the next tile while
//    the consumers store the last one, so neither the pipeline fill nor the epilogue leaves the tensor cores idle
//    between tiles.
// Stages are half k-blocks (64 k): weights [128 rows][64 B] with the 64-byte swizzle (16-byte chunk c of row r at
// c ^ ((r >> 1) & 3): the 8 rows a warp reads per load hit 8 distinct 16-byte bank groups), tokens [256][64 bf16]
// with the 128-byte swizzle, 40 KB per stage, 5 stages. The stream-K kernel below uses the same layout (T = 256 or
// 128; 8 stages at 128).
template <int TOKENS>
struct PersistShape {
    static constexpr int T = TOKENS;
    static constexpr int STAGES = T == 256 ? 5 : 8;
    static constexpr int W_BYTES = kRows * 64;  // 8 KB FP8
    static constexpr int X_BYTES = T * 128;     // [T][64] bf16
    static constexpr int STAGE = W_BYTES + X_BYTES;
    static constexpr int BARS = STAGES * STAGE;
    static constexpr int SMEM = BARS + 2 * STAGES * 8 + 1024;
    static_assert(STAGE % 1024 == 0 && W_BYTES % 1024 == 0, "tiles must stay 1024-byte aligned");
    static_assert(SMEM <= 227 * 1024, "shared memory over the sm_90 limit");
};
using WideShape = PersistShape<256>;

__global__ void __launch_bounds__(384, 1)
    wgmmaWideKernel(const __grid_constant__ CUtensorMap tmW, const __grid_constant__ CUtensorMap tmX,
                    const __grid_constant__ CUtensorMap tmXTail, const float* __restrict__ S,
                    __nv_bfloat16* __restrict__ Y, int M, int N, int K, int tilesN, int tilesT, int tailRows) {
#ifdef TRT_GEMMA4_SM90A_DEVICE
    using Sh = WideShape;
    constexpr int STAGES = Sh::STAGES;
    extern __shared__ uint8_t smemRaw[];
    uint8_t* smem = alignedSmem(smemRaw);
    const uint32_t sbase = smemAddr(smem);
    const uint32_t fullBar = sbase + Sh::BARS;
    const uint32_t emptyBar = fullBar + 8 * STAGES;
    const int kStages = (K + 63) / 64;
    const int kBlocks = (K + kKBlock - 1) / kKBlock;
    const int tiles = tilesN * tilesT;
    auto tileOrigin = [&](int tile, int& n0, int& m0) { groupedTileOrigin(tile, tilesN, tilesT, Sh::T, n0, m0); };

    initStageBarriers(fullBar, emptyBar, STAGES);

    const int wg = threadIdx.x >> 7;
    if (wg == 0) {
        asm volatile("setmaxnreg.dec.sync.aligned.u32 40;");
        if (threadIdx.x == 0) {
            prefetchTensorMaps(&tmW, &tmX, tailRows > 0 ? &tmXTail : nullptr);
            int c = 0;  // stage counter, continuous across tiles
            bool waited = false;
#pragma unroll 1
            for (int tile = blockIdx.x; tile < tiles; tile += gridDim.x) {
                int n0, m0;
                tileOrigin(tile, n0, m0);
                const bool tail = tailRows > 0 && m0 + Sh::T > M;
                const uint32_t xBytes = tail ? 128u * static_cast<uint32_t>(tailRows) : Sh::STAGE - Sh::W_BYTES;
#pragma unroll 1
                for (int i = 0; i < kStages; ++i, ++c)
                    produceStage<STAGES, Sh::STAGE, Sh::W_BYTES>(c, i, n0, m0, waited, sbase, fullBar, emptyBar, &tmW,
                                                                  tail ? &tmXTail : &tmX, xBytes);
            }
        }
        allowDependents();
        return;
    }

    asm volatile("setmaxnreg.inc.sync.aligned.u32 232;");
    const int cw = wg - 1;
    const int tid = threadIdx.x & 127;
    const int w4 = tid >> 5, lane = tid & 31, g = lane >> 2, t = lane & 3;
    const uint32_t rowAddr = sbase + (64 * cw + 16 * w4 + g) * 64;
    uint32_t offs[4], sel;
    persistentFragOffsets(g, t, offs, sel);
    waitForPrerequisite();  // before the first store (the producer's activation loads already waited)

    // One 128-register accumulator (64 rows x 256 tokens). Per k-block (two stages, one scale) the warpgroup issues
    // both stages' wgmma batches back to back (they chain on the accumulator), converts the next k-block's first
    // stage while they run, and waits once: the only gap in its tensor work is the rescale at the k-block
    // boundary, which the other consumer warpgroup's batches cover. (Splitting the accumulator in two halves to
    // rescale one while the other runs makes ptxas 13.0 serialize every wgmma of the kernel: C7514.)
    // Fragment buffers rotate over two k-blocks: A, B for k-block 2q (C gets 2q+1's first stage), C, D for 2q+1.
    float acc[Sh::T / 2];
    uint32_t fragA[4][4], fragB[4][4], fragC[4][4], fragD[4][4];
    int c = 0;
    if (cw == 1) passTurn(cw);  // warpgroup 0 goes first
#pragma unroll 1
    for (int tile = blockIdx.x; tile < tiles; tile += gridDim.x) {
        int n0, m0;
        tileOrigin(tile, n0, m0);
        const float* sRow = S + static_cast<size_t>(n0 / kRows) * kBlocks;
#pragma unroll
        for (int r = 0; r < Sh::T / 2; ++r) acc[r] = 0.f;
        float unit = 0.f;  // the block scale acc is currently expressed in (0: nothing accumulated yet)
        const int kBlocksTile = (kStages + 1) / 2;

        auto kblock = [&](int kb, uint32_t (&f0)[4][4], uint32_t (&f1)[4][4], uint32_t (&g0)[4][4]) {
            persistentKBlock<Sh::T, STAGES, Sh::STAGE, Sh::W_BYTES>(acc, unit, c, kb, 2 * kb + 2 < kStages, kStages,
                                                                    sRow, sbase, fullBar, emptyBar, rowAddr, offs,
                                                                    sel, cw, lane, f0, f1, g0);
        };

        mbarWait(fullBar + 8 * (c % STAGES), (c / STAGES) & 1);
        loadWeightFrags<4, 64>(fragA, rowAddr + (c % STAGES) * Sh::STAGE, offs, sel, fragMult(__ldg(sRow)));
#pragma unroll 1
        for (int kb = 0; kb < kBlocksTile; kb += 2) {
            kblock(kb, fragA, fragB, fragC);
            if (kb + 1 < kBlocksTile) kblock(kb + 1, fragC, fragD, fragA);
        }
        // Store straight from the accumulator (acc[4j + {0,1,2,3}] = row 16 w4 + g (+8), token 8j + 2t (+1)):
        // a warp's store covers 4 tokens x 8 consecutive features (16 bytes each); the next tile's loads are
        // already in flight meanwhile.
        storeAccTile<Sh::T>(Y, acc, unit, M, N, n0 + 64 * cw + 16 * w4 + g, m0 + 2 * t);
    }
    if (cw == 0) waitTurn(cw);  // takes warpgroup 1's last pass: the turn barriers end balanced
    allowDependents();
#elif defined(__CUDA_ARCH__)
    __trap();
#endif
}

// ---- Stream-K: the wide kernel's loop over pieces of tiles, for mid M -----------------------------------------
// Where the tile count leaves the last round of a data-parallel walk mostly empty (68 row tiles of N = 8704 on 132
// SMs, say), the grid's G CTAs walk whole tiles for all but the last one to two rounds (dpRounds = tiles / G - 1),
// then split ALL k-blocks of the remaining tiles evenly: CTA c takes units [U c / G, U (c+1) / G) of U = remaining
// tiles x kBlocks, in tile order, and works through that range BACKWARDS by tile: first the head of its last tile,
// then any whole tiles, last the tail of its first tile. A tile cut in pieces is finished by the CTA holding its last
// k-block (the tail: the LAST piece that CTA computes); every other piece is the FIRST stream-K piece of a
// lower-index CTA, which publishes it as an FP32 partial tile (accumulator-fragment order: coalesced, read back by
// the same thread index) and sets a flag per consumer warpgroup (release); the owner's threads acquire the flags of
// those CTAs, add their partials in a fixed order (deterministic), clear the flags and store. So a CTA only ever
// waits for lower-index CTAs, which publish before they wait for anything: no deadlock even when the grid is not
// all resident at once (another GEMM on another stream, MPS), as long as lower-index CTAs are dispatched first,
// which the hardware does (the same assumption as CUTLASS's stream-K). Each CTA publishes at most one partial.
// Workspace: the flags (zeroed by the launcher, or the caller's semaphores, left zero) and G partial tiles.
// T = 256 tokens per tile (the 128-token form is the token-tile stream-K kernel below).
// This is a separate kernel rather than a mode of the wide one: one template for both walks compiled the
// data-parallel case into a schedule that ran 3-15% slower at M = 8192 in same-run A/B tests. The two share the
// k-block step, the producer's stage and the store (persistentKBlock, produceStage, storeAccTile), which leaves the
// wide kernel's instructions as measured (checked on the SASS: only two producer registers are swapped). Their
// kernel prologue and consumer-warpgroup setup stay written out in each: moving the setup into a shared helper
// changed the SASS of both kernels, which no longer matched what was measured.

// Stream-K workspace: flags [G][2] (int, 256-byte padded), then partial tiles [G][2][T/2][128] FP32.
constexpr size_t streamKFlagBytes(int grid) {
    return (static_cast<size_t>(grid) * 2 * sizeof(int) + 255) & ~size_t(255);
}
constexpr size_t streamKBytes(int grid, int T) {
    return streamKFlagBytes(grid) + static_cast<size_t>(grid) * 2 * (T / 2) * 128 * sizeof(float);
}

#ifdef TRT_GEMMA4_SM90A_DEVICE
__device__ __forceinline__ int ldAcquire(const int* p) {
    int v;
    asm volatile("ld.acquire.gpu.global.b32 %0, [%1];" : "=r"(v) : "l"(p) : "memory");
    return v;
}
__device__ __forceinline__ void stRelease(int* p, int v) {
    asm volatile("st.release.gpu.global.b32 [%0], %1;" ::"l"(p), "r"(v) : "memory");
}
// A piece that does not end its tile (only ever a CTA's first): warpgroup cw's FP32 partial as [r / 4][tid][4] (one
// coalesced 16-byte store per 4 values, read back by the same thread index on the owner's side), then its flag by
// one release store: the barrier orders every thread's stores before it and a release is cumulative (PTX memory
// model; CUTLASS's Barrier::arrive_inc form), so the owner's acquire sees the partial. (A __threadfence before it,
// MEMBAR.SC.GPU, measured 0.1 µs slower at M = 17-64 on qkv_global: bench/NOTES_gemm.md v29.)
template <int T>
__device__ __forceinline__ void publishPartial(const float (&acc)[T / 2], float* __restrict__ skPartial,
                                               int* __restrict__ skFlags, int cta, int cw, int tid) {
    float4* P = reinterpret_cast<float4*>(skPartial + (static_cast<size_t>(cta) * 2 + cw) * (T / 2) * 128) + tid;
#pragma unroll
    for (int q = 0; q < T / 8; ++q)
        if (!(TRT_GEMMA4_SOL & 1024))  // (probe 1024: the flag without the partial, wrong results)
            __stcg(P + q * 128, make_float4(acc[4 * q], acc[4 * q + 1], acc[4 * q + 2], acc[4 * q + 3]));
    namedBarrier(2 + cw, 128);
    if (tid == 0) stRelease(skFlags + 2 * cta + cw, 1);
}
// A tile's owner (both stream-K kernels): acc += the partials of its nParts partners p = pNear, pNear - 1, ...
// (the lower-index CTAs that took its earlier k-blocks, nearest first). Each partner's flag is polled by a thread of
// its own (acquire), which clears it (its only reader: the semaphores stay zero between calls); then the warpgroup's
// barrier orders every thread's reads of the partials after those acquires (CUTLASS's Barrier::wait_eq form). So the
// warpgroup waits one round trip to L2 for all its partners instead of one per partner, and the token tiles (T <= 128)
// read the partials two at a time (their loads in flight together); each element takes the same additions in the
// same order as partner by partner, so the same bits (bench/NOTES_gemm.md v29).
template <int T>
__device__ __forceinline__ void addPartials(float (&acc)[T / 2], const float* __restrict__ skPartial,
                                            int* __restrict__ skFlags, int pNear, int nParts, int cw, int tid) {
#pragma unroll 1
    for (int i = tid; i < nParts; i += 128) {
        int* flag = skFlags + 2 * (pNear - i) + cw;
        while (ldAcquire(flag) == 0) {
        }
        *flag = 0;
    }
    namedBarrier(2 + cw, 128);
    if (TRT_GEMMA4_SOL & 512) return;  // (probe 512: the waits without reading the partials)
    auto part = [&](int p) {
        return reinterpret_cast<const float4*>(skPartial + (static_cast<size_t>(p) * 2 + cw) * (T / 2) * 128) + tid;
    };
    constexpr int kStep = T <= 128 ? 2 : 1;  // the 256-token tile's 128 accumulators leave no room for a pair
#pragma unroll 1
    for (int i = 0; i < nParts; i += kStep) {
        const float4* P = part(pNear - i);
        if (kStep == 2 && i + 1 < nParts) {
            const float4* Q = part(pNear - i - 1);
#pragma unroll
            for (int q = 0; q < T / 8; ++q) {
                const float4 v = __ldcg(P + q * 128), w = __ldcg(Q + q * 128);
                acc[4 * q] = (acc[4 * q] + v.x) + w.x;
                acc[4 * q + 1] = (acc[4 * q + 1] + v.y) + w.y;
                acc[4 * q + 2] = (acc[4 * q + 2] + v.z) + w.z;
                acc[4 * q + 3] = (acc[4 * q + 3] + v.w) + w.w;
            }
        } else {
#pragma unroll
            for (int q = 0; q < T / 8; ++q) {
                const float4 v = __ldcg(P + q * 128);
                acc[4 * q] += v.x;
                acc[4 * q + 1] += v.y;
                acc[4 * q + 2] += v.z;
                acc[4 * q + 3] += v.w;
            }
        }
    }
}
// How many lower-index CTAs took k-blocks of the tile that starts at unit tileStart and ends in CTA cta's range
// (unitStart(c): the first unit of CTA c): the owner's partners, cta - 1, cta - 2, ...
template <class UnitStart>
__device__ __forceinline__ int partnerCount(int cta, int tileStart, const UnitStart& unitStart) {
    int n = 0;
    while (cta - 1 - n >= 0 && unitStart(cta - n) > tileStart) ++n;
    return n;
}
// U c / G for c = 0..G in 32-bit arithmetic: U c / G = q c + (r c) / G with U = q G + r (the launchers keep U below
// 2^31, and r c < G^2 with G at most the SM count), so neither the CTAs' start-up nor an owner's walk over its
// partners runs the GPU's 64-bit division routine.
struct EvenSplit {
    int q, r, g;
    __device__ __forceinline__ EvenSplit(int units, int parts) : q(units / parts), r(units % parts), g(parts) {}
    __device__ __forceinline__ int operator()(int c) const { return q * c + r * c / g; }
};
#endif

template <int T>
__global__ void __launch_bounds__(384, 1)
    wgmmaStreamKKernel(const __grid_constant__ CUtensorMap tmW, const __grid_constant__ CUtensorMap tmX,
                          const __grid_constant__ CUtensorMap tmXTail, const float* __restrict__ S,
                          __nv_bfloat16* __restrict__ Y, int* __restrict__ skFlags, float* __restrict__ skPartial,
                          int M, int N, int K, int tilesN, int tilesT, int tailRows) {
#ifdef TRT_GEMMA4_SM90A_DEVICE
    using Sh = PersistShape<T>;
    constexpr int STAGES = Sh::STAGES;
    extern __shared__ uint8_t smemRaw[];
    uint8_t* smem = alignedSmem(smemRaw);
    const uint32_t sbase = smemAddr(smem);
    const uint32_t fullBar = sbase + Sh::BARS;
    const uint32_t emptyBar = fullBar + 8 * STAGES;
    const int kStages = (K + 63) / 64;
    const int kBlocks = (K + kKBlock - 1) / kKBlock;
    const int tiles = tilesN * tilesT;
    const int G = static_cast<int>(gridDim.x), cta = static_cast<int>(blockIdx.x);
    auto tileOrigin = [&](int tile, int& n0, int& m0) { groupedTileOrigin(tile, tilesN, tilesT, T, n0, m0); };
    // Segment i of this CTA: k-blocks [kb0, kb1) of `tile`; false past the last one. Data-parallel: whole tiles
    // cta, cta + G, ...; stream-K: the same for all but the last one to two rounds' worth of tiles (so most of the
    // walk keeps the grouped order's L2 locality), then the pieces of the unit range [unitStart(cta),
    // unitStart(cta + 1)) over the remaining tiles' k-blocks.
    const int dpRounds = max(0, tiles / G - 1);
    const int skBase = dpRounds * G * kBlocks;
    const EvenSplit skSplit(tiles * kBlocks - skBase, G);
    auto unitStart = [&](int c) { return skBase + skSplit(c); };
    auto segment = [&](int i, int& tile, int& kb0, int& kb1) {
        if (i < dpRounds) {
            tile = cta + i * G;
            kb0 = 0;
            kb1 = kBlocks;
            return tile < tiles;
        }
        // Stream-K pieces from the END of the range backwards: the last tile's head first, the first tile's tail last.
        const int u0 = unitStart(cta), u1 = unitStart(cta + 1);
        tile = (u1 - 1) / kBlocks - (i - dpRounds);
        const int t0 = tile * kBlocks;
        kb0 = max(0, u0 - t0);
        kb1 = min(kBlocks, u1 - t0);
        return t0 + kBlocks > u0;
    };

    initStageBarriers(fullBar, emptyBar, STAGES);

    const int wg = threadIdx.x >> 7;
    if (wg == 0) {
        asm volatile("setmaxnreg.dec.sync.aligned.u32 40;");
        if (threadIdx.x == 0) {
            prefetchTensorMaps(&tmW, &tmX, tailRows > 0 ? &tmXTail : nullptr);
            int c = 0;  // stage counter, continuous across segments
            bool waited = false;
            int tile, kb0, kb1;
#pragma unroll 1
            for (int seg = 0; segment(seg, tile, kb0, kb1); ++seg) {
                int n0, m0;
                tileOrigin(tile, n0, m0);
                const int st1 = min(2 * kb1, kStages);
                const bool tail = tailRows > 0 && m0 + T > M;
                const uint32_t xBytes = tail ? 128u * static_cast<uint32_t>(tailRows) : Sh::STAGE - Sh::W_BYTES;
#pragma unroll 1
                for (int i = 2 * kb0; i < st1; ++i, ++c)
                    produceStage<STAGES, Sh::STAGE, Sh::W_BYTES>(c, i, n0, m0, waited, sbase, fullBar, emptyBar, &tmW,
                                                                  tail ? &tmXTail : &tmX, xBytes);
            }
        }
        allowDependents();
        return;
    }

    asm volatile("setmaxnreg.inc.sync.aligned.u32 232;");
    const int cw = wg - 1;
    const int tid = threadIdx.x & 127;
    const int w4 = tid >> 5, lane = tid & 31, g = lane >> 2, t = lane & 3;
    const uint32_t rowAddr = sbase + (64 * cw + 16 * w4 + g) * 64;
    uint32_t offs[4], sel;
    persistentFragOffsets(g, t, offs, sel);
    waitForPrerequisite();  // before the first store (the producer's activation loads already waited)

    // One T/2-register accumulator (64 rows x T tokens), k-blocks and fragment buffers as in the wide kernel.
    float acc[T / 2];
    uint32_t fragA[4][4], fragB[4][4], fragC[4][4], fragD[4][4];
    int c = 0;
    if (cw == 1) passTurn(cw);  // warpgroup 0 goes first
    // One segment: k-blocks [kb0, kb1) of `tile`, then its epilogue.
    auto runSegment = [&](const int tile, const int kb0, const int kb1) {
        int n0, m0;
        tileOrigin(tile, n0, m0);
        const float* sRow = S + static_cast<size_t>(n0 / kRows) * kBlocks;
#pragma unroll
        for (int r = 0; r < T / 2; ++r) acc[r] = 0.f;
        float unit = 0.f;  // the block scale acc is currently expressed in (0: nothing accumulated yet)

        auto kblock = [&](int kb, uint32_t (&f0)[4][4], uint32_t (&f1)[4][4], uint32_t (&g0)[4][4]) {
            persistentKBlock<T, STAGES, Sh::STAGE, Sh::W_BYTES>(acc, unit, c, kb, kb + 1 < kb1, kStages, sRow, sbase,
                                                                fullBar, emptyBar, rowAddr, offs, sel, cw, lane, f0,
                                                                f1, g0);
        };

        mbarWait(fullBar + 8 * (c % STAGES), (c / STAGES) & 1);
        loadWeightFrags<4, 64>(fragA, rowAddr + (c % STAGES) * Sh::STAGE, offs, sel, fragMult(__ldg(sRow + kb0)));
#pragma unroll 1
        for (int kb = kb0; kb < kb1; kb += 2) {
            kblock(kb, fragA, fragB, fragC);
            if (kb + 1 < kb1) kblock(kb + 1, fragC, fragD, fragA);
        }
#pragma unroll
        for (int r = 0; r < T / 2; ++r) acc[r] *= unit;  // true partial sums from here on
        if (kb1 < kBlocks) {
            if (TRT_GEMMA4_SOL & 8) return;  // (probe 8: no fix-up, wrong results)
            // Not the tile's last piece (only ever this CTA's first stream-K segment): publish it for the owner.
            publishPartial<T>(acc, skPartial, skFlags, cta, cw, tid);
            return;
        }
        if (kb0 > 0 && !(TRT_GEMMA4_SOL & (8 | 256))) {  // (probe 256: no waits and no partials read)
            // The tile's last piece (this CTA's last segment): add the partials of the LOWER-index CTAs that took
            // its earlier k-blocks, nearest first.
            const int nParts = partnerCount(cta, tile * kBlocks, unitStart);
            addPartials<T>(acc, skPartial, skFlags, cta - 1, nParts, cw, tid);
        }
        // Store straight from the accumulator (acc[4j + {0,1,2,3}] = row 16 w4 + g (+8), token 8j + 2t (+1)):
        // a warp's store covers 4 tokens x 8 consecutive features (16 bytes each); the next tile's loads are
        // already in flight meanwhile.
        storeAccTile<T>(Y, acc, 1.f, M, N, n0 + 64 * cw + 16 * w4 + g, m0 + 2 * t);
    };
    int tile, kb0, kb1;
#pragma unroll 1
    for (int seg = 0; segment(seg, tile, kb0, kb1); ++seg) runSegment(tile, kb0, kb1);
    if (cw == 0) waitTurn(cw);  // takes warpgroup 1's last pass: the turn barriers end balanced
    allowDependents();
#elif defined(__CUDA_ARCH__)
    __trap();
#endif
}

// ---- Stream-K over the token tiles: config splits = 0 with token tile 32, 64 or 128 ------------------------------
// Where the 128-row tiles of a GEMM are fewer than the SMs and no split-K fills them (qkv_global: 68 row tiles on
// 132 SMs, and 136 split or 64-row CTAs would need a second wave), the grid's G CTAs (one per SM) split ALL k-blocks of
// all tiles evenly: CTA c takes units [U c / G, U (c+1) / G) of U = tiles x kBlocks, in tile order, worked BACKWARDS by
// tile, exactly as the persistent stream-K kernel above (the head of its last tile first, which it publishes as an
// FP32 partial for that tile's owner; whole tiles next, stored from registers; the tail of its first tile last, which
// it owns: it adds the partials of the lower-index CTAs that took the tile's earlier k-blocks, nearest first, and
// stores). Same flags, partial layout, ordering argument (a CTA only waits for lower-index CTAs, which publish before
// they wait for anything) and workspace (streamKBytes). The k-block step is the token-tile kernel's (128-row tiles:
// both consumer warpgroups on every k-block, 64 rows each, FP32 promotion per k-block, so no rescaling and no unit
// bookkeeping across pieces), with one stage ring running on across the pieces, so the next piece's first weight
// tile is widened during the last wgmmas of the one before. The last piece's epilogue stages the BF16 tile in the then
// idle ring as the token-tile kernel does. It replaces the persistent kernel's 128-token stream-K form
// (bench/NOTES_gemm.md v28).
template <int T>
__global__ void __launch_bounds__(384, 1)
    wgmmaTokStreamKKernel(const __grid_constant__ CUtensorMap tmW, const __grid_constant__ CUtensorMap tmX,
                          const __grid_constant__ CUtensorMap tmXTail, const float* __restrict__ S,
                          __nv_bfloat16* __restrict__ Y, int* __restrict__ skFlags, float* __restrict__ skPartial,
                          int M, int N, int K, int tilesN, int tilesT, int tailRows) {
#ifdef TRT_GEMMA4_SM90A_DEVICE
    using Sh = WgShape<T, false>;
    constexpr int STAGES = Sh::STAGES;
    extern __shared__ uint8_t smemRaw[];
    uint8_t* smem = alignedSmem(smemRaw);
    const uint32_t sbase = smemAddr(smem);
    const uint32_t fullBar = sbase + Sh::BARS;
    const uint32_t emptyBar = fullBar + 8 * STAGES;
    const int kBlocks = (K + kKBlock - 1) / kKBlock;
    const int G = static_cast<int>(gridDim.x), cta = static_cast<int>(blockIdx.x);
    const EvenSplit unitStart(tilesN * tilesT * kBlocks, G);
    const int u0 = unitStart(cta), u1 = unitStart(cta + 1);
    const int stages = u1 - u0;  // this CTA's k-blocks: one ring stage each
    const int lastTile = stages > 0 ? (u1 - 1) / kBlocks : 0;
    const int nSeg = stages > 0 ? lastTile - u0 / kBlocks + 1 : 0;
    // Piece i (0 = the last tile's head): k-blocks [kb0, kb1) of `tile`.
    auto segment = [&](int i, int& tile, int& kb0, int& kb1) {
        tile = lastTile - i;
        const int t0 = tile * kBlocks;
        kb0 = max(0, u0 - t0);
        kb1 = min(kBlocks, u1 - t0);
    };

    initStageBarriers(fullBar, emptyBar, STAGES);

    const int wg = threadIdx.x >> 7;
    if (wg == 0) {
        // ---- producer: pass 0 requests the first STAGES weight tiles before the previous kernel has finished (PDL),
        // pass 1 their activations after it, then every later stage as the ring frees up ----
        asm volatile("setmaxnreg.dec.sync.aligned.u32 40;");
        if (threadIdx.x == 0) {
            prefetchTensorMaps(&tmW, &tmX, tailRows > 0 ? &tmXTail : nullptr);
#pragma unroll 1
            for (int pass = 0; pass < 2; ++pass) {
                int c = 0;
#pragma unroll 1
                for (int seg = 0; seg < nSeg && (pass == 1 || c < STAGES); ++seg) {
                    int tile, kb0, kb1, n0, m0;
                    segment(seg, tile, kb0, kb1);
                    groupedTileOrigin(tile, tilesN, tilesT, T, n0, m0);
                    // The last token tile when M % T != 0: the map whose box has only the tokens that exist (the
                    // token-tile kernel's producer says why).
                    const bool tail = tailRows > 0 && m0 + T > M;
                    const CUtensorMap* xMap = tail ? &tmXTail : &tmX;
                    const uint32_t xBytes = tail ? 256u * static_cast<uint32_t>(tailRows) : 2u * Sh::X_HALF;
#pragma unroll 1
                    for (int kb = kb0; kb < kb1 && (pass == 1 || c < STAGES); ++kb, ++c) {
                        const int s = c % STAGES;
                        const uint32_t st = sbase + s * Sh::STAGE;
                        if (pass == 0 || c >= STAGES) {
                            if (c >= STAGES) mbarWait(emptyBar + 8 * s, ((c / STAGES) - 1) & 1);
                            mbarExpectTx(fullBar + 8 * s, Sh::W_BYTES + xBytes);
                            tmaLoad2d(st, &tmW, kb * kKBlock, n0, fullBar + 8 * s);
                        }
                        if (pass == 0) continue;
                        tmaLoad2d(st + Sh::W_BYTES, xMap, kb * kKBlock, m0, fullBar + 8 * s);
                        tmaLoad2d(st + Sh::W_BYTES + Sh::X_HALF, xMap, kb * kKBlock + 64, m0, fullBar + 8 * s);
                    }
                }
                if (pass == 0) waitForPrerequisite();
            }
        }
        allowDependents();
        return;
    }

    // ---- consumers ----
    asm volatile("setmaxnreg.inc.sync.aligned.u32 232;");
    const int cw = wg - 1;  // weight rows 64 cw .. 64 cw + 63 of each tile
    const int tid = threadIdx.x & 127;
    const int w4 = tid >> 5, lane = tid & 31, g = lane >> 2, t = lane & 3;
    const int feat = 16 * w4 + g;
    const uint32_t rowAddr = sbase + (64 * cw + feat) * 128;
    uint32_t offs[8];  // 128-byte swizzle: rows g and g+8 XOR the chunk index with g
#pragma unroll
    for (int j = 0; j < 8; ++j) offs[j] = (static_cast<uint32_t>(j ^ g) << 4) + static_cast<uint32_t>(t >> 1) * 4;
    const uint32_t sel = fragSel(t);
    waitForPrerequisite();  // before the first store of a partial, a flag or Y (the workspace may be the last call's)

    float acc[T / 2];
    float part[T / 2];
    uint32_t fragA[8][4], fragB[8][4];
    // Stage c (the CTA's c-th k-block; its scale `scale`): the token-tile kernel's step.
    auto step = [&](int c, float scale, uint32_t (&cur)[8][4], uint32_t (&nxt)[8][4]) {
        const int s = c % STAGES;
        const uint32_t xs = sbase + s * Sh::STAGE + Sh::W_BYTES;
        fenceRegs(part);
        waitTurn(cw);
        wgmmaFence();
#pragma unroll
        for (int j = 0; j < 8; ++j)
            wgmmaRs(part, cur[j], descSw128(xs + (j >> 2) * Sh::X_HALF + (j & 3) * 32), j > 0 ? 1 : 0);
        wgmmaCommit();
        passTurn(cw);
        if (c + 1 < stages) {  // the next stage, also across pieces
            const int s1 = (c + 1) % STAGES;
            mbarWait(fullBar + 8 * s1, ((c + 1) / STAGES) & 1);
            loadWeightFrags<8, 128>(nxt, rowAddr + s1 * Sh::STAGE, offs, sel);
        }
        wgmmaWaitAll();
        fenceRegs(part);
        fenceFrags(cur);
        __syncwarp();
        if (lane == 0) mbarArrive(emptyBar + 8 * s);
#pragma unroll
        for (int r = 0; r < T / 2; ++r) acc[r] = fmaf(scale, part[r], acc[r]);
    };

    if (stages > 0) {
        mbarWait(fullBar, 0);
        loadWeightFrags<8, 128>(fragA, rowAddr, offs, sel);
        if (cw == 1) passTurn(cw);  // warpgroup 0 goes first
    }
    int c = 0, n0 = 0, m0 = 0;
    bool storeLast = false;  // the last piece ends its tile: stored through the ring below
#pragma unroll 1
    for (int seg = 0; seg < nSeg; ++seg) {
        int tile, kb0, kb1;
        segment(seg, tile, kb0, kb1);
        groupedTileOrigin(tile, tilesN, tilesT, T, n0, m0);
        const float* sRow = S + static_cast<size_t>(n0 / kRows) * kBlocks;
#pragma unroll
        for (int r = 0; r < T / 2; ++r) acc[r] = 0.f;
#pragma unroll 1
        for (int kb = kb0; kb < kb1; ++kb, ++c) {
            if (c & 1)
                step(c, __ldg(sRow + kb), fragB, fragA);
            else
                step(c, __ldg(sRow + kb), fragA, fragB);
        }
        if (kb1 < kBlocks) {
            if (TRT_GEMMA4_SOL & 8) continue;  // (probe 8: no fix-up, wrong results)
            // Not the tile's last piece (only ever this CTA's first): publish it for the owner.
            publishPartial<T>(acc, skPartial, skFlags, cta, cw, tid);
            continue;
        }
        if (kb0 > 0 && !(TRT_GEMMA4_SOL & (8 | 256))) {  // (probe 256: no waits and no partials read)
            // The tile's last piece (this CTA's last): add the LOWER-index CTAs' partials of it, nearest first.
            const int nParts = partnerCount(cta, tile * kBlocks, unitStart);
            addPartials<T>(acc, skPartial, skFlags, cta - 1, nParts, cw, tid);
        }
        if (seg + 1 < nSeg) {
            storeAccTile<T>(Y, acc, 1.f, M, N, n0 + 64 * cw + feat, m0 + 2 * t);  // a whole tile: the ring is busy
        } else {
            storeLast = true;
        }
    }
    if (stages > 0 && cw == 0) waitTurn(cw);  // takes warpgroup 1's last pass: the turn barriers end balanced
    allowDependents();
    if (!storeLast) return;
    // The token-tile kernel's epilogue: the BF16 tile staged as [token][64 features] (rows padded to 144 B), then
    // 16-byte pieces, each token's 64 features 128 contiguous bytes of Y.
    namedBarrier(1, 256);  // both consumer warpgroups are past their last wgmma: the stage ring is free
    uint8_t* ep = smem + cw * (T * Sh::EPI_ROW);
#pragma unroll
    for (int j = 0; j < T / 8; ++j) {
        uint8_t* p = ep + (8 * j + 2 * t) * Sh::EPI_ROW + feat * 2;
        *reinterpret_cast<__nv_bfloat16*>(p) = __float2bfloat16_rn(acc[4 * j]);
        *reinterpret_cast<__nv_bfloat16*>(p + Sh::EPI_ROW) = __float2bfloat16_rn(acc[4 * j + 1]);
        *reinterpret_cast<__nv_bfloat16*>(p + 16) = __float2bfloat16_rn(acc[4 * j + 2]);
        *reinterpret_cast<__nv_bfloat16*>(p + Sh::EPI_ROW + 16) = __float2bfloat16_rn(acc[4 * j + 3]);
    }
    namedBarrier(2 + cw, 128);
#pragma unroll 1
    for (int idx = tid; idx < T * 8; idx += 128) {
        const int tok = idx >> 3, q = idx & 7;
        const int m = m0 + tok, n = n0 + 64 * cw + 8 * q;
        if (m < M && n < N)
            *reinterpret_cast<uint4*>(Y + static_cast<size_t>(m) * N + n) =
                *reinterpret_cast<const uint4*>(ep + tok * Sh::EPI_ROW + q * 16);
    }
#elif defined(__CUDA_ARCH__)
    __trap();
#endif
}

// ---- host ------------------------------------------------------------------------------------------------------

PFN_cuTensorMapEncodeTiled_v12000 tensorMapEncoder() {
    static const PFN_cuTensorMapEncodeTiled_v12000 fn = [] {
        void* p = nullptr;
        cudaDriverEntryPointQueryResult q = cudaDriverEntryPointSymbolNotFound;
        if (cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &p, 12000, cudaEnableDefault, &q) !=
                cudaSuccess ||
            q != cudaDriverEntryPointSuccess)
            return static_cast<PFN_cuTensorMapEncodeTiled_v12000>(nullptr);
        return reinterpret_cast<PFN_cuTensorMapEncodeTiled_v12000>(p);
    }();
    return fn;
}

// 2-D row-major tensor [outer][inner] with rows of rowBytes, box [boxOuter][boxInner], zero fill outside.
bool makeTensorMap(CUtensorMap* map, CUtensorMapDataType type, const void* base, uint64_t inner, uint64_t outer,
                   uint64_t rowBytes, uint32_t boxInner, uint32_t boxOuter, CUtensorMapSwizzle swizzle) {
    const PFN_cuTensorMapEncodeTiled_v12000 encode = tensorMapEncoder();
    if (encode == nullptr) return false;
    const cuuint64_t dims[2] = {inner, outer};
    const cuuint64_t strides[1] = {rowBytes};
    const cuuint32_t box[2] = {boxInner, boxOuter};
    const cuuint32_t elementStrides[2] = {1, 1};
    return encode(map, type, 2, const_cast<void*>(base), dims, strides, box, elementStrides,
                  CU_TENSOR_MAP_INTERLEAVE_NONE, swizzle, CU_TENSOR_MAP_L2_PROMOTION_L2_256B,
                  CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE) == CUDA_SUCCESS;
}

// The persistent kernels take the tail map only where at most half the last token tile exists: H200, same-call A/B
// (bench/NOTES_gemm.md v26), µs, zero fill -> tail map: qkv M = 257 / 300 68.3 / 56.8-58.8 -> 45.8-45.9 / 49.6-56.4,
// qkv_global 97.1-99.2 / 79.5-83.0 -> 61.5-62.3 / 65.6-66.5; qkv_global M = 900 (132 of 256 tokens) measured
// 117-128 -> 130-136 once. With most of the tile there the zero fill is small anyway. 0 = the full map for every tile.
int persistentTailRows(int M, int T) { return M % T <= T / 2 ? M % T : 0; }

// The token maps of X [M][K] with T-token boxes (64 k wide, 128-byte swizzle): tmX for whole tiles and tmXTail for
// the last one, whose box has only its tailRows tokens (0: no tail map, tmXTail = tmX, never used).
bool makeTokenMaps(CUtensorMap* tmX, CUtensorMap* tmXTail, const void* X, int M, int K, int T, int tailRows) {
    if (!makeTensorMap(tmX, CU_TENSOR_MAP_DATA_TYPE_BFLOAT16, X, K, M, 2ull * K, 64, T, CU_TENSOR_MAP_SWIZZLE_128B))
        return false;
    *tmXTail = *tmX;
    return tailRows == 0 || makeTensorMap(tmXTail, CU_TENSOR_MAP_DATA_TYPE_BFLOAT16, X, K, M, 2ull * K, 64, tailRows,
                                          CU_TENSOR_MAP_SWIZZLE_128B);
}

cudaError_t launchWide(const void* X, const uint8_t* W, const float* S, void* Y, int M, int N, int K,
                       cudaStream_t stream) {
    CUtensorMap tmW, tmX, tmXTail;
    const int tailRows = persistentTailRows(M, WideShape::T);
    if (!makeTensorMap(&tmW, CU_TENSOR_MAP_DATA_TYPE_UINT8, W, K, N, K, 64, kRows, CU_TENSOR_MAP_SWIZZLE_64B) ||
        !makeTokenMaps(&tmX, &tmXTail, X, M, K, WideShape::T, tailRows))
        return cudaErrorInvalidValue;
    const int tilesN = (N + kRows - 1) / kRows, tilesT = (M + WideShape::T - 1) / WideShape::T;
    const long long tiles = static_cast<long long>(tilesN) * tilesT;
    if (tiles > 2147483647ll) return cudaErrorInvalidValue;
    const int grid = static_cast<int>(std::min<long long>(tiles, smCount()));
    const cudaError_t err =
        cudaFuncSetAttribute(wgmmaWideKernel, cudaFuncAttributeMaxDynamicSharedMemorySize, WideShape::SMEM);
    if (err != cudaSuccess) return err;
    return launch(wgmmaWideKernel, dim3(grid), 384, WideShape::SMEM, stream, tmW, tmX, tmXTail, S,
                  static_cast<__nv_bfloat16*>(Y), M, N, K, tilesN, tilesT, tailRows);
}

// A stream-K launch's flags and partials in `workspace` (streamKBytes(grid, T) bytes). Flags: the caller's semaphores
// (zero, and left zero: each owner resets the flags it consumed), so the launch keeps PDL (`own`); else the
// workspace's flag area, zeroed here, and a plain launch (the memset must be complete before any CTA can set a flag).
cudaError_t streamKFlags(void* workspace, int* sem, int grid, cudaStream_t stream, int*& flags, float*& partials,
                         bool& own) {
    partials = reinterpret_cast<float*>(static_cast<uint8_t*>(workspace) + streamKFlagBytes(grid));
    own = sem != nullptr && 2 * grid <= kBlockFp8GemmSemaphores;
    flags = own ? sem : static_cast<int*>(workspace);
    return own ? cudaSuccess : cudaMemsetAsync(flags, 0, static_cast<size_t>(grid) * 2 * sizeof(int), stream);
}

// The stream-K kernel with T tokens per tile; workspace holds streamKBytes(grid, T) bytes.
template <int T>
cudaError_t launchStreamK(const void* X, const uint8_t* W, const float* S, void* Y, void* workspace, int* sem, int M,
                          int N, int K, cudaStream_t stream) {
    if (workspace == nullptr) return cudaErrorInvalidValue;
    CUtensorMap tmW, tmX, tmXTail;
    const int tailRows = persistentTailRows(M, T);
    if (!makeTensorMap(&tmW, CU_TENSOR_MAP_DATA_TYPE_UINT8, W, K, N, K, 64, kRows, CU_TENSOR_MAP_SWIZZLE_64B) ||
        !makeTokenMaps(&tmX, &tmXTail, X, M, K, T, tailRows))
        return cudaErrorInvalidValue;
    const int tilesN = (N + kRows - 1) / kRows, tilesT = (M + T - 1) / T;
    const long long tiles = static_cast<long long>(tilesN) * tilesT;
    const long long kBlocks = (K + kKBlock - 1) / kKBlock;
    if (tiles * kBlocks > 2147483647ll) return cudaErrorInvalidValue;
    // One CTA per SM, never more CTAs than k-blocks in all.
    const int grid = static_cast<int>(std::min<long long>(tiles * kBlocks, smCount()));
    int* flags;
    float* partials;
    bool own;
    cudaError_t err = streamKFlags(workspace, sem, grid, stream, flags, partials, own);
    if (err != cudaSuccess) return err;
    err = cudaFuncSetAttribute(wgmmaStreamKKernel<T>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                               PersistShape<T>::SMEM);
    if (err != cudaSuccess) return err;
    return launchEx(own && usePdl(), wgmmaStreamKKernel<T>, dim3(grid), 384, PersistShape<T>::SMEM, stream, tmW, tmX,
                    tmXTail, S, static_cast<__nv_bfloat16*>(Y), flags, partials, M, N, K, tilesN, tilesT, tailRows);
}

// Stream-K over the token tiles (T = 32, 64 or 128; 128-row tiles); workspace holds streamKBytes(grid, T) bytes.
template <int T>
cudaError_t launchTokStreamK(const void* X, const uint8_t* W, const float* S, void* Y, void* workspace, int* sem,
                             int M, int N, int K, cudaStream_t stream) {
    using Sh = WgShape<T, false>;
    if (workspace == nullptr) return cudaErrorInvalidValue;
    const int tailRows = M % T;  // the token-tile kernel's tail map: every partial last tile
    CUtensorMap tmW, tmX, tmXTail;
    if (!makeTensorMap(&tmW, CU_TENSOR_MAP_DATA_TYPE_UINT8, W, K, N, K, kKBlock, kRows, CU_TENSOR_MAP_SWIZZLE_128B) ||
        !makeTokenMaps(&tmX, &tmXTail, X, M, K, T, tailRows))
        return cudaErrorInvalidValue;
    const int tilesN = (N + kRows - 1) / kRows, tilesT = (M + T - 1) / T;
    const long long units = static_cast<long long>(tilesN) * tilesT * ((K + kKBlock - 1) / kKBlock);
    if (units > 2147483647ll) return cudaErrorInvalidValue;
    // One CTA per SM, never more CTAs than k-blocks in all.
    const int grid = static_cast<int>(std::min<long long>(units, smCount()));
    int* flags;
    float* partials;
    bool own;
    cudaError_t err = streamKFlags(workspace, sem, grid, stream, flags, partials, own);
    if (err != cudaSuccess) return err;
    err = cudaFuncSetAttribute(wgmmaTokStreamKKernel<T>, cudaFuncAttributeMaxDynamicSharedMemorySize, Sh::SMEM);
    if (err != cudaSuccess) return err;
    return launchEx(own && usePdl(), wgmmaTokStreamKKernel<T>, dim3(grid), 384, Sh::SMEM, stream, tmW, tmX, tmXTail,
                    S, static_cast<__nv_bfloat16*>(Y), flags, partials, M, N, K, tilesN, tilesT, tailRows);
}

template <int T, bool HALF, bool CLU = false>
cudaError_t launchTokTile(const void* X, const uint8_t* W, const float* S, void* Y, float* partial, int M, int N,
                          int K, int splits, bool cluster, cudaStream_t stream) {
    using Sh = WgShape<T, HALF>;
    // The last token tile's map when M % T != 0: a box of only the tokens that exist (see the kernel's producer).
    const int tailRows = M % T;
    CUtensorMap tmW, tmX, tmXTail;
    if (!makeTensorMap(&tmW, CU_TENSOR_MAP_DATA_TYPE_UINT8, W, K, N, K, kKBlock, Sh::ROWS,
                       CU_TENSOR_MAP_SWIZZLE_128B) ||
        !makeTokenMaps(&tmX, &tmXTail, X, M, K, T, tailRows))
        return cudaErrorInvalidValue;
    const int kBlocks = (K + kKBlock - 1) / kKBlock;
    const int kbPerSplit = (kBlocks + splits - 1) / splits;
    const int tilesN = (N + Sh::ROWS - 1) / Sh::ROWS, tilesT = (M + T - 1) / T;
    const long long ctas = static_cast<long long>(tilesN) * tilesT;
    if (ctas > 2147483647ll || splits > 65535) return cudaErrorInvalidValue;
    const cudaError_t err =
        cudaFuncSetAttribute(wgmmaGemmKernel<T, HALF, CLU>, cudaFuncAttributeMaxDynamicSharedMemorySize, Sh::SMEM);
    if (err != cudaSuccess) return err;
    return launchClusterEx(usePdl(), dim3(1, cluster ? splits : 1, 1), wgmmaGemmKernel<T, HALF, CLU>,
                           dim3(static_cast<unsigned>(ctas), splits), 384, Sh::SMEM, stream, tmW, tmX, tmXTail, S,
                           static_cast<__nv_bfloat16*>(Y), partial, M, N, K, tilesN, tilesT, kbPerSplit, tailRows);
}

// The token-tile kernel for token tile `tokTile` (16..128).
template <bool HALF>
cudaError_t launchTokTileFor(int tokTile, const void* X, const uint8_t* W, const float* S, void* Y, float* partial,
                             int M, int N, int K, int splits, bool cluster, cudaStream_t stream) {
    switch (tokTile) {
        case 16: return launchTokTile<16, HALF>(X, W, S, Y, partial, M, N, K, splits, cluster, stream);
        case 32: return launchTokTile<32, HALF>(X, W, S, Y, partial, M, N, K, splits, cluster, stream);
        case 64:  // the 64-row 64-token tiles' cluster split-K is its own instantiation (CLU, see the kernel)
            return cluster ? launchTokTile<64, HALF, HALF>(X, W, S, Y, partial, M, N, K, splits, cluster, stream)
                           : launchTokTile<64, HALF>(X, W, S, Y, partial, M, N, K, splits, cluster, stream);
        case 128: return launchTokTile<128, HALF>(X, W, S, Y, partial, M, N, K, splits, cluster, stream);
        default: return cudaErrorInvalidValue;
    }
}

}  // namespace

bool wgmmaAvailable() {
    // Per device, once: an sm_90 device, the driver's tensor-map encoder, and kernel code built from PTX >= 9.0 (a
    // PTX-only build for an older target JIT-compiled on Hopper would have no kernel body). Host queries only, so
    // it is safe inside CUDA graph capture.
    static std::atomic<int> known[64];  // 0 unknown, 1 yes, 2 no
    int dev = 0;
    if (cudaGetDevice(&dev) != cudaSuccess) return false;
    std::atomic<int>* slot = dev >= 0 && dev < 64 ? &known[dev] : nullptr;
    if (slot != nullptr && slot->load(std::memory_order_relaxed) != 0) return slot->load() == 1;
    bool ok = deviceMajor() == 9 && tensorMapEncoder() != nullptr;
    if (ok) {
        cudaFuncAttributes attr{};
        ok = cudaFuncGetAttributes(&attr, wgmmaGemmKernel<16, false>) == cudaSuccess && attr.ptxVersion >= 90 &&
             attr.binaryVersion >= 90;
        if (!ok) (void)cudaGetLastError();  // a missing kernel image must not stick to the next call's status
    }
    if (slot != nullptr) slot->store(ok ? 1 : 2);
    return ok;
}

size_t wgmmaStreamKWorkspace(int tokTile) { return streamKBytes(smCount(), tokTile); }

cudaError_t launchWgmmaGemm(const void* X, const uint8_t* W, const float* S, void* Y, float* partial, int* sem, int M,
                            int N, int K, int tokTile, int splits, bool cluster, bool half, cudaStream_t stream) {
    if (!wgmmaAvailable()) return cudaErrorNotSupported;
    if (splits == 0) {  // stream-K (128-row tiles): the persistent kernel or the token tiles; `partial` is the workspace
        if (partial == nullptr || half || cluster) return cudaErrorInvalidValue;
        switch (tokTile) {
            case 32: return launchTokStreamK<32>(X, W, S, Y, partial, sem, M, N, K, stream);
            case 64: return launchTokStreamK<64>(X, W, S, Y, partial, sem, M, N, K, stream);
            case 128: return launchTokStreamK<128>(X, W, S, Y, partial, sem, M, N, K, stream);
            case 256: return launchStreamK<256>(X, W, S, Y, partial, sem, M, N, K, stream);
            default: return cudaErrorInvalidValue;
        }
    }
    if (cluster && (splits < 2 || splits > 8 || partial != nullptr || tokTile > 128)) return cudaErrorInvalidValue;
    if (splits < 1 || (splits > 1 && !cluster) != (partial != nullptr)) return cudaErrorInvalidValue;
    if (tokTile == 256) {  // the persistent kernel, 128-row tiles only
        if (splits != 1 || half) return cudaErrorInvalidValue;
        return launchWide(X, W, S, Y, M, N, K, stream);
    }
    // half: 64-row tiles, the two consumer warpgroups splitting the k-blocks
    return half ? launchTokTileFor<true>(tokTile, X, W, S, Y, partial, M, N, K, splits, cluster, stream)
                : launchTokTileFor<false>(tokTile, X, W, S, Y, partial, M, N, K, splits, cluster, stream);
}

}  // namespace detail
}  // namespace trt_gemma4
