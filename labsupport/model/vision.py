"""The vision side of InternVL2 step by step: pixel shuffle, which patches merge, and the shapes at each stage.

``pixel_shuffle`` is the very function the course's InternVL2 modeling code calls (one implementation,
in labsupport/model/remote_code/modeling_internvl_chat.py); this module re-exports it and adds helpers
that explain it.
"""
from __future__ import annotations

import math

import torch

from labsupport.model.remote_code.modeling_internvl_chat import pixel_shuffle

__all__ = ["pixel_shuffle", "shuffle_shape", "tokens_per_tile", "merge_map", "trace_shapes"]


def shuffle_shape(height: int, width: int, channels: int, scale_factor: float = 0.5) -> tuple[int, int, int]:
    """The (height, width, channels) pixel shuffle makes of a height x width x channels token grid."""
    merged = height * scale_factor, width * scale_factor, channels / scale_factor ** 2
    if not all(float(v).is_integer() for v in merged):
        raise ValueError(f"a {height}x{width}x{channels} grid cannot be shuffled by {scale_factor}: "
                         f"height and width must be divisible by {round(1 / scale_factor)}")
    return int(merged[0]), int(merged[1]), int(merged[2])


def tokens_per_tile(image_size: int = 448, patch_size: int = 14, downsample_ratio: float = 0.5) -> int:
    """Image tokens one tile becomes: (image_size / patch_size)^2 patches, merged by pixel shuffle."""
    side = image_size // patch_size
    return int(side * side * downsample_ratio ** 2)


def merge_map(height: int = 32, width: int = 32, scale_factor: float = 0.5,
              ps_version: str = "v2") -> tuple[torch.Tensor, torch.Tensor]:
    """For each input patch: the output token it lands in (row-major index) and its slot in that token's channels.

    Found by shuffling a grid whose only channel holds each patch's own index, so it shows what
    ``pixel_shuffle`` really does rather than what we believe it does.
    """
    ids = torch.arange(height * width, dtype=torch.float64).reshape(1, height, width, 1)
    out = pixel_shuffle(ids, scale_factor=scale_factor, ps_version=ps_version)[0]  # [h', w', slots]
    h2, w2, slots = out.shape
    token = torch.empty(height * width, dtype=torch.long)
    slot = torch.empty(height * width, dtype=torch.long)
    flat = out.reshape(h2 * w2, slots).long()
    for t in range(h2 * w2):
        token[flat[t]] = t
        slot[flat[t]] = torch.arange(slots)
    return token.reshape(height, width), slot.reshape(height, width)


@torch.no_grad()
def trace_shapes(model, pixel_values: torch.Tensor) -> list[tuple[str, tuple[int, ...]]]:
    """Run an InternVL model's vision path one stage at a time; return (stage, shape) pairs, ending at the LLM.

    Uses the public pieces (vision_model, pixel_shuffle, mlp1) and checks the result against
    model.extract_feature, the function training and chat really call.
    """
    vm = model.vision_model
    x = pixel_values.to(dtype=next(vm.parameters()).dtype)
    stages = [("pixels (tiles, RGB, H, W)", tuple(x.shape))]
    patches = vm.embeddings.patch_embedding(x)
    stages.append(("patch embedding (conv 14x14, stride 14)", tuple(patches.shape)))
    vit = vm(pixel_values=x, return_dict=True).last_hidden_state
    stages.append(("ViT output ([CLS] + patches)", tuple(vit.shape)))
    vit = vit[:, 1:, :]
    stages.append(("drop [CLS]", tuple(vit.shape)))
    side = int(math.isqrt(vit.shape[1]))
    grid = vit.reshape(vit.shape[0], side, side, -1)
    stages.append(("as a grid", tuple(grid.shape)))
    ratio = getattr(model, "downsample_ratio", None) or model.config.downsample_ratio
    shuffled = pixel_shuffle(grid, scale_factor=ratio, ps_version=getattr(model, "ps_version", "v2"))
    stages.append(("pixel shuffle (2x2 -> 1, channels x4)", tuple(shuffled.shape)))
    tokens = shuffled.reshape(shuffled.shape[0], -1, shuffled.shape[-1])
    stages.append(("flatten to tokens", tuple(tokens.shape)))
    projected = model.mlp1(tokens)
    stages.append(("projector mlp1 -> LLM width", tuple(projected.shape)))
    reference = model.extract_feature(x)
    tol = 1e-5 if projected.dtype == torch.float32 else 2e-2  # bf16/fp16 on a GPU round differently
    if tuple(reference.shape) != tuple(projected.shape) or not torch.allclose(reference, projected, atol=tol):
        raise RuntimeError("tracing the stages by hand disagrees with model.extract_feature: "
                           "the model's select_layer or ps_version differ from InternVL2's defaults")
    return stages
