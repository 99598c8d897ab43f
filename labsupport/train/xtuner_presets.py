"""Readable training settings and the presets chosen from the checkpoint, the mode and the hardware."""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field, replace, asdict
from pathlib import Path
from typing import Callable
from labsupport.model import params, tinymodel
from labsupport.train import gpu_presets


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
    fused_rmsnorm: bool = False        # XTuner's Triton RMSNorm kernel in the LLM (GPU only; labsupport.train.gpu_presets)
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
    # LoRA (r=32, alpha=64) on the miniature model's LLM plus the projector, lr 1e-3, 3 epochs of TINY_N_TRAIN plates
    # at batch 4 (450 iterations) in random order, one tile per image, the pre-trained ViT frozen (it halves the cost
    # of an iteration); each training image is asked all three questions (datasets.build_course_task(ask_all=True)).
    # The embedded default ("tiny") trains these 3 epochs; every other miniature (official-format, "tiny-4b") gets
    # schedule.MEASURED_MINIATURE_EPOCHS = 4, the 600 iterations its goal was measured with (schedule.fit_schedule).
    # Measured with XTuner on the 2-core course machine, held-out accuracy after 600 iterations (seed 42):
    #   one question per image, lr 2e-3, LengthGroupedSampler .................... 0.62 (colour and shape mixed up)
    #   all three per image, LengthGroupedSampler ................................ 0.63
    #   all three per image, random order (DefaultSampler) ....................... 0.80 (English colour/shape mixed up)
    #   ... and English questions ending "one colour." / "one shape." ............ 0.98 (0.22 s/iteration)
    #   ... the old questions, 750 iterations .................................... 0.99
    #   ... 450 iterations (3 epochs: the preset), seeds 42 / 1 / 2 .............. 0.983 / 0.950 / 0.983 (docs/cpu/tiny-steps.json)
    # A plain-PyTorch replica on a GPU ranked the recipes first (benchmarks/device/lora_replica.py,
    # docs/gpu/lora-replica-tiny-h200.json): one question per image 0.46-0.95 over seeds, all three 0.975-0.99.
    return TrainSettings(
        model_path="tiny", mode="lora", freeze_vit=True, freeze_llm=None, max_length=512, batch_size=4,
        accumulative_counts=1, lr=1e-3, weight_decay=0.0, max_epochs=3, warmup_ratio=0.03, save_steps=50,
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
    embedded: str | None = None   # the embedded model's layout ("tiny", "tiny-4b") when the checkpoint is one of the course's

    @property
    def tiles(self) -> int:
        """Tiles per image the preset trains with (its max_dynamic_patch; InternVL2's 6 when the model decides)."""
        return preset(self.name).max_dynamic_patch or 6


def choose_preset(model_path: str | os.PathLike, mode: str = "", device: str = "cpu") -> PresetChoice:
    """The preset for the checkpoint at MODEL_PATH, chosen by its parameter count and LLM layout (never its folder name)."""

    total = params.count_parameters(Path(model_path))["total"]
    layout = (json.loads((Path(model_path) / "config.json").read_text()).get("llm_config", {}).get("architectures") or ["?"])[0]
    count = params.format_count(total)
    if total < MINIATURE_MAX_PARAMS:
        return PresetChoice("tiny-cpu", f"{count} parameters ({layout}): a miniature checkpoint, trained with the CPU preset",
                            total, layout, True, embedded=tinymodel.embedded_layout(model_path))
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


def settings_dict(s: TrainSettings) -> dict:
    """SETTINGS as a plain dict (for printing or saving)."""
    return asdict(s)
