"""benchmarks/device/notebooks_gpu.py: the kernels and the summary of `run_gpu.sh notebooks2b` (the GPU run itself is not here)."""
from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

from labsupport.course import runner
from labsupport.core.paths import repo_root

ROOT = repo_root()
SCRIPT = ROOT / "benchmarks" / "device" / "notebooks_gpu.py"
spec = importlib.util.spec_from_file_location("notebooks_gpu", SCRIPT)
NG = importlib.util.module_from_spec(spec)
spec.loader.exec_module(NG)


def test_the_kernels_are_the_ones_notebooks_04_to_06_ask_for():
    wanted = {runner.notebook_kernel(p) for p in runner.course_notebooks() if p.name[:2] in ("04", "05", "06")}
    assert wanted == set(NG.KERNELS)


def test_kernels_get_their_own_wheel_group_and_jupyter_finds_them(tmp_path, monkeypatch):
    sites = {g: str(tmp_path / f"site-{g}") for g in ("xtuner", "lmdeploy", "notebook")}
    written = NG.write_kernels(tmp_path / "kern", sites, ROOT)
    assert len(written) == 2
    for path in written:
        spec = json.loads(path.read_text())
        group = "xtuner" if path.parent.name == "internvl-course" else "lmdeploy"
        assert spec["env"]["PYTHONPATH"].split(":") == [sites[group], sites["notebook"], str(ROOT)]
        assert spec["env"]["PATH"].startswith(sites[group] + "/bin:")
        assert spec["argv"][:3] == [sys.executable, "-m", "ipykernel_launcher"] and "{connection_file}" in spec["argv"]
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "kern"))
    assert {"internvl-course", "internvl-deploy"} <= runner.known_kernels()


def _executed(path: Path, image_bytes: int) -> None:
    cells = [{"cell_type": "code", "source": "x", "metadata": {}, "execution_count": 1, "outputs": [
        {"output_type": "stream", "name": "stdout", "text": ["per-GPU values: measured on one H200\n", "noise\n"]},
        {"output_type": "display_data", "metadata": {}, "data": {"image/png": "A" * image_bytes, "text/plain": "<fig>"}},
        {"output_type": "display_data", "metadata": {}, "data": {"text/markdown": "**Trained 38 iterations in 20 s**"}}]}]
    path.write_text(json.dumps({"cells": cells, "metadata": {}, "nbformat": 4, "nbformat_minor": 5}))


def test_summary_keeps_the_numbers_and_shrinks_what_the_tool_cannot_bring_back(tmp_path, monkeypatch):
    art, out = tmp_path / "art", tmp_path / "out"
    (art / "executed").mkdir(parents=True)
    _executed(art / "executed" / "04_finetune_xtuner.ipynb", 5000)
    report = {"passed": False, "notebooks": [
        {"notebook": "04_finetune_xtuner", "status": "pass", "seconds": 200.0, "error": "", "failed_cell": None,
         "executed": str(art / "executed" / "04_finetune_xtuner.ipynb"),
         "checkpoints": [{"name": "config loads", "status": "pass", "hint": "h", "detail": ""}]},
        {"notebook": "05_convert_and_compare", "status": "fail", "seconds": 3.0, "error": "cell 5: KeyError",
         "failed_cell": 5, "executed": str(art / "executed" / "missing.ipynb"), "checkpoints": []}]}
    (art / "course-report.json").write_text(json.dumps(report))
    (art / "course-report.md").write_text("# Course report\n")
    monkeypatch.setattr(NG, "MAX_BYTES", 3000)  # smaller than the image: it has to go
    result = NG.summary(art, out)
    first, second = result["notebooks"]
    assert first["status"] == "pass" and first["images_removed"] == 1
    assert first["lines"] == ["per-GPU values: measured on one H200", "**Trained 38 iterations in 20 s**"]
    assert second["status"] == "fail" and second["error"] == "cell 5: KeyError" and "lines" not in second
    kept = json.loads((out / "04_finetune_xtuner.ipynb").read_text())
    assert "image/png" not in json.dumps(kept) and "removed" in json.dumps(kept)
    assert json.loads((out / "notebooks-gpu.json").read_text()) == result and (out / "course-report.md").exists()
    assert sorted(p.name for p in out.iterdir()) == ["04_finetune_xtuner.ipynb", "course-report.md", "notebooks-gpu.json"]


def test_run_gpu_sh_parses_and_knows_the_notebooks_step():
    sh = ROOT / "benchmarks" / "device" / "run_gpu.sh"
    assert subprocess.run(["bash", "-n", str(sh)]).returncode == 0
    text = sh.read_text()
    assert "notebooks2b|notebooks2b:*)" in text and "install notebook" in text and "notebooks_gpu.py kernels" in text


@pytest.mark.parametrize("args", [[], ["kernels"], ["summary", "a"]])
def test_bad_arguments_print_the_usage(args, capsys):
    assert NG.main(args) == 2 and "notebooks_gpu.py kernels" in capsys.readouterr().err
