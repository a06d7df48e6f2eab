// Torch binding of the block-FP8 weight-only GEMM (plugins/kernels/block_fp8_gemm.cuh).
//
//   trt_gemma4::block_fp8_gemm(Tensor x, Tensor w, Tensor s) -> Tensor
//       x bf16 [..., K], w float8_e4m3fn [N, K], s float32 with ceil(N/128)*ceil(K/128) elements
//       ([nb, kb], [nb, 1, kb, 1], or 0-D for a single block); returns bf16 [..., N].
//       Follows the measured dispatch: our kernels, or for very large M a split dequantize + one cuBLAS BF16 GEMM
//       with K doubled (block_fp8_gemm.cuh, blockFp8DequantizeSplit), which keeps the FP32-scale accuracy.
//   trt_gemma4::block_fp8_gemm_out(x, w, s, Tensor(a!) out) -> Tensor(a!)     writes into `out`
//   trt_gemma4::block_fp8_gemm_config(x, w, s, kernel, tile, row_groups, warps, splits, depth=3, out=None,
//                                     semaphores=True, cluster=False, prefetch=False)
//       our kernels with an explicit configuration (benchmarks, tuning and tests of every code path);
//       semaphores=False: stream-K zeroes its flags with a memset instead; cluster=True: split-K summed across a
//       thread-block cluster inside the GEMM instead of the workspace and reduce pass; prefetch=True: the streaming
//       16-token tiles ask L2 for their later k-blocks before the dependency wait (block_fp8_gemm.cuh).
// Stream-K calls pass the GEMM semaphores (see semaphoresFor: per stream; in graph capture per capture and stream).
//   trt_gemma4::block_fp8_gemm_default_config(int M, int N, int K) -> int[]
//       [kernel, tile, row_groups, warps, splits, depth, prefers_dequant, cluster, prefetch] of the default dispatch
//       on this device.
//   trt_gemma4::block_fp8_dequantize(Tensor w, Tensor s) -> Tensor    bf16 [N, K] = w · s rounded to BF16
#include <ATen/ATen.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <map>
#include <mutex>
#include <optional>
#include <utility>
#include <vector>

#include "block_fp8_gemm.cuh"
#include "check.h"

