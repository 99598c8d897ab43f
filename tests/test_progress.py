"""labsupport.core.progress: a summary line in a headless kernel, a bar in a terminal, nothing when disabled."""
from labsupport.core import progress


def test_disabled_returns_the_items_themselves():
    items = [1, 2, 3]
    assert progress.bar(items, "x", enable=False) is items


def test_outside_a_kernel_it_is_a_terminal_bar():
    assert progress.where() == "terminal"
    assert list(progress.bar(range(3), "x")) == [0, 1, 2]


def test_headless_kernels_get_one_summary_line(monkeypatch, capsys):
    monkeypatch.setattr(progress, "where", lambda: "headless")
    assert list(progress.bar(range(4), "drawing", unit="plate")) == [0, 1, 2, 3]
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1 and out[0].startswith("drawing: 4 plates in ")
