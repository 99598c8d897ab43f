"""The vision towers the course ships pre-trained (InternViT and a tiny CLIP): their weights, records and builders."""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from labsupport.core.tiling import IMAGENET_MEAN, IMAGENET_STD

if TYPE_CHECKING:
    import torch

import shutil





DATA = Path(__file__).resolve().parent.parent / "data"
WEIGHTS = DATA / "tiny_vit_plates.safetensors"
RECORD = DATA / "tiny_vit_plates.json"
PREFIX = "vision_model."
ATTRIBUTES = ("colour", "shape", "count")
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)  # OpenAI CLIP's normalisation (what CLIPImageProcessor uses)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


RECIPE = {"images": 12000, "steps": 4000, "batch": 64, "lr": 1e-3, "weight_decay": 0.05, "warmup": 0.05,
          "seed": 0, "flip": "horizontal, every second step", "heads": "linear colour/shape/count on the mean patch feature"}
TINY_CLIP = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 3, "num_attention_heads": 2,
             "image_size": 112, "patch_size": 14, "projection_dim": 64}  # [1024, 4096, 24, 16, 336, 14, 768]


@dataclass(frozen=True)
class Tower:
    """One tiny vision tower to pre-train: its input (SIZE px, MEAN/STD, padded to a square with FILL or resized),
    the hidden state its model reads (LAYER, None: the last), its recipe and where its weights ship."""

    name: str
    size: int
    mean: Sequence[float]
    std: Sequence[float]
    layer: int | None
    fill: tuple[int, int, int] | None
    recipe: dict
    weights: Path
    record: Path


TOWERS = {
    # InternVL2's InternViT: 448-px tiles, ImageNet normalisation, the last hidden state (mlp1 reads it), resized tiles
    "internvit": Tower("internvit", 448, IMAGENET_MEAN, IMAGENET_STD, None, None, RECIPE, WEIGHTS, RECORD),
    # LLaVA's CLIP: 112 px (the tiny clip-vit-*-patch14), CLIP's normalisation, the second-to-last hidden state
    # (XTuner's visual_select_layer=-2), images padded to a square with the mean colour (pad_image_to_square)
    "clip": Tower("clip", 112, CLIP_MEAN, CLIP_STD, -2, tuple(int(x * 255) for x in CLIP_MEAN),
                  {**RECIPE, "steps": 5000, "lr": 2e-3},  # 1 CPU thread: ~6.5 min (see its record)
                  DATA / "tiny_clip_plates.safetensors", DATA / "tiny_clip_plates.json"),
}


def pretrained_weights(path: str | os.PathLike = WEIGHTS) -> "dict[str, torch.Tensor]":
    """The shipped tower's tensors, named as in the InternVL checkpoint ("vision_model.…"), bfloat16."""
    from safetensors.torch import load_file

    path = Path(path)
    if not path.exists():
        tower = next((t for t in TOWERS.values() if t.weights.name == path.name), TOWERS["internvit"])
        how = "--tower clip --device cpu --threads 1" if tower.name == "clip" else "--device cuda"
        raise FileNotFoundError(f"{path} is missing: it ships with labsupport (restore it with `git checkout -- "
                                f"labsupport/data/{path.name}`), or train it again with "
                                f"`python -m labsupport.model.vit_pretrain {how}`")
    return {PREFIX + k: v for k, v in load_file(str(path)).items()}


def weights_digest(path: str | os.PathLike = WEIGHTS) -> str:
    """sha256 of the shipped weights file (part of the tiny model's build stamp)."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()
# Three layers: XTuner's LLaVA reads the second-to-last hidden state (visual_select_layer=-2), so two of them see the
# plates. Measured (vit_pretrain on 8,000 plates, 1 CPU thread): with two layers (one used) the probe heads reached
# shape 0.82 / count 0.96 after 2,625 steps; with three, shape 0.90 / count 0.96 after 1,875.


def build_tiny_clip(out_dir: str | os.PathLike, seed: int = 0, force: bool = False, pretrained: bool = True) -> Path:
    """Write a tiny CLIPVisionModel + CLIPImageProcessor folder (official format); return it. PRETRAINED: the tower
    labsupport.model.vit_pretrain trained on plates (shipped in labsupport/data/), else random weights for SEED."""
    import torch
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModel

    tower = TOWERS["clip"]
    out = Path(out_dir)
    weights = weights_digest(tower.weights) if pretrained else "random"
    stamp = json.dumps({"settings": TINY_CLIP, "seed": seed, "v": 2, "weights": weights}, sort_keys=True)
    marker = out / ".labsupport-build.json"
    if not force and marker.exists() and marker.read_text() == stamp:
        return out
    tmp = out.with_name(out.name + ".building")
    shutil.rmtree(tmp, ignore_errors=True)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = CLIPVisionModel(CLIPVisionConfig(**TINY_CLIP))
    if pretrained:
        shipped = pretrained_weights(tower.weights)
        missing, unexpected = model.load_state_dict({k: v.float() for k, v in shipped.items()}, strict=False)
        if missing or unexpected:
            raise ValueError(f"{tower.weights} does not fit TINY_CLIP (missing {missing[:3]}, unexpected "
                             f"{unexpected[:3]}): train it again with `python -m labsupport.model.vit_pretrain --tower clip`")
    model.save_pretrained(tmp, safe_serialization=True)
    size = TINY_CLIP["image_size"]
    CLIPImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size},
                       image_mean=list(CLIP_MEAN), image_std=list(CLIP_STD)).save_pretrained(tmp)
    marker_tmp = tmp / marker.name
    marker_tmp.write_text(stamp)
    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp, out)
    return out
