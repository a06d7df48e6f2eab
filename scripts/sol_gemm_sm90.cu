// Speed-of-light probe for the Hopper wgmma GEMM kernels (see scripts/sol_gemm_sm90.sh): times one kernel
// configuration against cuBLAS BF16 on the same shapes in the same process. Built once per TRT_GEMMA4_SOL value
// (block_fp8_gemm_sm90.cu: which part of the consumer's work is removed); the probe builds compute wrong results
// on purpose, so only the timings mean anything.
//
//   sol_gemm_sm90 TILE SPLITS M [M ...]    prints one JSON object per (shape, M)
#include "../plugins/kernels/block_fp8_gemm.cuh"
#include "cuda_check.h"

#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdio>
#include <cstdlib>
#include <vector>

#ifndef TRT_GEMMA4_SOL  // -DTRT_GEMMA4_SOL=N reaches every translation unit of the build, this one included
#define TRT_GEMMA4_SOL 0
#endif

namespace {

__global__ void fillRandom(uint8_t* p, size_t n, uint32_t seed, uint8_t andMask) {
    for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < n; i += size_t(gridDim.x) * blockDim.x) {
        uint32_t x = static_cast<uint32_t>(i) * 2654435761u ^ seed;
        x ^= x >> 13;
        x *= 0x5bd1e995u;
        x ^= x >> 15;
        p[i] = static_cast<uint8_t>(x) & andMask;
    }
}

template <class F>
float timeUs(F&& f, int iters) {
    for (int i = 0; i < 3; ++i) f();
    cudaEvent_t a, b;
    CHECK(cudaEventCreate(&a));
    CHECK(cudaEventCreate(&b));
    CHECK(cudaEventRecord(a));
    for (int i = 0; i < iters; ++i) f();
    CHECK(cudaEventRecord(b));
    CHECK(cudaEventSynchronize(b));
    float ms = 0.f;
    CHECK(cudaEventElapsedTime(&ms, a, b));
    CHECK(cudaEventDestroy(a));
    CHECK(cudaEventDestroy(b));
    return 1000.f * ms / iters;
}

}  // namespace

int main(int argc, char** argv) {
    if (argc < 4) {
        std::fprintf(stderr, "usage: %s TILE SPLITS M [M ...]\n", argv[0]);
        return 2;
    }
    const int tile = std::atoi(argv[1]), splits = std::atoi(argv[2]);
    struct Shape {
        const char* name;
        int n, k;
    };
    std::vector<Shape> shapes = {{"qkv_sliding", 8192, 3840}, {"qkv_global", 8704, 3840}, {"o_sliding", 3840, 4096},
                                 {"o_global", 3840, 8192},    {"gate_up", 30720, 3840},   {"down", 3840, 15360}};
    if (const char* only = std::getenv("SOL_SHAPE")) {  // "NxK": one other shape instead
        int n = 0, k = 0;
        if (std::sscanf(only, "%dx%d", &n, &k) != 2) return 2;
        shapes = {{only, n, k}};
    }
    cublasHandle_t h;
    if (cublasCreate(&h) != CUBLAS_STATUS_SUCCESS) return 1;
    for (int a = 3; a < argc; ++a) {
        const int M = std::atoi(argv[a]);
        for (const Shape& s : shapes) {
            const int N = s.n, K = s.k;
            uint8_t *X, *W, *Wb, *Y, *ws = nullptr;
            float* S;
            CHECK(cudaMalloc(&X, size_t(M) * K * 2));
            CHECK(cudaMalloc(&W, size_t(N) * K));
            CHECK(cudaMalloc(&Wb, size_t(N) * K * 2));
            CHECK(cudaMalloc(&Y, size_t(M) * N * 2));
            const int sRows = (N + 127) / 128, sCols = (K + 127) / 128;
            CHECK(cudaMalloc(&S, size_t(sRows) * sCols * 4));
            // BF16 bytes with the top exponent bits cleared stay finite; FP8 bytes masked likewise.
            fillRandom<<<1024, 256>>>(X, size_t(M) * K * 2, 1u, 0xBF);
            fillRandom<<<1024, 256>>>(W, size_t(N) * K, 2u, 0xF7);
            fillRandom<<<1024, 256>>>(Wb, size_t(N) * K * 2, 3u, 0xBF);
            std::vector<float> hs(size_t(sRows) * sCols);
            for (size_t i = 0; i < hs.size(); ++i) hs[i] = 1e-3f * (1.f + 0.001f * float(i % 97));
            CHECK(cudaMemcpy(S, hs.data(), hs.size() * 4, cudaMemcpyHostToDevice));
            trt_gemma4::BlockFp8GemmConfig c;
            c.kernel = trt_gemma4::BlockFp8GemmKernel::kWgmma;
            c.tile = tile;
            c.splits = splits;
            const size_t wsBytes = trt_gemma4::blockFp8WoGemmWorkspaceFor(c, M, N, K);
            if (wsBytes) CHECK(cudaMalloc(&ws, wsBytes));
            const int iters = M >= 2048 ? 20 : 200;
            const float ours = timeUs(
                [&] {
                    CHECK(trt_gemma4::blockFp8WoGemmWithConfig(
                        reinterpret_cast<const __nv_bfloat16*>(X), reinterpret_cast<const __nv_fp8_e4m3*>(W), S,
                        reinterpret_cast<__nv_bfloat16*>(Y), M, N, K, c, ws, wsBytes, nullptr));
                },
                iters);
            const float one = 1.f, zero = 0.f;
            // Y[M,N] row-major = X[M,K] · Wb[N,K]ᵀ  <=>  column-major Yᵀ[N,M] = Wbᵀ... : op(A)=Wbᵀ (N x K), B = Xᵀ.
            const float cublas = timeUs(
                [&] {
                    cublasGemmEx(h, CUBLAS_OP_T, CUBLAS_OP_N, N, M, K, &one, Wb, CUDA_R_16BF, K, X, CUDA_R_16BF, K,
                                 &zero, Y, CUDA_R_16BF, N, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
                },
                iters);
            CHECK(cudaDeviceSynchronize());
            std::printf(
                "{\"probe\": %d, \"shape\": \"%s\", \"M\": %d, \"tile\": %d, \"splits\": %d, \"ours_us\": %.2f, "
                "\"cublas_us\": %.2f, \"ratio\": %.3f}\n",
                TRT_GEMMA4_SOL, s.name, M, tile, splits, ours, cublas, cublas / ours);
            std::fflush(stdout);
            cudaFree(X);
            cudaFree(W);
            cudaFree(Wb);
            cudaFree(Y);
            cudaFree(S);
            if (ws) cudaFree(ws);
        }
    }
    cublasDestroy(h);
    return 0;
}
