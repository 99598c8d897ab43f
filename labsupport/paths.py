"""Where things are: the repo root, the artifacts folder, the model a notebook should use."""
from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


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
    """Resolve the DEVICE parameter: "auto" means CUDA when present, else CPU."""
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"
