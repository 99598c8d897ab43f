"""InternVL's dynamic high-resolution tiling: pick a grid of 448-px tiles close to the image's aspect ratio.

The public names and behaviour follow InternVL2's published inference code
(``find_closest_aspect_ratio``, ``dynamic_preprocess``, ``build_transform``, ``load_image``)::

    plan = tile_plan(1920, 1080, max_num=12, use_thumbnail=True)
    plan.grid, plan.num_tiles, plan.num_image_tokens        # (4, 2), 9, 2304
    pixel_values = load_image("photo.jpg")                  # tensor [tiles, 3, 448, 448]

The rule, step by step:
  1. candidate grids are every (columns, rows) = (i, j) with min_num <= i*j <= max_num, ordered by i*j;
  2. the grid whose aspect ratio i/j is closest to width/height wins; on an exact tie the later
     (larger) grid wins only when the image has more than half the pixels of that grid
     (width*height > 0.5 * image_size**2 * i * j), so small images are not blown up;
  3. the image is resized (bicubic) to (image_size*i, image_size*j) and cut row-major into i*j tiles;
  4. with use_thumbnail, a whole-image thumbnail (image_size x image_size) is appended, but only
     when there is more than one tile.
Each tile becomes 256 image tokens in the LLM ((448/14)**2 patches, merged 4-to-1 by pixel shuffle).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Iterable, Sequence

from PIL import Image

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IMAGE_SIZE = 448
PATCH_SIZE = 14
DOWNSAMPLE_RATIO = 0.5
TOKENS_PER_TILE = int((IMAGE_SIZE // PATCH_SIZE) ** 2 * DOWNSAMPLE_RATIO ** 2)  # 256

Grid = tuple[int, int]
Box = tuple[int, int, int, int]


def candidate_grids(min_num: int = 1, max_num: int = 12) -> list[Grid]:
    """The (columns, rows) grids with min_num <= columns*rows <= max_num, in the reference's order (by area)."""
    if min_num < 1 or max_num < min_num:
        raise ValueError(f"need 1 <= min_num <= max_num, got min_num={min_num}, max_num={max_num}: "
                         "max_num is the largest number of tiles an image may be cut into")
    # Built as a set in the same insertion order as the reference and then stably sorted by area,
    # so grids of equal area keep the reference's (set) order: it only matters for exact ties.
    grids = set((i, j) for n in range(min_num, max_num + 1) for i in range(1, n + 1) for j in range(1, n + 1)
                if min_num <= i * j <= max_num)
    return sorted(grids, key=lambda g: g[0] * g[1])


def find_closest_aspect_ratio(aspect_ratio: float, target_ratios: Iterable[Grid], width: int, height: int,
                              image_size: int = IMAGE_SIZE) -> Grid:
    """The grid in TARGET_RATIOS whose columns/rows is closest to ASPECT_RATIO, with InternVL's tie rule."""
    best_diff = float("inf")
    best: Grid = (1, 1)
    area = width * height
    for cols, rows in target_ratios:
        diff = abs(aspect_ratio - cols / rows)
        if diff < best_diff:
            best_diff, best = diff, (cols, rows)
        elif diff == best_diff and area > 0.5 * image_size * image_size * cols * rows:
            best = (cols, rows)  # a tie: take the larger grid only if the image has the pixels to fill it
    return best


