#!/usr/bin/env bash
# The GPU checks, in one run on a CUDA machine (from the repository root):
#   bash benchmarks/gpu_checks.sh OUTDIR [SECONDS]
# 1. the CUDA tests (DM's gradient, training with mixed precision, populations on CUDA, a step
#    that never waits for the device);
# 2. benchmarks/population.py: ResNet-20 populations (K = 1, 4, 16, 64) against one model, the
#    population's grouped convolutions contiguous (nchw) and channels-last (nhwc), each with and
#    without cuDNN's autotuning (--cudnn-benchmark); the first two (nchw, nhwc_tuned) also profiled
#    at K = 64
#    (kernels by device time), the first also with one model's bare training step (--dense-reference);
#    then K = 128 channels-last with autotuning, and K = 64 over one CIFAR-10-sized epoch
#    (--resnet-images 50000, the default layout);
# 3. while less than SECONDS (default 600) have passed: benchmarks/gpu_throughput.py (ResNet-20
#    images/s with DM against cross-entropy, bf16) and benchmarks/layout.py (channels-last against
#    contiguous image models, bf16).
# Each step's output goes to OUTDIR as it finishes. The machine needs torch, numpy, scikit-learn,
# pyyaml and pydantic; dm_tune runs from the checkout.
set -uo pipefail
out=${1:-gpu-results}
budget=${2:-600}
mkdir -p "$out"
export PYTHONPATH="${PYTHONPATH:+$PYTHONPATH:}$PWD" PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
nvidia-smi -L | tee "$out/gpu.txt"
if ! $PY -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "gpu_checks.sh: torch sees no CUDA device here: nothing to check (run it on a CUDA machine)" >&2
    exit 2
fi
$PY -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name())" | tee -a "$out/gpu.txt"
$PY -m pytest -q -p no:cacheprovider -o addopts="" tests/test_cuda.py tests/test_population.py -k "cuda" -rs 2>&1 \
    | tee "$out/cuda_tests.log"
tests=${PIPESTATUS[0]}

population() {  # NAME, then population.py's flags
    local name=$1
    shift
    $PY benchmarks/population.py --device cuda --json "$out/population_cuda_$name.json" "$@" 2>&1 \
        | tee "$out/population_cuda_$name.log"
}
population nchw --resnet-layout nchw --profile --dense-reference
population nhwc_tuned --resnet-layout nhwc --cudnn-benchmark --profile
population nhwc --resnet-layout nhwc
population nchw_tuned --resnet-layout nchw --cudnn-benchmark
population nhwc_tuned_k128 --resnet-layout nhwc --cudnn-benchmark --sizes 128
population cifar50k_k64 --sizes 64 --resnet-images 50000

if (( SECONDS < budget - 120 )); then
    $PY benchmarks/gpu_throughput.py --device cuda --json "$out/gpu_throughput.json" 2>&1 | tee "$out/gpu_throughput.log"
fi
if (( SECONDS < budget - 120 )); then
    $PY benchmarks/layout.py --device cuda --json "$out/layout_cuda.json" 2>&1 | tee "$out/layout_cuda.log"
fi
exit "$tests"
