"""Pixel shuffle as InternVL2 publishes it, and the helpers that explain it (labsupport.model.vision).

The expected layout is worked out from InternVL's published steps (view to [N, H, W/2, 2C], swap the
spatial axes, view to [N, W/2, H/2, 4C], swap back for ps_version 'v2'):

    out[n, a, b, (2*m + k)*C + c] == x[n, 2a + m, 2b + k, c]      (m: row offset, k: column offset)
"""
from __future__ import annotations

import pytest
import torch

from labsupport.model import vision


def test_shapes_32x32_to_16x16_with_4x_channels():
    x = torch.randn(3, 32, 32, 24)
    assert vision.pixel_shuffle(x, 0.5, "v2").shape == (3, 16, 16, 96)
    assert vision.shuffle_shape(32, 32, 1024) == (16, 16, 4096)
    assert vision.tokens_per_tile() == 256 == 32 * 32 // 4


def test_v2_layout_matches_the_published_index_formula():
    n, h, w, c = 2, 6, 4, 3
    x = torch.arange(n * h * w * c, dtype=torch.float32).reshape(n, h, w, c)
    y = vision.pixel_shuffle(x, 0.5, "v2")
    for b_ in range(n):
        for a in range(h // 2):
            for b in range(w // 2):
                for m in range(2):
                    for k in range(2):
                        for ch in range(c):
                            assert y[b_, a, b, (2 * m + k) * c + ch] == x[b_, 2 * a + m, 2 * b + k, ch]


def test_v1_is_v2_with_the_spatial_axes_swapped():
    x = torch.randn(2, 8, 8, 5)
    assert torch.equal(vision.pixel_shuffle(x, 0.5, "v1"), vision.pixel_shuffle(x, 0.5, "v2").transpose(1, 2))


def test_pixel_shuffle_is_a_permutation_and_can_be_undone():
    x = torch.randperm(2 * 32 * 32 * 8).float().reshape(2, 32, 32, 8)
    y = vision.pixel_shuffle(x, 0.5, "v2")
    assert torch.equal(torch.sort(y.flatten()).values, torch.sort(x.flatten()).values)
    # the inverse, by the index formula: split the 4C channels into (m, k, C) and put the rows/columns back
    back = y.reshape(2, 16, 16, 2, 2, 8).permute(0, 1, 3, 2, 4, 5).reshape(2, 32, 32, 8)
    assert torch.equal(back, x)


def test_it_is_not_nn_pixel_shuffle():
    x = torch.randn(1, 32, 32, 8)
    # nn.PixelShuffle goes the other way (fewer channels, MORE positions) ...
    assert torch.nn.PixelShuffle(2)(x.permute(0, 3, 1, 2)).shape == (1, 2, 64, 64)
    # ... nn.PixelUnshuffle merges the same 2x2 blocks, but orders the channels differently (channel-major)
    torch_un = torch.nn.PixelUnshuffle(2)(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)   # [1, 16, 16, 32]
    ours = vision.pixel_shuffle(x, 0.5, "v2")
    assert torch_un.shape == ours.shape and not torch.equal(torch_un, ours)
    reordered = torch_un.reshape(1, 16, 16, 8, 4).transpose(3, 4).reshape(1, 16, 16, 32)
    assert torch.equal(reordered, ours)


def test_merge_map_groups_2x2_blocks_row_major():
    token, slot = vision.merge_map(8, 8)
    assert token.shape == slot.shape == (8, 8)
    assert token[0, 0] == token[0, 1] == token[1, 0] == token[1, 1] == 0
    assert token[0, 2] == 1 and token[2, 0] == 4      # 4 output tokens per output row
    assert slot[:2, :2].tolist() == [[0, 1], [2, 3]]
    assert torch.bincount(token.flatten()).tolist() == [4] * 16


def test_shuffle_shape_explains_bad_sizes():
    with pytest.raises(ValueError, match="divisible by 2"):
        vision.shuffle_shape(31, 32, 1024)


def test_trace_shapes_follows_a_tile_to_the_llm():
    from labsupport.model import tinymodel
    from labsupport.model.remote_code.configuration_internvl_chat import InternVLChatConfig
    from labsupport.model.remote_code.modeling_internvl_chat import InternVLChatModel

    torch.manual_seed(0)
    cfg = InternVLChatConfig(**tinymodel.tiny_config(vocab_size=300))
    model = InternVLChatModel(cfg).eval()
    stages = vision.trace_shapes(model, torch.randn(2, 3, 448, 448))
    shapes = dict(stages)
    c, d = cfg.vision_config.hidden_size, cfg.llm_config.hidden_size
    assert stages[0][1] == (2, 3, 448, 448)
    assert shapes["ViT output ([CLS] + patches)"] == (2, 1025, c)
    assert shapes["pixel shuffle (2x2 -> 1, channels x4)"] == (2, 16, 16, 4 * c)
    assert stages[-1][1] == (2, 256, d)
