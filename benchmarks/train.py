"""Training rows: XTuner runs of one checkpoint per mode and per speed lever, with their MFU and memory."""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
import statistics
import time
from pathlib import Path
from typing import Sequence

from labsupport.core.checkpoints import write_json_atomic
from benchmarks.build import DEFAULT_PEAK_FLOPS
from benchmarks.build import _versions
from benchmarks.build import bench_dir
from labsupport.evaluate.measured import estimate_for_run
from labsupport.evaluate.measured import format_table
from benchmarks.build import gpu_name
from benchmarks.build import need_cuda
from benchmarks.build import shape_name
from benchmarks.build import vlm_shape
from labsupport.train import xtuner, xtuner_presets
from benchmarks.build import save_results


# ---- train ----------------------------------------------------------------------------------------
def train_flops_per_sample(config: dict, mode: str, tokens: int, tiles: int, freeze_vit: bool = True) -> float:
    """Model FLOPs of one training sample of TOKENS LLM tokens and TILES image tiles (no recomputation counted).

    LLM: forward 2N + attention 4·L·h·s per token (N: matmul weights, the embedding table excluded);
    backward 2N for activation gradients + 2N for weight gradients when the LLM trains (full), only the
    first with LoRA (adapters' own FLOPs left out), and twice the attention. Frozen ViT: forward only,
    1025 tokens per tile. Projector (always trained): 6·P per image token.
    """
    from labsupport.model.params import count_parameters

    if mode not in ("lora", "qlora", "full"):
        raise ValueError(f"mode must be lora, qlora or full, not {mode!r}")
    counts = count_parameters(config)
    llm, vit = config["llm_config"], config["vision_config"]
    h, layers = llm["hidden_size"], llm["num_hidden_layers"]
    n_llm = counts["llm"] - llm["vocab_size"] * h
    attn_fwd = 4 * layers * h * tokens  # per token
    llm_flops = tokens * ((6 if mode == "full" else 4) * n_llm + 3 * attn_fwd)
    vit_tokens = (vit["image_size"] // vit["patch_size"]) ** 2 + 1
    vit_fwd = 2 * counts["vit"] * vit_tokens + 4 * vit["num_hidden_layers"] * vit["hidden_size"] * vit_tokens ** 2
    vit_flops = tiles * vit_fwd * (1 if freeze_vit else 3)
    image_tokens = int((vit["image_size"] // vit["patch_size"]) ** 2 * config.get("downsample_ratio", 0.5) ** 2)
    proj_flops = tiles * image_tokens * 6 * counts["projector"]
    return float(llm_flops + vit_flops + proj_flops)


def dataset_stats(config_path: str | os.PathLike, samples: int = 128) -> dict:
    """Tokens and tiles per sample of the dataset an XTuner config trains on (SAMPLES items spread evenly)."""
    from xtuner.registry import BUILDER

    from labsupport.train.xtuner_render import load_config

    cfg = load_config(config_path)
    ds = BUILDER.build(cfg.llava_dataset)
    n = len(ds)
    picks = sorted({int(i * n / min(samples, n)) for i in range(min(samples, n))})
    tokens, tiles = [], []
    for i in picks:
        item = ds[i]
        tokens.append(len(item["input_ids"]))
        tiles.append(int(item["pixel_values"].shape[0]))
    return {"samples_read": len(picks), "dataset_size": n, "mean_tokens": statistics.mean(tokens),
            "max_tokens": max(tokens), "mean_tiles": statistics.mean(tiles), "max_tiles": max(tiles),
            "tokens": tokens, "tiles": tiles}


def summarize_scalars(scalars: list[dict], warmup: int) -> dict:
    """Seconds per iteration after WARMUP iterations, median data_time, and the peak memory (GiB).

    s_per_iter is wall-clock time between the log lines of iteration WARMUP and the last one (launch
    stamps each line with `seconds`) divided by the iterations between them; mmengine's own `time` is a
    moving average over 10 iterations, so its median still carries the slow first iterations. Without
    `seconds` (or that line) it falls back to the median of `time` (kept as mmengine_s_per_iter).
    """
    timed = [r for r in scalars if "time" in r and r["iter"] > warmup]
    if not timed:
        raise ValueError(f"no logged iteration after the {warmup} warm-up iterations: was log_interval > 1 "
                         "or did training stop early?")
    mem = [r["memory"] for r in scalars if "memory" in r]
    smoothed = statistics.median(r["time"] for r in timed)
    start = next((r for r in scalars if r["iter"] == warmup and "seconds" in r), None)
    end = timed[-1]
    wall = ((end["seconds"] - start["seconds"]) / (end["iter"] - warmup)
            if start is not None and "seconds" in end and end["seconds"] > start["seconds"] else None)
    return {"measured_iters": len(timed), "s_per_iter": wall or smoothed, "mmengine_s_per_iter": smoothed,
            "clock": "wall" if wall else "mmengine",
            "data_s_per_iter": statistics.median(r.get("data_time", 0.0) for r in timed),
            "peak_memory_gib": max(mem) / 1024 if mem else None,
            "loss_first_last": [scalars[0].get("loss"), scalars[-1].get("loss")] if scalars else None}


def _no_optimizer_in_checkpoint(config_path: Path) -> None:
    """Make the config's final checkpoint model-only: a ZeRO-2 full fine-tune's optimizer state of 4B is ~50 GB."""
    text = config_path.read_text(encoding="utf-8")
    if text.count("save_optimizer=True") != 1:
        raise RuntimeError(f"{config_path}: expected exactly one 'save_optimizer=True' in the generated config "
                           "(labsupport.train.xtuner_render.render_config changed?)")
    tmp = config_path.with_name(config_path.name + ".tmp")
    tmp.write_text(text.replace("save_optimizer=True", "save_optimizer=False"), encoding="utf-8")
    os.replace(tmp, config_path)


_SAMPLER_LINE = ("    sampler=dict(type=LengthGroupedSampler, length_property='modality_length',\n"
                 "                 per_device_batch_size=batch_size * accumulative_counts),\n")


_PLAIN_OPTIM = ("    type=OptimWrapper,  # AmpOptimWrapper needs CUDA and fails on XTuner's bf16 gradients\n")


def apply_levers(config_path: Path, checkpointing: bool = True, attention: str | None = None,
                 group_by_length: bool = True, amp: bool = False, profile: bool = False,
                 fused_rmsnorm: bool = False) -> list[str]:
    """Edit a generated GPU config for the speed levers XTuner's own config cannot set; return what changed.

    CHECKPOINTING False or ATTENTION ("sdpa"/"eager") swap XTuner's InternVL_V1_5 for
    labsupport.train.xtuner_shims.LeverInternVL; GROUP_BY_LENGTH False swaps XTuner's LengthGroupedSampler
    (batches of similar length, XTuner's default) for mmengine's DefaultSampler (random order). AMP (a config
    without DeepSpeed) trains float32 master weights under mmengine's AmpOptimWrapper with bfloat16 autocast
    (XTuner loads bf16 weights, whose gradients AmpOptimWrapper cannot unscale) in a one-process group.
    FUSED_RMSNORM gives the LLM XTuner's Triton RMSNorm (through LeverInternVL).
    PROFILE adds labsupport.train.xtuner_shims.ProfileSummaryHook (mmengine's ProfilerHook over iterations 6-8),
    which writes profile.json beside the config.
    """
    text = config_path.read_text(encoding="utf-8")
    changed = []
    if not checkpointing or attention or amp or fused_rmsnorm:
        head = "model = dict(\n    type=InternVL_V1_5,\n"
        if text.count(head) != 1:
            raise RuntimeError(f"{config_path}: expected one 'model = dict(type=InternVL_V1_5' block (GPU config, "
                               "rendered with gradient checkpointing on?)")
        dtype = "\n    dtype='float32',  # master weights for AmpOptimWrapper" if amp else ""
        if fused_rmsnorm:
            dtype += "\n    fused_rmsnorm=True,  # XTuner's Triton RMSNorm kernel (its InternVL model does not dispatch it)"
        text = text.replace(head, "model = dict(\n    type=LeverInternVL,  # XTuner's InternVL_V1_5 + its levers\n"
                            f"    gradient_checkpointing={checkpointing!r},\n    llm_attn={attention!r},{dtype}\n")
        text = text.replace("from xtuner.model import InternVL_V1_5\n",
                            "from xtuner.model import InternVL_V1_5\nfrom labsupport.train.xtuner_shims import LeverInternVL\n")
        changed.append(f"model=LeverInternVL(gradient_checkpointing={checkpointing}, llm_attn={attention}"
                       + (", dtype=float32" if amp else "") + (", fused_rmsnorm=True" if fused_rmsnorm else "") + ")")
    if amp:
        if text.count(_PLAIN_OPTIM) != 1:
            raise RuntimeError(f"{config_path}: expected one plain OptimWrapper (a GPU config without DeepSpeed)")
        text = text.replace(_PLAIN_OPTIM, "    type=AmpOptimWrapper,  # bfloat16 autocast, float32 master weights\n"
                            "    dtype='bfloat16',\n    loss_scale='dynamic',\n")
        text = text.replace("from mmengine.optim import OptimWrapper,", "from mmengine.optim import AmpOptimWrapper, OptimWrapper,")
        changed.append("optim_wrapper=AmpOptimWrapper(bfloat16)")
    if not group_by_length:
        if text.count(_SAMPLER_LINE) != 1:
            raise RuntimeError(f"{config_path}: expected one LengthGroupedSampler line (render_config changed?)")
        text = text.replace(_SAMPLER_LINE, "    sampler=dict(type=DefaultSampler, shuffle=True),  # random order\n")
        text = text.replace("from xtuner.dataset.samplers import LengthGroupedSampler\n",
                            "from mmengine.dataset import DefaultSampler\nfrom xtuner.dataset.samplers import LengthGroupedSampler\n")
        changed.append("sampler=DefaultSampler")
    if profile:
        out_file = config_path.with_name(PROFILE_FILE)
        text += ("\n# where an iteration's time goes (benchmarks profile row)\n"
                 "from labsupport.train.xtuner_shims import ProfileSummaryHook\n"
                 f"custom_hooks = custom_hooks + [dict(type=ProfileSummaryHook, out_file={str(out_file)!r}, "
                 f"wait={PROFILE_WAIT}, active={PROFILE_ACTIVE})]\n")
        changed.append("custom_hooks+=ProfileSummaryHook")
    tmp = config_path.with_name(config_path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, config_path)
    return changed


PROFILE_FILE, PROFILE_WAIT, PROFILE_ACTIVE = "profile.json", 4, 3  # iterations 0-3 skipped (stalls), 4 warms the profiler


def write_train_config(path: Path, model_dir: str, mode: str, data: "xtuner_presets.DataSpec", total_iters: int, batch: int = 4,
                       zero: int = 2, nproc: int = 1, max_dynamic_patch: int = 6, lora_r: int = 128, device: str = "cuda",
                       checkpointing: bool = True, attention: str | None = None, group_by_length: bool = True,
                       num_workers: int = 4, accumulative_counts: int = 1, amp: bool = False, profile: bool = False,
                       fused_rmsnorm: bool = False) -> tuple["xtuner_presets.TrainSettings", Path, list[str]]:
    """Write the XTuner config of one benchmark run to PATH (train_mode's levers, see there); (settings, PATH, what the levers changed)."""
    from labsupport.train import xtuner_presets, xtuner_render

    if amp and zero:
        raise ValueError("amp=True is the run without DeepSpeed: pass zero=0")
    s = xtuner_presets.preset("tiny-cpu", model_path=str(model_dir), mode=mode, data=[data], device=device,
                      deepspeed=zero, nproc=nproc, batch_size=batch, accumulative_counts=accumulative_counts,
                      max_iters=total_iters, save_steps=total_iters, save_total_limit=1, log_interval=1,
                      max_dynamic_patch=max_dynamic_patch, freeze_vit=True, freeze_llm=None, lora_r=lora_r,
                      lora_alpha=2 * lora_r, lora_dropout=0.05, lr=2e-5, weight_decay=0.05, max_length=8192,
                      num_workers=num_workers,
                      gradient_checkpointing=checkpointing if device == "cpu" else True)  # GPU: apply_levers sets it
    notes = []
    if device == "cpu":
        s, notes = xtuner_presets.cpu_compatible(s)
        s = dataclasses.replace(s, num_workers=0)
    cfg_path = xtuner_render.write_config(s, path)
    _no_optimizer_in_checkpoint(cfg_path)
    if device != "cpu":
        notes += apply_levers(cfg_path, checkpointing, attention, group_by_length, amp, profile, fused_rmsnorm)
    return s, cfg_path, notes


def train_mode(model_dir: str, mode: str, data: "xtuner_presets.DataSpec", iters: int = 20, warmup: int = 5, batch: int = 4,
               zero: int = 2, nproc: int = 1, peak_flops: float = DEFAULT_PEAK_FLOPS, max_dynamic_patch: int = 6,
               lora_r: int = 128, device: str = "cuda", timeout_s: float = 190.0, keep_checkpoint: bool = False,
               checkpointing: bool = True, attention: str | None = None, group_by_length: bool = True,
               num_workers: int = 4, tag: str | None = None, accumulative_counts: int = 1, amp: bool = False,
               profile: bool = False, fused_rmsnorm: bool = False) -> dict:
    """Fine-tune MODEL_DIR with XTuner in MODE for WARMUP + ITERS iterations; tokens/s/GPU, MFU, data vs compute, memory.

    The levers: CHECKPOINTING (gradient checkpointing), ATTENTION (the LLM's kernel, None: what XTuner asks
    for), GROUP_BY_LENGTH (XTuner's LengthGroupedSampler), NUM_WORKERS (data-loader processes),
    ACCUMULATIVE_COUNTS (micro-batches per optimizer step; an iteration is one micro-batch, so tokens/s counts
    every one), AMP (ZERO 0 only: mmengine's AmpOptimWrapper, bf16 autocast over float32 weights, no DeepSpeed).
    PROFILE: a profiler summary of three iterations under "profile" (the profiler slows the row's own timing).
    """

    config = json.loads((Path(model_dir) / "config.json").read_text())
    work = bench_dir() / "train" / (tag or (mode if (zero, nproc) == (2, 1) else f"{mode}-zero{zero}-{nproc}gpu"))
    if work.exists():
        shutil.rmtree(work)
    s, cfg_path, notes = write_train_config(work / "config.py", model_dir, mode, data, warmup + iters, batch, zero, nproc,
                                            max_dynamic_patch, lora_r, device, checkpointing, attention, group_by_length,
                                            num_workers, accumulative_counts, amp, profile, fused_rmsnorm)
    stats = dataset_stats(cfg_path)
    print(f"[train:{mode}] data: {stats['mean_tokens']:.0f} tokens and {stats['mean_tiles']:.2f} tiles per sample "
          f"(max {stats['max_tokens']})", flush=True)
    run = xtuner.launch(cfg_path, work, nproc=s.nproc, deepspeed=s.deepspeed, live=False, show="progress",
                        timeout=timeout_s, threads=None if device != "cpu" else "auto")
    summary = summarize_scalars(run.scalars, warmup)
    tokens_per_iter = stats["mean_tokens"] * s.batch_size
    flops_per_iter = s.batch_size * statistics.mean(
        train_flops_per_sample(config, mode, n, k, s.freeze_vit) for n, k in zip(stats["tokens"], stats["tiles"]))
    attn = attention or _llm_attention(config)
    est = estimate_for_run(vlm_shape(config, Path(model_dir).name), mode, s.deepspeed, s.nproc, s.batch_size, stats,
                           s.lora_r, checkpointing=checkpointing, freeze_vit=s.freeze_vit, attention=attn, amp=amp)
    profiled = json.loads((work / PROFILE_FILE).read_text()) if profile else None
    if profiled and profiled.get("batch_per_iter", {}).get("samples"):
        b = profiled["batch_per_iter"]  # MFU of the profiled iterations themselves (their batches differ from the mean)
        flops = b["samples"] * train_flops_per_sample(config, mode, b["tokens"] / b["samples"], b["tiles"] / b["samples"],
                                                      s.freeze_vit)
        profiled["mfu_wall"] = flops / profiled["wall_s_per_iter"] / peak_flops
        profiled["mfu_gpu_busy"] = flops / profiled["gpu_busy_s_per_iter"] / peak_flops
    if not keep_checkpoint:
        for ckpt in work.glob("iter_*.pth"):
            shutil.rmtree(ckpt) if ckpt.is_dir() else ckpt.unlink()
    return {"mode": mode, "zero": s.deepspeed, "gpus": s.nproc, "batch_per_gpu": s.batch_size, "iters": iters,
            "warmup": warmup, "wall_s": run.seconds, **summary, "data_fraction": summary["data_s_per_iter"] / summary["s_per_iter"],
            "tokens_per_iter_per_gpu": tokens_per_iter, "tokens_per_s_per_gpu": tokens_per_iter / summary["s_per_iter"],
            "flops_per_iter_per_gpu": flops_per_iter, "peak_flops": peak_flops,
            "mfu": flops_per_iter / summary["s_per_iter"] / peak_flops, "dataset": stats,
            "estimate_gib": est.total, "estimate_parts": est.row(), "lora_r": s.lora_r if mode != "full" else None,
            "checkpointing": checkpointing, "attention": attn, "group_by_length": group_by_length,
            "accumulative_counts": accumulative_counts, "fused_rmsnorm": fused_rmsnorm,
            "optimizer": "AmpOptimWrapper" if amp else
            ("DeepSpeed" if s.deepspeed else "OptimWrapper"),
            "num_workers": s.num_workers, "shape": shape_name(config), **({"profile": profiled} if profile else {}),
            "notes": notes, "config": str(cfg_path), "log": str(run.log)}


def _llm_attention(config: dict) -> str:
    """The LLM attention the estimator should assume without the attention lever: XTuner asks for
    flash_attention_2, which the course's InternLM2 code (without flash_attn: SDPA) and transformers'
    Phi-3 run without storing the attention matrix -- "sdpa" in labsupport.train.memory's terms."""
    return "sdpa"


def train(model_dir: str, modes: Sequence[str] = ("lora", "full"), iters: int = 20, warmup: int = 5, batch: int = 4,
          zero: int = 2, nproc: int = 1, peak_flops: float = DEFAULT_PEAK_FLOPS, max_dynamic_patch: int = 6,
          lora_r: int = 128, device: str = "cuda", timeout_s: float = 190.0, out: str | os.PathLike | None = None) -> dict:
    """The train benchmark: each MODE through labsupport.train.xtuner (XTuner + DeepSpeed ZeRO-ZERO); table + train.json."""
    from labsupport.datasets.plates import build_course_task
    from labsupport.train.xtuner_presets import DataSpec

    if device.startswith("cuda"):
        need_cuda("the train benchmark (XTuner with DeepSpeed)")
    model_dir = str(Path(model_dir).resolve())
    print(f"[train] MFU against a peak of {peak_flops / 1e12:.0f} TFLOPS (bf16 dense; --peak-flops to change)", flush=True)
    plates = build_course_task(progress=False)
    data = DataSpec(str(plates["train"]), str(plates["image_folder"]))
    started = time.time()
    results: dict = {"model": model_dir, "peak_flops": peak_flops, "device": device, "versions": _versions(), "runs": []}
    if device.startswith("cuda"):
        results["gpu"] = gpu_name()  # not through torch: a CUDA context here would take memory from training
    for mode in modes:
        print(f"[train] {mode} ({time.time() - started:.0f} s elapsed)", flush=True)
        try:
            row = train_mode(model_dir, mode, data, iters, warmup, batch, zero, nproc, peak_flops, max_dynamic_patch,
                             lora_r, device, timeout_s)
        except Exception as exc:  # every mode gets a row: the table says what failed and why
            row = {"mode": mode, "zero": zero, "error": f"{type(exc).__name__}: {str(exc)[-2000:]}"}
        results["runs"].append(row)
        write_json_atomic(Path(out) if out else bench_dir() / "train.json", results)
    results["seconds"] = round(time.time() - started, 1)
    path = save_results("train", results, out)
    print(train_table(results))
    print(f"[train] wrote {path} in {results['seconds']:.0f} s")
    return results


# ---- levers: one training run per speed lever ----------------------------------------------------------
# name -> (what changes, train_mode keywords). Each row differs from the row named in "base" by one lever,
# so the table reads as "what this lever gives"; the "best" rows combine the winners.
LEVER_ROWS: dict[str, dict] = {
    "full-b4": {"base": None, "lever": "baseline: batch 4, checkpointing, SDPA, grouped, 4 workers",
                "mode": "full", "batch": 4},
    "full-b4-eager": {"base": "full-b4", "lever": "attention eager (the official code's fallback)",
                      "mode": "full", "batch": 4, "attention": "eager"},
    "full-b16": {"base": "full-b4", "lever": "batch 16", "mode": "full", "batch": 16},
    "full-b16-nockpt": {"base": "full-b16", "lever": "checkpointing off", "mode": "full", "batch": 16,
                        "checkpointing": False},
    "full-b8-nockpt": {"base": "full-b16", "lever": "batch 8, checkpointing off (16 without it runs out of memory)",
                       "mode": "full", "batch": 8, "checkpointing": False},
    "full-b16-random": {"base": "full-b16", "lever": "length grouping off", "mode": "full", "batch": 16,
                        "group_by_length": False},
    "full-b16-w8": {"base": "full-b16", "lever": "8 data-loader workers", "mode": "full", "batch": 16, "num_workers": 8},
    "full-b32": {"base": "full-b16", "lever": "batch 32 (checkpointing)", "mode": "full", "batch": 32},
    "full-b32-nockpt": {"base": "full-b16-nockpt", "lever": "batch 32 (checkpointing off)", "mode": "full",
                        "batch": 32, "checkpointing": False},
    "lora-b4": {"base": None, "lever": "baseline: batch 4, checkpointing, SDPA, grouped, 4 workers",
                "mode": "lora", "batch": 4},
    "lora-b4-eager": {"base": "lora-b4", "lever": "attention eager", "mode": "lora", "batch": 4, "attention": "eager"},
    "lora-b16": {"base": "lora-b4", "lever": "batch 16", "mode": "lora", "batch": 16},
    "lora-b16-nockpt": {"base": "lora-b16", "lever": "checkpointing off", "mode": "lora", "batch": 16,
                        "checkpointing": False},
    "lora-b32-nockpt": {"base": "lora-b16-nockpt", "lever": "batch 32 (checkpointing off)", "mode": "lora",
                        "batch": 32, "checkpointing": False},
    "lora-b16-nockpt-w8": {"base": "lora-b16-nockpt", "lever": "8 data-loader workers", "mode": "lora",
                           "batch": 16, "checkpointing": False, "num_workers": 8},
    # DeepSpeed's fixed cost per optimizer step (~0.29 s on the 2B full rows) paid once per 4 micro-batches
    "full-b16-w8-acc4": {"base": "full-b16-w8", "lever": "gradient accumulation 4 (tok/s per micro-batch)",
                         "mode": "full", "batch": 16, "num_workers": 8, "accumulative_counts": 4},
    "lora-b16-nockpt-acc4": {"base": "lora-b16-nockpt", "lever": "gradient accumulation 4 (tok/s per micro-batch)",
                             "mode": "lora", "batch": 16, "checkpointing": False, "accumulative_counts": 4},
    "full-b16-w8-zero1": {"base": "full-b16-w8", "lever": "DeepSpeed ZeRO-1 instead of ZeRO-2", "mode": "full",
                          "batch": 16, "num_workers": 8, "zero": 1},
    "full-b16-w8-profile": {"base": "full-b16-w8", "lever": "mmengine's ProfilerHook over 3 iterations (where the time "
                            "goes; profiling slows this row)", "mode": "full", "batch": 16, "num_workers": 8, "profile": True},
    "full-b16-w8-rmsnorm": {"base": "full-b16-w8", "lever": "XTuner's Triton RMSNorm kernel in the LLM (its SFT model "
                            "dispatches it, InternVL_V1_5 does not)", "mode": "full", "batch": 16, "num_workers": 8,
                            "fused_rmsnorm": True},
    "full-b16-w8-amp": {"base": "full-b16-w8", "lever": "no DeepSpeed: mmengine AmpOptimWrapper, bf16 autocast, fp32 weights",
                        "mode": "full", "batch": 16, "num_workers": 8, "zero": 0, "amp": True},
}
_LEVER_KEYS = ("checkpointing", "attention", "group_by_length", "num_workers", "accumulative_counts", "amp", "profile",
               "fused_rmsnorm")


def levers(model_dir: str, rows: Sequence[str], iters: int = 8, warmup: int = 4, zero: int = 2,
           peak_flops: float = DEFAULT_PEAK_FLOPS, max_dynamic_patch: int = 6, lora_r: int = 128,
           budget_s: float = 540.0, timeout_s: float = 150.0, out: str | os.PathLike | None = None) -> dict:
    """The lever table: each of ROWS (names in LEVER_ROWS) as one XTuner run on one GPU; rows that would start with
    less than a minute of BUDGET_S left are skipped (and say so). Partial results are written after every row."""
    from labsupport.datasets.plates import build_course_task
    from labsupport.train.xtuner_presets import DataSpec

    unknown = [r for r in rows if r not in LEVER_ROWS]
    if unknown:
        raise ValueError(f"unknown lever rows {unknown}; choose from {list(LEVER_ROWS)}")
    need_cuda("the lever benchmark (XTuner with DeepSpeed)")
    model_dir = str(Path(model_dir).resolve())
    plates = build_course_task(progress=False)
    data = DataSpec(str(plates["train"]), str(plates["image_folder"]))
    started = time.time()
    results: dict = {"model": Path(model_dir).name, "peak_flops": peak_flops, "device": "cuda", "gpu": gpu_name(),
                     "versions": _versions(), "iters": iters, "warmup": warmup, "runs": []}
    path = Path(out) if out else bench_dir() / "levers.json"
    for name in rows:
        spec = LEVER_ROWS[name]
        left = budget_s - (time.time() - started)
        if left < 60:
            results["runs"].append({"row": name, "mode": spec["mode"], "zero": spec.get("zero", zero), "lever": spec["lever"],
                                    "error": f"skipped: {left:.0f} s left of the {budget_s:.0f} s budget"})
            continue
        print(f"[levers] {name}: {spec['lever']} ({time.time() - started:.0f} s elapsed)", flush=True)
        kw = {k: spec[k] for k in _LEVER_KEYS if k in spec}
        try:
            row = train_mode(model_dir, spec["mode"], data, iters, warmup, spec["batch"], spec.get("zero", zero), 1, peak_flops,
                             max_dynamic_patch, lora_r, "cuda", min(timeout_s, left), tag=f"lever-{name}", **kw)
        except Exception as exc:  # an out-of-memory row is a result too
            first = str(exc).splitlines()[0] if str(exc) else ""  # the cause (xtuner.root_error), then the log's tail
            row = {"mode": spec["mode"], "zero": spec.get("zero", zero), "batch_per_gpu": spec["batch"],
                   "error": f"{type(exc).__name__}: {first[:600]}\n{str(exc)[-1200:]}"}
        row.update({"row": name, "lever": spec["lever"], "base": spec["base"]})
        row.pop("config", None), row.pop("log", None)  # machine paths
        results["runs"].append(row)
        write_json_atomic(path, results)
        print(levers_table(results), flush=True)
        if row.get("profile"):
            print(profile_table(row), flush=True)
    results["seconds"] = round(time.time() - started, 1)
    write_json_atomic(path, results)
    print(f"[levers] wrote {path} in {results['seconds']:.0f} s")
    return results


def levers_table(results: dict) -> str:
    """The lever results as a text table: one row per lever, with tok/s against the row it changes."""
    by_name = {r.get("row"): r for r in results["runs"]}
    rows = []
    for r in results["runs"]:
        row = dict(r)
        row["mfu_pct"] = 100 * r["mfu"] if r.get("mfu") is not None else None
        row["data_pct"] = 100 * r["data_fraction"] if r.get("data_fraction") is not None else None
        base = by_name.get(r.get("base"))
        if base and base.get("tokens_per_s_per_gpu") and r.get("tokens_per_s_per_gpu"):
            row["x_base"] = r["tokens_per_s_per_gpu"] / base["tokens_per_s_per_gpu"]
        row["note"] = r["error"].splitlines()[0][:60] if r.get("error") else ""
        rows.append(row)
    cols = [("row", "row"), ("lever", "lever"), ("batch_per_gpu", "batch"), ("zero", "ZeRO"), ("accumulative_counts", "acc"),
            ("s_per_iter", "s/iter"), ("data_pct", "data %"), ("tokens_per_s_per_gpu", "tok/s/GPU"), ("x_base", "x base"),
            ("mfu_pct", "MFU %"), ("peak_memory_gib", "peak GiB"), ("estimate_gib", "estimate GiB"), ("note", "note")]
    return (f"MFU against {results['peak_flops'] / 1e12:.0f} TFLOPS; one GPU; ZeRO 0 = no DeepSpeed; acc = micro-batches "
            "per optimizer step (s/iter and tok/s per micro-batch); x base = tok/s / the row it changes\n"
            + format_table(rows, cols, digits=2))


def profile_table(row: dict, top: int = 10) -> str:
    """A profiled lever row as text: wall-clock against GPU-busy time per iteration, kernel launches, forward passes, top ops."""
    p = row["profile"]
    wall, busy = p["wall_s_per_iter"], p["gpu_busy_s_per_iter"]
    fwd = p.get("forward_gpu_s_per_iter", {})
    b = p.get("batch_per_iter") or {}
    batch = (f"; {b['samples']:.0f} samples, {b['tokens']:,.0f} tokens ({b['padded_tokens']:,.0f} with padding), "
             f"{b['tiles']:.0f} tiles per iteration, MFU {100 * p['mfu_wall']:.1f} % of wall-clock time, "
             f"{100 * p['mfu_gpu_busy']:.1f} % of GPU-busy time") if "mfu_wall" in p else ""
    head = (f"{row['row']}: {wall:.3f} s per iteration under the profiler, the GPU busy {busy:.3f} s "
            f"({100 * busy / wall:.0f} %), {p['kernels_per_iter']:,.0f} kernels per iteration "
            f"(mean {1e6 * busy / max(p['kernels_per_iter'], 1):.0f} µs each); host ops {p['cpu_ops_s_per_iter']:.3f} s; "
            f"forward on the GPU: ViT {fwd.get('vit.forward', 0):.3f} s, LLM {fwd.get('llm.forward', 0):.3f} s{batch}")
    rows = [{"op": o["op"][:60], "gpu_ms": 1e3 * o["gpu_s_per_iter"], "share": 100 * o["gpu_s_per_iter"] / busy if busy else None,
             "calls": o["calls_per_iter"]} for o in p["top_ops"][:top]]
    return head + "\n" + format_table(rows, [("op", "op"), ("gpu_ms", "GPU ms/iter"), ("share", "% of GPU busy"),
                                             ("calls", "calls/iter")], digits=1)


def train_table(results: dict) -> str:
    """The train results as a text table (one row per mode)."""
    rows = []
    for r in results["runs"]:
        row = dict(r)
        row["mfu_pct"] = 100 * r["mfu"] if r.get("mfu") is not None else None
        row["data_pct"] = 100 * r["data_fraction"] if r.get("data_fraction") is not None else None
        row["note"] = r["error"].splitlines()[0][:70] if r.get("error") else ""
        rows.append(row)
    cols = [("mode", "mode"), ("zero", "ZeRO"), ("batch_per_gpu", "batch"), ("s_per_iter", "s/iter"),
            ("data_pct", "data %"), ("tokens_per_s_per_gpu", "tok/s/GPU"), ("mfu_pct", "MFU %"),
            ("peak_memory_gib", "peak GiB"), ("estimate_gib", "estimate GiB"), ("note", "note")]
    return (f"MFU against {results['peak_flops'] / 1e12:.0f} TFLOPS; data % = mmengine data_time / time\n"
            + format_table(rows, cols, digits=2))