namespace {

int64_t ceilDiv(int64_t a, int64_t b) { return (a + b - 1) / b; }

// The GEMM's semaphores (only stream-K configurations use them; every call leaves them zero, and a stream-K GEMM
// touches them only after waiting for the kernel before it, so the GEMMs of one stream can share them).
//  * Outside CUDA graph capture: one buffer per (device, stream), zeroed once (on the stream, so before the first
//    GEMM that uses it); one per stream because GEMMs on different streams may overlap.
//  * During capture: one slice per (capture sequence, stream) of a per-device pool that was zeroed outside any
//    capture (made, and waited for, at the first stream-K call on that device outside capture) and is never handed
//    to another capture: replays of different graphs on different streams never share flags, and each replay leaves
//    them zero for the next (the launches of an instantiated graph are ordered, and torch's CUDAGraph instantiates
//    each capture once). With no pool yet, or the pool spent (kCaptureSlices captures with stream-K GEMMs per
//    device), captured GEMMs take the memset form (flags in their own workspace, launched without programmatic
//    dependent launch: ~4 µs more, bench/NOTES_gemm.md v28).
// Kept for the life of the process (the maps are never destroyed: no frees racing the CUDA teardown at exit; 16 KB
// per stream ever used, 4 MB per device).
constexpr int64_t kCaptureSlices = 256;

int* semaphoresFor(const at::Device& device, cudaStream_t stream, const trt_gemma4::BlockFp8GemmConfig& config) {
    if (config.kernel != trt_gemma4::BlockFp8GemmKernel::kWgmma || config.splits != 0) return nullptr;
    cudaStreamCaptureStatus capture = cudaStreamCaptureStatusNone;
    unsigned long long captureId = 0;
    if (cudaStreamGetCaptureInfo(stream, &capture, &captureId) != cudaSuccess) {
        (void)cudaGetLastError();
        return nullptr;
    }
    struct Pool {
        at::Tensor flags;
        int64_t used = 0;
        std::map<std::pair<unsigned long long, cudaStream_t>, int*> slices;  // (capture sequence, stream) -> slice
    };
    static std::mutex mu;
    static auto* buffers = new std::map<std::pair<int, cudaStream_t>, at::Tensor>();
    static auto* pools = new std::map<int, Pool>();
    const std::lock_guard<std::mutex> lock(mu);
    const int dev = static_cast<int>(device.index());
    const auto options = at::TensorOptions().dtype(at::kInt).device(device);
    if (capture != cudaStreamCaptureStatusNone) {
        auto pool = pools->find(dev);
        if (capture != cudaStreamCaptureStatusActive || pool == pools->end()) return nullptr;
        Pool& p = pool->second;
        const auto key = std::make_pair(captureId, stream);
        auto slice = p.slices.find(key);
        if (slice != p.slices.end()) return slice->second;
        if (p.used >= kCaptureSlices) return nullptr;
        int* flags = p.flags.data_ptr<int>() + p.used++ * trt_gemma4::kBlockFp8GemmSemaphores;
        p.slices.emplace(key, flags);
        return flags;
    }
    if (pools->find(dev) == pools->end()) {
        Pool p;
        p.flags = at::zeros({kCaptureSlices * trt_gemma4::kBlockFp8GemmSemaphores}, options);
        // Zero before any capture on another stream can use it.
        TG4_CHECK(cudaStreamSynchronize(stream) == cudaSuccess, "block_fp8_gemm: zeroing the semaphore pool failed");
        pools->emplace(dev, std::move(p));
    }
    const auto key = std::make_pair(dev, stream);
    auto it = buffers->find(key);
    if (it == buffers->end())
        it = buffers->emplace(key, at::zeros({trt_gemma4::kBlockFp8GemmSemaphores}, options)).first;
    return it->second.data_ptr<int>();
}

// Checks w and s and returns s as a contiguous [ceil(N/128), ceil(K/128)] view.
at::Tensor checkWeight(const at::Tensor& w, const at::Tensor& s) {
    TG4_CHECK(w.is_cuda() && s.is_cuda(), "block_fp8_gemm: w and s must be CUDA tensors");
    TG4_CHECK(w.scalar_type() == at::kFloat8_e4m3fn, "block_fp8_gemm: w must be float8_e4m3fn, got ",
              w.scalar_type());
    TG4_CHECK(w.dim() == 2, "block_fp8_gemm: w must be [N, K], got ", w.sizes());
    TG4_CHECK(w.is_contiguous(), "block_fp8_gemm: w must be contiguous");
    const int64_t N = w.size(0), K = w.size(1);
    TG4_CHECK(N % 16 == 0 && K % 16 == 0 && N > 0 && K > 0, "block_fp8_gemm: N and K must be positive multiples of 16, got N=",
              N, " K=", K);
    TG4_CHECK(s.scalar_type() == at::kFloat, "block_fp8_gemm: s must be float32, got ", s.scalar_type());
    const int64_t nb = ceilDiv(N, 128), kb = ceilDiv(K, 128);
    TG4_CHECK(s.numel() == nb * kb, "block_fp8_gemm: s must hold ceil(N/128)*ceil(K/128) = ", nb, "*", kb,
              " scales, got shape ", s.sizes());
    TG4_CHECK(s.device() == w.device(), "block_fp8_gemm: w and s on different devices");
    return s.reshape({nb, kb}).contiguous();
}

// y_out, when given, must be a contiguous bf16 tensor of the output's size; it is written in place (tests poison
// it with NaN first to prove every element is written).
at::Tensor run(const at::Tensor& x, const at::Tensor& w, const at::Tensor& s, const trt_gemma4::BlockFp8GemmConfig* config,
               const at::Tensor* yOut, bool useSemaphores = true) {
    const at::Tensor s2 = checkWeight(w, s);
    TG4_CHECK(x.is_cuda() && x.device() == w.device(), "block_fp8_gemm: x must be on w's CUDA device");
    TG4_CHECK(x.scalar_type() == at::kBFloat16, "block_fp8_gemm: x must be bfloat16, got ", x.scalar_type());
    const int64_t N = w.size(0), K = w.size(1);
    TG4_CHECK(x.dim() >= 1 && x.size(-1) == K, "block_fp8_gemm: x must be [..., K=", K, "], got ", x.sizes());
    const c10::cuda::CUDAGuard guard(x.device());
    std::vector<int64_t> outShape(x.sizes().begin(), x.sizes().end());
    outShape.back() = N;
    const at::Tensor x2 = x.reshape({-1, K}).contiguous();
    const int64_t M = x2.size(0);
    at::Tensor y;
    if (yOut != nullptr) {
        TG4_CHECK(yOut->scalar_type() == at::kBFloat16 && yOut->is_contiguous() && yOut->numel() == M * N &&
                      yOut->device() == x.device(),
                  "block_fp8_gemm: out must be a contiguous bf16 tensor of ", M * N, " elements on x's device");
        y = yOut->view({M, N});
    } else {
        y = at::empty({M, N}, x.options());
    }
    if (M == 0) return y.view(outShape);
    TG4_CHECK(M <= INT32_MAX && N <= INT32_MAX && K <= INT32_MAX, "block_fp8_gemm: sizes exceed int32");
    const int m = static_cast<int>(M), n = static_cast<int>(N), k = static_cast<int>(K);
    cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
    if (config == nullptr && trt_gemma4::blockFp8WoGemmPrefersDequant(m, n, k)) {
        // Large M: one cuBLAS BF16 GEMM [x | x] · [w_hi | w_lo]ᵀ (see blockFp8DequantizeSplit).
        at::Tensor w2 = at::empty({N, 2 * K}, x.options());
        const cudaError_t err = trt_gemma4::blockFp8DequantizeSplit(
            reinterpret_cast<const __nv_fp8_e4m3*>(w.data_ptr()), s2.data_ptr<float>(),
            reinterpret_cast<__nv_bfloat16*>(w2.data_ptr()), n, k, stream);
        TG4_CHECK(err == cudaSuccess, "block_fp8_dequantize_split failed: ", cudaGetErrorString(err));
        at::linear_out(y, at::cat({x2, x2}, 1), w2);
        return y.view(outShape);
    }
    const trt_gemma4::BlockFp8GemmConfig c = config ? *config : trt_gemma4::blockFp8WoGemmDefaultConfig(m, n, k);
    const size_t wsBytes = trt_gemma4::blockFp8WoGemmWorkspaceFor(c, m, n, k);
    at::Tensor ws = at::empty({static_cast<int64_t>(wsBytes > 0 ? wsBytes : 16)}, x.options().dtype(at::kByte));
    const cudaError_t err = trt_gemma4::blockFp8WoGemmWithConfig(
        reinterpret_cast<const __nv_bfloat16*>(x2.data_ptr()), reinterpret_cast<const __nv_fp8_e4m3*>(w.data_ptr()),
        s2.data_ptr<float>(), reinterpret_cast<__nv_bfloat16*>(y.data_ptr()), m, n, k, c, ws.data_ptr(), wsBytes,
        stream, useSemaphores ? semaphoresFor(x.device(), stream, c) : nullptr);
    TG4_CHECK(err == cudaSuccess, "block_fp8_gemm failed (M=", M, " N=", N, " K=", K, " kernel=",
              static_cast<int>(c.kernel), " tile=", c.tile, " splits=", c.splits, " cluster=", c.cluster,
              " prefetch=", c.prefetch, " row_groups=", c.rowGroups, "): ", cudaGetErrorString(err));
    return y.view(outShape);
}

at::Tensor blockFp8Gemm(const at::Tensor& x, const at::Tensor& w, const at::Tensor& s) {
    return run(x, w, s, nullptr, nullptr);
}

at::Tensor& blockFp8GemmOut(const at::Tensor& x, const at::Tensor& w, const at::Tensor& s, at::Tensor& y) {
    run(x, w, s, nullptr, &y);
    return y;
}

at::Tensor blockFp8GemmConfig(const at::Tensor& x, const at::Tensor& w, const at::Tensor& s, int64_t kernel,
                              int64_t tile, int64_t rowGroups, int64_t warps, int64_t splits, int64_t depth,
                              const std::optional<at::Tensor>& y, bool semaphores, bool cluster,
                              bool prefetch) {
    trt_gemma4::BlockFp8GemmConfig c;
    c.kernel = static_cast<trt_gemma4::BlockFp8GemmKernel>(kernel);
    c.tile = static_cast<int>(tile);
    c.rowGroups = static_cast<int>(rowGroups);
    c.warps = static_cast<int>(warps);
    c.splits = static_cast<int>(splits);
    c.depth = static_cast<int>(depth);
    c.cluster = cluster ? 1 : 0;
    c.prefetch = prefetch ? 1 : 0;
    return run(x, w, s, &c, y.has_value() ? &*y : nullptr, semaphores);
}

std::vector<int64_t> blockFp8GemmDefaultConfig(int64_t M, int64_t N, int64_t K) {
    const trt_gemma4::BlockFp8GemmConfig c =
        trt_gemma4::blockFp8WoGemmDefaultConfig(static_cast<int>(M), static_cast<int>(N), static_cast<int>(K));
    const bool dq =
        trt_gemma4::blockFp8WoGemmPrefersDequant(static_cast<int>(M), static_cast<int>(N), static_cast<int>(K));
    return {static_cast<int64_t>(c.kernel), c.tile, c.rowGroups, c.warps, c.splits, c.depth, dq ? 1 : 0, c.cluster,
            c.prefetch};
}

at::Tensor blockFp8Dequantize(const at::Tensor& w, const at::Tensor& s) {
    const at::Tensor s2 = checkWeight(w, s);
    const c10::cuda::CUDAGuard guard(w.device());
    at::Tensor wd = at::empty(w.sizes(), w.options().dtype(at::kBFloat16));
    const cudaError_t err = trt_gemma4::blockFp8Dequantize(
        reinterpret_cast<const __nv_fp8_e4m3*>(w.data_ptr()), s2.data_ptr<float>(),
        reinterpret_cast<__nv_bfloat16*>(wd.data_ptr()), static_cast<int>(w.size(0)), static_cast<int>(w.size(1)),
        c10::cuda::getCurrentCUDAStream());
    TG4_CHECK(err == cudaSuccess, "block_fp8_dequantize failed: ", cudaGetErrorString(err));
    return wd;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(trt_gemma4, m) {
    m.def("block_fp8_gemm(Tensor x, Tensor w, Tensor s) -> Tensor");
    m.def(
        "block_fp8_gemm_config(Tensor x, Tensor w, Tensor s, int kernel, int tile, int row_groups, int warps, "
        "int splits, int depth=3, Tensor(a!)? out=None, bool semaphores=True, bool cluster=False, bool prefetch=False) "
        "-> Tensor");
    m.def("block_fp8_gemm_out(Tensor x, Tensor w, Tensor s, Tensor(a!) out) -> Tensor(a!)");
    m.def("block_fp8_dequantize(Tensor w, Tensor s) -> Tensor");
    m.def("block_fp8_gemm_default_config(int M, int N, int K) -> int[]", &blockFp8GemmDefaultConfig);
}

TORCH_LIBRARY_IMPL(trt_gemma4, CUDA, m) {
    m.impl("block_fp8_gemm", &blockFp8Gemm);
    m.impl("block_fp8_gemm_config", &blockFp8GemmConfig);
    m.impl("block_fp8_gemm_out", &blockFp8GemmOut);
    m.impl("block_fp8_dequantize", &blockFp8Dequantize);
}
