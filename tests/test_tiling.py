"""Tests of labsupport.core.tiling against InternVL's published tiling rule (cases worked out by hand)."""
from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from PIL import Image

from labsupport.core import tiling

S = 448


def grid_of(w, h, **kw):
    return tiling.tile_plan(w, h, **kw).grid


# --- hand-worked cases -------------------------------------------------------------------------
# Each comment shows the arithmetic: aspect = w/h, the closest grid ratio, and the tie rule
# "a later grid with the same distance wins iff w*h > 0.5*448^2*cols*rows".

@pytest.mark.parametrize("w,h,max_num,grid", [
    (448, 448, 12, (1, 1)),     # 1:1; (2,2) ties but 448^2 <= 0.5*448^2*4
    (896, 896, 12, (2, 2)),     # 1:1; 802816 > 401408 for (2,2); not > 903168 for (3,3)
    (1000, 1000, 12, (3, 3)),   # 1e6 > 903168, so the tie goes all the way to (3,3)
    (1000, 1000, 6, (2, 2)),    # (3,3) is 9 tiles > 6: not a candidate
    (50, 50, 12, (1, 1)),       # tiny: far below every tie threshold
    (60, 50, 12, (4, 3)),       # tiny but 1.2:1 -> 4/3 (diff 0.13) beats 1/1 (0.2): blown up to 12 tiles;
                                # the area rule only guards exact ties
    (2688, 448, 12, (6, 1)),    # panorama 6:1 exactly
    (2688, 448, 4, (4, 1)),     # 6:1 but at most 4 tiles: 4/1 is the closest ratio left
    (448, 2688, 12, (1, 6)),    # the tall panorama is the transpose
    (448, 1344, 12, (1, 3)),    # tall 1:3; (2,6) ties but 3*448^2 <= 6*448^2
    (1000, 3000, 12, (2, 6)),   # tall 1:3 with 3e6 > 1204224 pixels: (2,6)
    (1920, 1080, 12, (4, 2)),   # 16:9 = 1.78: 2/1 is closest (0.22 vs 1.5's 0.28); (4,2) ties and 2073600 > 802816
    (1920, 1080, 6, (2, 1)),    # (4,2) is 8 tiles > 6
    (1920, 1080, 1, (1, 1)),    # max_num 1: always one tile
    (100, 5000, 1, (1, 1)),
    (640, 427, 12, (3, 2)),     # 1.499: 3/2 closest
])
def test_hand_worked_grids(w, h, max_num, grid):
    assert grid_of(w, h, max_num=max_num) == grid


def test_exact_aspect_tie_depends_on_image_area():
    # max_num=2: candidates (1,1) ratio 1, (1,2) 0.5, (2,1) 2. Aspect 1.5 is exactly halfway between 1 and 2.
    # The later grid (2,1) wins the tie only when w*h > 0.5*448^2*2 = 200704.
    assert grid_of(672, 448, max_num=2) == (2, 1)     # 301056 pixels
    assert grid_of(150, 100, max_num=2) == (1, 1)     # 15000 pixels
    assert grid_of(540, 360, max_num=2) == (1, 1)     # 194400 <= 200704
    assert grid_of(552, 368, max_num=2) == (2, 1)     # 203136 > 200704


def test_min_num_forces_more_tiles():
    assert grid_of(448, 448, min_num=4, max_num=12) == (2, 2)
    with pytest.raises(ValueError, match="min_num"):
        tiling.tile_plan(448, 448, min_num=5, max_num=4)


@pytest.mark.parametrize("w,h,max_num,thumb,tiles", [
    (448, 448, 12, True, 1),      # one tile: no thumbnail even when asked
    (448, 448, 12, False, 1),
    (1920, 1080, 12, True, 9),    # 8 + thumbnail
    (1920, 1080, 12, False, 8),
    (1920, 1080, 6, True, 3),
    (2688, 448, 12, True, 7),
    (50, 50, 12, True, 1),
    (1920, 1080, 1, True, 1),
])
def test_tile_and_token_counts(w, h, max_num, thumb, tiles):
    plan = tiling.tile_plan(w, h, max_num=max_num, use_thumbnail=thumb)
    assert plan.num_tiles == tiles
    assert plan.num_image_tokens == 256 * tiles
    assert tiling.count_tiles(w, h, max_num=max_num, use_thumbnail=thumb) == tiles


