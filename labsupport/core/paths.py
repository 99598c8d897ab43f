"""Where things are: the repo root, the artifacts folder, the model a notebook should use."""
from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]


def repo_root() -> Path:
    """The course repository's root, whatever the kernel's working directory."""
    return REPO_ROOT


def artifacts_dir(artifacts: str | os.PathLike | None = None) -> Path:
    """Resolve the ARTIFACTS parameter (None or "" -> artifacts/ at the repo root; $LABSUPPORT_ARTIFACTS wins) and create it."""
    chosen = artifacts or os.environ.get("LABSUPPORT_ARTIFACTS") or REPO_ROOT / "artifacts"
    path = Path(chosen).expanduser()
    if not path.is_absolute():
        path = REPO_ROOT / path
    path.mkdir(parents=True, exist_ok=True)
    return path.resolve()


def pick_device(device: str = "auto") -> str:
    """Resolve the DEVICE parameter: "auto" means CUDA when present, else CPU; "cuda" without a CUDA GPU says so and gives "cpu"."""
    if device not in ("auto", "cuda") and not device.startswith("cuda:"):
        return device
    import torch

    if torch.cuda.is_available():
        return "cuda" if device == "auto" else device
    if device != "auto":
        print(f"DEVICE = {device!r}, but this machine has no CUDA GPU that torch can use: running the CPU path instead "
              "(GPU-only steps print why they are skipped)")
    return "cpu"


# ---- names that derive from MODEL_PATH: the one place that decides them -----------------------------------------
EMBEDDED_MODELS = {"tiny": "internvl2-tiny", "tiny-4b": "internvl2-tiny-4b"}  # MODEL_PATH -> folder name


def is_embedded(model_path: str | os.PathLike) -> bool:
    """True when MODEL_PATH names a model the course builds itself ("tiny", "tiny-4b"), not a folder."""
    return str(model_path).strip().lower() in EMBEDDED_MODELS


def model_name(model_path: str | os.PathLike) -> str:
    """The name of MODEL_PATH's model: its folder's name ("internvl2-tiny" for "tiny", "InternVL2-2B" for ./InternVL2-2B/)."""
    key = str(model_path).strip()
    if key.lower() in EMBEDDED_MODELS:
        return EMBEDDED_MODELS[key.lower()]
    name = Path(key).expanduser().resolve().name
    if not name:
        raise ValueError(f"MODEL_PATH = {str(model_path)!r} names no folder: give a checkpoint folder or \"tiny\"")
    return name


def finetuned_dir(artifacts: str | os.PathLike, model_path: str | os.PathLike = "tiny") -> Path:
    """Where notebook 05 writes the converted fine-tune of MODEL_PATH: ARTIFACTS/models/<model_name>-finetuned."""
    return Path(artifacts) / "models" / f"{model_name(model_path)}-finetuned"


def hub_repo_name(model_path: str | os.PathLike = "tiny", task: str = "plates") -> str:
    """The hub repository name for the fine-tune of MODEL_PATH on TASK, e.g. "InternVL2-2B-plates"; it always contains
    "InternVL" (the camp's rule) and only the characters the Hub allows."""
    import re

    name = model_name(model_path)
    if name.lower().startswith("internvl"):
        name = "InternVL" + name[len("internvl"):]
    else:
        name = f"InternVL2-{name}"
    return re.sub(r"[^A-Za-z0-9._-]+", "-", f"{name}-{task}").strip("-.")
