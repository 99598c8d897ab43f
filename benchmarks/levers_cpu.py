"""Why XTuner's LoRA learned less than ms-swift's on an official-format checkpoint: the two runs compared lever by lever.

Notebook 04 (XTuner) and notebook 10 (`swift sft`) train the same data for the same 600 steps; on the official-format
InternVL2-2B miniature (published remote code, the course's ViT, a random tiny LLM) they ended far apart. Each
subcommand prints measured rows (nothing here is typed in by hand):

    python -m benchmarks.levers_cpu config --xtuner WORK_DIR --swift SFT_DIR     # both runs' own settings, side by side
    python -m benchmarks.levers_cpu tokens --model M --xtuner-config CFG --swift-dir SFT_DIR   # which tokens have labels
    python -m benchmarks.levers_cpu eval --model MERGED --heldout H [--system S] [--batch 16 1]  # one model, ways of asking
    python -m benchmarks.levers_cpu merge --config CFG --checkpoint PTH --out DIR [--dtype float32]  # XTuner's merge, any dtype
    python -m benchmarks.levers_cpu train --model M --artifacts DIR --lever NAME ...  # XTuner's run with one lever changed

Run them in the course env (internvl-course); `tokens` starts the swift env's Python for ms-swift's side.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from labsupport.core.checkpoints import write_json_atomic

SWIFT_PYTHON = Path(sys.executable).parents[2] / "internvl-swift" / "bin" / "python"


# --- what each run trained -------------------------------------------------------------------------

def trained_modules(names: list[str]) -> dict[str, list[str]]:
    """{"lora": short names of the linear layers with a LoRA adapter, "full": modules trained whole} from parameter NAMES."""
    lora, full = set(), set()
    for n in names:
        parts = n.split(".")
        if "lora_A" in parts:
            lora.add(parts[parts.index("lora_A") - 1])
        elif "lora_B" not in parts and "lora_embedding_A" not in parts:
            # XTuner's checkpoint holds model.mlp1.N.weight; ms-swift's modules_to_save are ...mlp1.modules_to_save...
            full.add(next((p for p in parts if p in ("mlp1", "vision_model", "language_model", "output", "tok_embeddings")),
                          parts[0]))
    return {"lora": sorted(lora), "full": sorted(full)}


def xtuner_run(work_dir: Path) -> dict:
    """XTuner's settings as its run dumped them (WORK_DIR/<config>.py) and what its last checkpoint holds."""
    import torch
    from mmengine.config import Config

    from labsupport.model.prompts import xtuner_default_system

    dumped = sorted(p for p in work_dir.glob("*.py"))
    if not dumped:
        raise FileNotFoundError(f"{work_dir} holds no dumped config (*.py): is it an `xtuner train` work dir?")
    cfg = Config.fromfile(str(dumped[0]))
    ckpts = sorted(work_dir.glob("iter_*.pth"), key=lambda p: int(p.stem.split("_")[1]))
    state = torch.load(ckpts[-1], map_location="cpu", weights_only=False)["state_dict"]
    opt = cfg.optim_wrapper.optimizer
    lora = cfg.model.get("llm_lora") or {}
    n = len(json.loads(Path(cfg.train_dataloader.dataset.data_paths).read_text()))
    iters = -(-n // cfg.train_dataloader.batch_size) * cfg.max_epochs
    sched = [s["type"].__name__ if isinstance(s["type"], type) else str(s["type"]) for s in cfg.param_scheduler]
    return {"config": str(dumped[0]), "checkpoint": str(ckpts[-1]), "trained": trained_modules(list(state)),
            "trained_tensors": len(state), "lora_r": lora.get("r"), "lora_alpha": lora.get("lora_alpha"),
            "lora_dropout": lora.get("lora_dropout"), "target_modules": lora.get("target_modules"),
            "lr": opt["lr"], "weight_decay": opt.get("weight_decay"), "betas": list(opt.get("betas", ())),
            "max_grad_norm": cfg.optim_wrapper.get("clip_grad", {}).get("max_norm"),
            "warmup": f"{cfg.warmup_ratio} of the run, LinearLR from {cfg.param_scheduler[0]['start_factor']}",
            "schedule": " + ".join(sched), "steps": iters, "global_batch": cfg.train_dataloader.batch_size * cfg.accumulative_counts,
            "sampler": getattr(cfg.train_dataloader.sampler["type"], "__name__", str(cfg.train_dataloader.sampler["type"])),
            "dtype": f"{cfg.model.get('dtype', 'bfloat16')} (loaded as {cfg.model.get('load_dtype') or 'bfloat16'}: "
                     "XTuner's from_pretrained)", "max_length": cfg.max_length,
            "system": getattr(cfg.train_dataloader.dataset, "get", dict().get)("system") or xtuner_default_system(cfg.path),
            "template": "XTuner internlm2_chat, turns joined without newlines (as chat()'s conversation.py)",
            "freeze_llm": cfg.model.get("freeze_llm"), "freeze_visual_encoder": cfg.model.get("freeze_visual_encoder")}


def swift_run(sft_dir: Path) -> dict:
    """ms-swift's settings from its args.json and what its last checkpoint's adapter holds."""
    from safetensors import safe_open

    args = json.loads((sft_dir / "args.json").read_text())
    ckpts = sorted(sft_dir.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    with safe_open(str(ckpts[-1] / "adapter_model.safetensors"), "pt") as f:
        names = list(f.keys())
    adapter = json.loads((ckpts[-1] / "adapter_config.json").read_text())
    return {"checkpoint": str(ckpts[-1]), "trained": trained_modules(names), "trained_tensors": len(names),
            "lora_r": args["lora_rank"], "lora_alpha": args["lora_alpha"], "lora_dropout": args["lora_dropout"],
            "target_modules": adapter.get("target_modules"), "lr": args["learning_rate"],
            "weight_decay": args["weight_decay"], "betas": [args["adam_beta1"], args["adam_beta2"]],
            "max_grad_norm": args["max_grad_norm"], "warmup": f"{args['warmup_ratio']} of the run, linear from 0",
            "schedule": args["lr_scheduler_type"], "steps": args["max_steps"],
            "global_batch": args["per_device_train_batch_size"] * args["gradient_accumulation_steps"],
            "sampler": "RandomSampler (transformers Trainer)", "dtype": args["torch_dtype"], "max_length": args["max_length"],
            "system": args.get("system"), "template": f"ms-swift {args.get('template')} (ChatML: a newline after each <|im_end|>)",
            "padding_side": args.get("padding_side"),
            "freeze_vit": args.get("freeze_vit"), "freeze_aligner": args.get("freeze_aligner"),
            "modules_to_save": args.get("modules_to_save")}


def config_rows(work_dir: Path, sft_dir: Path, swift_system: str | None = None) -> list[tuple[str, object, object]]:
    """(lever, XTuner's value, ms-swift's value) from the two runs' own files (SWIFT_SYSTEM: the --system notebook 10
    passes for this model, when SFT_DIR is a run of another model with the same flags)."""
    x, s = xtuner_run(work_dir), swift_run(sft_dir)
    if swift_system:
        s["system"] = swift_system
    keys = ["trained", "lora_r", "lora_alpha", "lora_dropout", "lr", "weight_decay", "betas", "max_grad_norm", "warmup",
            "schedule", "steps", "global_batch", "sampler", "dtype", "max_length", "system", "template"]
    return [(k, x.get(k), s.get(k)) for k in keys]


# --- which tokens are learned ------------------------------------------------------------------------

def xtuner_tokens(config: Path) -> dict:
    """The first sample of XTuner's own dataset (built from CONFIG): its prompt text and the text that has labels."""
    from mmengine.config import Config
    from transformers import AutoTokenizer
    from xtuner.registry import BUILDER

    cfg = Config.fromfile(str(config))
    ds = BUILDER.build(cfg.train_dataloader.dataset)
    sample = ds[0]
    tok = AutoTokenizer.from_pretrained(cfg.path, trust_remote_code=True)
    return _decode(tok, sample["input_ids"], sample["labels"])


def _decode(tok, ids: list[int], labels: list[int]) -> dict:
    """The text of IDS with the image tokens folded, and the text and count of the tokens whose LABELS are not -100."""
    image = tok.convert_tokens_to_ids("<IMG_CONTEXT>")
    shown = [i for i in ids if i != image]
    learned = [int(i) for i, l in zip(ids, labels) if int(l) != -100]
    return {"tokens": len(ids), "image_tokens": sum(int(i) == image for i in ids),
            "prompt": tok.decode(shown), "learned_text": tok.decode(learned), "learned_ids": learned,
            "learned_pieces": tok.convert_ids_to_tokens(learned)}


SWIFT_ENCODE = r"""
import json, sys
from swift import get_model_processor, get_template
args = json.load(open(sys.argv[1]))
row = json.loads(open(args["dataset"][0]).readline())
_, processor = get_model_processor(args["model"], model_type=args["model_type"], load_model=False, download_model=False)
template = get_template(processor, template_type=args["template"], default_system=args.get("system"),
                        max_length=args.get("max_length"))
template.set_mode("train")
turns = [*row.get("history", []), [row["query"], row["response"]]]  # the course's swift jsonl: query, response, history
messages = row.get("messages") or [m for q, a in turns for m in ({"role": "user", "content": q}, {"role": "assistant", "content": a})]
enc = template.encode({"messages": messages, "images": row["images"]})
print(json.dumps({"input_ids": [int(i) for i in enc["input_ids"]], "labels": [int(i) for i in enc["labels"]]}))
"""


def swift_tokens(sft_dir: Path, model_dir: Path) -> dict:
    """The first training row encoded by ms-swift's own template (the run's args.json), in the swift env."""
    from transformers import AutoTokenizer

    proc = subprocess.run([str(SWIFT_PYTHON), "-c", SWIFT_ENCODE, str(sft_dir / "args.json")], capture_output=True,
                          text=True, env={**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error",
                                          "MAX_NUM": os.environ.get("MAX_NUM", "1")})
    if proc.returncode:
        raise RuntimeError(f"ms-swift's template encode failed in {SWIFT_PYTHON}:\n{proc.stderr[-3000:]}")
    enc = json.loads(proc.stdout.strip().splitlines()[-1])
    tok = AutoTokenizer.from_pretrained(str(model_dir), trust_remote_code=True)
    return _decode(tok, enc["input_ids"], enc["labels"])


# --- the same trained model, asked in different ways ---------------------------------------------------

def evaluate_ways(model_dir: Path, heldout: Path, systems: dict[str, str | None], batches: list[int],
                  max_num: int = 1) -> list[dict]:
    """Held-out accuracy of MODEL_DIR through chat()/batch_chat for each (system prompt, batch size)."""
    from labsupport.evaluate import scoring

    model, tok = scoring.load_model(model_dir)
    default = model.system_message
    rows = []
    for label, system in systems.items():
        for batch in batches:
            model.system_message = default
            start = time.time()
            r = scoring.evaluate(model, tok, heldout, max_num=max_num, batch_size=batch, progress=False, system=system)
            rows.append({"model": str(model_dir), "system": label, "batch": batch, "accuracy": round(r["accuracy"], 3),
                         "per_kind": r["per_kind"], "seconds": round(time.time() - start, 1)})
            print(json.dumps(rows[-1], ensure_ascii=False), flush=True)
    return rows


# --- XTuner's merge in another dtype -----------------------------------------------------------------

def merge(config: Path, checkpoint: Path, out: Path, dtype: str = "float32") -> Path:
    """XTuner's convert_to_official.py (build the model from CONFIG, load CHECKPOINT, merge LoRA, save) in DTYPE."""
    import shutil

    import torch
    from mmengine.config import Config
    from xtuner.model.utils import LoadWoInit
    from xtuner.registry import BUILDER
    from transformers import AutoTokenizer

    cfg = Config.fromfile(str(config))
    cfg.model.pretrained_pth = str(checkpoint)
    with LoadWoInit():
        model = BUILDER.build(cfg.model)
    model.to(getattr(torch, dtype))  # XTuner's script: torch.bfloat16 here
    if model.use_llm_lora:
        model.model.language_model = model.model.language_model.merge_and_unload()
    out.mkdir(parents=True, exist_ok=True)
    model.model.save_pretrained(str(out))
    AutoTokenizer.from_pretrained(cfg.path, trust_remote_code=True).save_pretrained(str(out))
    for f in Path(cfg.path).glob("*.py"):
        shutil.copy2(f, out / f.name)
    return out


# --- XTuner's run with one lever changed --------------------------------------------------------------

# lever -> (official config line, new lines, what it changes); applied after notebook 04's own edits
LEVERS: dict[str, list[tuple[str, list[str], str]]] = {
    "no-output-lora": [("target_modules=None,", ["target_modules=['wqkv', 'wo', 'w1', 'w2', 'w3'],"],
                        "LoRA on the decoder's linear layers only, not on InternLM2's `output` head (ms-swift's all-linear)")],
    "swift-adam": [("betas = (0.9, 0.999)", ["betas = (0.9, 0.95)"], "ms-swift's adam_beta2 0.95"),
                   ("weight_decay = 0.0", ["weight_decay = 0.1"], "ms-swift's weight decay 0.1")],
}
# levers that are settings of labsupport's shims (CPUInternVL / CourseInternVLDataset) rather than config lines
SHIM_LEVERS = {"fp32-load": ("dtype='float32',", ["dtype='float32',", "load_dtype='float32',"],
                             "load the checkpoint in float32 (XTuner's InternVL_V1_5 loads bfloat16, then the shim casts up)"),
               "chat-system": ("type=CourseInternVLDataset,  # XTuner's InternVL_V1_5_Dataset, subclassed",
                               ["type=CourseInternVLDataset,  # XTuner's InternVL_V1_5_Dataset, subclassed", "system={chat!r},"],
                               "train with the system prompt of the model's own chat() (ms-swift's --system)")}


def train_with_levers(model: str, artifacts: Path, levers: list[str], merge_dtype: str = "bfloat16",
                      threads: int = 2, base: dict | None = None, config_only: bool = False) -> dict:
    """Notebook 04's XTuner run (its preset and config edits) with LEVERS changed; merged in MERGE_DTYPE; held-out rows."""
    from labsupport.datasets import plates
    from labsupport.evaluate import scoring
    from labsupport.model import tinymodel
    from labsupport.model.prompts import conversation_template, xtuner_default_system
    from labsupport.train import xtuner as xt, xtuner_config as xc, xtuner_presets

    model_dir = tinymodel.resolve_model(model, artifacts=artifacts)
    chat_system = conversation_template(model_dir).system_message
    choice = xtuner_presets.choose_preset(model_dir, device="cpu")
    task = plates.build_course_task(artifacts / "data" / "plates", n_train=600, n_heldout=120, progress=False)
    settings, _ = xtuner_presets.effective_settings(choice.name, {"model_path": str(model_dir), **(base or {})})
    settings, _ = xtuner_presets.cpu_compatible(settings)
    name, why = xc.official_config_for(model_dir, settings.mode, choice.params)
    if name is None:
        raise SystemExit(why)
    official = xc.copy_official_config(name, artifacts / "configs")
    edits = xc.edits_for(settings, official.read_text(), task["root"], max_dynamic_patch=settings.max_dynamic_patch,
                         samples=600)
    for lever in levers:
        for old, new, why in LEVERS.get(lever, []) + ([SHIM_LEVERS[lever]] if lever in SHIM_LEVERS else []):
            edits.append(xc.Edit(old, [n.format(chat=chat_system) for n in new], why))
        if lever not in LEVERS and lever not in SHIM_LEVERS:
            raise SystemExit(f"unknown lever {lever!r}: choose from {', '.join([*LEVERS, *SHIM_LEVERS])}")
    tag = "+".join(levers) or "baseline"
    config = _write_levered(official, edits, artifacts / "configs" / f"{name}_{tag}.py")
    if config_only:
        print(config)
        return {"levers": tag, "config": str(config)}
    work = artifacts / "work_dirs" / tag
    run = xt.launch(config, work, live=False, show="none", threads=threads)
    merged = artifacts / "merged" / f"{tag}-{merge_dtype}"
    if merge_dtype == "bfloat16":
        xt.convert_to_official(config, run.checkpoint, merged)  # XTuner's own script, as notebook 04 runs it
    else:
        merge(config, run.checkpoint, merged, merge_dtype)
    m, tok = scoring.load_model(merged)
    default = m.system_message
    row = {"levers": tag, "model": str(model_dir), "iterations": run.last_iter,
           "seconds": round(run.seconds, 1), "final_loss": run.scalars[-1]["loss"] if run.scalars else None,
           "merge_dtype": merge_dtype}
    for label, system in (("chat", None), ("xtuner", xtuner_default_system(model_dir))):
        m.system_message = default
        r = scoring.evaluate(m, tok, task["heldout"], max_num=settings.max_dynamic_patch or 1, batch_size=16,
                             progress=False, system=system)
        row[f"accuracy_{label}_system"] = round(r["accuracy"], 3)
        row[f"per_kind_{label}_system"] = r["per_kind"]
    print(json.dumps(row, ensure_ascii=False), flush=True)
    return row


def _write_levered(official: Path, edits: list, out: Path) -> Path:
    """OFFICIAL with EDITS, where a later edit of a line an earlier edit made applies to that edit's text."""
    from labsupport.train import xtuner_config as xc

    text = official.read_text(encoding="utf-8")
    for e in edits:
        text = xc.apply_edits(text, [e])
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text, encoding="utf-8")
    return out


# --- command line --------------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    """Command line: config, tokens, eval, merge, train (see the module docstring)."""
    p = argparse.ArgumentParser(prog="python -m benchmarks.levers_cpu", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("config")
    c.add_argument("--xtuner", type=Path, required=True)
    c.add_argument("--swift", type=Path, required=True)
    c.add_argument("--swift-system-of", type=Path, default=None,
                   help="a model folder: ms-swift's --system is notebook 10's for it (chat()'s own system message)")
    t = sub.add_parser("tokens")
    t.add_argument("--model", type=Path, required=True)
    t.add_argument("--xtuner-config", type=Path, required=True)
    t.add_argument("--swift-dir", type=Path, required=True)
    e = sub.add_parser("eval")
    e.add_argument("--model", type=Path, nargs="+", required=True)
    e.add_argument("--heldout", type=Path, required=True)
    e.add_argument("--batch", type=int, nargs="+", default=[16, 1])
    e.add_argument("--systems", nargs="+", default=["chat", "xtuner"], help="chat: the model's own; xtuner: XTuner's training prompt")
    m = sub.add_parser("merge")
    m.add_argument("--config", type=Path, required=True)
    m.add_argument("--checkpoint", type=Path, required=True)
    m.add_argument("--out", type=Path, required=True)
    m.add_argument("--dtype", default="float32")
    r = sub.add_parser("train")
    r.add_argument("--model", default="tiny")
    r.add_argument("--artifacts", type=Path, required=True)
    r.add_argument("--lever", nargs="*", default=[], help=f"any of the levers in LEVERS and SHIM_LEVERS")
    r.add_argument("--merge-dtype", default="bfloat16", help="bfloat16: XTuner's convert_to_official.py, as 04")
    r.add_argument("--threads", type=int, default=2)
    r.add_argument("--config-only", action="store_true", help="write the config and stop")
    for q in (c, t, e, m, r):
        q.add_argument("--json", type=Path, default=None, help="also write the rows here")
    args = p.parse_args(argv)
    if args.cmd == "config":
        from labsupport.model.prompts import conversation_template

        system = conversation_template(args.swift_system_of).system_message if args.swift_system_of else None
        rows = config_rows(args.xtuner, args.swift, system)
        for k, x, s in rows:
            print(f"{k:16s} | XTuner: {x} | ms-swift: {s}")
        out = [{"lever": k, "xtuner": x, "swift": s} for k, x, s in rows]
    elif args.cmd == "tokens":
        out = {"xtuner": xtuner_tokens(args.xtuner_config), "swift": swift_tokens(args.swift_dir, args.model)}
        for k, v in out.items():
            print(f"{k}: {v['tokens']} tokens ({v['image_tokens']} image), learned {len(v['learned_ids'])}: "
                  f"{v['learned_pieces']}\n  prompt: {v['prompt']!r}")
    elif args.cmd == "eval":
        from labsupport.model.prompts import xtuner_default_system

        out = []
        for model in args.model:
            systems = {"chat": None, "xtuner": xtuner_default_system(model)}
            out += evaluate_ways(model, args.heldout, {k: systems[k] for k in args.systems}, args.batch)
    elif args.cmd == "train":
        out = train_with_levers(args.model, args.artifacts, args.lever, args.merge_dtype, args.threads,
                                config_only=args.config_only)
    else:
        print(merge(args.config, args.checkpoint, args.out, args.dtype))
        out = {"merged": str(args.out), "dtype": args.dtype}
    if args.json:
        write_json_atomic(args.json, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
