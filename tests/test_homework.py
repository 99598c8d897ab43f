import json

import nbformat
import pytest

from labsupport.course import homework


def test_solution_block_becomes_none_placeholders():
    src = "x = 1\n# BEGIN SOLUTION\ngrid = (4, 2)\ntokens, extra = 256 * 9, 0\n# END SOLUTION\nprint(grid)"
    out, n = homework.strip_solutions(src)
    assert n == 1
    assert "grid = None" in out and "tokens = None" in out and "extra = None" in out
    assert "(4, 2)" not in out and out.startswith("x = 1") and out.endswith("print(grid)")


def test_indented_block_keeps_its_indentation():
    src = "def f():\n    # BEGIN SOLUTION\n    answer = 42\n    # END SOLUTION\n    return answer"
    out, _ = homework.strip_solutions(src)
    assert "    answer = None" in out
    compile(out, "<learner>", "exec")


def test_function_solutions_keep_the_name():
    out, _ = homework.strip_solutions("# BEGIN SOLUTION\ndef shape(n):\n    return n // 2\n# END SOLUTION")
    assert "shape = None" in out and "return" not in out


@pytest.mark.parametrize("src, message", [
    ("# BEGIN SOLUTION\nx = 1", "never closed"),
    ("x = 1\n# END SOLUTION", "without a BEGIN"),
    ("# BEGIN SOLUTION\n# BEGIN SOLUTION\n# END SOLUTION", "inside another"),
])
def test_unbalanced_markers_are_reported_with_the_place(src, message):
    with pytest.raises(homework.SolutionMarkerError, match=message):
        homework.strip_solutions(src, where="demo.ipynb, cell 3")


def test_learner_edition_leaves_the_original_untouched(tmp_path):
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("# BEGIN SOLUTION\nanswer = 42\n# END SOLUTION")])
    src = tmp_path / "99_demo.ipynb"
    nbformat.write(nb, src)
    before = src.read_bytes()
    out = homework.learner_edition(src, tmp_path / "learner")
    assert src.read_bytes() == before
    learner = json.loads(out.read_text())
    assert "answer = None" in "".join(learner["cells"][0]["source"])
    assert learner["metadata"]["labsupport"]["solutions_removed"] == 1


def test_every_course_notebook_has_balanced_markers(repo, tmp_path):
    for path in sorted((repo / "notebooks").glob("[0-9][0-9]*_*.ipynb")):
        homework.learner_edition(path, tmp_path)
