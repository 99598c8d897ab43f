#!/usr/bin/env bash
# Notebook 04's XTuner run on the official-format InternVL2-2B miniature, once per lever (benchmarks/levers_cpu.py),
# all at once on the lent machine's CPU cores: the comparison is of what each run learns, not of speed, and the
# 2-core course machine needs ~3 min per run when idle (35 min when shared). No GPU is used.
#
# Carry: .whl/xtuner (python3 benchmarks/device/prepare_wheels.py xtuner) and artifacts/official/InternVL2-2B
# (python -m labsupport.model.official 2B). Run:  bash benchmarks/device/levers_official.sh
# Writes $OUT/lever-<name>.json (one row: final loss, held-out accuracy through chat() with the model's own system
# prompt and with XTuner's training prompt, per kind) and $OUT/lever-<name>.log; ~5 min with 7 runs on 16 cores.
set -uo pipefail
OUT=${OUT:-$PWD/gpu-results}; mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site-xtuner .whl/xtuner/*.whl || exit 1
export PYTHONPATH=/tmp/site-xtuner:$PWD PATH=/tmp/site-xtuner/bin:$PATH HF_HUB_OFFLINE=1 CUDA_VISIBLE_DEVICES=""
MODEL=${MODEL:-artifacts/official/InternVL2-2B}
# name=levers (comma-separated; "" = notebook 04 as it is)
RUNS=${RUNS:-"baseline= no-output-lora=no-output-lora swift-adam=swift-adam fp32-load=fp32-load chat-system=chat-system fp32-merge= swift-all=no-output-lora,swift-adam,fp32-load,chat-system"}
for run in $RUNS; do
  name=${run%%=*}; levers=${run#*=}
  merge=bfloat16; [ "$name" = fp32-merge ] && merge=float32
  ( python3 -m benchmarks.levers_cpu train --model "$MODEL" --artifacts "/tmp/levers/$name" --threads 2 \
      --merge-dtype $merge ${levers:+--lever ${levers//,/ }} --json "$OUT/lever-$name.json" > "$OUT/lever-$name.log" 2>&1
    echo "$name rc=$?" ) &
done
wait
python3 - "$OUT" <<'EOF'
import json, pathlib, sys
for f in sorted(pathlib.Path(sys.argv[1]).glob("lever-*.json")):
    r = json.loads(f.read_text())
    print(f"{f.stem:22s} loss {r.get('final_loss')}  chat() {r.get('accuracy_chat_system')}  XTuner's prompt {r.get('accuracy_xtuner_system')}")
EOF
