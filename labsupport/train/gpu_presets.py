"""The fastest measured GPU training settings (labsupport/data/gpu_presets_measured.json) for a model and mode.

    from labsupport.train import gpu_presets
    gpu_presets.best("InternVL2-2B", "full")                   # {'batch_size': 16, 'gradient_checkpointing': True, ...}
    gpu_presets.best("InternVL2-2B", "lora", gpu_memory_gib=80) # the entry that fits 80 GB
    gpu_presets.gpu_memory_gib()                                # (139.8, "...") this machine's GPU, or an H200's

Each entry names the docs/gpu lever row it was measured in (benchmarks levers, one H200, ZeRO-2).
`gradient_checkpointing=False` needs labsupport.train.xtuner_shims.LeverInternVL in the XTuner config:
XTuner's own InternVL_V1_5 always switches checkpointing on.
"""
from __future__ import annotations

import json
from pathlib import Path

DATA = Path(__file__).resolve().parent.parent / "data" / "gpu_presets_measured.json"
H200_GIB = 139.8  # what torch.cuda reports for one H200 (141 GB), the GPU every entry was measured on
# An entry is chosen only if its measured peak plus 15 % fits: the lever runs used the benchmark's samples, and a
# learner's longest sample can be longer. Measured: notebook 04 on the plates data (up to 7 tiles, ~1,900 tokens) ran
# out of memory at LoRA batch 16 without checkpointing on a 139.8 GiB H200 (lever peak 128.5 GiB; device call, 2026-12-02).
HEADROOM = 1.15


def entries(model: str, mode: str) -> list[dict]:
    """The measured entries for MODEL ("InternVL2-2B") and MODE ("full" or "lora"), fastest first."""
    data = json.loads(DATA.read_text(encoding="utf-8"))
    if model not in data or mode not in data[model]:
        known = {m: sorted(v) for m, v in data.items() if not m.startswith("_")}
        raise KeyError(f"{DATA.name} has no measured settings for {model} {mode}; measured: {known}")
    return sorted(data[model][mode], key=lambda e: -e["measured"]["tokens_per_s_per_gpu"])


def needs_gib(entry: dict) -> float:
    """GPU memory an ENTRY needs: its measured peak times HEADROOM."""
    return round(entry["measured"]["peak_memory_gib"] * HEADROOM, 1)


def entry(model: str, mode: str, gpu_memory_gib: float = H200_GIB) -> dict:
    """The fastest measured entry (settings, measured, why) for MODEL and MODE whose needs_gib fits GPU_MEMORY_GIB (default: an H200)."""
    fits = [e for e in entries(model, mode) if needs_gib(e) <= gpu_memory_gib]
    if not fits:
        raise ValueError(f"no measured {model} {mode} setting fits {gpu_memory_gib} GiB; see {DATA.name}")
    return json.loads(json.dumps(fits[0]))  # a copy: callers may change it


def best(model: str, mode: str, gpu_memory_gib: float = H200_GIB) -> dict:
    """The settings of the fastest measured entry for MODEL and MODE that fits GPU_MEMORY_GIB (default: an H200)."""
    return entry(model, mode, gpu_memory_gib)["settings"]


def gpu_memory_gib() -> tuple[float, str]:
    """(GiB, where the number comes from) of this machine's first CUDA GPU (torch.cuda); an H200's without one."""
    import torch

    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        gib = round(props.total_memory / 2**30, 1)
        return gib, f"{props.name}, {gib} GiB (torch.cuda, GPU 0)"
    return H200_GIB, f"no CUDA GPU visible: the presets assume one H200 ({H200_GIB} GiB)"
