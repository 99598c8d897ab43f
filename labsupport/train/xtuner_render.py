"""An XTuner config written from TrainSettings, loaded with mmengine, and shown to the learner."""
from __future__ import annotations

import os
import sys
from dataclasses import replace
from pathlib import Path
from labsupport.core.paths import repo_root
from labsupport.train.xtuner_presets import MODES
from labsupport.train.xtuner_presets import TrainSettings
from labsupport.model.prompts import template_for
from labsupport.core.paths import is_embedded
from labsupport.model.tinymodel import resolve_model



# --- config generation ---------------------------------------------------------------------------

def _py(v) -> str:
    """A Python literal for V (paths as plain strings)."""
    return repr(str(v)) if isinstance(v, Path) else repr(v)


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
    a("# XTuner config written by labsupport.train.xtuner_render.write_config — run it with XTuner's tools/train.py.")
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
        a(f"from labsupport.train.xtuner_shims import {', '.join(shims)}  # XTuner's classes + the knobs they lack")
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
        a(f"warmup_iters = {_warmup_iters(s)}  # at least 2 (see labsupport.train.xtuner_render._warmup_iters)")
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
            a("    gradient_checkpointing=False,  # faster where the activations fit (labsupport.train.gpu_presets)")
        if s.fused_rmsnorm:
            a("    fused_rmsnorm=True,  # XTuner's Triton RMSNorm kernel in the LLM (labsupport.train.gpu_presets)")
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

    if is_embedded(s.model_path):
        s = replace(s, model_path=str(resolve_model(s.model_path)))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(render_config(s), encoding="utf-8")
    os.replace(tmp, path)
    return path


def _ensure_importable() -> None:
    """Make labsupport importable for configs loaded in this process."""
    if str(repo_root()) not in sys.path:
        sys.path.insert(0, str(repo_root()))


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
