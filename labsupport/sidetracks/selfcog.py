"""The self-cognition track (notebook 08): the edits to XTuner's internlm2_chat_1_8b_qlora_alpaca_e3 config.

Each edit carries its reason; labsupport.train.xtuner_configs applies them to the file `xtuner copy-cfg` wrote and
shows them as a diff. On a CPU the QLoRA lines become plain float32 LoRA (bitsandbytes' 4-bit kernels need
CUDA, AMP needs a GPU); with QLORA on a GPU they stay as XTuner wrote them.
"""
from __future__ import annotations

import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from labsupport.train.xtuner_configs import Edit, xtuner_cli
from labsupport.train.xtuner_configs import _QUANT
from labsupport.core.checkpoints import write_json_atomic

OFFICIAL_CONFIG = "internlm2_chat_1_8b_qlora_alpaca_e3"

_AMP = '''    type=AmpOptimWrapper,
    optimizer=dict(type=optim_type, lr=lr, betas=betas, weight_decay=weight_decay),
    clip_grad=dict(max_norm=max_norm, error_if_nonfinite=False),
    accumulative_counts=accumulative_counts,
    loss_scale="dynamic",
    dtype="float16",'''


@dataclass
class SelfCogSettings:
    """The knobs of the self-cognition fine-tune that the edits write into XTuner's config."""

    model_dir: str
    data_json: str
    max_length: int = 512
    pack_to_max_length: bool = True
    accumulative_counts: int = 1
    max_epochs: int = 2
    lr: float = 2e-4
    lora_r: int = 64
    lora_alpha: int = 16
    save_steps: int = 500
    evaluation_freq: int = 500
    evaluation_inputs: Sequence[str] = field(default_factory=lambda: ["请你介绍一下你自己", "你是谁", "你是我的小助手吗"])
    qlora: bool = False          # True keeps XTuner's 4-bit QLoRA (needs a CUDA GPU)
    map_num_proc: int = 1
    seed: int = 0


def config_edits(s: SelfCogSettings) -> list[Edit]:
    """The edits that turn XTuner's alpaca QLoRA config into the self-cognition fine-tune of S (each with its reason)."""
    e = [
        Edit('pretrained_model_name_or_path = "internlm/internlm2-chat-1_8b"',
             f"pretrained_model_name_or_path = {s.model_dir!r}",
             "the chat model to fine-tune: a local folder (the course's tiny InternLM2, or your internlm2-chat-1_8b)"),
        Edit('alpaca_en_path = "tatsu-lab/alpaca"', f"alpaca_en_path = {s.data_json!r}",
             "our personal_assistant.json instead of the alpaca set from the Hub"),
        Edit("max_length = 2048", f"max_length = {s.max_length}",
             "tokens per packed sample: the records are short, and a tiny model on a CPU needs short sequences"),
        Edit("pack_to_max_length = True", f"pack_to_max_length = {s.pack_to_max_length!r}",
             "pack several short records into one max_length sample (fewer, fuller iterations)"),
        Edit("accumulative_counts = 16", f"accumulative_counts = {s.accumulative_counts}",
             "one optimiser step per batch: the set is tiny and every step counts"),
        Edit("max_epochs = 3", f"max_epochs = {s.max_epochs}", "passes over the repeated data (the seed uses 2)"),
        Edit("lr = 2e-4", f"lr = {s.lr!r}", "learning rate of the LoRA weights"),
        Edit("save_steps = 500", f"save_steps = {s.save_steps}", "checkpoint interval (the last iteration is saved anyway)"),
        Edit("evaluation_freq = 500", f"evaluation_freq = {s.evaluation_freq}",
             "how often EvaluateChatHook asks the evaluation_inputs during training"),
        Edit("SYSTEM = SYSTEM_TEMPLATE.alpaca", 'SYSTEM = ""',
             "the training records have no system prompt: evaluate under the same prompt they train with"),
        Edit('evaluation_inputs = ["请给我介绍五个上海的景点", "Please tell me five scenic spots in Shanghai"]',
             f"evaluation_inputs = {list(s.evaluation_inputs)!r}",
             "questions EvaluateChatHook asks before and during training: the identity we teach"),
        Edit("from xtuner.dataset.map_fns import alpaca_map_fn, template_map_fn_factory",
             "from xtuner.dataset.map_fns import openai_map_fn, template_map_fn_factory",
             "our data is in OpenAI messages format"),
        Edit("dataset=dict(type=load_dataset, path=alpaca_en_path),",
             "dataset=dict(type=load_dataset, path=\"json\", data_files=dict(train=alpaca_en_path)),",
             "load a local json file with datasets' json loader"),
        Edit("dataset_map_fn=alpaca_map_fn,", "dataset_map_fn=openai_map_fn,",
             "map each {messages: [...]} record to XTuner's conversation format"),
        Edit("    use_varlen_attn=use_varlen_attn,\n)\n\nsampler",
             f"    use_varlen_attn=use_varlen_attn,\n    map_num_proc={s.map_num_proc},\n)\n\nsampler",
             "datasets.map workers (XTuner's default 32 forks 32 processes: slow on a 2-core CPU)"),
        Edit("randomness = dict(seed=None, deterministic=False)", f"randomness = dict(seed={s.seed}, deterministic=False)",
             "a fixed seed, so that a re-run gives the same adapter"),
    ]
    if not s.qlora:
        e += [
            Edit("from xtuner.model import SupervisedFinetune",
                 "from labsupport.train.xtuner_shims import CPUSupervisedFinetune  # CPU shim, see labsupport/train/xtuner_shims.py",
                 "CPU: XTuner asks torch.cpu.is_bf16_supported(), which torch 2.14 lacks; the shim module adds it"),
            Edit("type=SupervisedFinetune,", "type=CPUSupervisedFinetune,",
                 "CPU: the same SupervisedFinetune, named from the shim module so that mmengine imports it"),
            Edit("from mmengine.optim import AmpOptimWrapper, CosineAnnealingLR, LinearLR",
                 "from mmengine.optim import CosineAnnealingLR, LinearLR, OptimWrapper",
                 "CPU: AmpOptimWrapper (mixed precision) needs a GPU"),
            Edit(_QUANT, "        torch_dtype=torch.float32,",
                 "CPU: no 4-bit QLoRA (bitsandbytes needs CUDA) and no float16 training: plain LoRA in float32"),
            Edit(_AMP, _AMP.replace("AmpOptimWrapper", "OptimWrapper").replace(
                '    loss_scale="dynamic",\n    dtype="float16",', "").rstrip(),
                 "CPU: plain OptimWrapper, no loss scaling, float32"),
        ]
    return e


