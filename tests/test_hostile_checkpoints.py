"""Checkpoints and the report card against wrong answers and stale results (#31)."""
from __future__ import annotations

import json
import re
from pathlib import Path

import nbformat
import pytest

from labsupport.core import checkpoints as CP
from labsupport.course import runner

ROOT = Path(__file__).resolve().parent.parent


def test_a_wrong_type_answer_is_a_failed_check_with_its_hint(tmp_path, capsys):
    book = CP.Checkpoints("99_x", tmp_path)
    ex1_grid = 4  # the learner typed a number where a (cols, rows) pair was asked
    assert not book.check("grid", lambda: tuple(ex1_grid) == (4, 2), hint="a (cols, rows) pair")
    assert not book.check("array", [1, 2] == [1, 2] and __import__("numpy").array([1, 2]), hint="one bool")
    assert book.check("later check", True, hint="-")
    out = capsys.readouterr().out
    assert "hint: a (cols, rows) pair" in out and "TypeError" in out and "hint: one bool" in out
    saved = CP.load_results("99_x", tmp_path)
    assert [r["status"] for r in saved["checkpoints"]] == ["fail", "fail", "pass"]


def test_hints_carry_repo_relative_paths(tmp_path):
    book = CP.Checkpoints("99_x", tmp_path, quiet=True)
    book.check("folder", False, hint=f"fix {ROOT / 'artifacts' / 'models' / 'x'}", detail=f"see {Path.home() / 'f.txt'}")
    r = CP.load_results("99_x", tmp_path)["checkpoints"][0]
    assert r["hint"] == "fix artifacts/models/x" and str(ROOT) not in json.dumps(r)
    assert r["detail"] == "see ~/f.txt"


@pytest.mark.parametrize("notebook, needle", [("01_architecture", "ex1_grid"), ("01_architecture", "ex3_share_pct"),
                                              ("03_datasets", "ex2_bug"), ("03b_dataset_sources", "ex3_max_num"),
                                              ("07_publish", "my_refused")])
def test_exercise_checks_that_convert_the_answer_are_deferred(notebook, needle):
    nb = nbformat.read(ROOT / "notebooks" / f"{notebook}.ipynb", as_version=4)
    calls = [m.group(0) for c in nb.cells if c.cell_type == "code"
             for m in re.finditer(r"book\.check\([^,]+,\s*([^,]*)", c.source) if needle in m.group(1)]
    assert calls and all("lambda:" in c for c in calls), calls


def test_the_report_card_shows_only_this_runs_checkpoints(tmp_path):
    if "internvl-course" not in runner.known_kernels():
        pytest.skip("kernel internvl-course is not registered (run make env)")
    art = tmp_path / "art"
    stale = CP.Checkpoints("98_early_fail", art, quiet=True)
    stale.check("from the previous run", True, hint="-")
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell('ARTIFACTS = ""'),
                                         nbformat.v4.new_code_cell("raise RuntimeError('before Checkpoints()')")])
    nb.cells[0].metadata["tags"] = ["parameters"]
    nb.metadata["kernelspec"] = {"name": "internvl-course", "display_name": "x", "language": "python"}
    path = tmp_path / "98_early_fail.ipynb"
    nbformat.write(nb, path)
    result = runner.run_notebook(path, art, progress=False)
    assert result.status == "fail" and result.checkpoints == []
