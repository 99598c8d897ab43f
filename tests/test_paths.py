"""Tests of labsupport.core.paths: every name derives from MODEL_PATH."""
from __future__ import annotations

import pytest

from labsupport.core import paths
from labsupport.evaluate import conversion


@pytest.mark.parametrize("model_path,name,repo", [
    ("tiny", "internvl2-tiny", "InternVL2-tiny-plates"),
    ("tiny-4b", "internvl2-tiny-4b", "InternVL2-tiny-4b-plates"),
    ("/data/InternVL2-2B", "InternVL2-2B", "InternVL2-2B-plates"),
    ("/data/InternVL2-8B/", "InternVL2-8B", "InternVL2-8B-plates"),
    ("./my weights", "my weights", "InternVL2-my-weights-plates"),
])
def test_names_derive_from_model_path(model_path, name, repo, tmp_path):
    assert paths.model_name(model_path) == name
    assert paths.finetuned_dir(tmp_path, model_path) == tmp_path / "models" / f"{name}-finetuned"
    assert conversion.finetuned_dir(tmp_path, model_path) == paths.finetuned_dir(tmp_path, model_path)
    assert paths.hub_repo_name(model_path) == repo and "InternVL" in repo
    assert paths.is_embedded(model_path) == model_path.startswith("tiny")


def test_no_module_hard_codes_an_embedded_model_folder():
    """The folder names of the embedded models live in labsupport.core.paths (and the builder) only."""
    root = paths.repo_root() / "labsupport"
    offenders = [p.name for p in root.glob("*.py") if p.name not in ("paths.py", "tinymodel.py")
                 and "internvl2-tiny" in p.read_text(encoding="utf-8")]
    assert offenders == []


def test_pick_device_never_hands_cuda_to_a_machine_without_one(monkeypatch, capsys):
    import torch

    from labsupport.core import paths
    from labsupport.evaluate import scoring

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert paths.pick_device("auto") == "cpu" and capsys.readouterr().out == ""
    assert paths.pick_device("cuda") == "cpu" and "no CUDA GPU" in capsys.readouterr().out
    assert paths.pick_device("cpu") == "cpu"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert paths.pick_device("auto") == "cuda" and paths.pick_device("cuda:1") == "cuda:1"
    emptied = []
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: emptied.append(1))
    scoring.free_cuda_memory()
    assert emptied == [1]
