"""The fastest measured GPU training settings (labsupport/data/gpu_presets_measured.json) for a model and mode.

    from labsupport import gpu_presets
    gpu_presets.best("InternVL2-2B", "full")                   # {'batch_size': 16, 'gradient_checkpointing': True, ...}
    gpu_presets.best("InternVL2-2B", "lora", gpu_memory_gib=80) # the entry that fits 80 GB

Each entry names the docs/gpu lever row it was measured in (labsupport.bench levers, one H200, ZeRO-2).
`gradient_checkpointing=False` needs labsupport.xtuner_shims.LeverInternVL in the XTuner config:
XTuner's own InternVL_V1_5 always switches checkpointing on.
"""
from __future__ import annotations

import json
from pathlib import Path

DATA = Path(__file__).resolve().parent / "data" / "gpu_presets_measured.json"


def entries(model: str, mode: str) -> list[dict]:
    """The measured entries for MODEL ("InternVL2-2B") and MODE ("full" or "lora"), fastest first."""
    data = json.loads(DATA.read_text(encoding="utf-8"))
    if model not in data or mode not in data[model]:
        known = {m: sorted(v) for m, v in data.items() if not m.startswith("_")}
        raise KeyError(f"{DATA.name} has no measured settings for {model} {mode}; measured: {known}")
    return sorted(data[model][mode], key=lambda e: -e["measured"]["tokens_per_s_per_gpu"])


def best(model: str, mode: str, gpu_memory_gib: float = 139.8) -> dict:
    """The settings of the fastest measured entry for MODEL and MODE that fits GPU_MEMORY_GIB (default: an H200)."""
    fits = [e for e in entries(model, mode) if e.get("needs_gpu_memory_gib", e["measured"]["peak_memory_gib"]) <= gpu_memory_gib]
    if not fits:
        raise ValueError(f"no measured {model} {mode} setting fits {gpu_memory_gib} GiB; see {DATA.name}")
    return dict(fits[0]["settings"])
