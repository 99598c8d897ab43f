"""Fine-tune InternVL2 with XTuner from a notebook: write the config, launch train.py, watch the loss, resume, convert.

    s = preset("tiny-cpu", model_path=..., data=[DataSpec(train_json, image_dir)])
    cfg = write_config(s, ARTIFACTS / "xtuner" / "tiny.py")     # a real XTuner config (mmengine loads it)
    run = launch(cfg, work_dir)                                  # live loss, raises when training fails
    hf = convert_to_official(cfg, run.checkpoint, out_dir)       # merged HF folder that AutoModel loads

Everything a CPU needs (process group of one, float32, OptimWrapper, >= 1 warmup iteration) is
chosen here or in labsupport.xtuner_shims; installed packages are never edited.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field, replace, asdict
from pathlib import Path
from typing import Callable

from labsupport.checkpoints import write_json_atomic
from labsupport.runs import latest_intact_checkpoint, safe_training
from labsupport.paths import repo_root

MODES = ("lora", "qlora", "full")


@dataclass
class DataSpec:
    """One training json in InternVL format, the folder its image paths are relative to, and how often to repeat it."""

    json: str
    images: str
    repeat_times: float = 1


@dataclass
class TrainSettings:
    """The readable knobs behind a generated XTuner config."""

    model_path: str
    data: list[DataSpec] = field(default_factory=list)
    mode: str = "lora"                 # lora | qlora | full
    freeze_vit: bool = True            # keep the InternViT frozen
    freeze_llm: bool | None = None     # None: frozen for lora/qlora (adapters train), trained for full
    lora_r: int = 128
    lora_alpha: int = 256
    lora_dropout: float = 0.05
    max_length: int = 8192
    batch_size: int = 4                # per GPU (or per CPU process)
    accumulative_counts: int = 4
    lr: float = 4e-5
    weight_decay: float = 0.05
    max_norm: float = 1.0
    max_epochs: int = 1
    max_iters: int | None = None       # when set, train this many iterations instead of epochs
    warmup_ratio: float = 0.03
    save_steps: int = 1000
    save_total_limit: int = 2
    max_dynamic_patch: int | None = None  # None: the model's own setting (6 for InternVL2 training)
    deepspeed: int = 0                 # ZeRO stage 1/2/3, 0 = no DeepSpeed
    nproc: int = 1                     # GPUs (processes) per node
    device: str = "cuda"               # cuda | cpu
    num_workers: int = 4
    log_interval: int = 10
    gradient_checkpointing: bool = True
    fused_rmsnorm: bool = False        # XTuner's Triton RMSNorm kernel in the LLM (GPU only; labsupport.gpu_presets)
    group_by_length: bool = True       # XTuner's LengthGroupedSampler (batches of similar length); False: random order
    seed: int = 42
    template: str | None = None        # XTuner PROMPT_TEMPLATE name; None: from the model's LLM
    measured: dict | None = None       # the docs/gpu row the per-GPU batch, workers, checkpointing come from (gpu_presets)
    preset_note: str = ""              # where the per-GPU values come from, in a sentence (printed by notebook 04)

    def llm_frozen(self) -> bool:
        """Whether the LLM's own weights are frozen (LoRA/QLoRA adapters still train)."""
        return self.mode != "full" if self.freeze_llm is None else self.freeze_llm


# --- presets -------------------------------------------------------------------------------------

# Per-GPU values after the official InternVL2 fine-tune recipes (internvl_chat/shell/internvl2.0/2nd_finetune)
# and XTuner's configs/internvl/v2: lr 4e-5, max_length 8192, dynamic patches <= 6, global batch 128
# for full fine-tuning on 8 GPUs, 16 for LoRA on 2, QLoRA on one; LoRA r=128, alpha=256 (XTuner's).
# Where labsupport/data/gpu_presets_measured.json holds a measured entry for the size and mode (InternVL2-2B full
# and LoRA, one H200), its per-GPU batch, data-loader workers and gradient checkpointing replace these defaults;
# the global batch (and so the learning rate) stays the recipe's: fewer GPUs or less accumulation make it up.
_SIZES = {"1B": 4, "2B": 4, "4B": 2, "8B": 1}  # per-GPU batch that fits 80 GB with gradient checkpointing
_GPUS = {"full": 8, "lora": 2, "qlora": 1}
_GLOBAL_BATCH = {"full": 128, "lora": 16, "qlora": 16}


def _measured_entry(size: str, mode: str, gpu_memory_gib: float | None) -> tuple[dict | None, str]:
    """(the fastest measured gpu_presets entry that fits this GPU, or None; a sentence saying which and why)."""
    from labsupport import gpu_presets

    gib, where = (gpu_memory_gib, f"{gpu_memory_gib} GiB (given)") if gpu_memory_gib else gpu_presets.gpu_memory_gib()
    model = f"InternVL2-{size}"
    try:
        e = gpu_presets.entry(model, mode, gib)
    except KeyError:
        return None, f"no measured {model} {mode} settings: per-GPU batch {_SIZES[size]} with checkpointing (fits 80 GB)"
    except ValueError:
        return None, (f"no measured {model} {mode} setting fits {gib} GiB ({where}): per-GPU batch {_SIZES[size]} "
                      "with checkpointing")
    m = e["measured"]
    e["measured"].update(model=model, mode=mode, gpu_memory_gib=gib, gpu=where, why=e.get("why", ""), settings=e["settings"])
    return e, (f"measured on one H200: row {m['row']} of docs/gpu/{m['file']}, {m['tokens_per_s_per_gpu']:,.0f} tok/s/GPU, "
               f"MFU {m['mfu']:.1%}, peak {m['peak_memory_gib']:.1f} GiB (+15 % headroom: {gpu_presets.needs_gib(e)} GiB); chosen for {where}")


