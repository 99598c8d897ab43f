"""The homework tool against the hostile user's cases (#31)."""
from __future__ import annotations

import json
from pathlib import Path

import nbformat
import pytest

from labsupport.course import homework

ROOT = Path(__file__).resolve().parent.parent


def test_it_refuses_to_write_into_notebooks(tmp_path):
    src = ROOT / "notebooks" / "02_environment.ipynb"
    before = src.read_bytes()
    with pytest.raises(ValueError, match="refusing to write the learner edition into .*notebooks"):
        homework.main([str(src), "--out", str(ROOT / "notebooks")])
    assert src.read_bytes() == before
    copy = tmp_path / "02_environment.ipynb"
    copy.write_bytes(before)
    with pytest.raises(ValueError, match="would replace the reference"):
        homework.learner_edition(copy, tmp_path)


@pytest.mark.parametrize("begin, end", [("# begin solution", "# end solution"), ("## Begin_Solution ##", "# END-SOLUTION"),
                                        ("#BEGIN SOLUTION", "#End Solution")])
def test_markers_in_any_case_never_leak_the_answer(begin, end):
    out, n = homework.strip_solutions(f"{begin}\nanswer = 42\n{end}")
    assert n == 1 and "42" not in out and "answer = None" in out


def test_an_unknown_marker_variant_is_refused():
    with pytest.raises(homework.SolutionMarkerError, match="looks like a solution marker"):
        homework.strip_solutions("# START SOLUTION\nanswer = 42\n# STOP SOLUTION")


def test_magics_stay_and_do_not_break_the_parse():
    src = "# BEGIN SOLUTION\n!xtuner list-cfg -p internvl\nfiles = !ls\n%time grid = (4, 2)\nx = 1\n# END SOLUTION"
    out, n = homework.strip_solutions(src)
    assert "!xtuner list-cfg -p internvl" in out and "files = None" in out and "x = None" in out
    assert "grid = None" in out and "(4, 2)" not in out and "%time" not in out  # the magic wrapped the answer


def test_attribute_and_item_assignments_keep_the_object():
    out, _ = homework.strip_solutions("# BEGIN SOLUTION\ncfg.lr = 3e-4\nd['k'] = 1\na, b.c = 1, 2\nn += 1\n# END SOLUTION")
    assert "cfg.lr = None" in out and "d['k'] = None" in out and "a = None" in out and "b.c = None" in out
    assert "cfg = None" not in out and "n = None" not in out and "3e-4" not in out


def test_outputs_of_an_executed_reference_are_stripped(tmp_path):
    cell = nbformat.v4.new_code_cell("# BEGIN SOLUTION\nanswer = 42\n# END SOLUTION\nprint(answer)")
    cell.outputs = [nbformat.v4.new_output("stream", name="stdout", text="42\n")]
    cell.execution_count = 3
    nb = nbformat.v4.new_notebook(cells=[cell])
    nb.metadata["papermill"] = {"parameters": {}}
    src = tmp_path / "99_demo.ipynb"
    nbformat.write(nb, src)
    learner = json.loads(homework.learner_edition(src, tmp_path / "learner").read_text())
    assert learner["cells"][0]["outputs"] == [] and learner["cells"][0]["execution_count"] is None
    assert "42" not in json.dumps(learner) and "papermill" not in learner["metadata"]
