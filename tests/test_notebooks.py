"""Regression: every notebook runs headless with its default parameters and passes its checkpoints."""
from pathlib import Path

import pytest

from labsupport.course import homework, runner
from labsupport.core.checkpoints import load_results

NOTEBOOKS = runner.course_notebooks()


@pytest.mark.notebook
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs_and_passes_its_checkpoints(path, artifacts):
    result = runner.run_notebook(path, artifacts, progress=False)
    print(f"{path.name}: {result.status} in {result.seconds:.1f} s")
    assert result.status == "pass", f"{path.name} failed: {result.error} (executed copy: {result.executed})"
    assert result.checkpoints, f"{path.name} recorded no checkpoints"
    assert not [c for c in result.checkpoints if c["status"] == "fail"]


@pytest.mark.notebook
def test_learner_edition_of_02_fails_its_exercise_with_the_hint(repo, tmp_path):
    learner = homework.learner_edition(repo / "notebooks" / "02_environment.ipynb", tmp_path / "learner")
    result = runner.run_notebook(learner, tmp_path / "art", progress=False)
    assert result.status == "fail" and "CheckpointsFailed" in result.error
    saved = load_results("02_environment", tmp_path / "art")
    failed = [c for c in saved["checkpoints"] if c["status"] == "fail"]
    assert [c["name"] for c in failed] == ["exercise: which environment can chat with which checkpoint"]
    assert "generate" in failed[0]["hint"]


# The Phi-3 layout (InternVL2-4B's, MODEL_PATH="tiny-4b") runs through the notebooks whose code depends on the
# layout without training: 01 (the model's parts and parameter counts) and 02 (loading the model's own code path).
# Notebooks 04-06 train and serve for minutes each; their layout-specific parts (XTuner's phi3 config, the Phi-3
# template, prompt parity) are unit-tested in test_xtuner_config.py and test_prompts.py.
@pytest.mark.notebook
@pytest.mark.parametrize("stem", ["01_architecture", "02_environment"])
def test_notebook_runs_on_the_phi3_layout(stem, repo, tmp_path):
    path = repo / "notebooks" / f"{stem}.ipynb"
    result = runner.run_notebook(path, tmp_path / "art", parameters={"MODEL_PATH": "tiny-4b"})
    assert result.status == "pass", f"{path.name} with MODEL_PATH=tiny-4b failed: {result.error}"
    assert not [c for c in result.checkpoints if c["status"] == "fail"]


# InternVL2-1B (Qwen2): XTuner 0.2.0 cannot train it, so notebook 04 skips training with its reason, and 05 must follow
# that skip (print the reason and what to do, skip each step and checkpoint) instead of stopping with "run 04 first";
# 06 serves the base model without rewriting its folder (it once died writing a chat template for Qwen2's Hermes-2 layout).
# Needs the official-format 1B folder (python -m labsupport.model.official 1B, from a clone of OpenGVLab/InternVL); about 30 s.
@pytest.mark.notebook
def test_05_and_06_follow_notebook_04s_skip_on_the_official_1b_layout(repo, tmp_path):
    from labsupport.model import official
    from labsupport.train import training_outcome
    from labsupport.core.checkpoints import SKIP, relative_paths

    one_b = official.available().get("1B")
    if one_b is None:
        pytest.skip("no official-format InternVL2-1B folder: build it with `python -m labsupport.model.official 1B`")
    art = tmp_path / "art"
    tokenizer_config = (Path(one_b) / "tokenizer_config.json").read_bytes()
    results = {}
    for stem in ("04_finetune_xtuner", "05_convert_and_compare", "06_deploy_lmdeploy"):
        results[stem] = runner.run_notebook(repo / "notebooks" / f"{stem}.ipynb", art, parameters={"MODEL_PATH": str(one_b)})
        assert results[stem].status == "pass", f"{stem} on {one_b} failed: {results[stem].error} ({results[stem].executed})"
    # 06 serves the base model as published: no training prompt to match, and the base folder is not rewritten
    assert (Path(one_b) / "tokenizer_config.json").read_bytes() == tokenizer_config
    assert "there is no training prompt to match" in (art / "executed" / "06_deploy_lmdeploy.ipynb").read_text(encoding="utf-8")
    result = results["05_convert_and_compare"]
    reason = training_outcome.skipped_training(art, one_b)
    assert reason and "Qwen2ForCausalLM" in reason and "What to do" in reason
    # 05 prints the reason with what it means for 05-07 (training_outcome.skip_message), paths relative to the repo
    shown = relative_paths(training_outcome.skip_message(art, one_b))
    assert "Qwen2ForCausalLM" in shown and "What this means here" in shown and str(repo) not in shown
    assert result.checkpoints and all(c["status"] == SKIP and c["detail"] == shown for c in result.checkpoints)
    executed = (art / "executed" / "05_convert_and_compare.ipynb").read_text(encoding="utf-8")
    assert "Notebook 04 did not train this model" in executed and "Traceback" not in executed