def _gpu_preset(size: str, mode: str, gpu_memory_gib: float | None = None) -> TrainSettings:
    e, note = _measured_entry(size, mode, gpu_memory_gib)
    global_batch = _GLOBAL_BATCH[mode]
    per_gpu = e["settings"]["batch_size"] if e else _SIZES[size]
    gpus = min(_GPUS[mode], max(1, global_batch // per_gpu))  # a measured batch may fill the global batch on fewer GPUs
    extra = {}
    if e:
        extra = dict(num_workers=e["settings"]["num_workers"], gradient_checkpointing=e["settings"]["gradient_checkpointing"],
                     fused_rmsnorm=e["settings"].get("fused_rmsnorm", False), measured=e["measured"])
    return TrainSettings(
        model_path=f"OpenGVLab/InternVL2-{size}", data=[DataSpec("data/train.json", "data/images")], mode=mode,
        batch_size=per_gpu, accumulative_counts=max(1, global_batch // (per_gpu * gpus)), nproc=gpus,
        deepspeed=3 if (mode == "full" and size == "8B") else 2, lr=4e-5, max_dynamic_patch=6,
        save_steps=500, device="cuda", preset_note=note, **extra,
    )


TINY_N_TRAIN = 600  # notebook 04's default N_TRAIN: max_epochs passes over it at the preset's batch are the CPU run


def _tiny_cpu(gpu_memory_gib: float | None = None) -> TrainSettings:
    # LoRA (r=32, alpha=64) on the miniature model's LLM plus the projector, lr 1e-3, 4 epochs of TINY_N_TRAIN plates
    # at batch 4 (600 iterations) in random order, one tile per image, the pre-trained ViT frozen (it halves the cost
    # of an iteration); each training image is asked all three questions (datasets.build_course_task(ask_all=True)).
    # Measured with XTuner on the 2-core course machine, held-out accuracy after 600 iterations (seed 42):
    #   one question per image, lr 2e-3, LengthGroupedSampler .................... 0.62 (colour and shape mixed up)
    #   all three per image, LengthGroupedSampler ................................ 0.63
    #   all three per image, random order (DefaultSampler) ....................... 0.80 (English colour/shape mixed up)
    #   ... and English questions ending "one colour." / "one shape." ............ 0.98 (the preset; 0.22 s/iteration)
    #   ... the old questions, 750 iterations .................................... 0.99
    # A plain-PyTorch replica on a GPU ranked the recipes first (scripts/device/lora_replica.py,
    # docs/gpu/lora-replica-tiny-h200.json): one question per image 0.46-0.95 over seeds, all three 0.975-0.99.
    return TrainSettings(
        model_path="tiny", mode="lora", freeze_vit=True, freeze_llm=None, max_length=512, batch_size=4,
        accumulative_counts=1, lr=1e-3, weight_decay=0.0, max_epochs=4, warmup_ratio=0.03, save_steps=50,
        save_total_limit=2, max_dynamic_patch=1, device="cpu", num_workers=0, log_interval=10,
        gradient_checkpointing=False, lora_r=32, lora_alpha=64, lora_dropout=0.0, group_by_length=False,
        preset_note="the CPU preset of the miniature model (measured on the 2-core course machine)",
    )


PRESETS: dict[str, Callable[..., TrainSettings]] = {"tiny-cpu": _tiny_cpu}
for _size in _SIZES:
    for _mode in MODES:
        PRESETS[f"InternVL2-{_size}-{_mode}"] = (lambda gpu_memory_gib=None, s=_size, m=_mode: _gpu_preset(s, m, gpu_memory_gib))


def preset(name: str = "tiny-cpu", gpu_memory_gib: float | None = None, **overrides) -> TrainSettings:
    """The settings of preset NAME (see PRESETS) for a GPU of GPU_MEMORY_GIB (None: this machine's, else an H200's),
    with any field replaced by OVERRIDES."""
    if name not in PRESETS:
        raise KeyError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    if "data" in overrides:
        overrides["data"] = [d if isinstance(d, DataSpec) else DataSpec(**d) for d in overrides["data"]]
    return replace(PRESETS[name](gpu_memory_gib=gpu_memory_gib), **overrides)


# A checkpoint below this many parameters is a miniature (the course's tiny has ~1.3M; InternVL2-1B has 0.9B):
# it trains with the CPU preset whatever its layout.
MINIATURE_MAX_PARAMS = 50_000_000
_LAYOUT_SIZE = {"Qwen2ForCausalLM": "1B", "Phi3ForCausalLM": "4B"}


@dataclass
class PresetChoice:
    """The preset a checkpoint gets, why, and what it is (parameter count, LLM layout, miniature or not)."""

    name: str
    reason: str
    params: int
    layout: str
    miniature: bool


def choose_preset(model_path: str | os.PathLike, mode: str = "", device: str = "cpu") -> PresetChoice:
    """The preset for the checkpoint at MODEL_PATH, chosen by its parameter count and LLM layout (never its folder name)."""
    from labsupport import params

    total = params.count_parameters(Path(model_path))["total"]
    layout = (json.loads((Path(model_path) / "config.json").read_text()).get("llm_config", {}).get("architectures") or ["?"])[0]
    count = params.format_count(total)
    if total < MINIATURE_MAX_PARAMS:
        return PresetChoice("tiny-cpu", f"{count} parameters ({layout}): a miniature checkpoint, trained with the CPU preset",
                            total, layout, True)
    size = _LAYOUT_SIZE.get(layout) or ("2B" if total < 4e9 else "8B")
    mode = mode or "lora"
    where = "" if device == "cuda" else " (a real-size model: its training needs a CUDA GPU)"
    return PresetChoice(f"InternVL2-{size}-{mode}", f"{count} parameters ({layout}): InternVL2-{size}'s size, "
                        f"the {mode} GPU preset{where}", total, layout, False)


def effective_settings(preset_name: str, overrides: dict) -> tuple[TrainSettings, list[tuple[str, object, object]]]:
    """The preset's settings with every non-None value of OVERRIDES applied, and the (field, preset, effective) rows that differ.

    A GPU preset keeps its global batch (and so its learning rate) when OVERRIDES change the GPUs or the per-GPU
    batch but not accumulative_counts: e.g. the 8-GPU full preset on one GPU accumulates 8 micro-batches.
    """
    base = preset(preset_name)
    chosen = {k: v for k, v in overrides.items() if v is not None}
    if base.device != "cpu" and {"nproc", "batch_size"} & set(chosen) and "accumulative_counts" not in chosen:
        total = base.batch_size * base.nproc * base.accumulative_counts
        per_step = chosen.get("batch_size", base.batch_size) * chosen.get("nproc", base.nproc)
        chosen["accumulative_counts"] = max(1, total // per_step)
    s = preset(preset_name, **chosen)
    rows = [(k, getattr(base, k), getattr(s, k)) for k in chosen if k != "data" and getattr(base, k) != getattr(s, k)]
    return s, rows


def settings_table(s: TrainSettings, preset_name: str) -> str:
    """SETTINGS next to PRESET_NAME's values, one knob a line, a '*' where they differ."""
    base = asdict(preset(preset_name))
    keys = ["mode", "lora_r", "lora_alpha", "lr", "batch_size", "accumulative_counts", "max_epochs", "nproc", "deepspeed",
            "num_workers", "gradient_checkpointing", "fused_rmsnorm", "max_dynamic_patch", "max_length", "freeze_vit", "device", "save_steps"]
    lines = [f"{'setting':22s} {'effective':>14s}  {'preset ' + preset_name:>24s}"]
    for k in keys:
        eff, pre = getattr(s, k), base[k]
        lines.append(f"{k:22s} {eff!s:>14s}  {pre!s:>24s}{'  *' if eff != pre else ''}")
    return "\n".join(lines)


def full_run_estimate(model_path: str | os.PathLike, samples: int, tokens: int = 300, flops_per_s: float = 5e10) -> float:
    """Seconds one epoch of LoRA on SAMPLES samples of ~TOKENS tokens would take on a CPU doing FLOPS_PER_S (forward + backward ~ 4 x params x tokens)."""
    from labsupport import params

    total = params.count_parameters(Path(model_path))["total"]
    return 4.0 * total * tokens * samples / flops_per_s


def training_skip_reason(choice: PresetChoice, device: str, model_path: str | os.PathLike, samples: int) -> str | None:
    """Why this machine should not train the checkpoint (a real-size model on a CPU: with the time a run would take), or None."""
    if choice.miniature or device == "cuda":
        return None
    hours = full_run_estimate(model_path, samples) / 3600
    return (f"a real-size model ({choice.reason.split(':')[0]}) on a CPU: one epoch of {samples} samples would take "
            f"~{hours:.0f} h here (4 x parameters x ~300 tokens per sample at ~50 GFLOP/s). Run the GPU command below "
            f"on a CUDA machine instead.")


_WARNINGS = [
    # (category, message regex): raised inside libraries by code paths the course does not control
    (UserWarning, r".*TypedStorage is deprecated.*"),
    (FutureWarning, r".*`torch_dtype` is deprecated.*"),
    (UserWarning, r".*do_sample.*is set to `False`.*"),
    (FutureWarning, r".*torch.utils._pytree._register_pytree_node.*"),
    (UserWarning, r".*None of the inputs have requires_grad=True.*"),
    (DeprecationWarning, r".*"),
    (FutureWarning, r".*Importing from timm.models.layers is deprecated.*"),  # every published modeling_intern_vit.py
]


def quiet_warnings() -> None:
    """Hide warnings raised inside transformers/torch/mmengine that a learner cannot act on (printed once: which and why)."""
    import logging
    import warnings

    for category, pattern in _WARNINGS:
        warnings.filterwarnings("ignore", message=pattern, category=category)
    # the tokenizer builder uses Rust threads; the `!xtuner ...` cells fork the kernel afterwards, and tokenizers
    # then warns about the fork in every notebook: say up front that this process needs no tokenizer threads
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # the published InternVL2 remote code logs through transformers' logger on every load (flash-attn missing, eager
    # attention, no GenerationMixin, deprecated cache attributes): keep transformers' own log to errors
    try:
        import transformers

        transformers.logging.set_verbosity_error()
    except ImportError:
        pass  # an environment without transformers has no remote code to quiet
    # ... and a checkpoint's own modules log under "transformers_modules.<folder>", outside transformers' logger tree
    logging.getLogger("transformers_modules").setLevel(logging.ERROR)
    # DeepSpeed (imported by XTuner) logs its accelerator auto-detection, bitsandbytes prints that it has no GPU
    # library: both at import, both irrelevant to a CPU run. Import them once with their output swallowed.
    import contextlib
    import importlib
    import io

    for name in ("deepspeed", "bitsandbytes"):
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            try:
                importlib.import_module(name)
            except Exception:  # noqa: BLE001 - optional packages: absent or broken is fine here, XTuner reports it
                continue
        logging.getLogger("DeepSpeed").setLevel(logging.ERROR)
    print("note: warnings from inside the libraries that you cannot act on (deprecations, generation defaults) are hidden")


def resume_demo(config: str | os.PathLike, run: "TrainRun", demo_dir: str | os.PathLike,
                threads: int | str | None = "auto") -> tuple["TrainRun", int]:
    """Copy RUN's work dir to DEMO_DIR without its last checkpoint and resume from the one before; (resumed run, start iter)."""
    demo_dir = Path(demo_dir)
    if demo_dir.exists():
        shutil.rmtree(demo_dir)
    shutil.copytree(run.work_dir, demo_dir, ignore=shutil.ignore_patterns(run.checkpoint.name, "last_checkpoint"))
    earlier = latest_checkpoint(demo_dir)
    if earlier is None:
        raise FileNotFoundError(f"{run.work_dir} kept only one checkpoint: raise save_total_limit to 2 to demonstrate resuming")
    start = int(re.findall(r"\d+", earlier.stem)[0])
    (demo_dir / "last_checkpoint").write_text(str(earlier))
    return launch(config, demo_dir, resume=True, live=False, threads=threads), start


def cpu_compatible(s: TrainSettings) -> tuple[TrainSettings, list[str]]:
    """SETTINGS adjusted for a CPU-only machine, and one reason per change (QLoRA, DeepSpeed, >1 process need CUDA)."""
    reasons = []
    if s.mode == "qlora":
        s = replace(s, mode="lora")
        reasons.append("QLoRA needs bitsandbytes' CUDA kernels: training plain LoRA instead")
    if s.deepspeed:
        reasons.append(f"DeepSpeed ZeRO-{s.deepspeed} cannot run on a CPU here: training without it")
        s = replace(s, deepspeed=0)
    if s.nproc > 1:
        reasons.append(f"{s.nproc} processes need {s.nproc} GPUs: training in one CPU process")
        s = replace(s, nproc=1)
    if s.fused_rmsnorm:
        reasons.append("XTuner's Triton RMSNorm kernel runs on CUDA tensors only: the model's own RMSNorm instead")
        s = replace(s, fused_rmsnorm=False)
    if s.device != "cpu":
        s = replace(s, device="cpu")
    return s, reasons


# --- config generation ---------------------------------------------------------------------------

def _py(v) -> str:
    """A Python literal for V (paths as plain strings)."""
    return repr(str(v)) if isinstance(v, Path) else repr(v)




def template_for(model_path: str | os.PathLike) -> str:
    """XTuner's prompt template for a model: phi3_chat for a Phi-3 LLM (InternVL2-4B, "tiny-4b"), else internlm2_chat
    (InternLM2: InternVL2-2B/8B and the default "tiny")."""
    cfg = Path(model_path) / "config.json"
    if cfg.exists():
        arch = (json.loads(cfg.read_text()).get("llm_config", {}).get("architectures") or [""])[0]
        return "phi3_chat" if arch.startswith("Phi3") else "internlm2_chat"
    return "phi3_chat" if "4B" in str(model_path) or str(model_path).lower() == "tiny-4b" else "internlm2_chat"


def _warmup_iters(s: TrainSettings) -> int:
    """Warmup iterations for an iteration-based run: at least 2.

    mmengine's LinearLR reaches its end factor at iteration end-1; with end=0 it refuses to build
    ("end should be larger than begin") and with end=1 the rate stays at start_factor x lr for the
    whole run (the cosine that follows scales the current value), which looks like training that
    does not learn.
    """
    return max(2, round(s.warmup_ratio * (s.max_iters or 0)))


def render_config(s: TrainSettings) -> str:
    """The text of an XTuner config for SETTINGS (PART 1 holds the knobs a learner changes)."""
    if s.mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, not {s.mode!r}")
    if s.deepspeed not in (0, 1, 2, 3):
        raise ValueError(f"deepspeed must be 0 (off) or a ZeRO stage 1, 2, 3, not {s.deepspeed!r}")
    if not s.data:
        raise ValueError("no training data: give data=[DataSpec(json, image_folder)]")
    cpu = s.device == "cpu"
    if cpu and (s.mode == "qlora" or s.deepspeed or s.nproc > 1):
        raise ValueError("QLoRA, DeepSpeed and several processes need GPUs: pass the settings through cpu_compatible() first")
    by_iter = s.max_iters is not None
    # XTuner's InternVL_V1_5 always switches gradient checkpointing on and never dispatches XTuner's RMSNorm kernel:
    # for either lever, labsupport's LeverInternVL
    lever = not s.gradient_checkpointing or s.fused_rmsnorm
    model_cls = "CPUInternVL" if cpu else ("LeverInternVL" if lever else "InternVL_V1_5")
    data_cls = "CourseInternVLDataset" if (cpu or s.max_dynamic_patch is not None) else "InternVL_V1_5_Dataset"
    lora = s.mode in ("lora", "qlora")
    L = []  # noqa: N806
    a = L.append
    a("# XTuner config written by labsupport.xtuner.write_config — run it with XTuner's tools/train.py.")
    a(f"# Device: {'CPU (float32, one process, no AMP)' if cpu else 'CUDA GPUs'}; mode: {s.mode}.")
    if "1B" in str(s.model_path):
        a("# NOTE: XTuner 0.2.0's InternVL dataset accepts only Phi-3 and InternLM2 LLMs; InternVL2-1B's Qwen2")
        a("# stops it with NotImplementedError (xtuner/dataset/internvl_dataset.py). Use 2B/4B/8B with this XTuner.")
    a("from mmengine.hooks import CheckpointHook, DistSamplerSeedHook, IterTimerHook, LoggerHook, ParamSchedulerHook")
    a(f"from mmengine.optim import {'OptimWrapper' if cpu or not s.deepspeed else 'AmpOptimWrapper'}, CosineAnnealingLR, LinearLR")
    if lora:
        a("from peft import LoraConfig")
    a("from torch.optim import AdamW")
    a("from transformers import AutoTokenizer")
    a("")
    a("from xtuner.dataset.collate_fns import default_collate_fn")
    a("from xtuner.dataset.samplers import LengthGroupedSampler")
    a("from xtuner.engine.hooks import DatasetInfoHook")
    a("from xtuner.engine.runner import TrainLoop")
    a("from xtuner.utils import PROMPT_TEMPLATE")
    if not cpu:
        a("from xtuner.model import InternVL_V1_5")
    if data_cls == "InternVL_V1_5_Dataset":
        a("from xtuner.dataset import InternVL_V1_5_Dataset")
    shims = sorted({c for c in (model_cls, data_cls) if c in ("CPUInternVL", "CourseInternVLDataset", "LeverInternVL")})
    if shims:
        a(f"from labsupport.xtuner_shims import {', '.join(shims)}  # XTuner's classes + the knobs they lack")
    a("")
    a("#" * 72)
    a("#                          PART 1  Settings (change these)")
    a("#" * 72)
    a("# Model")
    a(f"path = {_py(s.model_path)}")
    a("")
    a("# Data: InternVL-format json files, their image folders, and how often each is repeated")
    a(f"data_paths = {[str(d.json) for d in s.data]!r}")
    a(f"image_folders = {[str(d.images) for d in s.data]!r}")
    a(f"repeat_times = {[d.repeat_times for d in s.data]!r}")
    a(f"prompt_template = PROMPT_TEMPLATE.{s.template or template_for(s.model_path)}  # the LLM's chat markers")
    a(f"max_length = {s.max_length}  # tokens per sample (image tokens included)")
    a(f"max_dynamic_patch = {s.max_dynamic_patch!r}  # 448-px tiles per image (None: the model's own setting)")
    a("")
    a("# What trains")
    a(f"freeze_llm = {s.llm_frozen()!r}")
    a(f"freeze_visual_encoder = {s.freeze_vit!r}")
    if lora:
        a(f"lora_r, lora_alpha, lora_dropout = {s.lora_r}, {s.lora_alpha}, {s.lora_dropout}")
    a("")
    a("# Scheduler & optimizer")
    a(f"batch_size = {s.batch_size}  # per GPU")
    a(f"accumulative_counts = {s.accumulative_counts}  # global batch = batch_size x GPUs x accumulative_counts")
    a(f"dataloader_num_workers = {s.num_workers}")
    if by_iter:
        a(f"max_iters = {s.max_iters}")
        a(f"warmup_iters = {_warmup_iters(s)}  # at least 2 (see labsupport.xtuner._warmup_iters)")
    else:
        a(f"max_epochs = {s.max_epochs}")
        a(f"warmup_ratio = {s.warmup_ratio}")
    a(f"lr = {s.lr!r}")
    a("betas = (0.9, 0.999)")
    a(f"weight_decay = {s.weight_decay!r}")
    a(f"max_norm = {s.max_norm!r}  # gradient clipping")
    a("")
    a("# Save and log")
    a(f"save_steps = {s.save_steps}")
    a(f"save_total_limit = {s.save_total_limit}  # checkpoints kept (-1: all)")
    a(f"log_interval = {s.log_interval}")
    a("#" * 72)
    a("")
    a("#" * 72)
    a("#                          PART 2  Model")
    a("#" * 72)
    a("model = dict(")
    a(f"    type={model_cls},")
    a("    model_path=path,")
    a("    freeze_llm=freeze_llm,")
    a("    freeze_visual_encoder=freeze_visual_encoder,")
    if s.mode == "qlora":
        a("    quantization_llm=True,  # 4-bit NF4 LLM (bitsandbytes, CUDA only)")
        a("    quantization_vit=False,")
    if lora:
        a("    llm_lora=dict(type=LoraConfig, r=lora_r, lora_alpha=lora_alpha, lora_dropout=lora_dropout,")
        a("                  target_modules=None, task_type='CAUSAL_LM'),  # None: every linear layer of the LLM")
    if cpu:
        a("    dtype='float32',  # CPU: train in float32 (XTuner loads bf16)")
        a(f"    gradient_checkpointing={s.gradient_checkpointing!r},")
    elif model_cls == "LeverInternVL":
        if not s.gradient_checkpointing:
            a("    gradient_checkpointing=False,  # faster where the activations fit (labsupport.gpu_presets)")
        if s.fused_rmsnorm:
            a("    fused_rmsnorm=True,  # XTuner's Triton RMSNorm kernel in the LLM (labsupport.gpu_presets)")
    a(")")
    a("")
    a("#" * 72)
    a("#                          PART 3  Dataset & Dataloader")
    a("#" * 72)
    a("llava_dataset = dict(")
    a(f"    type={data_cls},")
    a("    model_path=path,")
    a("    data_paths=data_paths,")
    a("    image_folders=image_folders,")
    a("    repeat_times=repeat_times,")
    a("    template=prompt_template,")
    a("    max_length=max_length,")
    if data_cls == "CourseInternVLDataset":
        a("    max_dynamic_patch=max_dynamic_patch,")
    a(")")
    a("train_dataloader = dict(")
    a("    batch_size=batch_size,")
    a("    num_workers=dataloader_num_workers,")
    a("    dataset=llava_dataset,")
    a("    sampler=dict(type=LengthGroupedSampler, length_property='modality_length',")
    a("                 per_device_batch_size=batch_size * accumulative_counts),")
    a("    collate_fn=dict(type=default_collate_fn),")
    a(")")
    a("")
    a("#" * 72)
    a("#                          PART 4  Scheduler & Optimizer")
    a("#" * 72)
    a("optim_wrapper = dict(")
    if cpu or not s.deepspeed:
        a("    type=OptimWrapper,  # AmpOptimWrapper needs CUDA and fails on XTuner's bf16 gradients")
    else:
        a("    type=AmpOptimWrapper,  # replaced by DeepSpeedOptimWrapper under --deepspeed")
    a("    optimizer=dict(type=AdamW, lr=lr, betas=betas, weight_decay=weight_decay),")
    a("    clip_grad=dict(max_norm=max_norm, error_if_nonfinite=False),")
    a("    accumulative_counts=accumulative_counts,")
    if not cpu and s.deepspeed:
        a("    loss_scale='dynamic',")
        a("    dtype='float16',")
    a(")")
    if by_iter:
        a("param_scheduler = [")
        a("    dict(type=LinearLR, start_factor=1e-5, by_epoch=False, begin=0, end=warmup_iters),")
        a("    dict(type=CosineAnnealingLR, eta_min=0.0, by_epoch=False, begin=warmup_iters, end=max_iters),")
        a("]")
        a("train_cfg = dict(type=TrainLoop, max_iters=max_iters)")
    else:
        a("param_scheduler = [")
        a("    dict(type=LinearLR, start_factor=1e-5, by_epoch=True, begin=0, end=warmup_ratio * max_epochs,")
        a("         convert_to_iter_based=True),")
        a("    dict(type=CosineAnnealingLR, eta_min=0.0, by_epoch=True, begin=warmup_ratio * max_epochs,")
        a("         end=max_epochs, convert_to_iter_based=True),")
        a("]")
        a("train_cfg = dict(type=TrainLoop, max_epochs=max_epochs)")
    a("")
    a("#" * 72)
    a("#                          PART 5  Runtime")
    a("#" * 72)
    a("tokenizer = dict(type=AutoTokenizer.from_pretrained, pretrained_model_name_or_path=path, trust_remote_code=True)")
    a("custom_hooks = [dict(type=DatasetInfoHook, tokenizer=tokenizer)]")
    a("default_hooks = dict(")
    a("    timer=dict(type=IterTimerHook),")
    a("    logger=dict(type=LoggerHook, log_metric_by_epoch=False, interval=log_interval),")
    a("    param_scheduler=dict(type=ParamSchedulerHook),")
    a("    checkpoint=dict(type=CheckpointHook, save_optimizer=True, by_epoch=False, interval=save_steps,")
    a("                    max_keep_ckpts=save_total_limit),  # optimizer kept, so that a resume continues exactly")
    a("    sampler_seed=dict(type=DistSamplerSeedHook),")
    a(")")
    a("env_cfg = dict(")
    a("    cudnn_benchmark=False,")
    a("    mp_cfg=dict(mp_start_method='fork', opencv_num_threads=0),")
    a(f"    dist_cfg=dict(backend={'gloo' if cpu else 'nccl'!r}),")
    a(")")
    a("visualizer = None")
    a("log_level = 'INFO'")
    a("load_from = None")
    a("resume = False")
    a(f"randomness = dict(seed={s.seed!r}, deterministic=False)")
    a("log_processor = dict(by_epoch=False)")
    return "\n".join(L) + "\n"


def write_config(s: TrainSettings, path: str | os.PathLike) -> Path:
    """Write the XTuner config for SETTINGS to PATH (atomically) and return PATH; "tiny"/"tiny-4b" are resolved."""
    from labsupport.paths import is_embedded

    if is_embedded(s.model_path):
        from labsupport.tinymodel import resolve_model
        s = replace(s, model_path=str(resolve_model(s.model_path)))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(render_config(s), encoding="utf-8")
    os.replace(tmp, path)
    return path


def load_config(path: str | os.PathLike):
    """Load a config with mmengine's Config, as XTuner's tools do (proves it is a valid config)."""
    from mmengine.config import Config

    _ensure_importable()
    return Config.fromfile(str(path))


def show_config(path: str | os.PathLike, highlight: str = "PART 1"):
    """The config at PATH as HTML, with the section HIGHLIGHT (the knobs a learner changes) marked in yellow."""
    import html

    from IPython.display import HTML

    lines, out, inside = Path(path).read_text(encoding="utf-8").splitlines(), [], False
    for line in lines:
        if line.startswith("#   ") or line.startswith("#" * 10):
            if highlight in line:
                inside = True
            elif "PART" in line:
                inside = False
        esc = html.escape(line) or " "
        out.append(f"<span style='background:#fff3b0'>{esc}</span>" if inside else esc)
    return HTML("<pre style='font-size:11px;line-height:1.25'>" + "\n".join(out) + "</pre>")


# --- launching -----------------------------------------------------------------------------------

class TrainingFailed(RuntimeError):
    """XTuner's training process failed or left no checkpoint."""


@dataclass
class TrainRun:
    """What a finished training run left behind."""

    work_dir: Path
    checkpoint: Path
    log: Path
    scalars: list[dict]
    seconds: float
    command: list[str]

    @property
    def last_iter(self) -> int:
        """The last iteration trained: the checkpoint's (iter_N.pth), which can follow the last logged one."""
        m = re.fullmatch(r"iter_(\d+)\.pth", self.checkpoint.name)
        logged = self.scalars[-1]["iter"] if self.scalars else 0
        return max(logged, int(m.group(1))) if m else logged

    @property
    def loop_seconds(self) -> float:
        """Seconds of the training iterations alone (mmengine's per-iteration `time` over each log window), without start-up;
        iterations after the last log window count at that window's rate."""
        total, prev, rate = 0.0, 0, 0.0
        for row in self.scalars:
            rate = row.get("time", 0.0)
            total += rate * (row["iter"] - prev)
            prev = row["iter"]
        return total + rate * max(0, self.last_iter - prev)


def xtuner_tool(name: str) -> Path:
    """Path of an XTuner script: 'train' → xtuner/tools/train.py, 'convert' → the InternVL convert_to_official.py."""
    import importlib.util

    spec = importlib.util.find_spec("xtuner")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("xtuner is not installed in this kernel's environment: use the course env (internvl-course)")
    root = Path(list(spec.submodule_search_locations)[0])
    rel = {"train": "tools/train.py", "convert": "configs/internvl/v1_5/convert_to_official.py"}[name]
    return root / rel


def _ensure_importable() -> None:
    """Make labsupport importable for configs loaded in this process."""
    if str(repo_root()) not in sys.path:
        sys.path.insert(0, str(repo_root()))


def pick_threads(threads: int | str | None = "auto") -> int | None:
    """CPU threads for training: "auto" = every core unless the load average says they are busy (then 1), None = torch's default."""
    if threads != "auto":
        return int(threads) if threads else None
    cores = os.cpu_count() or 1
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    # OpenMP threads that wait for each other on busy cores make every small op 5-10x slower
    return 1 if load > cores - 0.5 else cores


def _env(threads: int | None = None) -> dict:
    """Environment of a child process: labsupport importable, output unbuffered, no tokenizer-thread warnings."""
    env = dict(os.environ)
    if threads:
        env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(threads)
    env["PYTHONPATH"] = os.pathsep.join([str(repo_root())] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    env["PYTHONUNBUFFERED"] = "1"
    # torch >= 2.6 loads with weights_only=True by default, which refuses mmengine's own checkpoints
    # (they pickle its HistoryBuffer and numpy scalars): a resume fails. These are the run's own files.
    env.setdefault("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    return env


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def train_command(config: str | os.PathLike, work_dir: str | os.PathLike, nproc: int = 1, deepspeed: int = 0,
                  resume_from: str | os.PathLike | None = None) -> list[str]:
    """The command that runs XTuner's train.py with this kernel's Python (torch.distributed.run when NPROC > 1 or DeepSpeed)."""
    cmd = [sys.executable]
    args = [str(xtuner_tool("train")), str(config), "--work-dir", str(work_dir)]
    if nproc > 1 or deepspeed:
        cmd += ["-m", "torch.distributed.run", f"--nproc_per_node={nproc}", f"--master_port={_free_port()}"]
        args += ["--launcher", "pytorch"]
    if deepspeed:
        args += ["--deepspeed", f"deepspeed_zero{deepspeed}"]
    if resume_from:
        args += ["--resume", str(resume_from)]
    return cmd + args


def multi_gpu_command(config: str | os.PathLike, gpus: int = 8, zero: int = 2, work_dir: str = "work_dirs/run") -> str:
    """The shell command a learner with GPUS GPUs runs (XTuner's CLI, which calls torchrun for NPROC_PER_NODE > 1)."""
    ds = f" --deepspeed deepspeed_zero{zero}" if zero else ""
    return f"NPROC_PER_NODE={gpus} xtuner train {config} --work-dir {work_dir}{ds}"


def latest_checkpoint(work_dir: str | os.PathLike) -> Path | None:
    """The newest intact checkpoint in WORK_DIR (mmengine's last_checkpoint file first; a save cut short is skipped), or None."""
    return latest_intact_checkpoint(work_dir)


def strip_ansi(text: str) -> str:
    """TEXT without terminal colour codes (mmengine colours its log lines; a notebook would show them raw)."""
    return ANSI_ESCAPE.sub("", text)


_ITER = re.compile(r"Iter\(train\)\s*\[\s*(\d+)\s*/\s*(\d+)\]")
_PAIR = re.compile(r"\b(lr|loss|time|data_time|grad_norm|memory|eta):\s*([-+0-9.eE:]+)")


def parse_log_line(line: str) -> dict | None:
    """The scalars of one mmengine training-log line ({'iter', 'max_iters', 'lr', 'loss', ...}), or None."""
    m = _ITER.search(line)
    if not m:
        return None
    row: dict = {"iter": int(m.group(1)), "max_iters": int(m.group(2))}
    for key, val in _PAIR.findall(line[m.end():]):
        if key == "eta":
            row[key] = val
            continue
        try:
            row[key] = float(val)
        except ValueError:
            continue
    return row if "loss" in row else None


class LivePlot:
    """A matplotlib figure of loss and learning rate that updates in place in a notebook."""

    def __init__(self, title: str = "training"):
        from labsupport.plots import pyplot
        plt = pyplot()  # with the CJK font
        from IPython.display import display

        self.fig, (self.ax_loss, self.ax_lr) = plt.subplots(1, 2, figsize=(10, 3.2))
        self.fig.suptitle(title)
        plt.close(self.fig)
        self.handle = display(self.fig, display_id=True)
        self.last = 0.0

    def update(self, scalars: list[dict], force: bool = False) -> None:
        """Redraw with SCALARS (at most once a second unless FORCE)."""
        if not scalars or (not force and time.time() - self.last < 1.0):
            return
        self.last = time.time()
        it = [r["iter"] for r in scalars]
        self.ax_loss.clear(), self.ax_lr.clear()
        self.ax_loss.plot(it, [r["loss"] for r in scalars], ".-")
        self.ax_loss.set(xlabel="iteration", ylabel="loss", title=f"loss {scalars[-1]['loss']:.3f} at iter {it[-1]}")
        self.ax_loss.set_yscale("log")
        if any("lr" in r for r in scalars):
            self.ax_lr.plot(it, [r.get("lr", float("nan")) for r in scalars], ".-", color="tab:orange")
        self.ax_lr.set(xlabel="iteration", ylabel="learning rate", title="learning rate")
        self.fig.tight_layout()
        if self.handle is not None:  # None outside a notebook front end (a script, a plain python prompt)
            self.handle.update(self.fig)


def _tail(path: Path, n: int = 30) -> str:
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    return "\n".join(lines[-n:])


_ERROR_LINE = re.compile(r"^(?:\[rank\d+\]:\s*)?((?:[\w.]+\.)?\w*(?:Error|Exception)\b:.*)$")


def root_error(log_text: str) -> str | None:
    """The last exception line of a training log (torch's launcher wrapper skipped), e.g. 'torch.OutOfMemoryError: CUDA out of memory. ...'."""
    found = [m.group(1) for m in map(_ERROR_LINE.match, log_text.splitlines()) if m and "ChildFailedError" not in m.group(1)]
    return found[-1] if found else None


ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")  # mmengine colours its log levels; a saved notebook would show the codes


def _show_line(line: str, state: dict) -> bool:
    """Whether LINE is worth printing in 'progress' mode (iterations, checkpoints, errors and what follows a traceback)."""
    if "Traceback" in line or state.get("error"):
        state["error"] = True
        return True
    keys = ("Iter(train)", "Error", "Saving checkpoint", "Auto resumed", "resumed from", "Load checkpoint",
            "Num train samples", "Start to load")
    return any(k in line for k in keys)


@safe_training  # checks the data with XTuner's own code first; a fresh run keeps the last good one until it succeeds
def launch(config: str | os.PathLike, work_dir: str | os.PathLike, resume: bool = False, nproc: int = 1,
           deepspeed: int = 0, live: bool = True, show: str = "progress", timeout: float | None = None,
           threads: int | str | None = "auto") -> TrainRun:
    """Run XTuner's train.py on CONFIG into WORK_DIR, stream its log, plot the loss, and raise TrainingFailed unless it ends with a checkpoint."""
    config, work_dir = Path(config), Path(work_dir)
    if not config.exists():
        raise FileNotFoundError(f"config {config} does not exist: write it first with write_config()")
    work_dir.mkdir(parents=True, exist_ok=True)
    resume_from = None
    if resume:
        resume_from = latest_checkpoint(work_dir)
        if resume_from is None:
            raise FileNotFoundError(f"resume=True, but {work_dir} holds no checkpoint (iter_*.pth): train once first, or set resume=False")
        print(f"[launch] resuming from {resume_from}")
    cmd = train_command(config, work_dir, nproc=nproc, deepspeed=deepspeed, resume_from=resume_from)
    log_path, scalars_path = work_dir / "train.log", work_dir / "scalars.json"
    scalars: list[dict] = []
    if resume and scalars_path.exists():
        start = int(re.findall(r"\d+", resume_from.stem)[0])
        scalars = [r for r in json.loads(scalars_path.read_text()) if r["iter"] <= start]
    plot = LivePlot(f"XTuner: {config.name}") if live else None
    threads = pick_threads(threads) if nproc == 1 and not deepspeed else None
    print("[launch] $ " + (f"OMP_NUM_THREADS={threads} " if threads else "") + " ".join(cmd), flush=True)
    started, state = time.time(), {}
    with open(log_path, "a" if resume else "w", encoding="utf-8") as log:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1,
                                env=_env(threads), cwd=str(work_dir))
        try:
            for line in proc.stdout:
                line = strip_ansi(line)
                log.write(line)
                log.flush()
                row = parse_log_line(line)
                if row:
                    row["seconds"] = round(time.time() - started, 2)
                    scalars.append(row)
                    write_json_atomic(scalars_path, scalars)
                    if plot:
                        plot.update(scalars)
                if show == "all" or (show == "progress" and _show_line(line, state)):
                    print(line.rstrip(), flush=True)
                if timeout and time.time() - started > timeout:
                    proc.kill()
                    raise TrainingFailed(f"training ran past timeout={timeout}s and was stopped; log: {log_path}")
            proc.wait()
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    seconds = time.time() - started
    if plot:
        plot.update(scalars, force=True)
    if proc.returncode != 0:
        cause = root_error(log_path.read_text(encoding="utf-8", errors="replace"))
        raise TrainingFailed(f"XTuner's train.py exited with status {proc.returncode}"
                             + (f": {cause}" if cause else "") + f"\nLast lines of {log_path}:\n{_tail(log_path)}")
    ckpt = latest_checkpoint(work_dir)
    if ckpt is None:
        raise TrainingFailed(f"train.py exited 0 but left no checkpoint in {work_dir}. Last lines of {log_path}:\n"
                             f"{_tail(log_path)}")
    print(f"[launch] done in {seconds:.0f} s; checkpoint {ckpt}")
    return TrainRun(work_dir, ckpt, log_path, scalars, seconds, cmd)


# --- conversion ----------------------------------------------------------------------------------

def convert_to_official(config: str | os.PathLike, checkpoint: str | os.PathLike, save_dir: str | os.PathLike,
                        model_path: str | os.PathLike | None = None) -> Path:
    """Merge a trained checkpoint (LoRA merged in) into a Hugging Face folder with XTuner's convert_to_official.py; return SAVE_DIR."""
    config, checkpoint, save_dir = Path(config), Path(checkpoint), Path(save_dir)
    for p, what in ((config, "config"), (checkpoint, "checkpoint")):
        if not p.exists():
            raise FileNotFoundError(f"{what} {p} does not exist")
    tmp = save_dir.with_name(save_dir.name + ".converting")
    shutil.rmtree(tmp, ignore_errors=True)
    cmd = [sys.executable, str(xtuner_tool("convert")), str(config), str(checkpoint), str(tmp)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=_env())
    out = (proc.stdout + proc.stderr).splitlines()
    if proc.returncode != 0:
        raise RuntimeError(f"convert_to_official.py failed (exit {proc.returncode}):\n" + "\n".join(out[-30:]))
    weights = list(tmp.glob("*.safetensors")) + list(tmp.glob("*.bin"))
    if not (tmp / "config.json").exists() or not weights:
        raise RuntimeError(f"convert_to_official.py exited 0 but {tmp} lacks config.json or weights:\n" + "\n".join(out[-30:]))
    if model_path is None:
        model_path = load_config(config).model.model_path
    copied = [f.name for f in Path(model_path).glob("*.py") if not (tmp / f.name).exists()]
    for name in copied:
        shutil.copy2(Path(model_path) / name, tmp / name)
    if save_dir.exists():
        shutil.rmtree(save_dir)
    os.replace(tmp, save_dir)
    if copied:
        print(f"[convert] copied the modeling code the script left out: {', '.join(sorted(copied))}")
    return save_dir


def settings_dict(s: TrainSettings) -> dict:
    """SETTINGS as a plain dict (for printing or saving)."""
    return asdict(s)


def plot_scalars(scalars: list[dict], title: str = "training"):
    """Loss and learning rate against iteration from a run's scalars (a finished run's TrainRun.scalars or scalars.json)."""
    from labsupport.plots import pyplot
    plt = pyplot()  # with the CJK font

    if not scalars:
        raise ValueError("no scalars to plot: did the run log any iteration? (log_interval too large?)")
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.2))
    it = [r["iter"] for r in scalars]
    a.plot(it, [r["loss"] for r in scalars], ".-")
    a.set(xlabel="iteration", ylabel="loss", yscale="log", title="loss")
    b.plot(it, [r.get("lr", float("nan")) for r in scalars], ".-", color="tab:orange")
    b.set(xlabel="iteration", ylabel="learning rate", title="learning rate")
    fig.suptitle(title)
    fig.tight_layout()
    return fig
