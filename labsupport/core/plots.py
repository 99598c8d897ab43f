"""Figures for the course: tiling grids, tiles + thumbnail, the pixel-shuffle merge, budgets; the CJK font.

Each function returns a matplotlib Figure (and never calls plt.show()), so a notebook can display it,
save it, or close it. `use_cjk_font()` makes matplotlib draw Chinese (the course's questions and answers)
with the CJK font `make system-deps` installs (Debian's fonts-noto-cjk); every figure helper calls it.
"""
from __future__ import annotations

import io
import os
from typing import Mapping, Sequence

import numpy as np
from PIL import Image

from labsupport.core import tiling
from labsupport.core.checkpoints import write_bytes_atomic

GAP = 24  # pixels of white between tiles in a mosaic
PREVIEW_PX = 224  # tiles are drawn at this size: the figure shows the layout, not every pixel


# CJK families, most wanted first: Debian/Ubuntu's fonts-noto-cjk, then fonts common elsewhere.
CJK_FAMILIES = ("Noto Sans CJK SC", "Noto Sans CJK JP", "Noto Sans CJK TC", "Source Han Sans SC", "Source Han Sans CN",
                "WenQuanYi Zen Hei", "WenQuanYi Micro Hei", "Microsoft YaHei", "SimHei", "PingFang SC",
                "Noto Serif CJK SC")
CJK_INSTALL_HINT = "sudo apt-get install fonts-noto-cjk (or `make system-deps`), then restart the kernel"


def cjk_font() -> str | None:
    """The name of an installed CJK font family matplotlib can use, or None."""
    from matplotlib import font_manager

    installed = {f.name for f in font_manager.fontManager.ttflist}
    return next((name for name in CJK_FAMILIES if name in installed), None)


def use_cjk_font() -> str | None:
    """Make matplotlib fall back to the CJK font for Chinese glyphs (Latin stays DejaVu Sans); return its name.

    Idempotent. Without a CJK font it returns None and changes nothing: figures then show empty boxes for
    Chinese text and matplotlib warns "Glyph ... missing" (CJK_INSTALL_HINT says what to install).
    """
    import matplotlib

    name = cjk_font()
    if name is None:
        return None
    family = matplotlib.rcParams["font.family"]
    family = [family] if isinstance(family, str) else list(family)
    if name not in family:
        base = [f for f in family if f != "sans-serif"] or ["DejaVu Sans"]
        matplotlib.rcParams["font.family"] = base + [name]
    return name


def pyplot():
    """matplotlib.pyplot, with the CJK font configured (use_cjk_font)."""
    import matplotlib.pyplot as plt

    use_cjk_font()
    return plt


_plt = pyplot


def tile_mosaic(tiles: Sequence[Image.Image], grid: tuple[int, int], gap: int = GAP,
                size: int | None = None) -> np.ndarray:
    """The grid's tiles laid out row-major with white gaps, as one RGB array (tiles resized to SIZE if given)."""
    cols, rows = grid
    if size is not None:
        tiles = [t.resize((size, size), Image.Resampling.BILINEAR) for t in tiles]
    size = tiles[0].width
    canvas = np.full((rows * size + (rows - 1) * gap, cols * size + (cols - 1) * gap, 3), 255, np.uint8)
    for k, tile in enumerate(tiles[: cols * rows]):
        r, c = divmod(k, cols)
        y, x = r * (size + gap), c * (size + gap)
        canvas[y:y + size, x:x + size] = np.asarray(tile.convert("RGB"))
    return canvas


def draw_grid(ax, image: Image.Image, plan: "tiling.TilePlan", color: str = "yellow") -> None:
    """Show IMAGE on AX with the plan's tile borders and tile numbers drawn over it."""
    w, h = image.size
    cols, rows = plan.grid
    ax.imshow(image)
    for c in range(1, cols):
        ax.axvline(c * w / cols, color=color, lw=2)
    for r in range(1, rows):
        ax.axhline(r * h / rows, color=color, lw=2)
    for k in range(cols * rows):
        r, c = divmod(k, cols)
        ax.text((c + 0.5) * w / cols, (r + 0.5) * h / rows, str(k + 1), color="white", fontsize=13,
                ha="center", va="center", fontweight="bold",
                bbox=dict(boxstyle="circle,pad=0.25", fc="black", alpha=0.55, lw=0))
    ax.set_xticks([])
    ax.set_yticks([])