def test_tokens_per_tile_is_256():
    assert tiling.TOKENS_PER_TILE == (448 // 14) ** 2 // 4 == 256


def test_plan_geometry_for_1920x1080():
    plan = tiling.tile_plan(1920, 1080)
    assert plan.resized == (4 * S, 2 * S)
    # row-major: the first row of four, then the second
    assert plan.boxes[:2] == [(0, 0, S, S), (S, 0, 2 * S, S)]
    assert plan.boxes[4] == (0, S, S, 2 * S)
    assert plan.boxes[-1] == (3 * S, S, 4 * S, 2 * S)


def test_candidate_grids_are_all_grids_up_to_max_sorted_by_area():
    grids = tiling.candidate_grids(1, 12)
    expected = {(i, j) for i in range(1, 13) for j in range(1, 13) if i * j <= 12}
    assert set(grids) == expected and len(grids) == len(expected)
    areas = [i * j for i, j in grids]
    assert areas == sorted(areas)


# --- properties over random sizes ---------------------------------------------------------------

def _oracle(w, h, min_num, max_num):
    """The rule restated: the closest ratio; among exact ties the last one whose threshold the area beats."""
    grids = tiling.candidate_grids(min_num, max_num)
    diffs = [abs(w / h - i / j) for i, j in grids]
    best = min(diffs)
    ties = [g for g, d in zip(grids, diffs) if d == best]
    beat = [g for g in ties[1:] if w * h > 0.5 * S * S * g[0] * g[1]]
    return beat[-1] if beat else ties[0]


def test_random_sizes_properties():
    rng = random.Random(0)
    for _ in range(300):
        w, h = rng.randint(1, 6000), rng.randint(1, 6000)
        max_num = rng.choice([1, 2, 4, 6, 9, 12, 24])
        thumb = rng.random() < 0.5
        plan = tiling.tile_plan(w, h, max_num=max_num, use_thumbnail=thumb)
        cols, rows = plan.grid
        assert 1 <= cols * rows <= max_num
        assert plan.num_tiles <= max_num + 1
        assert plan.grid == _oracle(w, h, 1, max_num)
        # the crop boxes tile the resized image exactly: right size, inside, no overlap, full cover
        assert plan.resized == (cols * S, rows * S)
        covered = np.zeros((rows * S // 64, cols * S // 64), dtype=int)  # 448 = 7 * 64 cells per tile side
        for left, top, right, bottom in plan.boxes:
            assert right - left == S and bottom - top == S
            assert 0 <= left and right <= plan.resized[0] and 0 <= top and bottom <= plan.resized[1]
            covered[top // 64:bottom // 64, left // 64:right // 64] += 1
        assert (covered == 1).all()
        assert plan.thumbnail == (thumb and cols * rows > 1)


# --- pixels ---------------------------------------------------------------------------------------

def _gradient(w, h):
    x = np.linspace(0, 255, w, dtype=np.float32)[None, :, None]
    y = np.linspace(0, 255, h, dtype=np.float32)[:, None, None]
    arr = np.concatenate([np.broadcast_to(x, (h, w, 1)), np.broadcast_to(y, (h, w, 1)),
                          np.full((h, w, 1), 128, np.float32)], axis=2)
    return Image.fromarray(arr.astype(np.uint8), "RGB")


def test_dynamic_preprocess_tiles_are_crops_of_the_bicubic_resize():
    img = _gradient(1000, 500)          # aspect 2: (2,1); the tie with (4,2) needs > 802816 pixels
    tiles = tiling.dynamic_preprocess(img, max_num=12, use_thumbnail=True)
    assert len(tiles) == 3              # (2,1): 500000 pixels is not > 0.5*448^2*8 = 802816, + thumbnail
    assert all(t.size == (S, S) for t in tiles)
    resized = np.asarray(img.resize((2 * S, S), Image.Resampling.BICUBIC))
    assert np.array_equal(np.asarray(tiles[0]), resized[:, :S])
    assert np.array_equal(np.asarray(tiles[1]), resized[:, S:])
    thumb = np.asarray(img.resize((S, S), Image.Resampling.BICUBIC))
    assert np.array_equal(np.asarray(tiles[2]), thumb)


def test_dynamic_preprocess_thumbnail_off_and_single_tile():
    assert len(tiling.dynamic_preprocess(_gradient(1000, 500), use_thumbnail=False)) == 2
    assert len(tiling.dynamic_preprocess(_gradient(50, 50), use_thumbnail=True)) == 1


def test_build_transform_normalises_with_imagenet_stats():
    white = Image.new("RGB", (100, 60), (255, 255, 255))
    x = tiling.build_transform(448)(white)
    assert x.shape == (3, 448, 448)
    expected = torch.tensor([(1 - m) / s for m, s in zip(tiling.IMAGENET_MEAN, tiling.IMAGENET_STD)])
    assert torch.allclose(x.mean(dim=(1, 2)), expected, atol=1e-4)
    gray = Image.new("L", (50, 50), 0)   # converted to RGB first: three channels
    y = tiling.build_transform(448)(gray)
    assert y.shape == (3, 448, 448)
    assert torch.allclose(y[:, 0, 0], torch.tensor([-m / s for m, s in zip(tiling.IMAGENET_MEAN, tiling.IMAGENET_STD)]), atol=1e-4)


def test_load_image_from_path_and_pil(tmp_path):
    path = tmp_path / "wide.png"
    _gradient(1920, 1080).save(path)
    x = tiling.load_image(path, max_num=12)
    assert x.shape == (9, 3, 448, 448) and x.dtype == torch.float32
    y = tiling.load_image(Image.open(path), max_num=6)
    assert y.shape == (3, 3, 448, 448)
    assert torch.equal(x[-1], y[-1])  # the thumbnail does not depend on max_num


def test_load_image_explains_a_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="no image at"):
        tiling.load_image(tmp_path / "nope.jpg")
    bad = tmp_path / "not_an_image.jpg"
    bad.write_text("hello")
    with pytest.raises(ValueError, match="could not be read as an image"):
        tiling.load_image(bad)
