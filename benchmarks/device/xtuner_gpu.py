"""XTuner 0.2.0 on a CUDA GPU: the tiny model with LoRA + DeepSpeed ZeRO-2 and QLoRA (nf4) + ZeRO-2.

    python benchmarks/device/xtuner_gpu.py OUT_DIR

Run by benchmarks/device/run_gpu.sh (XTuner's wheels travel in .whl/xtuner). Uses the course's own
config generator and launcher (labsupport.train.xtuner), so what runs here is what notebook 04 writes
for a GPU. Prints a table and writes OUT_DIR/xtuner.json: seconds per iteration, peak GPU memory
(mmengine's max allocated) and the course estimator's figure for the same settings.
"""
from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path

import torch

from labsupport.train import memory, xtuner, xtuner_presets, xtuner_render
from labsupport.datasets.plates import build_course_task
from labsupport.core.paths import artifacts_dir
from labsupport.model.tinymodel import resolve_model


def tiny_shape(model_dir: Path) -> memory.VLMShape:
    """The estimator's view of the tiny model, read from its config.json."""
    return memory.shape_of(json.loads((model_dir / "config.json").read_text()), "tiny")


def run(mode: str, model_dir: Path, plates: dict, out: Path, iters: int = 40) -> dict:
    """Train MODE with ZeRO-2 for ITERS iterations; return timings, memory and the estimate."""
    work = artifacts_dir() / "gpu" / f"{mode}-zero2"
    settings = xtuner_presets.preset("tiny-cpu", model_path=str(model_dir), mode=mode, device="cuda", deepspeed=2,
                             max_iters=iters, save_steps=iters, freeze_llm=None, lr=2e-4, num_workers=4,
                             data=[xtuner_presets.DataSpec(str(plates["train"]), str(plates["image_folder"]))])
    config = xtuner_render.write_config(settings, work / "config.py")
    start = time.time()
    train = xtuner.launch(config, work, deepspeed=2, live=False, show="progress")
    scalars = [r for r in train.scalars if "time" in r]
    peak_mb = max((r.get("memory", 0) for r in scalars), default=0)
    est = memory.estimate(tiny_shape(model_dir), mode=mode, zero=2, gpus=1, batch=settings.batch_size,
                          seq=settings.max_length, checkpointing=settings.gradient_checkpointing,
                          lora_r=settings.lora_r, freeze_vit=settings.freeze_vit, tiles=1)
    return {"mode": mode, "zero": 2, "iters": iters, "wall_s": round(time.time() - start, 1),
            "s_per_iter_median": round(statistics.median(r["time"] for r in scalars), 3) if scalars else None,
            "data_s_median": round(statistics.median(r.get("data_time", 0) for r in scalars), 3) if scalars else None,
            "loss_first_last": [scalars[0]["loss"], scalars[-1]["loss"]] if scalars else None,
            "peak_memory_gb": round(peak_mb / 1024, 3), "estimate_gb": round(est.total, 3),
            "estimate_parts_gb": est.row(), "checkpoint": str(train.checkpoint)}


def main(out_dir: str) -> int:
    out = Path(out_dir)
    model_dir = resolve_model("tiny")
    plates = build_course_task()
    results = {"gpu": torch.cuda.get_device_name(0), "torch": torch.__version__, "runs": []}
    for mode in ("lora", "qlora"):
        try:
            results["runs"].append(run(mode, model_dir, plates, out))
        except Exception as exc:  # report every mode, keep going: the table says what failed and why
            results["runs"].append({"mode": mode, "zero": 2, "error": f"{type(exc).__name__}: {str(exc)[-1500:]}"})
        print(json.dumps(results["runs"][-1], indent=1), flush=True)
    (out / "xtuner.json").write_text(json.dumps(results, indent=1))
    print(f"\n{'mode':6} {'s/iter':>7} {'peak GB':>8} {'estimate GB':>12}")
    for r in results["runs"]:
        print(f"{r['mode']:6} {r.get('s_per_iter_median') or '-':>7} {r.get('peak_memory_gb', '-'):>8} {r.get('estimate_gb', '-'):>12}"
              + (f"  FAILED: {r['error'][:200]}" if "error" in r else ""))
    return 0 if all("error" not in r for r in results["runs"]) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
