// Block-FP8 weight-only GEMM (W8A16): Y = X · dequant(W, S)ᵀ.
//
//   X  bf16            [M, K]   row-major activations
//   W  float8_e4m3fn   [N, K]   row-major weights, the plain checkpoint layout (no offline re-layout)
//   S  float32         [ceil(N/128), ceil(K/128)]   one scale per 128x128 weight block, w ≈ q · s
//   Y  bf16            [M, N]   row-major
//
// Constraints: M ≥ 1; N and K multiples of 16 (partial 128-blocks at the right/bottom edges are allowed and
// read as zero-padded); X, W, Y 16-byte aligned; S contiguous.
//
// Numerics: the FP8 weights are converted exactly to BF16 (every E4M3 value, subnormals included, is a BF16
// value), the products run on the BF16 tensor cores (mma.sync m16n8k16) with FP32 accumulation, and the FP32
// block scale is applied to FP32 partial sums — never folded into BF16 weights — so w·s is NOT rounded to BF16:
//   * the streaming kernel (small M) accumulates each 128-wide K block into fresh FP32 registers and then does
//     acc += s · partial (DeepGEMM-style promotion);
//   * the tiled kernel (larger M) keeps its accumulator in units of the current block's scale and rescales it
//     by s_prev / s_cur (one FP32 multiply per accumulator per K block) when the scale changes, multiplying by the
//     last scale at the end. This is exact up to FP32 rounding, provided neighbouring block scales of one
//     128-row block are within ~1e30 of each other (true for any real checkpoint: s = amax / 448).
//   * the sm_90a wgmma kernels (kWgmma): token tiles 16-128 promote like the streaming kernel; the persistent
//     256-token kernel rescales like the tiled kernel (same range condition). Same products, same FP32
//     accumulation (wgmma, BF16 in).
// An E4M3 NaN byte (0x7F/0xFF) is not propagated (it decodes to ±480); checkpoints never hold NaN.
//
// The portable kernels (kStream, kTiled) use only sm_80+ instructions (mma.sync bf16, cp.async, fma.rn.bf16x2), so
// the same source builds for sm_80, sm_90(a), sm_100 and sm_120; on sm_90+ every kernel also uses programmatic
// dependent launch (griddepcontrol, guarded by __CUDA_ARCH__) so that a GEMM's weight prefetch overlaps the previous
// kernel's tail: every kernel reads W and S BEFORE waiting for the previous kernel in the stream, so W and S must
// not be written by the kernel launched just before the GEMM (constant weights; TRT_GEMMA4_NO_PDL=1 turns PDL off
// for callers that quantize on the fly). kWgmma (TMA, wgmma, setmaxnreg) exists only in sm_90a builds and runs only
// on sm_90 devices (cudaErrorNotSupported elsewhere; the default dispatch then keeps the portable kernels). The
// dispatch tables (tile shapes, split-K, strategy thresholds) were measured on an H200 (sm_90); other architectures
// get the portable tables, untuned.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp8.h>
#include <cuda_runtime.h>

#include <cstddef>