# --- after training: XTuner's converters and its chat CLI ---------------------------------------

def pth_to_hf(config: str | os.PathLike, pth: str | os.PathLike, save_dir: str | os.PathLike) -> Path:
    """`xtuner convert pth_to_hf CONFIG PTH SAVE_DIR`: the trained weights as Hugging Face folders (a PEFT adapter;
    for LLaVA llm_adapter/, visual_encoder_adapter/, projector/); return SAVE_DIR."""
    save_dir = Path(save_dir)
    out = xtuner_cli("convert", "pth_to_hf", str(config), str(pth), str(save_dir))
    made = [p for pattern in ("adapter_model.*", "config.json", "projector/config.json") for p in save_dir.glob(pattern)]
    if not made:
        raise RuntimeError(f"xtuner convert pth_to_hf left no adapter, model or projector in {save_dir}:\n" + out[-2000:])
    return save_dir


def merge(base: str | os.PathLike, adapter: str | os.PathLike, save_dir: str | os.PathLike,
          device: str = "cpu") -> Path:
    """`xtuner convert merge BASE ADAPTER SAVE_DIR`: the base model with the adapter merged in; return SAVE_DIR."""
    save_dir = Path(save_dir)
    out = xtuner_cli("convert", "merge", str(base), str(adapter), str(save_dir), "--device", device)
    if not (save_dir / "config.json").exists():
        raise RuntimeError(f"xtuner convert merge left no config.json in {save_dir}:\n" + out[-2000:])
    missing = [f.name for f in Path(base).glob("*.py") if not (save_dir / f.name).exists()]
    for name in missing:  # remote code the merged folder needs to load (save_pretrained copies it; make sure)
        shutil.copy2(Path(base) / name, save_dir / name)
    return save_dir


def hook_samples(log: str | os.PathLike) -> list[str]:
    """The question -> answer pairs EvaluateChatHook printed in a training log ("Sample output:" blocks), in order."""
    text = Path(log).read_text(encoding="utf-8", errors="replace")
    out = []
    # only EvaluateChatHook's "Sample output:" blocks: DatasetInfoHook logs training samples in the same layout before them
    for m in re.finditer(r"Sample output:\n(?:<s>)?<\|im_start\|>user\n(.*?)<\|im_end\|>\n<\|im_start\|>assistant\n(.*?)"
                         r"(?:<\|im_end\|>|\n\n|$)", text, flags=re.S):
        out.append(f"{m.group(1).strip()} -> {m.group(2).strip()}")
    return out


RESULTS = "selfcog/results.json"


def results_file(artifacts: str | os.PathLike) -> Path:
    """Where notebook 08 saves its measurements (read by the demo and the report)."""
    return Path(artifacts) / RESULTS


def save_results(artifacts: str | os.PathLike, results: dict) -> Path:
    """Write RESULTS atomically to results_file(ARTIFACTS); return the path."""

    path = results_file(artifacts)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(path, results)
    return path
