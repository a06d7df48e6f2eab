set -u
export TRT_GEMMA4_CACHE=/tmp/tg4cache PYTHONPATH=$PWD TRT_GEMMA4_KERNEL_SOURCES=block_fp8_gemm,block_fp8_gemm_sm90,gemm_ops
NV=/usr/local/cuda/bin/nvcc
F="-O3 -std=c++17 --expt-relaxed-constexpr -gencode=arch=compute_90a,code=sm_90a -lcublas"
mkdir -p /tmp/b
for p in 0 8; do $NV $F -DTRT_GEMMA4_SOL=$p -DTRT_GEMMA4_SOL_VALUE=$p -o /tmp/b/p$p scripts/sol_gemm_sm90.cu plugins/kernels/block_fp8_gemm.cu plugins/kernels/block_fp8_gemm_sm90.cu & done
python3 -c "from trt_gemma4 import kernels; kernels.load()" 2>&1 | tail -3
wait
timeout 200 python3 -m pytest -q tests/test_gemm_gpu.py -k "wgmma" 2>&1 | tail -2
for sh in 8704x3840 8448x3840; do for p in 0 8; do SOL_SHAPE=$sh /tmp/b/p$p 256 0 256 512 1024 2048; done; done
