"""The architecture notebook's figures: right content, right labels (rendered off-screen)."""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from PIL import Image  # noqa: E402

from labsupport.core import plots
from labsupport.model import params  # noqa: E402


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


def test_tile_mosaic_places_tiles_row_major_with_gaps():
    colors = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (0, 0, 0)]
    tiles = [Image.new("RGB", (10, 10), c) for c in colors]
    m = plots.tile_mosaic(tiles, (2, 2), gap=3)
    assert m.shape == (23, 23, 3)
    assert tuple(m[0, 0]) == colors[0] and tuple(m[0, 22]) == colors[1]
    assert tuple(m[22, 0]) == colors[2] and tuple(m[22, 22]) == colors[3]
    assert tuple(m[11, 11]) == (255, 255, 255)   # the gap


def test_sample_images_are_bundled_photographs():
    images = plots.sample_images()
    assert images["coffee"].size == (600, 400) and images["astronaut"].size == (512, 512)
    w, h = images["panorama (coffee strip)"].size
    assert w / h == 6
    w, h = images["tall (rocket column)"].size
    assert 2.9 < h / w < 3.1


def test_plot_tiling_titles_report_grid_and_tokens():
    img = Image.new("RGB", (1920, 1080), (90, 120, 200))
    fig = plots.plot_tiling(img, "hd", max_num=12, use_thumbnail=True)
    axes = fig.axes
    assert "grid 4x2" in axes[0].get_title()
    assert "9 tiles in all -> 2304 image tokens" in axes[1].get_xlabel()
    assert "thumbnail" in axes[2].get_title()
    fig_one = plots.plot_tiling(Image.new("RGB", (300, 300)), "small", use_thumbnail=True)
    assert "no thumbnail" in fig_one.axes[2].texts[0].get_text()


def test_gallery_has_a_row_per_image():
    imgs = {"a": Image.new("RGB", (600, 100)), "b": Image.new("RGB", (100, 300))}
    fig = plots.plot_tiling_gallery(imgs, max_num=6)
    assert len(fig.axes) == 6
    assert "grid 6x1" in fig.axes[0].get_title() and "grid 1x3" in fig.axes[3].get_title()


def test_live_frontend_follows_the_jupyter_server_variable(monkeypatch):
    monkeypatch.delenv("JPY_SESSION_NAME", raising=False)
    assert plots.live_frontend() is False
    monkeypatch.setenv("JPY_SESSION_NAME", "/home/me/01_architecture.ipynb")
    assert plots.live_frontend() is True


def test_tiling_widget_redraws_on_change():
    imgs = {"a": Image.new("RGB", (600, 100)), "b": Image.new("RGB", (500, 500))}
    box = plots.tiling_widget(imgs, max_num=6)
    choose, limit, thumb = box.children[0].children
    assert limit.value == 6
    choose.value = "b"          # must redraw without raising
    limit.value = 2
    thumb.value = False
    assert len(box.children[0].children) == 3


def test_pixel_shuffle_figure_uses_the_merge_map():
    token = np.repeat(np.repeat(np.arange(16).reshape(4, 4), 2, axis=0), 2, axis=1)
    slot = np.tile(np.array([[0, 1], [2, 3]]), (4, 4))
    fig = plots.plot_pixel_shuffle(token, slot, zoom=4)
    assert "8x8 patch tokens" in fig.axes[0].get_title()
    assert "4x4 tokens" in fig.axes[2].get_title()
    texts = [t.get_text() for t in fig.axes[1].texts]
    assert "patch (1,1)\nslot 3" in texts


def test_budget_charts():
    fig = plots.plot_param_breakdown(params.family_table())
    labels = [t.get_text() for t in fig.axes[0].get_yticklabels()]
    assert labels == ["InternVL2-1B", "InternVL2-2B", "InternVL2-4B", "InternVL2-8B"]
    fig2 = plots.plot_token_budget({"hd": (1920, 1080)}, max_nums=(6, 12))
    heights = sorted(p.get_height() for p in fig2.axes[0].patches)
    assert heights == [768, 2304]   # 2+1 tiles at max 6, 8+1 at max 12


def test_save_figure_writes_a_png(tmp_path):
    fig = plots.plot_token_budget({"vga": (640, 480)})
    path = plots.save_figure(fig, tmp_path / "figs", "budget")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in (tmp_path / "figs").iterdir()] == ["budget.png"]


def test_tiling_table_rows():
    table = plots.tiling_table({"hd": (1920, 1080), "icon": (50, 50)}, max_nums=(6, 12))
    lines = table.splitlines()
    assert len(lines) == 4
    assert lines[2] == "| hd | 1920x1080 | 2x1, 3, **768** | 4x2, 9, **2304** |"
    assert lines[3] == "| icon | 50x50 | 1x1, 1, **256** | 1x1, 1, **256** |"


def test_chinese_text_renders_without_missing_glyphs(recwarn):
    """The course's figures carry Chinese questions: with the CJK font configured no glyph is missing."""
    name = plots.use_cjk_font()
    assert name, f"no CJK font found for matplotlib: {plots.CJK_INSTALL_HINT}"
    fig, ax = plt.subplots()
    ax.set_title("Q: 盘子里有几个物体? A: 3 · red 红色")
    fig.canvas.draw()
    missing = [str(w.message) for w in recwarn if "missing from font" in str(w.message)]
    assert not missing, missing
    assert plots.use_cjk_font() == name and list(plt.rcParams["font.family"]).count(name) == 1
