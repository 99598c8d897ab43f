"""Time notebook 04's default training run: the tiny model, LoRA, XTuner's own config edited as in the notebook.

    python benchmarks/tiny_train.py [--threads 2] [--n-train 1200] [--artifacts /tmp/bench] [--eval]

Prints the iterations, the seconds of the training iterations alone (mmengine's per-iteration time),
the XTuner process's wall time with start-up, and with --eval the held-out accuracy per kind. Run it on
an idle machine: on a shared CPU every number grows with the other processes' load (the load average
is printed next to them).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from labsupport.datasets import plates
from labsupport.evaluate import scoring
from labsupport.model import tinymodel  # noqa: E402
from labsupport.train import xtuner as xt, xtuner_presets  # noqa: E402
from labsupport.train import xtuner_config as xc  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--n-train", type=int, default=None, help="training samples (default: notebook 04's N_TRAIN)")
    ap.add_argument("--model", default="tiny")
    ap.add_argument("--artifacts", default=None)
    ap.add_argument("--eval", action="store_true", help="also convert and measure held-out accuracy")
    args = ap.parse_args()
    art = Path(args.artifacts or tempfile.mkdtemp(prefix="bench-tiny-"))
    n_train = args.n_train or xtuner_presets.TINY_N_TRAIN
    model_dir = tinymodel.resolve_model(args.model, artifacts=art)
    choice = xtuner_presets.choose_preset(model_dir, device="cpu")
    task = plates.build_course_task(art / "data" / "plates-train", n_train=n_train, n_heldout=120, progress=False)
    settings, _ = xtuner_presets.effective_settings(choice.name, {"model_path": str(model_dir)})
    name, why = xc.official_config_for(model_dir, settings.mode, choice.params)
    if name is None:
        print(why)
        return 1
    official = xc.copy_official_config(name, art / "configs")
    edits = xc.edits_for(settings, official.read_text(), task["root"], max_dynamic_patch=settings.max_dynamic_patch,
                         samples=n_train)
    config = xc.write_edited_config(official, edits, art / "configs" / f"{name}_plates.py")
    load = os.getloadavg()[0]
    run = xt.launch(config, art / "work_dir", live=False, show="none", threads=args.threads)
    out = {"model": choice.reason, "mode": settings.mode, "iterations": run.last_iter, "threads": args.threads,
           "loop_seconds": round(run.loop_seconds, 1), "seconds_per_iteration": round(run.loop_seconds / run.last_iter, 3),
           "process_seconds": round(run.seconds, 1), "load_average_before": round(load, 2),
           "load_average_after": round(os.getloadavg()[0], 2)}
    if args.eval:
        merged = xt.convert_to_official(config, run.checkpoint, art / "merged")
        model, tok = scoring.load_model(merged)
        res = scoring.evaluate(model, tok, task["heldout"], max_num=settings.max_dynamic_patch or 1, batch_size=16,
                                progress=False)
        out.update(accuracy=res["accuracy"], per_kind=res["per_kind"])
    print(json.dumps(out, indent=1, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