namespace trt_gemma4 {

// Which kernel a configuration runs.
enum class BlockFp8GemmKernel : int {
    kStream = 1,  // register-only weight streaming, weights straight from HBM into mma fragments (small M)
    kTiled = 2,   // cp.async multi-stage shared-memory tiles (larger M)
    kWgmma = 3,   // sm_90a only: TMA + warp-specialized wgmma, weights widened once per CTA tile
                  // (block_fp8_gemm_sm90.cu); `tile` is the token tile: 16, 32, 64, 128 or 256
    kBulk = 4,    // sm_90+: small M with the weights streamed through a shared-memory ring by cp.async.bulk
                  // (persistent CTAs, one producer warp); `tile` = token tiles of 8 (1 or 2), `warps` = consumer
                  // warps (1..8), `depth` = ring stages (2..8). Measured slower than kStream on an H200, so never
                  // chosen by the default dispatch (hand-set configurations only)
    kStreamSmem = 5,  // kStream with the weights and scales in flight in a per-warp shared-memory ring (cp.async)
                      // instead of registers; same fields and same results bit for bit (sm_80+)
};

// Tile shapes of the tiled kernel: index into this list in BlockFp8GemmConfig::tile.
//   tile  BN(weight rows) BM(tokens) warp tile (rows x tokens) stages
//   0     128             64          64 x 32                   4
//   1     128             128         64 x 64                   3
//   2     64              64          32 x 32                   4
//   3     128             256         64 x 64 (8 warps)         2
//   4     128             64          32 x 64                   4
//   5     128             32          32 x 32                   4
constexpr int kBlockFp8TiledTiles = 6;

// One launch configuration. Produced by blockFp8WoGemmDefaultConfig (measured dispatch) or set by hand for
// benchmarking/tuning (blockFp8WoGemmWithConfig).
struct BlockFp8GemmConfig {
    BlockFp8GemmKernel kernel = BlockFp8GemmKernel::kStream;
    int tile = 1;       // stream: token tiles of 8 per CTA (1, 2 or 4); tiled: tile index (see above);
                        // wgmma: tokens per CTA (16, 32, 64, 128; 256 = the persistent kernel, splits = 1);
                        // a CTA covers 128 weight rows (64 with rowGroups = 2)
    int rowGroups = 1;  // stream: 16-row weight groups per warp (1 or 2; 1 when tile = 4); wgmma token tiles 16-128:
                        // 1 = 128-row CTA tiles (the two consumer warpgroups side by side, 64 rows each), 2 = 64-row
                        // tiles whose two consumer warpgroups take alternate k-blocks and sum in shared memory (half
                        // the weights to widen per CTA, twice the CTAs); other kernels: 1
    int warps = 8;      // stream: warps per CTA, all on the same rows, splitting K (1..8); bulk: consumer warps
    int splits = 1;     // split-K across CTAs (1..16); > 1 needs the FP32 workspace and a reduce pass (unless cluster);
                        // wgmma 128-row tiles of 32, 64, 128 or 256 tokens only: 0 = stream-K (one CTA per SM,
                        // all tiles' k-blocks spread evenly over them, cut tiles combined in the kernel: the
                        // token-tile kernel's step for 32-128 tokens, the persistent kernel for 256; workspace:
                        // flags and one FP32 partial tile per SM)
    int depth = 3;      // stream: k-blocks in the register ring (DEPTH-1 in flight): 2 or 3 (tile 4: 2; tile 1: up to 4);
                        // streamSmem: ring stages, tile 1: 3-5 (row groups 2: 2-3), tile 2: 3-4 (row groups 2:
                        // 2-3), tile 4: 2-3;
                        // bulk: shared-memory ring stages (2..8)
    int cluster = 0;    // split-K (splits 2..8) of the kWgmma token tiles 16-128, sm_90 only: 1 = the splits of one
                        // output tile run as a thread-block cluster and sum their FP32 partials through distributed
                        // shared memory inside the GEMM (no workspace, no reduce pass; the same sums in the same
                        // order, so the same bits); 0 = FP32 partials in the workspace and the reduce pass
    int prefetch = 0;   // kStream with tile 2 (9-16 tokens), K a multiple of 128 and N of 16 * rowGroups only: 1 = each
                        // warp asks L2 for its later k-blocks (past the DEPTH-1 it loads) before waiting for the
                        // previous kernel, so they stream from HBM during that kernel's tail; the same results
};

// Semaphores: an optional int32 buffer of kBlockFp8GemmSemaphores entries, zeroed ONCE by its owner (e.g.
// cudaMemset right after allocation); every call leaves it zero again. With it, stream-K configurations (splits = 0)
// keep their flags there instead of zeroing them in the workspace with a memset before each call, so they keep
// programmatic dependent launch (qkv_global M = 256: 40.3 vs 46.7 µs on an H200). Two GEMMs that may run at the
// same time must not share a buffer (one per stream, or per TensorRT plugin instance and context). nullptr: the
// memset form (same results, bit for bit). (Summing split-K partials in the GEMM with these semaphores, by the last
// CTA of each tile, was measured too: 0.3-1 µs slower than the reduce pass at M = 128, so not kept.)
constexpr int kBlockFp8GemmSemaphores = 4096;

// The measured default configuration for a problem size on the current device.
BlockFp8GemmConfig blockFp8WoGemmDefaultConfig(int M, int N, int K);

// Workspace bytes blockFp8WoGemm needs for (M, N, K) with the default configuration on the current device
// (0 when no split-K is used or its splits sum inside a cluster). For a hand-set configuration use
// blockFp8WoGemmWorkspaceFor.
size_t blockFp8WoGemmWorkspace(int M, int N, int K);
size_t blockFp8WoGemmWorkspaceFor(const BlockFp8GemmConfig& config, int M, int N, int K);

// Y = X · dequant(W, S)ᵀ with the default configuration. Returns cudaErrorInvalidValue for bad sizes, alignment
// or a too-small workspace, else the launch status (asynchronous errors surface later, as usual).
cudaError_t blockFp8WoGemm(const __nv_bfloat16* X, const __nv_fp8_e4m3* W, const float* S, __nv_bfloat16* Y, int M,
                           int N, int K, void* workspace, size_t workspaceBytes, cudaStream_t stream,
                           int* semaphores = nullptr);

// Same with an explicit configuration (benchmarks and tuning).
cudaError_t blockFp8WoGemmWithConfig(const __nv_bfloat16* X, const __nv_fp8_e4m3* W, const float* S,
                                     __nv_bfloat16* Y, int M, int N, int K, const BlockFp8GemmConfig& config,
                                     void* workspace, size_t workspaceBytes, cudaStream_t stream,
                                     int* semaphores = nullptr);

// Dequantize to BF16 [N, K] (w·s computed in FP32 and rounded once to BF16, exactly the eager reference's BF16
// weight). Not used by the dispatch: a GEMM on it adds ~1.4e-3 relative error (w·s rounding) to the ~1.7e-3 of
// the BF16 output rounding.
cudaError_t blockFp8Dequantize(const __nv_fp8_e4m3* W, const float* S, __nv_bfloat16* Wout, int N, int K,
                               cudaStream_t stream);

// Strategy for very large M, where cuBLAS BF16 on tensor cores (wgmma) outruns our mma.sync kernels even at twice
// the work: write Wout [N, 2K] = [hi | lo] with hi = bf16(w·s), lo = bf16(w·s - hi); the caller then runs ONE
// BF16 GEMM [X | X] · Woutᵀ (K' = 2K, FP32 accumulation), which keeps ~16 bits of w·s. Workspace 4·N·K bytes.
cudaError_t blockFp8DequantizeSplit(const __nv_fp8_e4m3* W, const float* S, __nv_bfloat16* Wout, int N, int K,
                                    cudaStream_t stream);

// True where that split-dequantize + cuBLAS path measured faster than our kernels (large M, and never on sm_90,
// where the wgmma kernels win). Callers that own a BF16 GEMM (the torch op, the TensorRT plugin) follow it;
// blockFp8WoGemm itself always runs our kernels.
bool blockFp8WoGemmPrefersDequant(int M, int N, int K);

}  // namespace trt_gemma4
