#!/usr/bin/env bash
# What the course runs on a lent GPU machine (no network; Python 3.12, torch 2.11, transformers 5.x).
# Prepare here first:  python3 scripts/device/prepare_wheels.py   (writes .whl/, carried with the tree)
# Then on the machine: bash scripts/device/run_gpu.sh STEP... with STEP in lmdeploy, xtuner, convert, notebook06,
#   bench-serve, bench-train (docs/benchmarks.md; run each bench step in its own call: ~7 min each),
#   train:MODE:ZERO:GPUS (one training benchmark row, e.g. train:full:3:2 = full fine-tune, ZeRO-3, 2 GPUs;
#   writes train-MODE-zeroZERO-GPUSgpu.json), serve:ROW,ROW (chosen serve rows, e.g. serve:lmdeploy,transformers),
#   InternVL2-2B's shape: levers2b:ROW,ROW (labsupport.bench LEVER_ROWS, one XTuner run each; LEVERS_BUDGET_S,
#   default 480) and serve2b:ROW,ROW (SERVE_BUDGET_S, default 300)
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
    notebook06)
      # notebook 06 itself, through the course runner, with LMDeploy's engine; carry artifacts/models
      # (the tiny and the fine-tuned model from notebooks 04-05) to compare them as a learner would
      install lmdeploy && install jupyter || exit 1
      export PYTHONPATH=/tmp/site-jupyter:/tmp/site-lmdeploy:$REPO JUPYTER_PATH=/tmp/kern/share/jupyter MPLBACKEND=Agg
      python3 -m ipykernel install --prefix /tmp/kern --name internvl-deploy --display-name "Python (internvl-deploy)" >/dev/null
      python3 -m labsupport.course run --only 06 -p BACKEND lmdeploy 2>&1 | tee "$OUT/notebook06.log" | grep -v "Warming\|Loading weights" | tail -40
      cp artifacts/executed/06_deploy_lmdeploy.ipynb artifacts/course-report.md "$OUT/" ;;
    bench-serve)
      # InternVL2-4B's shape with random weights (built on the GPU with the machine's transformers 5.x),
      # then LMDeploy's PyTorch engine (cuda graphs, eager, prefix caching) against transformers generate
      install lmdeploy || exit 1
      PYTHONPATH=$REPO python3 -m labsupport.bench build-4b 2>&1 | tee "$OUT/bench-build.log" | grep -v Warning || exit 1
      PYTHONPATH=/tmp/site-lmdeploy:$REPO python3 -m labsupport.bench serve artifacts/models/internvl2-4b-random 2>&1 \
        | tee "$OUT/bench-serve.log" | grep -v "Warning\|Loading weights"
      cp artifacts/bench/build-4b.json artifacts/bench/serve.json "$OUT/" ;;
    bench-train)
      # XTuner LoRA and full fine-tuning + DeepSpeed ZeRO-2 on the same model (built here if missing)
      install xtuner || exit 1
      PYTHONPATH=$REPO python3 -m labsupport.bench build-4b 2>&1 | tee "$OUT/bench-build.log" | grep -v Warning || exit 1
      PYTHONPATH=/tmp/site-xtuner:$REPO python3 -m labsupport.bench train artifacts/models/internvl2-4b-random 2>&1 \
        | tee "$OUT/bench-train.log" | grep -v "Warning\|warn("
      cp artifacts/bench/train.json "$OUT/"
      (cd artifacts/bench && tar czf "$OUT/bench-train-logs.tgz" --exclude='*.pth' train) ;;
    train:*:*:*)
      IFS=: read -r _ mode zero gpus <<<"$step"
      install xtuner || exit 1
      PYTHONPATH=$REPO python3 -m labsupport.bench build-4b 2>&1 | tee -a "$OUT/bench-build.log" | grep -v Warning || exit 1
      tag="train-$mode-zero$zero-${gpus}gpu"
      PYTHONPATH=/tmp/site-xtuner:$REPO python3 -m labsupport.bench train artifacts/models/internvl2-4b-random \
        --modes "$mode" --zero "$zero" --nproc "$gpus" --iters "${TRAIN_ITERS:-20}" --out "artifacts/bench/$tag.json" 2>&1 \
        | tee "$OUT/$tag.log" | grep -v "Warning\|warn(" | tail -25
      cp "artifacts/bench/$tag.json" "$OUT/" ;;
    serve:*)
      install lmdeploy || exit 1
      PYTHONPATH=$REPO python3 -m labsupport.bench build-4b 2>&1 | tee -a "$OUT/bench-build.log" | grep -v Warning || exit 1
      CUDA_VISIBLE_DEVICES=${SERVE_GPU:-0} PYTHONPATH=/tmp/site-lmdeploy:$REPO python3 -m labsupport.bench serve \
        artifacts/models/internvl2-4b-random --rows "${step#serve:}" --budget-s "${SERVE_BUDGET_S:-420}" \
        --out artifacts/bench/serve-rows.json 2>&1 | tee "$OUT/bench-serve-rows.log" | grep -v "Warning\|Loading weights" | tail -30
      cp artifacts/bench/serve-rows.json "$OUT/" ;;
    levers2b:*)
      install xtuner || exit 1
      PYTHONPATH=$REPO python3 -m labsupport.bench build-2b 2>&1 | tee -a "$OUT/bench-build-2b.log" | grep -v Warning || exit 1
      cp artifacts/bench/build-2b.json "$OUT/"
      PYTHONPATH=/tmp/site-xtuner:$REPO python3 -m labsupport.bench levers artifacts/models/internvl2-2b-random \
        --rows "${step#levers2b:}" --budget-s "${LEVERS_BUDGET_S:-480}" --out artifacts/bench/levers-2b.json 2>&1 \
        | tee "$OUT/levers-2b.log" | grep -v "Warning\|warn(\|Iter(train)" | tail -40
      cp artifacts/bench/levers-2b.json "$OUT/"
      (cd artifacts/bench && tar czf "$OUT/levers-2b-logs.tgz" --exclude='*.pth' --exclude='*.safetensors' train) ;;
    serve2b:*)
      install lmdeploy || exit 1
      PYTHONPATH=$REPO python3 -m labsupport.bench build-2b 2>&1 | tee -a "$OUT/bench-build-2b.log" | grep -v Warning || exit 1
      cp artifacts/bench/build-2b.json "$OUT/"
      CUDA_VISIBLE_DEVICES=${SERVE_GPU:-0} PYTHONPATH=/tmp/site-lmdeploy:$REPO python3 -m labsupport.bench serve \
        artifacts/models/internvl2-2b-random --rows "${step#serve2b:}" --budget-s "${SERVE_BUDGET_S:-300}" \
        --out artifacts/bench/serve-2b.json 2>&1 | tee "$OUT/serve-2b.log" | grep -v "Warning\|Loading weights" | tail -12
      cp artifacts/bench/serve-2b.json "$OUT/" ;;
    *) echo "unknown step $step"; exit 2 ;;
  esac
  echo "=== $step took $(( $(date +%s) - start )) s"
done
