// CHECK(call): exit with the file, line, call and CUDA error string when a CUDA runtime call fails. For the
// standalone probe programs under scripts/ (sol_gemm_sm90.cu, probe_stream_bw.cu).
#pragma once

#include <cuda_runtime.h>

#include <cstdio>
#include <cstdlib>

#define CHECK(x)                                                                                  \
    do {                                                                                          \
        const cudaError_t e_ = (x);                                                               \
        if (e_ != cudaSuccess) {                                                                  \
            std::fprintf(stderr, "%s:%d %s: %s\n", __FILE__, __LINE__, #x, cudaGetErrorString(e_)); \
            std::exit(1);                                                                         \
        }                                                                                         \
    } while (0)
