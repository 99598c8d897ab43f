"""The course runner: a failing cell fails the run, naming the notebook and the cell; reports are written."""
import json

import nbformat
import pytest

from labsupport.course import runner

KERNEL = {"name": "internvl-course", "display_name": "Python (internvl-course)", "language": "python"}


def make_notebook(path, cells):
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell(f"# {path.stem[:2]} · Demo")] + cells)
    nb.cells[1].metadata["tags"] = ["parameters"]
    nb.metadata["kernelspec"] = KERNEL
    nbformat.write(nb, path)
    return path


@pytest.fixture
def need_kernel():
    if "internvl-course" not in runner.known_kernels():
        pytest.skip("kernel internvl-course is not registered (run make env)")


def test_failing_cell_is_named(tmp_path, need_kernel):
    code = nbformat.v4.new_code_cell
    nb = make_notebook(tmp_path / "98_broken.ipynb", [code("ARTIFACTS = ''"), code("x = 1"), code("raise ValueError('injected failure')")])
    result = runner.run_notebook(nb, tmp_path / "art", progress=False)
    assert result.status == "fail"
    assert "injected failure" in result.error and "ValueError" in result.error
    assert result.failed_cell == 3, "cell 3 of the committed notebook is the one that raised"
    assert "cell 3" in result.error and "raise ValueError" in result.error
    assert (tmp_path / "art" / "executed" / "98_broken.ipynb").exists()


def test_passing_notebook_records_its_checkpoints_and_reports(tmp_path, need_kernel):
    code = nbformat.v4.new_code_cell
    nb = make_notebook(tmp_path / "97_fine.ipynb", [
        code("ARTIFACTS = ''"),
        code("from labsupport.core.checkpoints import Checkpoints\nbook = Checkpoints('97_fine', ARTIFACTS)\n"
             "book.check('one', True, hint='')\nbook.skip('gpu', reason='no GPU')\nbook.finish()"),
    ])
    art = tmp_path / "art"
    result = runner.run_notebook(nb, art, progress=False)
    assert result.status == "pass", result.error
    assert [c["status"] for c in result.checkpoints] == ["pass", "skipped"]
    report = runner.write_reports([result], art)
    assert report["passed"] is True
    saved = json.loads((art / "course-report.json").read_text())
    assert saved["notebooks"][0]["checkpoints"][1]["detail"] == "no GPU"
    assert "97_fine" in (art / "course-report.md").read_text() and "<table>" in (art / "course-report.html").read_text()


def test_figures_land_in_the_executed_copy_even_when_the_runner_says_agg(tmp_path, need_kernel, monkeypatch):
    """A headless runner (MPLBACKEND=Agg) must not turn a notebook's plots into '<Figure size ...>' text."""
    monkeypatch.setenv("MPLBACKEND", "Agg")
    code = nbformat.v4.new_code_cell
    nb = make_notebook(tmp_path / "95_plot.ipynb", [
        code("ARTIFACTS = ''"),
        code("import matplotlib.pyplot as plt\nfrom IPython.display import display\n"
             "fig, ax = plt.subplots()\nax.plot([1, 2, 3])\ndisplay(fig)\nplt.close(fig)"),
        code("plt.plot([3, 2, 1])\nplt.show()"),
    ])
    result = runner.run_notebook(nb, tmp_path / "art", progress=False)
    assert result.status == "pass", result.error
    executed = nbformat.read(tmp_path / "art" / "executed" / "95_plot.ipynb", as_version=4)
    pngs = [o for c in executed.cells[2:] for o in c.get("outputs", []) if "image/png" in o.get("data", {})]
    assert len(pngs) == 2
    assert __import__("os").environ["MPLBACKEND"] == "Agg"  # the runner's own setting is given back


def test_unknown_kernel_fails_with_the_fix(tmp_path):
    nb = make_notebook(tmp_path / "96_kernel.ipynb", [nbformat.v4.new_code_cell("ARTIFACTS = ''")])
    data = json.loads(nb.read_text())
    data["metadata"]["kernelspec"]["name"] = "no-such-kernel"
    nb.write_text(json.dumps(data))
    result = runner.run_notebook(nb, tmp_path / "art", progress=False)
    assert result.status == "fail" and "make env" in result.error


def test_failed_report_renders_the_error(tmp_path):
    failed = runner.NotebookResult("05_x", "X", "internvl-course", status="fail", error="cell 3: boom")
    report = runner.write_reports([failed], tmp_path)
    assert report["passed"] is False
    assert "cell 3: boom" in (tmp_path / "course-report.md").read_text()


def test_parse_value_reads_numbers_and_keeps_paths():
    assert runner.parse_value("300") == 300 and runner.parse_value("0.5") == 0.5
    assert runner.parse_value("/models/InternVL2-2B") == "/models/InternVL2-2B"
    assert runner.parse_value("True") is True


def test_kernel_start_is_quiet_but_notebook_warnings_still_show(tmp_path, need_kernel, capfd):
    """The runner silences the kernel application's own start-up log, never the warnings a cell raises."""
    code = nbformat.v4.new_code_cell
    nb = make_notebook(tmp_path / "96_warns.ipynb", [code("ARTIFACTS = ''"),
                                                     code("import warnings\nwarnings.warn('a warning from the cell')"),
                                                     code("import os\nprint('bars off:', os.environ.get('HF_HUB_DISABLE_PROGRESS_BARS'))")])
    result = runner.run_notebook(nb, tmp_path / "art", progress=False)
    assert result.status == "pass", result.error
    assert "without encryption" not in capfd.readouterr().err
    executed = (tmp_path / "art" / "executed" / "96_warns.ipynb").read_text()
    assert "a warning from the cell" in executed
    assert "bars off: 1" in executed  # libraries' own bars (transformers' "Loading weights") are off in headless runs


def test_a_relative_path_parameter_is_taken_from_where_the_command_ran(tmp_path, monkeypatch):
    """The notebooks run in notebooks/: `-p MODEL_PATH artifacts/official/InternVL2-2B` must still name that folder."""
    from labsupport.course.runner import cli_parameter

    (tmp_path / "models" / "InternVL2-2B").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    assert cli_parameter("MODEL_PATH", "models/InternVL2-2B") == str(tmp_path / "models" / "InternVL2-2B")
    assert cli_parameter("FOODIEQA_DIR", "data/foodieqa") == str(tmp_path / "data" / "foodieqa")  # need not exist yet
    assert cli_parameter("ARTIFACTS", "runs/2b") == "runs/2b"      # relative to the repo root (paths.artifacts_dir)
    assert cli_parameter("WORK_DIR", "xtuner/work_dirs/04") == "xtuner/work_dirs/04"   # relative to ARTIFACTS
    assert cli_parameter("MODEL_PATH", "tiny") == "tiny"           # the embedded model's name, not a path
    assert cli_parameter("MODEL_PATH", "/abs/InternVL2-8B") == "/abs/InternVL2-8B"
    assert cli_parameter("REPO_NAME", "me/InternVL2-plates") == "me/InternVL2-plates"   # not a path parameter
    assert cli_parameter("N_TRAIN", "600") == 600
