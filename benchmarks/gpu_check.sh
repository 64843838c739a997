#!/usr/bin/env bash
# The GPU checks of the speed work in one command, for a machine with a CUDA GPU and a Python
# that already has torch and torchvision (as the lent H100/H200 machines do):
#   1. the GPU tests (tests/test_gpu.py: fast path vs fp32 eager path, CUDA graphs with taps and CRD),
#   2. the KD-step benchmark, one run and 8 concurrent runs against the peer-style loop,
#   3. the same-curve check of the fast path against the peer-style loop,
#   4. a CIFAR-100-format KD run through the real data path, 4 epochs, projected to 240.
# Everything printed also goes to $OUT/gpu_check.log (OUT defaults to ./gpu-check). Each step has
# its own time limit; all four together stay under 10 minutes (one call of a lent machine).
#
# kdcore's other dependencies are installed without internet from wheels in .whl/ when missing;
# make them beforehand where pip works (Python 3.12 on x86-64 Linux, as on the lent machines):
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl \
#     pydantic pydantic-core annotated-types typing-inspection
set -o pipefail
PYTHON=${PYTHON:-python3}
OUT=${OUT:-gpu-check}
mkdir -p "$OUT"
LOG="$OUT/gpu_check.log"
export PYTHONUNBUFFERED=1

{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  "$PYTHON" -c 'import torch, torchvision; print("torch", torch.__version__, "torchvision", torchvision.__version__)'
  if ! "$PYTHON" -c 'import pydantic' 2>/dev/null; then
    "$PYTHON" -m pip install -q --no-index --no-deps --target /tmp/kdcore-site .whl/*.whl || exit 1
    export PYTHONPATH=/tmp/kdcore-site${PYTHONPATH:+:$PYTHONPATH}
  fi
  # registers kdcore's entry points (its plugins) without touching the installed torch
  "$PYTHON" -m pip install -q --no-deps --no-build-isolation -e . || exit 1

  echo "== GPU tests"
  timeout 120 "$PYTHON" -m pytest -q -p no:cacheprovider tests/test_gpu.py
  echo "== KD step: resnet32x4 -> resnet8x4, batch 64"
  timeout 180 "$PYTHON" benchmarks/kd_step.py --device cuda --repeats 3 --concurrent 8
  echo "== same loss curve: fast path vs peer-style loop"
  timeout 150 "$PYTHON" benchmarks/same_curve.py --device cuda --epochs 5 --teacher-epochs 5
  echo "== full run: resnet32x4 -> resnet8x4 KD, 4 epochs of 50,000 images, projected to 240"
  timeout 120 "$PYTHON" benchmarks/full_run.py --device cuda --epochs 4
} 2>&1 | tee "$LOG"
