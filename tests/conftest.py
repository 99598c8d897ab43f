"""Shared test fixtures: the repo root and the artifacts folder the notebook runs share."""
import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
os.environ.setdefault("MPLBACKEND", "Agg")


@pytest.fixture(scope="session")
def repo() -> Path:
    return ROOT


@pytest.fixture(scope="session")
def artifacts() -> Path:
    """The artifacts folder of the regression runs (models and datasets built once are reused)."""
    from labsupport.core.paths import artifacts_dir

    return artifacts_dir()


@pytest.fixture(scope="session")
def real_size_2b(tmp_path_factory) -> Path:
    """A checkpoint of InternVL2-2B's size on no disk: the tiny's files with the published 2B's sizes in config.json and a
    sparse model.safetensors (a real header of every tensor, zeros behind it: 4.1 GiB long, a few KiB on disk)."""
    import json
    import shutil
    import struct

    import torch
    from transformers import AutoConfig, AutoModel

    from labsupport.model import params, tinymodel

    out = tmp_path_factory.mktemp("real-size") / "InternVL2-2B-like"
    shutil.copytree(tinymodel.build_tiny_model(out.parent / "tiny"), out)
    config = json.loads((out / "config.json").read_text(encoding="utf-8"))
    real = params.family()["InternVL2-2B"]
    for part in ("vision_config", "llm_config"):   # the sizes a real 2B has; field names and remote code stay the tiny's
        config[part].update({k: v for k, v in real[part].items() if isinstance(v, int) and k in config[part]})
    (out / "config.json").write_text(json.dumps(config), encoding="utf-8")
    with torch.device("meta"):   # shapes only: nothing is allocated
        model = AutoModel.from_config(AutoConfig.from_pretrained(out, trust_remote_code=True), trust_remote_code=True,
                                      torch_dtype=torch.bfloat16)
    header, offset = {}, 0
    for name, tensor in model.state_dict().items():
        header[name] = {"dtype": "BF16", "shape": list(tensor.shape), "data_offsets": [offset, offset + 2 * tensor.numel()]}
        offset += 2 * tensor.numel()
    raw = json.dumps({**header, "__metadata__": {"format": "pt"}}).encode()
    raw += b" " * (-len(raw) % 8)
    for old in out.glob("*.safetensors"):
        old.unlink()
    with open(out / "model.safetensors", "wb") as f:
        f.write(struct.pack("<Q", len(raw)) + raw)
        f.truncate(8 + len(raw) + offset)   # a hole, not 4 GiB of written zeros
    return out
