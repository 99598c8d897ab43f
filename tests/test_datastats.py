"""Tests of labsupport.datasets.datastats: token and tile statistics, plots, the sample grid."""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import pytest  # noqa: E402
from PIL import Image  # noqa: E402

from labsupport.datasets import datastats as S  # noqa: E402


@pytest.fixture()
def data(tmp_path):
    Image.new("RGB", (640, 360)).save(tmp_path / "wide.jpg")
    Image.new("RGB", (448, 448)).save(tmp_path / "square.jpg")
    recs = [
        {"id": "a", "image": "wide.jpg", "conversations": [{"from": "human", "value": "<image>\nHow many?"}, {"from": "gpt", "value": "3"}]},
        {"id": "b", "image": "square.jpg", "conversations": [{"from": "human", "value": "<image>\n盘子上有几个物体？"}, {"from": "gpt", "value": "3"}]},
        {"id": "c", "conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello there"}]},
    ]
    return recs, tmp_path


def test_approx_tokenizer_counts_words_cjk_and_symbols():
    assert len(S.ApproxTokenizer()("How many?")["input_ids"]) == 3
    assert len(S.ApproxTokenizer()("盘子上 3 个")["input_ids"]) == 5


def test_collect_stats(data):
    recs, root = data
    st = S.collect_stats(recs, root, max_num=6, progress=False)
    assert st["sizes"] == [(640, 360), (448, 448)]
    assert st["tiles"] == [3, 1]  # 16:9 -> 2x1 + thumbnail; 448x448 -> 1 tile
    assert st["image_tokens"] == [3 * 256 + 2, 256 + 2, 0]
    assert st["text_tokens"] == [4, 10, 3]  # "How many ? 3"; 8 characters 盘子上有几个物体 + ？ + 3; "Hi Hello there"
    assert st["total_tokens"] == [a + b for a, b in zip(st["text_tokens"], st["image_tokens"])]
    assert st["approximate"] is True
    one = S.collect_stats(recs, root, count_tiles_fn=lambda w, h, n: 1, progress=False)
    assert one["image_tokens"][0] == 258
    padded = S.collect_stats(recs, root, template_tokens=25, progress=False)
    assert padded["total_tokens"] == [t + 25 for t in st["total_tokens"]]
    text = S.describe(st, max_length=500)
    assert "records over max_length 500: 1" in text and "3 records, 2 images" in text


def test_plots_and_sample_grid(data, capsys):
    recs, root = data
    fig = S.plot_overview(S.collect_stats(recs, root, progress=False), max_length=1000)
    assert len(fig.axes) == 3 and fig.axes[0].get_xlabel() == "tokens per record"
    grid = S.show_samples(recs, root, n=4, cols=2)
    shown = [ax for ax in grid.axes if ax.images]
    assert len(shown) == 2  # the text-only record is not drawn
    assert "盘子上有几个物体" in capsys.readouterr().out
