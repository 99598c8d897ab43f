#!/usr/bin/env bash
# What the course runs on a lent GPU machine (no network; Python 3.12, torch 2.11, transformers 5.x).
# Prepare here first:  python3 benchmarks/device/prepare_wheels.py   (writes .whl/, carried with the tree)
# Then on the machine: bash benchmarks/device/run_gpu.sh STEP... with STEP in lmdeploy, xtuner, convert, notebook06,
#   bench-serve, bench-train (docs/benchmarks.md; run each bench step in its own call: ~7 min each),
#   train:MODE:ZERO:GPUS (one training benchmark row, e.g. train:full:3:2 = full fine-tune, ZeRO-3, 2 GPUs;
#   writes train-MODE-zeroZERO-GPUSgpu.json), serve:ROW,ROW (chosen serve rows, e.g. serve:lmdeploy,transformers),
#   InternVL2-2B's shape: levers2b:ROW,ROW (benchmarks LEVER_ROWS, one XTuner run each; LEVERS_BUDGET_S,
#   default 480) and serve2b:ROW,ROW (SERVE_BUDGET_S, default 300),
#   quant2b[:ROW,...]: notebook 06b's rows (AWQ built on the GPU; bf16, awq, kv-int8, kv-int4; QUANT_BUDGET_S, default 360),
#   notebooks2b[:04,05,06]: the course notebooks themselves (papermill) on InternVL2-2B's shape with DEVICE cuda,
#   as a learner with one GPU runs them (NB_N_TRAIN, default 600; NB_PARAMS: more "NAME VALUE" pairs)
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
      PYTHONPATH=/tmp/site-lmdeploy:$REPO python3 -c 'from labsupport.model.tinymodel import build_tiny_model; print(build_tiny_model())' || exit 1
      PYTHONPATH=/tmp/site-lmdeploy:$REPO python3 benchmarks/device/lmdeploy_smoke.py artifacts/models/internvl2-tiny "$OUT/lmdeploy.json" 2>&1 | tee "$OUT/lmdeploy.log" | grep -v Warning ;;
    xtuner)
      install xtuner || exit 1
      PYTHONPATH=/tmp/site-xtuner:$REPO python3 benchmarks/device/xtuner_gpu.py "$OUT" 2>&1 | tee "$OUT/xtuner.log" | tail -60 ;;
    convert)
      install xtuner || exit 1
      PYTHONPATH=/tmp/site-xtuner:$REPO python3 benchmarks/device/convert_gpu.py "$OUT" 2>&1 | tee "$OUT/convert.log" | tail -60 ;;
    notebook06)
      # notebook 06 itself, through the course runner, with LMDeploy's engine; carry artifacts/models
      # (the tiny and the fine-tuned model from notebooks 04-05) to compare them as a learner would
      install lmdeploy && install notebook || exit 1
      export PYTHONPATH=/tmp/site-notebook:/tmp/site-lmdeploy:$REPO JUPYTER_PATH=/tmp/kern/share/jupyter MPLBACKEND=Agg
      export PATH=/tmp/site-lmdeploy/bin:$PATH   # the cell's `!lmdeploy serve api_server` (pip --target puts the CLI here)
      python3 -m ipykernel install --prefix /tmp/kern --name internvl-deploy --display-name "Python (internvl-deploy)" >/dev/null
      python3 -m labsupport.course run --only 06 -p BACKEND lmdeploy 2>&1 | tee "$OUT/notebook06.log" | grep -v "Warming\|Loading weights" | tail -40
      cp artifacts/executed/06_deploy_lmdeploy.ipynb artifacts/course-report.md "$OUT/" ;;
    bench-serve)
      # InternVL2-4B's shape with random weights (built on the GPU with the machine's transformers 5.x),
      # then LMDeploy's PyTorch engine (cuda graphs, eager, prefix caching) against transformers generate
      install lmdeploy || exit 1
      PYTHONPATH=$REPO python3 -m benchmarks build-4b 2>&1 | tee "$OUT/bench-build.log" | grep -v Warning || exit 1
      PYTHONPATH=/tmp/site-lmdeploy:$REPO python3 -m benchmarks serve artifacts/models/internvl2-4b-random 2>&1 \
        | tee "$OUT/bench-serve.log" | grep -v "Warning\|Loading weights"
      cp artifacts/bench/build-4b.json artifacts/bench/serve.json "$OUT/" ;;
    bench-train)
      # XTuner LoRA and full fine-tuning + DeepSpeed ZeRO-2 on the same model (built here if missing)
      install xtuner || exit 1
      PYTHONPATH=$REPO python3 -m benchmarks build-4b 2>&1 | tee "$OUT/bench-build.log" | grep -v Warning || exit 1
      PYTHONPATH=/tmp/site-xtuner:$REPO python3 -m benchmarks train artifacts/models/internvl2-4b-random 2>&1 \
        | tee "$OUT/bench-train.log" | grep -v "Warning\|warn("
      cp artifacts/bench/train.json "$OUT/"
      (cd artifacts/bench && tar czf "$OUT/bench-train-logs.tgz" --exclude='*.pth' train) ;;
    train:*:*:*)
      IFS=: read -r _ mode zero gpus <<<"$step"
      install xtuner || exit 1
      PYTHONPATH=$REPO python3 -m benchmarks build-4b 2>&1 | tee -a "$OUT/bench-build.log" | grep -v Warning || exit 1
      tag="train-$mode-zero$zero-${gpus}gpu"
      PYTHONPATH=/tmp/site-xtuner:$REPO python3 -m benchmarks train artifacts/models/internvl2-4b-random \
        --modes "$mode" --zero "$zero" --nproc "$gpus" --iters "${TRAIN_ITERS:-20}" --out "artifacts/bench/$tag.json" 2>&1 \
        | tee "$OUT/$tag.log" | grep -v "Warning\|warn(" | tail -25
      cp "artifacts/bench/$tag.json" "$OUT/" ;;
    serve:*)
      install lmdeploy || exit 1
      PYTHONPATH=$REPO python3 -m benchmarks build-4b 2>&1 | tee -a "$OUT/bench-build.log" | grep -v Warning || exit 1
      CUDA_VISIBLE_DEVICES=${SERVE_GPU:-0} PYTHONPATH=/tmp/site-lmdeploy:$REPO python3 -m benchmarks serve \
        artifacts/models/internvl2-4b-random --rows "${step#serve:}" --budget-s "${SERVE_BUDGET_S:-420}" \
        --out artifacts/bench/serve-rows.json 2>&1 | tee "$OUT/bench-serve-rows.log" | grep -v "Warning\|Loading weights" | tail -30
      cp artifacts/bench/serve-rows.json "$OUT/" ;;
    levers2b:*)
      install xtuner || exit 1
      PYTHONPATH=$REPO python3 -m benchmarks build-2b 2>&1 | tee -a "$OUT/bench-build-2b.log" | grep -v Warning || exit 1
      cp artifacts/bench/build-2b.json "$OUT/"
      PYTHONPATH=/tmp/site-xtuner:$REPO python3 -m benchmarks levers artifacts/models/internvl2-2b-random \
        --rows "${step#levers2b:}" --budget-s "${LEVERS_BUDGET_S:-480}" --out artifacts/bench/levers-2b.json 2>&1 \
        | tee "$OUT/levers-2b.log" | grep -v "Warning\|warn(\|Iter(train)" | tail -40
      cp artifacts/bench/levers-2b.json "$OUT/"
      (cd artifacts/bench && tar czf "$OUT/levers-2b-logs.tgz" --exclude='*.pth' --exclude='*.safetensors' train) ;;
    serve2b:*)
      install lmdeploy || exit 1
      PYTHONPATH=$REPO python3 -m benchmarks build-2b 2>&1 | tee -a "$OUT/bench-build-2b.log" | grep -v Warning || exit 1
      cp artifacts/bench/build-2b.json "$OUT/"
      CUDA_VISIBLE_DEVICES=${SERVE_GPU:-0} PYTHONPATH=/tmp/site-lmdeploy:$REPO python3 -m benchmarks serve \
        artifacts/models/internvl2-2b-random --rows "${step#serve2b:}" --budget-s "${SERVE_BUDGET_S:-300}" \
        --out artifacts/bench/serve-2b.json 2>&1 | tee "$OUT/serve-2b.log" | grep -v "Warning\|Loading weights" | tail -12
      cp artifacts/bench/serve-2b.json "$OUT/" ;;
    quant2b|quant2b:*)
      # notebook 06b's GPU rows (docs/gpu/bench-quant-2b-*.json): InternVL2-2B's shape, auto_awq built on the GPU with the
      # course's calibration loader, then rows bf16, awq (w4a16), kv-int8, kv-int4 each in a fresh process at one
      # cache_max_entry_count (QUANT_BUDGET_S, default 360; rows: quant2b:bf16,awq,kv-int8)
      install lmdeploy || exit 1
      PYTHONPATH=$REPO python3 -m benchmarks build-2b 2>&1 | tee -a "$OUT/bench-build-2b.log" | grep -v Warning || exit 1
      rows=${step#quant2b}; rows=${rows#:}
      PYTHONPATH=/tmp/site-lmdeploy:$REPO python3 benchmarks/device/quant_gpu.py run artifacts/models/internvl2-2b-random \
        artifacts/bench/quant-2b.json --rows "${rows:-bf16,awq,kv-int8,kv-int4}" --budget-s "${QUANT_BUDGET_S:-360}" 2>&1 \
        | tee "$OUT/quant-2b.log" | grep -v "Warning\|Loading weights\|weight packed\|Move model" | tail -30
      cp artifacts/bench/quant-2b.json "$OUT/" ;;
    notebooks2b|notebooks2b:*)
      # notebooks 04 (XTuner's official 2B LoRA config, the measured GPU preset, ZeRO-2), 05 (convert, merge, compare)
      # and 06 (LMDeploy pipeline, chat, batch, stream, api_server) through the course runner (papermill), with
      # MODEL_PATH = InternVL2-2B's shape (bench build-2b, random weights) and DEVICE cuda. Each kernel gets its own
      # wheel group (internvl-course: xtuner, internvl-deploy: lmdeploy) + the notebook group. A warm machine keeps
      # artifacts/ (a link to /tmp/art) between calls, so notebooks2b:04,05 then notebooks2b:06 is one story.
      picks=${step#notebooks2b}; picks=${picks#:}; picks=${picks:-04,05,06}
      install xtuner && install lmdeploy && install notebook || exit 1
      [ -e artifacts ] || { mkdir -p /tmp/art && ln -sfn /tmp/art artifacts; }
      python3 benchmarks/device/notebooks_gpu.py kernels /tmp/kern /tmp/site-xtuner /tmp/site-lmdeploy /tmp/site-notebook || exit 1
      PYTHONPATH=$REPO python3 -m benchmarks build-2b 2>&1 | tee -a "$OUT/bench-build-2b.log" | grep -v Warning || exit 1
      read -r -a extra <<<"${NB_PARAMS:-}"
      params=(-p MODEL_PATH "$REPO/artifacts/models/internvl2-2b-random" -p DEVICE cuda -p N_TRAIN "${NB_N_TRAIN:-600}")
      for ((i = 0; i + 1 < ${#extra[@]}; i += 2)); do params+=(-p "${extra[i]}" "${extra[i+1]}"); done
      JUPYTER_PATH=/tmp/kern JUPYTER_RUNTIME_DIR=/tmp/kern/runtime IPYTHONDIR=/tmp/kern/ipython \
        PYTHONPATH=/tmp/site-notebook:$REPO python3 -m labsupport.course run --only ${picks//,/ } "${params[@]}" 2>&1 \
        | tee "$OUT/notebooks2b.log" | grep -v "Warning\|warn(" | tail -30
      PYTHONPATH=$REPO python3 benchmarks/device/notebooks_gpu.py summary artifacts "$OUT" ;;
    *) echo "unknown step $step"; exit 2 ;;
  esac
  echo "=== $step took $(( $(date +%s) - start )) s"
done
