"""Run notebooks/03_datasets.ipynb headless with papermill (small sizes) and check its checkpoints passed."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.notebook
def test_notebook_03_runs_and_passes_its_checkpoints(tmp_path, monkeypatch):
    papermill = pytest.importorskip("papermill")
    monkeypatch.setenv("PYTHONPATH", str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    out = tmp_path / "03.out.ipynb"
    papermill.execute_notebook(
        str(ROOT / "notebooks" / "03_datasets.ipynb"), str(out), kernel_name="python3", cwd=str(ROOT / "notebooks"),
        parameters={"ARTIFACTS": str(tmp_path / "artifacts"), "N_TRAIN": 48, "N_HELDOUT": 24, "SELF_REPEATS": 8},
        progress_bar=False)
    results = json.loads((tmp_path / "artifacts" / "checkpoints" / "03_datasets.json").read_text(encoding="utf-8"))
    assert results["finished"] and len(results["checkpoints"]) == 8
    assert all(c["status"] == "pass" for c in results["checkpoints"]), results
