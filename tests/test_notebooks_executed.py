"""Executed copies read cleanly: no missing glyphs, no ANSI codes, no frozen bars, little stderr.

Runs after tests/test_notebooks.py (pytest orders files by name), over every executed copy that the
notebook tests or `python -m labsupport.course run` wrote to ARTIFACTS/executed/. The notebooks are found by
glob, so a notebook added later is covered without editing this file.
"""
import pytest

from labsupport.course import hygiene, runner

NOTEBOOKS = runner.course_notebooks()


@pytest.mark.notebook
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_executed_copy_is_clean(path, artifacts):
    executed = artifacts / "executed" / path.name
    if not executed.exists():
        pytest.skip(f"{path.name} has no executed copy in {executed.parent}: run tests/test_notebooks.py first")
    noise = hygiene.inspect_notebook(executed)
    print(hygiene.table([noise]))
    assert noise.clean, f"{executed}: " + "; ".join(noise.problems()) + "\n  " + "\n  ".join(noise.examples)
