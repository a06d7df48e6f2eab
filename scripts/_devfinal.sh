set -u
export TRT_GEMMA4_CACHE=/tmp/tg4cache PYTHONPATH=$PWD TRT_GEMMA4_TEST_CACHE=$PWD/.devcache
python3 -c "from trt_gemma4 import kernels; kernels.load()" 2>&1 | tail -3
timeout 300 python3 -m pytest -q tests/test_gemm_gpu.py tests/test_attention_gpu.py tests/test_torch_backend_gpu.py -k "not 20K" > $OUT/pytest_gpu.log 2>&1
tail -2 $OUT/pytest_gpu.log
timeout 200 python3 scripts/bench_gemm.py --no-triton --no-stack --shapes drafter_4096x1024 drafter_16384x1024 --ms 1 16 64 128 256 512 --commit $1 --out $OUT/gemm_drafter_check.json 2>&1 | grep -E "^==|^ +[0-9]+ " | cut -c1-40
