"""Notebooks 04-10 teach the tools' own commands: labsupport's share of the calls stays at most half (DESIGN.md)."""
import json

import pytest

from labsupport.course.runner import course_notebooks
from labsupport.course.toolshare import tool_share

# keyed by the whole number ("06b"): 06, 06b, 06c and 06d are four notebooks, each counted
NOTEBOOKS = {p.stem.split("_")[0]: p for p in course_notebooks() if p.stem[:2] in {f"{n:02d}" for n in range(4, 11)}}
# the notebooks converted to the tools' own commands so far (issue 28): each must keep labsupport at most half
CONVERTED = {"04", "05", "06", "06b", "06c", "06d", "07", "08", "09", "10"}  # each held at <= 50 %
MAX_SHARE = 0.5


def test_every_notebook_04_to_10_is_counted():
    assert {f"{n:02d}" for n in range(4, 11)} <= set(NOTEBOOKS) and {"06b", "06c", "06d"} <= set(NOTEBOOKS), sorted(NOTEBOOKS)


@pytest.mark.parametrize("number", sorted(NOTEBOOKS))
def test_labsupport_share(number, capsys):
    share = tool_share(NOTEBOOKS[number])
    with capsys.disabled():
        print("\n" + share.line())
    assert share.calls, f"{NOTEBOOKS[number].name}: no call counted at all (is the counter reading its code cells?)"
    if number in CONVERTED:
        top = [c.text.splitlines()[0][:80] for c in share.calls if c.kind == "labsupport"][:12]
        assert share.share <= MAX_SHARE, (
            f"{NOTEBOOKS[number].name}: labsupport makes {share.share:.0%} of the counted calls (at most "
            f"{MAX_SHARE:.0%}): run the tool's own command or API in the cell instead of a wrapper. "
            f"labsupport calls: {top}")


def notebook(tmp_path, *cells):
    """A notebook file with these code cells."""
    path = tmp_path / "nb.ipynb"
    path.write_text(json.dumps({"cells": [{"cell_type": "code", "source": c, "metadata": {}, "outputs": []}
                                          for c in cells], "metadata": {}}), encoding="utf-8")
    return path


def kinds(share):
    return [(c.kind, c.text) for c in share.calls]


def test_counts_labsupport_tool_and_shell_by_where_the_name_comes_from(tmp_path):
    share = tool_share(notebook(
        tmp_path,
        "from labsupport.train import xtuner as xt\nfrom labsupport.core import checkpoints\n"
        "from mmengine.config import Config\nfrom huggingface_hub import HfApi\nimport json",
        "book = checkpoints.Checkpoints('x', '.')\ncfg = Config.fromfile('a.py')\ncfg.dump('b.py')\n"
        "print(len(json.loads('[]')))",
        "if True:\n    !xtuner train {cfg.filename} --work-dir {xt.work_dir_of('b')}\n%matplotlib inline",
        "run = xt.launch('b.py')\nrun.plot()\nrun_items = xt.rows()[0].keys()\nHfApi().create_repo('me/x')\n"
        "book.check('ok', True)",
    ))
    assert kinds(share) == [
        ("tool", "Config.fromfile('a.py')"), ("tool", "cfg.dump('b.py')"),
        ("labsupport", "xt.work_dir_of('b')"), ("shell", "!xtuner train {cfg.filename} --work-dir {xt.work_dir_of('b')}"),
        ("labsupport", "xt.launch('b.py')"), ("labsupport", "run.plot()"), ("labsupport", "xt.rows()"),
        ("tool", "HfApi().create_repo('me/x')"), ("tool", "HfApi()"),
    ]
    assert share.share == pytest.approx(4 / 9)


def test_an_alias_of_a_labsupport_module_still_counts_and_subprocess_is_a_shell_command(tmp_path):
    share = tool_share(notebook(tmp_path, "import subprocess\nfrom labsupport.publish import hub\nh = hub\n"
                                          "h.git_push('a')\nsubprocess.run(['git', 'status'])\nfor f in hub.files():\n"
                                          "    f.stat()"))
    assert [k for k, _ in kinds(share)] == ["labsupport", "shell", "labsupport"]


def test_a_cell_that_is_not_python_names_the_notebook_and_cell(tmp_path):
    with pytest.raises(SyntaxError, match=r"nb.ipynb cell 0"):
        tool_share(notebook(tmp_path, "def broken(:\n    pass"))