def plot_tiling(image: Image.Image, name: str = "image", max_num: int = 12, use_thumbnail: bool = True,
                axes=None):
    """Three panels for one image: the grid over the photo, the tiles as the ViT sees them, the thumbnail."""
    plt = _plt()
    image = image.convert("RGB")
    plan = tiling.tile_plan(image.width, image.height, max_num=max_num, use_thumbnail=use_thumbnail)
    tiles = tiling.dynamic_preprocess(image, max_num=max_num, use_thumbnail=use_thumbnail)
    if axes is None:
        fig, axes = plt.subplots(1, 3, figsize=(15, 5.0), gridspec_kw={"width_ratios": [1.3, 1.3, 0.55]})
    else:
        fig = axes[0].figure
    cols, rows = plan.grid
    preview = image.copy()
    preview.thumbnail((3 * PREVIEW_PX, 3 * PREVIEW_PX))  # drawing a 4000-px photo only costs time
    draw_grid(axes[0], preview, plan)
    axes[0].set_title(f"{name}: {image.width}x{image.height} (aspect {image.width / image.height:.2f})\n"
                      f"grid {cols}x{rows} (aspect {cols / rows:.2f}), max_num={max_num}", fontsize=11)
    n = cols * rows
    axes[1].imshow(tile_mosaic(tiles, plan.grid, gap=GAP // 2, size=PREVIEW_PX))
    axes[1].set_title(f"{n} tile{'s' if n > 1 else ''} of 448x448, cut from a {plan.resized[0]}x{plan.resized[1]} "
                      "resize", fontsize=11)
    _bare(axes[1])
    axes[1].set_xlabel(f"{plan.num_tiles} tile{'s' if plan.num_tiles > 1 else ''} in all -> "
                       f"{plan.num_image_tokens} image tokens", fontsize=11, fontweight="bold")
    if plan.thumbnail:
        axes[2].imshow(tiles[-1].resize((PREVIEW_PX, PREVIEW_PX), Image.Resampling.BILINEAR))
        axes[2].set_title("+ thumbnail 448x448\n(whole image)", fontsize=11)
    else:
        axes[2].text(0.5, 0.5, "no thumbnail\n(" + ("a single tile" if cols * rows == 1 else "use_thumbnail off")
                     + ")", ha="center", va="center", fontsize=11, transform=axes[2].transAxes)
    axes[2].axis("off")
    if len(fig.axes) == 3:
        fig.tight_layout()
    return fig


def _bare(ax) -> None:
    """No ticks and no frame, but keep the axis labels."""
    ax.set_xticks([])
    ax.set_yticks([])
    for side in ax.spines.values():
        side.set_visible(False)


def plot_tiling_gallery(images: Mapping[str, Image.Image], max_num: int = 12, use_thumbnail: bool = True):
    """plot_tiling for several images, one row each."""
    plt = _plt()
    fig, axes = plt.subplots(len(images), 3, figsize=(15, 4.4 * len(images)),
                             gridspec_kw={"width_ratios": [1.3, 1.3, 0.55]}, squeeze=False)
    for row, (name, image) in zip(axes, images.items()):
        plot_tiling(image, name, max_num=max_num, use_thumbnail=use_thumbnail, axes=row)
    fig.tight_layout()
    return fig


def live_frontend() -> bool:
    """True when a Jupyter front end (Lab / Notebook 7) started this kernel, False under papermill or a script."""
    return bool(os.environ.get("JPY_SESSION_NAME"))


def tiling_widget(images: Mapping[str, Image.Image], max_num: int = 12, use_thumbnail: bool = True):
    """Controls (image, max_num, thumbnail) that redraw plot_tiling; returns an ipywidgets box to display."""
    import ipywidgets as widgets
    from IPython.display import display

    plt = _plt()
    choose = widgets.Dropdown(options=list(images), description="image")
    limit = widgets.IntSlider(value=max_num, min=1, max=24, description="max_num")
    thumb = widgets.Checkbox(value=use_thumbnail, description="thumbnail")
    out = widgets.Output()

    def redraw(*_):
        with out:
            out.clear_output(wait=True)
            fig = plot_tiling(images[choose.value], choose.value, max_num=limit.value, use_thumbnail=thumb.value)
            display(fig)
            plt.close(fig)

    for control in (choose, limit, thumb):
        control.observe(redraw, names="value")
    redraw()
    return widgets.VBox([widgets.HBox([choose, limit, thumb]), out])


def _token_colors(token: np.ndarray, cols: int) -> np.ndarray:
    """A colour per output token, so that neighbouring tokens never share one."""
    plt = _plt()
    palette = np.array(plt.get_cmap("tab10").colors)
    r, c = np.divmod(token, cols)
    return palette[(r + 5 * c) % 10]


def plot_pixel_shuffle(token: np.ndarray, slot: np.ndarray, zoom: int = 4):
    """Which ViT patches merge into which LLM token: the full grid, a zoom with slot numbers, the merged grid.

    TOKEN and SLOT are labsupport.model.vision.merge_map() results: for each input patch, the output token it
    lands in and its position (0-3) inside that token's 4C channels.
    """
    plt = _plt()
    token, slot = np.asarray(token), np.asarray(slot)
    h, w = token.shape
    h2, w2 = h // 2, w // 2
    colors = _token_colors(token, w2)
    out_tokens = np.arange(h2 * w2).reshape(h2, w2)
    out_colors = _token_colors(out_tokens, w2)
    fig, axes = plt.subplots(1, 4, figsize=(17, 4.8), gridspec_kw={"width_ratios": [1, 1, 1, 0.9]})
    axes[0].imshow(colors, interpolation="nearest")
    axes[0].add_patch(plt.Rectangle((-0.5, -0.5), zoom, zoom, fill=False, ec="black", lw=2.5))
    axes[0].set_title(f"ViT output: {h}x{w} patch tokens, C channels each\n(colour = the LLM token it joins)",
                      fontsize=11)
    axes[1].imshow(colors[:zoom, :zoom], interpolation="nearest")
    for (r, c), s in np.ndenumerate(slot[:zoom, :zoom]):
        axes[1].text(c, r, f"patch ({r},{c})\nslot {s}", ha="center", va="center", fontsize=9)
    axes[1].set_title(f"zoom on the black {zoom}x{zoom} corner:\neach 2x2 block -> one token, slots 0-3",
                      fontsize=11)
    axes[2].imshow(out_colors, interpolation="nearest")
    axes[2].add_patch(plt.Rectangle((-0.5, -0.5), zoom // 2, zoom // 2, fill=False, ec="black", lw=2.5))
    axes[2].set_title(f"after pixel shuffle: {h2}x{w2} tokens, 4C channels each\n"
                      f"({h * w} -> {h2 * w2} tokens per tile)", fontsize=11)
    _cell_lines(axes[0], h, w, block=2)
    _cell_lines(axes[1], zoom, zoom, block=2, lw=1.5)
    _cell_lines(axes[2], h2, w2, block=1)
    for ax in axes[:3]:
        ax.set_xticks([])
        ax.set_yticks([])
    # the channel layout of token 0: four C-long pieces, one per patch of its 2x2 block
    ax = axes[3]
    block = [(int(r), int(c)) for r, c in zip(*np.nonzero(token == 0))]
    block.sort(key=lambda rc: slot[rc])
    for s, (r, c) in enumerate(block):
        ax.barh(0, 1, left=s, color=colors[r, c], edgecolor="black", alpha=1 - 0.18 * s)
        ax.text(s + 0.5, 0, f"slot {s}\npatch ({r},{c})\nC values", ha="center", va="center", fontsize=9)
    ax.set_xlim(0, 4)
    ax.set_ylim(-1, 1)
    ax.set_title("channels of token 0 = the four patch\nvectors one after another (4C long)", fontsize=11)
    ax.axis("off")
    fig.tight_layout()
    return fig


def _cell_lines(ax, rows: int, cols: int, block: int, lw: float = 0.4) -> None:
    """Thin white lines between cells and black lines around each BLOCK x BLOCK group."""
    for k in range(1, cols):
        ax.axvline(k - 0.5, color="black" if k % block == 0 else "white", lw=lw * (2 if k % block == 0 else 1))
    for k in range(1, rows):
        ax.axhline(k - 0.5, color="black" if k % block == 0 else "white", lw=lw * (2 if k % block == 0 else 1))


def plot_param_breakdown(rows: Sequence[Mapping]):
    """Parameters per model (rows from params.family_table()): stacked totals, and each part on a log scale.

    Left: ViT / projector / LLM stacked, the axis ending just past the largest model. Right: the three parts
    side by side on a logarithmic axis, so that the projector (well under 1 %) is a visible bar too.
    """
    plt = _plt()
    fig, (ax, logax) = plt.subplots(1, 2, figsize=(13, 3.9), gridspec_kw={"width_ratios": [1.25, 1]})
    names = [r["model"] for r in rows]
    parts = (("vit", "tab:blue", "InternViT-300M"), ("projector", "tab:orange", "MLP projector"), ("llm", "tab:green", "LLM"))
    left = np.zeros(len(rows))
    for part, color, label in parts:
        values = np.array([r[part] for r in rows]) / 1e9
        ax.barh(names, values, left=left, color=color, label=label)
        left += values
    for y, r in enumerate(rows):
        ax.text(r["total"] / 1e9 + 0.08, y, f"{r['total'] / 1e9:.2f}B", va="center", fontsize=10)
    ax.invert_yaxis()
    ax.set_xlim(0, max(left) * 1.12)
    ax.set_xlabel("parameters (billions)")
    ax.set_title("Totals: the same 0.3B vision encoder, a growing LLM")
    ax.legend(loc="upper right", fontsize=9)
    y = np.arange(len(rows))
    height = 0.26
    for k, (part, color, label) in enumerate(parts):
        values = np.array([r[part] for r in rows], dtype=float)
        bars = logax.barh(y + (k - 1) * height, values, height, color=color, label=label)
        logax.bar_label(bars, labels=[_short_count(v) for v in values], fontsize=8, padding=2)
    logax.set_yticks(y, names)
    logax.invert_yaxis()
    logax.set_xscale("log")
    logax.set_xlim(1e6, max(r["llm"] for r in rows) * 8)
    logax.set_xlabel("parameters (log scale)")
    logax.set_title("Each part on a log scale: the projector is under 1 %")
    fig.tight_layout()
    return fig


def _short_count(n: float) -> str:
    """1.23B, 12.6M: a bar label."""
    return f"{n / 1e9:.2f}B" if n >= 1e9 else f"{n / 1e6:.1f}M"


def plot_token_budget(sizes: Mapping[str, tuple[int, int]], max_nums: Sequence[int] = (6, 12),
                      use_thumbnail: bool = True):
    """Grouped bars: image tokens of typical photo sizes under each max_num."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(11, 4))
    x = np.arange(len(sizes))
    width = 0.8 / len(max_nums)
    for k, m in enumerate(max_nums):
        tokens = [tiling.tile_plan(w, h, max_num=m, use_thumbnail=use_thumbnail).num_image_tokens
                  for w, h in sizes.values()]
        bars = ax.bar(x + (k - (len(max_nums) - 1) / 2) * width, tokens, width, label=f"max_num={m}")
        ax.bar_label(bars, fontsize=9)
    ax.set_xticks(x, [f"{name}\n{w}x{h}" for name, (w, h) in sizes.items()], fontsize=9)
    ax.set_ylabel("image tokens in the prompt")
    ax.set_title("Image tokens per photo (256 per tile, thumbnail included)")
    ax.legend()
    fig.tight_layout()
    return fig


def sample_images() -> dict[str, Image.Image]:
    """Real photographs shipped inside scikit-image (no download), plus a panorama and a tall crop of them."""
    from skimage import data

    photos = {
        "astronaut": data.astronaut(),          # 512 x 512
        "coffee": data.coffee(),                # 600 x 400
        "rocket": data.rocket(),                # 640 x 427
        "chelsea": data.chelsea(),              # 451 x 300
        "hubble": data.hubble_deep_field(),     # 1000 x 872
        "retina": data.retina(),                # 1411 x 1411
    }
    images = {name: Image.fromarray(arr).convert("RGB") for name, arr in photos.items()}
    images["panorama (coffee strip)"] = images["coffee"].crop((0, 150, 600, 250))   # 600 x 100, 6:1
    images["tall (rocket column)"] = images["rocket"].crop((250, 0, 392, 427))      # 142 x 427, about 1:3
    return images


def save_figure(fig, folder: "str | os.PathLike", name: str, dpi: int = 80) -> "os.PathLike":
    """Write FIG as FOLDER/NAME.png (atomically: temp file, then rename) and return the path."""
    from pathlib import Path

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.png"
    buf = io.BytesIO()
    fig.savefig(buf, dpi=dpi, bbox_inches="tight", format="png")
    write_bytes_atomic(path, buf.getvalue())
    return path


def tiling_table(sizes: Mapping[str, tuple[int, int]], max_nums: Sequence[int] = (6, 12),
                 use_thumbnail: bool = True) -> str:
    """A Markdown table: image size -> grid -> tiles -> image tokens, one column group per max_num."""
    head = "| image | size | " + " | ".join(f"max_num={m}: grid, tiles, tokens" for m in max_nums) + " |"
    lines = [head, "|---|---|" + "---|" * len(max_nums)]
    for name, (w, h) in sizes.items():
        cells = []
        for m in max_nums:
            plan = tiling.tile_plan(w, h, max_num=m, use_thumbnail=use_thumbnail)
            cells.append(f"{plan.grid[0]}x{plan.grid[1]}, {plan.num_tiles}, **{plan.num_image_tokens}**")
        lines.append(f"| {name} | {w}x{h} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
