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
#include <cuda_fp16.h>
#include <cuda_fp8.h>
#include <cuda_runtime.h>

#include <cstdio>
#include <cstdlib>
#include <string>
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

// What an FP16-operand kernel would pay first (probe 16): each activation row to FP16 times a power of two that keeps
// its largest magnitude under 2^15, the power kept per row. A timing stand-in (the same memory traffic, 4·M·K bytes)
// for the pre-pass of the FP16-operand experiment (bench/NOTES_gemm.md v21), which also scaled small rows up.
__global__ void __launch_bounds__(256) rowPow2ToF16(const __nv_bfloat16* __restrict__ X, __half* __restrict__ X16,
                                                    float* __restrict__ rowScale, int K) {
    const __nv_bfloat16* x = X + static_cast<size_t>(blockIdx.x) * K;
    __half* y = X16 + static_cast<size_t>(blockIdx.x) * K;
    float m = 0.f;
    for (int i = threadIdx.x * 8; i < K; i += 256 * 8) {
        const uint4 v = *reinterpret_cast<const uint4*>(x + i);
        const __nv_bfloat16* b = reinterpret_cast<const __nv_bfloat16*>(&v);
        for (int j = 0; j < 8; ++j) m = fmaxf(m, fabsf(__bfloat162float(b[j])));
    }
    for (int o = 16; o > 0; o >>= 1) m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, o));
    __shared__ float red[8];
    if ((threadIdx.x & 31) == 0) red[threadIdx.x >> 5] = m;
    __syncthreads();
    m = red[0];
    for (int w = 1; w < 8; ++w) m = fmaxf(m, red[w]);
    const int e = m > 0.f ? max(0, ilogbf(m) - 14) : 0;
    const float inv = ldexpf(1.f, -e);
    for (int i = threadIdx.x * 8; i < K; i += 256 * 8) {
        const uint4 v = *reinterpret_cast<const uint4*>(x + i);
        const __nv_bfloat16* b = reinterpret_cast<const __nv_bfloat16*>(&v);
        uint4 o;
        __half* h = reinterpret_cast<__half*>(&o);
        for (int j = 0; j < 8; ++j) h[j] = __float2half_rn(__bfloat162float(b[j]) * inv);
        *reinterpret_cast<uint4*>(y + i) = o;
    }
    if (threadIdx.x == 0) rowScale[blockIdx.x] = ldexpf(1.f, e);
}

// Gaussian-like data (SOL_DATA=normal): x ~ N(0, 1) in BF16, w ~ N(0, 120^2) clamped to the E4M3 range, the
// distributions of the GPU tests, instead of masked random bytes.
__global__ void fillNormal(uint8_t* p, size_t n, uint32_t seed, bool fp8) {
    for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < n; i += size_t(gridDim.x) * blockDim.x) {
        uint32_t a = static_cast<uint32_t>(i) * 2654435761u ^ seed, b = a * 0x5bd1e995u ^ 0x9e3779b9u;
        a ^= a >> 15; a *= 0x2c1b3c6du; a ^= a >> 12;
        b ^= b >> 13; b *= 0x297a2d39u; b ^= b >> 15;
        const float u1 = (static_cast<float>(a >> 8) + 1.f) * (1.f / 16777216.f);
        const float u2 = static_cast<float>(b >> 8) * (1.f / 16777216.f);
        const float z = sqrtf(-2.f * logf(u1)) * cospif(2.f * u2);
        if (fp8) {
            p[i] = __nv_fp8_e4m3(fminf(fmaxf(120.f * z, -448.f), 448.f)).__x;
        } else {
            reinterpret_cast<__nv_bfloat16*>(p)[i] = __float2bfloat16_rn(z);
        }
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
            const char* data = std::getenv("SOL_DATA");
            if (data != nullptr && std::string(data) == "normal") {
                fillNormal<<<1024, 256>>>(X, size_t(M) * K, 1u, false);
                fillNormal<<<1024, 256>>>(W, size_t(N) * K, 2u, true);
                fillNormal<<<1024, 256>>>(Wb, size_t(N) * K, 3u, false);
            } else {
                fillRandom<<<1024, 256>>>(X, size_t(M) * K * 2, 1u, 0xBF);
                fillRandom<<<1024, 256>>>(W, size_t(N) * K, 2u, 0xF7);
                fillRandom<<<1024, 256>>>(Wb, size_t(N) * K * 2, 3u, 0xBF);
            }
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
            float prepass = 0.f;
            if (TRT_GEMMA4_SOL & 16) {
                uint8_t* x16;
                float* rs;
                CHECK(cudaMalloc(&x16, size_t(M) * K * 2));
                CHECK(cudaMalloc(&rs, size_t(M) * 4));
                prepass = timeUs(
                    [&] {
                        rowPow2ToF16<<<M, 256>>>(reinterpret_cast<const __nv_bfloat16*>(X),
                                                 reinterpret_cast<__half*>(x16), rs, K);
                    },
                    iters);
                CHECK(cudaFree(x16));
                CHECK(cudaFree(rs));
            }
            CHECK(cudaDeviceSynchronize());
            std::printf(
                "{\"probe\": %d, \"data\": \"%s\", \"shape\": \"%s\", \"M\": %d, \"tile\": %d, \"splits\": %d, \"ours_us\": %.2f, "
                "\"cublas_us\": %.2f, \"ratio\": %.3f, \"prepass_us\": %.2f}\n",
                TRT_GEMMA4_SOL, data != nullptr ? data : "bytes", s.name, M, tile, splits, ours, cublas, cublas / ours, prepass);
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
