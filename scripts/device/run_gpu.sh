#!/usr/bin/env bash
# What the course runs on a lent GPU machine (no network; Python 3.12, torch 2.11, transformers 5.x).
# Prepare here first:  python3 scripts/device/prepare_wheels.py   (writes .whl/, carried with the tree)
# Then on the machine: bash scripts/device/run_gpu.sh STEP... with STEP in lmdeploy, xtuner, convert, notebook06
# Results land in $OUT (the device tool brings that folder back) or ./gpu-results.
set -uo pipefail
OUT=${OUT:-$PWD/gpu-results}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
REPO=$PWD
install() {  # install one wheel group into its own folder: the groups need different transformers
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "/tmp/site-$1" .whl/$1/*.whl
}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
python3 -c 'import torch, transformers; print("torch", torch.__version__, "transformers", transformers.__version__)' | tee -a "$OUT/gpu.txt"
for step in "$@"; do
  echo "=== $step"; start=$(date +%s)
  case $step in
    lmdeploy)
      install lmdeploy || exit 1
      # build the tiny model with the machine's transformers 5.x (same builder as on a laptop)
      PYTHONPATH=/tmp/site-lmdeploy:$REPO python3 -c 'from labsupport.tinymodel import build_tiny_model; print(build_tiny_model())' || exit 1
      PYTHONPATH=/tmp/site-lmdeploy:$REPO python3 scripts/device/lmdeploy_smoke.py artifacts/models/internvl2-tiny "$OUT/lmdeploy.json" 2>&1 | tee "$OUT/lmdeploy.log" | grep -v Warning ;;
    xtuner)
      install xtuner || exit 1
      PYTHONPATH=/tmp/site-xtuner:$REPO python3 scripts/device/xtuner_gpu.py "$OUT" 2>&1 | tee "$OUT/xtuner.log" | tail -60 ;;
    convert)
      install xtuner || exit 1
      PYTHONPATH=/tmp/site-xtuner:$REPO python3 scripts/device/convert_gpu.py "$OUT" 2>&1 | tee "$OUT/convert.log" | tail -60 ;;
    *) echo "unknown step $step"; exit 2 ;;
  esac
  echo "=== $step took $(( $(date +%s) - start )) s"
done
