"""Notebook 05's checks on a QLoRA run, on a CUDA GPU: train QLoRA (nf4) + ZeRO-2 briefly, convert, verify.

    python benchmarks/device/convert_gpu.py OUT_DIR

Run by benchmarks/device/run_gpu.sh convert (XTuner's wheels travel in .whl/xtuner). QLoRA trains the
adapter against a 4-bit LLM; XTuner's convert_to_official.py rebuilds the model unquantised and merges
the adapter into the full-precision base. This script converts with labsupport.evaluate.conversion.convert and
checks the folder, the changed tensors and merged-vs-(base + adapter) logits; writes OUT_DIR/convert_qlora.json.
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch

from labsupport.evaluate import compare, conversion
from labsupport.train import xtuner, xtuner_presets, xtuner_render
from labsupport.datasets.plates import build_course_task
from labsupport.core.paths import artifacts_dir
from labsupport.model.tinymodel import resolve_model


def main(out_dir: str, iters: int = 60) -> int:
    out = Path(out_dir)
    model_dir, plates = resolve_model("tiny"), build_course_task(progress=False)
    work = artifacts_dir() / "gpu" / "qlora-convert"
    settings = xtuner_presets.preset("tiny-cpu", model_path=str(model_dir), mode="qlora", device="cuda", deepspeed=2,
                             max_iters=iters, save_steps=iters, freeze_llm=None, freeze_vit=True, lr=1e-3, num_workers=4,
                             data=[xtuner_presets.DataSpec(str(plates["train"]), str(plates["image_folder"]))])
    train = xtuner.launch(xtuner_render.write_config(settings, work / "config.py"), work, deepspeed=2, live=False, show="progress")
    run = conversion.find_training_run(artifacts_dir(), work)
    start = time.time()
    converted = conversion.convert(run, artifacts_dir() / "gpu" / "qlora-converted")
    convert_s = time.time() - start
    rows = compare.weight_changes(run.base_model, converted)
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(converted), trust_remote_code=True)
    merged, base = compare.load_model(converted), compare.load_model(run.base_model)
    inputs = compare.fixed_inputs(merged, tok)
    scale = compare.lora_scale(run.config)
    ref = compare.reference_model(run.base_model, run.checkpoint, scale)
    lm, lb = compare.logits_of(merged, inputs, tok), compare.logits_of(base, inputs, tok)
    report = compare.compare_logits(lm, compare.logits_of(ref, inputs, tok), lb)
    wrong = compare.compare_logits(lm, compare.logits_of(compare.reference_model(run.base_model, run.checkpoint, 2 * scale), inputs, tok), lb)
    result = {"gpu": torch.cuda.get_device_name(0), "torch": torch.__version__, "mode": run.mode, "iters": iters,
              "train_s": round(train.seconds, 1), "loss_first_last": [train.scalars[0]["loss"], train.scalars[-1]["loss"]],
              "checkpoint": run.checkpoint.name, "convert_s": round(convert_s, 1),
              "folder_problems": conversion.check_model_folder(converted), "files": conversion.folder_listing(converted),
              "changed_groups": sorted(map(list, compare.changed_groups(rows))),
              "unexpected_changes": compare.unexpected_changes(rows, run.mode, run.vit_trained),
              "logits": {"max_diff": report.max_diff, "adapter_effect": report.adapter_effect, "tolerance": report.tolerance,
                         "passed": report.passed},
              "wrong_scale_logits": {"max_diff": wrong.max_diff, "tolerance": wrong.tolerance, "passed": wrong.passed}}
    (out / "convert_qlora.json").write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))
    ok = report.passed and not wrong.passed and not result["folder_problems"] and not result["unexpected_changes"]
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
