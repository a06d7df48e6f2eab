set -u
export TRT_GEMMA4_CACHE=/tmp/tg4cache PYTHONPATH=$PWD TRT_GEMMA4_KERNEL_SOURCES=block_fp8_gemm,block_fp8_gemm_sm90,gemm_ops
python3 -c "from trt_gemma4 import kernels; kernels.load()" 2>&1 | tail -3
timeout 200 python3 -m pytest -q -x tests/test_gemm_gpu.py > $OUT/pytest_gemm.log 2>&1; tail -3 $OUT/pytest_gemm.log
timeout 330 python3 scripts/bench_gemm.py --tune --tune-wgmma --tune-only-wgmma --no-table --no-stack --tune-ms 32 64 128 256 512 --commit $1 --out $OUT/tune_sem.json 2>&1 | grep -E "^tune|Error|error" | sed -e 's/(3, //g' -e 's/, 1, 1, /:/g' -e 's/, 2)//g'