@dataclass(frozen=True)
class TilePlan:
    """What dynamic tiling does to one image size, without touching pixels."""

    image_size: tuple[int, int]      # (width, height) of the original image
    grid: Grid                       # (columns, rows) of tiles
    resized: tuple[int, int]         # (width, height) the image is resized to before cropping
    boxes: list[Box]                 # crop boxes (left, top, right, bottom) in the resized image, row-major
    thumbnail: bool                  # whether a thumbnail tile is appended
    tile_size: int = IMAGE_SIZE

    @property
    def num_tiles(self) -> int:
        """Tiles fed to the vision encoder, thumbnail included."""
        return len(self.boxes) + int(self.thumbnail)

    @property
    def num_image_tokens(self) -> int:
        """Image tokens the LLM sees (256 per 448-px tile)."""
        per_tile = int((self.tile_size // PATCH_SIZE) ** 2 * DOWNSAMPLE_RATIO ** 2)
        return self.num_tiles * per_tile


def _check_size(width: int, height: int) -> None:
    if width < 1 or height < 1:
        raise ValueError(f"image size must be positive, got width={width}, height={height}")


def tile_plan(width: int, height: int, min_num: int = 1, max_num: int = 12, image_size: int = IMAGE_SIZE,
              use_thumbnail: bool = False) -> TilePlan:
    """The grid, resized size, crop boxes and token count dynamic tiling chooses for a WIDTH x HEIGHT image."""
    _check_size(width, height)
    grid = find_closest_aspect_ratio(width / height, candidate_grids(min_num, max_num), width, height, image_size)
    cols, rows = grid
    boxes = [(c * image_size, r * image_size, (c + 1) * image_size, (r + 1) * image_size)
             for r in range(rows) for c in range(cols)]
    return TilePlan(image_size=(width, height), grid=grid, resized=(cols * image_size, rows * image_size),
                    boxes=boxes, thumbnail=use_thumbnail and len(boxes) > 1, tile_size=image_size)


def count_tiles(width: int, height: int, min_num: int = 1, max_num: int = 12, use_thumbnail: bool = True,
                image_size: int = IMAGE_SIZE) -> int:
    """How many tiles a WIDTH x HEIGHT image becomes (thumbnail on by default, as InternVL2 chat and training use)."""
    return tile_plan(width, height, min_num, max_num, image_size, use_thumbnail).num_tiles


def dynamic_preprocess(image: Image.Image, min_num: int = 1, max_num: int = 12, image_size: int = IMAGE_SIZE,
                       use_thumbnail: bool = False) -> list[Image.Image]:
    """Cut IMAGE into image_size x image_size tiles on the closest grid (plus a thumbnail if asked)."""
    plan = tile_plan(image.width, image.height, min_num, max_num, image_size, use_thumbnail)
    resample = _resample_for(image)
    resized = image.resize(plan.resized, resample=resample)
    tiles = [resized.crop(box) for box in plan.boxes]
    if plan.thumbnail:
        tiles.append(image.resize((image_size, image_size), resample=resample))
    return tiles


def _resample_for(image: Image.Image) -> int:
    """Pillow's default resize filter, which the reference relies on: bicubic, nearest for palette/1-bit images."""
    return Image.Resampling.NEAREST if image.mode in ("1", "P") else Image.Resampling.BICUBIC


def build_transform(input_size: int = IMAGE_SIZE):
    """The per-tile transform: RGB, bicubic resize to input_size, to tensor, ImageNet normalisation."""
    import torchvision.transforms as T
    from torchvision.transforms.functional import InterpolationMode

    return T.Compose([
        T.Lambda(lambda img: img.convert("RGB") if img.mode != "RGB" else img),
        T.Resize((input_size, input_size), interpolation=InterpolationMode.BICUBIC),
        T.ToTensor(),
        T.Normalize(mean=IMAGENET_MEAN, std=IMAGENET_STD),
    ])


def open_image(image_or_path: "Image.Image | str | os.PathLike") -> Image.Image:
    """Open a path (or take a PIL image) and convert it to RGB."""
    if isinstance(image_or_path, Image.Image):
        return image_or_path.convert("RGB")
    path = os.fspath(image_or_path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"no image at {path!r}: check the path (relative paths start at the kernel's "
                                f"working directory, {os.getcwd()!r})")
    try:
        with Image.open(path) as img:
            return img.convert("RGB")
    except Exception as exc:
        raise ValueError(f"{path!r} could not be read as an image ({type(exc).__name__}: {exc}); "
                         "use a JPEG/PNG/WebP file") from exc


def load_image(image_or_path: "Image.Image | str | os.PathLike", input_size: int = IMAGE_SIZE,
               max_num: int = 12):
    """Tile an image as InternVL2's chat does (thumbnail on) -> float tensor [tiles, 3, input_size, input_size]."""
    import torch

    image = open_image(image_or_path)
    transform = build_transform(input_size)
    tiles = dynamic_preprocess(image, image_size=input_size, use_thumbnail=True, max_num=max_num)
    return torch.stack([transform(tile) for tile in tiles])


# Tiles one batch_chat() call may carry. The published InternViT attends with plain matmuls (heads x 1025 x 1025 floats
# per tile and layer): one call with every question's 12 tiles took more than 20 GB on a CPU (InternVL2-1B's layout).
MAX_BATCH_TILES = 16


def tile_batches(tiles: Sequence[int], budget: int | None = None) -> list[list[int]]:
    """Indices of TILES (tiles per question) in groups of at most BUDGET (MAX_BATCH_TILES) tiles; a bigger question alone."""
    budget = MAX_BATCH_TILES if budget is None else budget
    groups: list[list[int]] = []
    used = 0
    for i, n in enumerate(tiles):
        if not groups or used + n > budget:
            groups.append([])
            used = 0
        groups[-1].append(i)
        used += n
    return groups
