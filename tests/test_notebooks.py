"""Regression: every notebook runs headless with its default parameters and passes its checkpoints."""
import pytest

from labsupport import course, homework
from labsupport.checkpoints import load_results

NOTEBOOKS = course.course_notebooks()


@pytest.mark.notebook
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs_and_passes_its_checkpoints(path, artifacts):
    result = course.run_notebook(path, artifacts, progress=False)
    print(f"{path.name}: {result.status} in {result.seconds:.1f} s")
    assert result.status == "pass", f"{path.name} failed: {result.error} (executed copy: {result.executed})"
    assert result.checkpoints, f"{path.name} recorded no checkpoints"
    assert not [c for c in result.checkpoints if c["status"] == "fail"]


@pytest.mark.notebook
def test_learner_edition_of_02_fails_its_exercise_with_the_hint(repo, tmp_path):
    learner = homework.learner_edition(repo / "notebooks" / "02_environment.ipynb", tmp_path / "learner")
    result = course.run_notebook(learner, tmp_path / "art", progress=False)
    assert result.status == "fail" and "CheckpointsFailed" in result.error
    saved = load_results("02_environment", tmp_path / "art")
    failed = [c for c in saved["checkpoints"] if c["status"] == "fail"]
    assert [c["name"] for c in failed] == ["exercise: which environment can chat with which checkpoint"]
    assert "generate" in failed[0]["hint"]
