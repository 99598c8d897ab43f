"""Statistics and previews of an InternVL fine-tuning set: token lengths, tiles per image, image sizes, a sample grid."""
from __future__ import annotations

import collections
import os
import random
import re
from pathlib import Path
from typing import Any, Callable

from labsupport.datasets.formats import TOKENS_PER_TILE, as_records, count_tiles, progress_bar
from labsupport.datasets.validate import count_text_tokens
from labsupport.core.plots import pyplot, use_cjk_font

_PIECE = re.compile(r"[\u3400-\u9fff\uf900-\ufaff]|[A-Za-z]+|\d|[^\sA-Za-z\d]")


class ApproxTokenizer:
    """A stand-in tokenizer when the model's is not at hand: one token per CJK character, word, digit or symbol."""

    def __call__(self, text: str, add_special_tokens: bool = False) -> dict:
        """Mimic an HF tokenizer call: {"input_ids": [...]} with one id per piece."""
        return {"input_ids": [0] * len(_PIECE.findall(text))}


def collect_stats(source: str | os.PathLike | list, image_root: str | os.PathLike, tokenizer: Any = None,
                  max_num: int = 6, count_tiles_fn: Callable[[int, int, int], int] | None = None,
                  progress: bool = True, template_tokens: int = 0) -> dict:
    """Per-record text tokens, image tokens and totals (+ TEMPLATE_TOKENS), and per-image sizes and tiles (reads image headers only)."""
    from PIL import Image

    records = as_records(source)
    tok = tokenizer or ApproxTokenizer()
    tiles_of = count_tiles_fn or count_tiles
    root = Path(image_root)
    size_cache: dict[str, tuple[int, int]] = {}
    st: dict[str, Any] = {"ids": [], "text_tokens": [], "image_tokens": [], "total_tokens": [], "tiles": [], "sizes": [],
                          "max_num": max_num, "approximate": tokenizer is None}
    for rec in progress_bar(records, "measuring", enable=progress and len(records) > 200):
        text = "\n".join(t["value"].replace("<image>", "") for t in rec["conversations"])
        n_text = count_text_tokens(tok, text)
        images = rec.get("image") or []
        images = images if isinstance(images, list) else [images]
        n_img = 0
        for rel in images:
            if rel not in size_cache:
                with Image.open(root / rel) as im:
                    size_cache[rel] = im.size
            w, h = size_cache[rel]
            tiles = tiles_of(w, h, max_num)
            st["tiles"].append(tiles)
            st["sizes"].append((w, h))
            n_img += TOKENS_PER_TILE * tiles + 2  # +2: <img> and </img>
        st["ids"].append(rec.get("id"))
        st["text_tokens"].append(n_text)
        st["image_tokens"].append(n_img)
        st["total_tokens"].append(n_text + n_img + template_tokens)
    return st


def describe(stats: dict, max_length: int | None = None) -> str:
    """A few lines summarising collect_stats() output."""
    tot, txt = stats["total_tokens"], stats["text_tokens"]
    if not tot:
        return "no records"
    tiles = collections.Counter(stats["tiles"])
    lines = [f"{len(tot)} records, {len(stats['sizes'])} images" + (" (text tokens approximated)" if stats["approximate"] else ""),
             f"text tokens  min {min(txt)}  mean {sum(txt) / len(txt):.1f}  max {max(txt)}",
             f"total tokens min {min(tot)}  mean {sum(tot) / len(tot):.1f}  max {max(tot)}",
             f"tiles per image at max_num={stats['max_num']}: " + ", ".join(f"{k}: {v}" for k, v in sorted(tiles.items()))]
    if max_length:
        over = sum(t > max_length for t in tot)
        lines.append(f"records over max_length {max_length}: {over}")
    return "\n".join(lines)


def plot_overview(stats: dict, max_length: int | None = None):
    """Three panels: token-length histogram against MAX_LENGTH, tiles per image, image sizes; returns the figure."""
    plt = pyplot()  # with the CJK font

    fig, (a, b, c) = plt.subplots(1, 3, figsize=(15, 4))
    a.hist(stats["total_tokens"], bins=30, color="tab:blue", alpha=0.8, label="text + image tokens")
    if max_length:
        a.axvline(max_length, color="tab:red", linestyle="--", label=f"max_length {max_length}")
    a.set(xlabel="tokens per record", ylabel="records", title="sample length")
    a.legend()
    tiles = collections.Counter(stats["tiles"])
    keys = list(range(1, stats["max_num"] + 2))
    b.bar([str(k) for k in keys], [tiles.get(k, 0) for k in keys], color="tab:green")
    b.set(xlabel="tiles (thumbnail included)", ylabel="images", title=f"tiles per image, max_num={stats['max_num']}")
    sizes = collections.Counter(stats["sizes"])
    c.scatter([w for w, _ in sizes], [h for _, h in sizes], s=[20 + 3 * n for n in sizes.values()], alpha=0.6)
    for (w, h), n in sizes.items():
        c.annotate(f"{w}x{h} ({n})", (w, h), fontsize=8, xytext=(4, 4), textcoords="offset points")
    c.set(xlabel="width (px)", ylabel="height (px)", title="image sizes (dot area ~ count)")
    c.margins(0.25)
    fig.tight_layout()
    return fig


def _has_cjk_font() -> bool:

    return use_cjk_font() is not None


def _label(text: str, cjk: bool, width: int = 38) -> str:
    if not cjk:  # without a CJK font matplotlib draws empty boxes; the printed list has the full text
        text = re.sub(r"[^\x00-\x7f]+", "…", text)
    return "\n".join(text[i:i + width] for i in range(0, min(len(text), 2 * width), width))


def show_samples(source: str | os.PathLike | list, image_root: str | os.PathLike, n: int = 8, cols: int = 4,
                 seed: int = 0) -> Any:
    """A grid of N random samples, each image with its question and answer; returns the figure (and prints the texts)."""
    plt = pyplot()  # with the CJK font
    from PIL import Image

    records = [r for r in as_records(source) if r.get("image")]
    picks = random.Random(seed).sample(records, min(n, len(records)))
    rows = (len(picks) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols, 3.9 * rows), squeeze=False)
    cjk = _has_cjk_font()
    for ax in axes.flat:
        ax.axis("off")
    for ax, rec in zip(axes.flat, picks):
        rel = rec["image"][0] if isinstance(rec["image"], list) else rec["image"]
        with Image.open(Path(image_root) / rel) as im:
            ax.imshow(im.convert("RGB"))
            size = im.size
        q = rec["conversations"][0]["value"].replace("<image>", "").strip()
        a = rec["conversations"][1]["value"]
        ax.set_title(f"{rec.get('id')} {size[0]}x{size[1]}\nQ: {_label(q, cjk)}\nA: {_label(a, cjk)}", fontsize=8, loc="left")
        print(f"{rec.get('id')}: Q: {q!r}  A: {a!r}")
    fig.tight_layout()
    return fig
