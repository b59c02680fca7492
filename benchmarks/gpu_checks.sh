#!/usr/bin/env bash
# The GPU checks, in one run on a CUDA machine (from the repository root):
#   bash benchmarks/gpu_checks.sh OUTDIR
# 1. the CUDA tests (DM's gradient, training with mixed precision, populations on CUDA);
# 2. benchmarks/gpu_throughput.py: ResNet-20 images/s with DM against cross-entropy (bf16);
# 3. benchmarks/layout.py: channels-last against contiguous image models (bf16);
# 4. benchmarks/population.py: ResNet-20 populations (K = 1, 4, 16, 64) against one model, with
#    the population's grouped convolutions contiguous and channels-last, then a profile of the
#    K = 64 population in each layout (its kernels by device time).
# The machine needs torch, numpy, scikit-learn, pyyaml and pydantic; dm_tune runs from the checkout.
set -uo pipefail
out=${1:-gpu-results}
mkdir -p "$out"
export PYTHONPATH="${PYTHONPATH:+$PYTHONPATH:}$PWD" PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
nvidia-smi -L | tee "$out/gpu.txt"
$PY -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name())" | tee -a "$out/gpu.txt"
$PY -m pytest -q -p no:cacheprovider -o addopts="" tests/test_cuda.py tests/test_population.py -k "cuda" -rs 2>&1 \
    | tee "$out/cuda_tests.log"
tests=${PIPESTATUS[0]}
$PY benchmarks/gpu_throughput.py --device cuda --json "$out/gpu_throughput.json" 2>&1 | tee "$out/gpu_throughput.log"
$PY benchmarks/layout.py --device cuda --json "$out/layout_cuda.json" 2>&1 | tee "$out/layout_cuda.log"
for layout in nchw nhwc; do
    $PY benchmarks/population.py --device cuda --resnet-layout "$layout" --profile --json "$out/population_cuda_$layout.json" 2>&1 \
        | tee "$out/population_cuda_$layout.log"
done
exit "$tests"
