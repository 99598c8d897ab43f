"""The learner's own data through notebooks 04 and 05: the runner hands DATA only to notebooks that declare it, 04's
config edits point XTuner at the learner's split, the training record is written for the plates and for own data, and
the scorer reaches the score and the goal."""
from __future__ import annotations

import json
import re
from pathlib import Path

import nbformat
import pytest
from PIL import Image

from labsupport.course import runner
from labsupport.datasets import learner, plates
from labsupport.evaluate import answers, compare, scoring
from labsupport.train import training_outcome

ROOT = Path(__file__).resolve().parents[1]
NB04 = ROOT / "notebooks" / "04_finetune_xtuner.ipynb"
NB05 = ROOT / "notebooks" / "05_convert_and_compare.ipynb"


def rec(q: str, a: str, image: str = "img.png", i: int = 0) -> dict:
    return {"id": f"r{i}", "image": image, "conversations": [{"from": "human", "value": f"<image>\n{q}"},
                                                             {"from": "gpt", "value": a}]}


@pytest.fixture()
def own_file(tmp_path):
    """A learner's jsonl of 40 short-answer records, one image, in its own folder."""
    folder = tmp_path / "mine"
    folder.mkdir()
    Image.new("RGB", (448, 448), "red").save(folder / "img.png")
    path = folder / "train.jsonl"
    path.write_text("".join(json.dumps(rec(f"Which number is {i}?", str(i % 10), i=i)) + "\n" for i in range(40)),
                    encoding="utf-8")
    return path


# --- the runner ----------------------------------------------------------------------------------------------


def _notebook(path: Path, parameters: str) -> Path:
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell(f"# {path.stem[:2]} · Demo"),
                                         nbformat.v4.new_code_cell(parameters)])
    nb.cells[1].metadata["tags"] = ["parameters"]
    nb.metadata["kernelspec"] = {"name": "internvl-course", "display_name": "internvl-course", "language": "python"}
    nbformat.write(nb, path)
    return path


def test_data_and_heldout_are_injected_only_where_declared(tmp_path):
    takes = _notebook(tmp_path / "91_takes.ipynb", 'ARTIFACTS = ""\nDATA = ""  # mine\nHELDOUT = ""  # mine')
    ignores = _notebook(tmp_path / "92_ignores.ipynb", 'ARTIFACTS = ""')
    given = {"ARTIFACTS": "/a", "DATA": "/d/train.jsonl", "HELDOUT": "/d/test.jsonl"}
    inject, secrets, unknown = runner.split_parameters(takes, given)
    assert inject == given and not secrets and not unknown
    inject, _, unknown = runner.split_parameters(ignores, given)
    assert inject == {"ARTIFACTS": "/a"} and sorted(unknown) == ["DATA", "HELDOUT"]
    # the course's own notebooks: 04 trains on the learner's data; 05 takes it only to check it against 04's record
    inject, _, _ = runner.split_parameters(NB04, {**given, "IMAGE_FOLDER": "/d", "SCORER": "text"})
    assert {"DATA", "HELDOUT", "IMAGE_FOLDER", "SCORER"} <= set(inject)
    inject, _, unknown = runner.split_parameters(NB05, {**given, "IMAGE_FOLDER": "/d"})
    assert {"DATA", "HELDOUT"} <= set(inject) and sorted(unknown) == ["IMAGE_FOLDER"]


def test_the_cli_hands_data_to_04_and_05_with_absolute_paths(tmp_path, monkeypatch):
    """`course run --only 04 05 -p DATA x -p HELDOUT y` from the repo root: what papermill is asked to inject."""
    import papermill

    if "internvl-course" not in runner.known_kernels():
        pytest.skip("kernel internvl-course is not registered (run make env)")
    seen = {}

    def fake_execute(source, output, parameters=None, **_):
        seen[Path(source).name] = dict(parameters or {})
        Path(output).write_text(Path(source).read_text(encoding="utf-8"), encoding="utf-8")

    monkeypatch.setattr(papermill, "execute_notebook", fake_execute)
    (tmp_path / "d").mkdir()
    monkeypatch.chdir(tmp_path)
    runner.main(["run", "--only", "04", "05", "--artifacts", str(tmp_path / "art"),
                 "-p", "DATA", "d/train.jsonl", "-p", "HELDOUT", "d/test.jsonl"])
    assert seen[NB04.name]["DATA"] == str(tmp_path / "d" / "train.jsonl")   # the kernels run in notebooks/
    assert seen[NB04.name]["HELDOUT"] == str(tmp_path / "d" / "test.jsonl")
    assert seen[NB05.name]["DATA"] == seen[NB04.name]["DATA"]   # 05 checks it is what 04 trained on
    assert seen[NB05.name]["HELDOUT"] == seen[NB04.name]["HELDOUT"]
    assert runner.cli_parameter("IMAGE_FOLDER", "d") == str(tmp_path / "d")


# --- the training record -------------------------------------------------------------------------------------


def test_the_plates_task_gets_a_record_too(tmp_path):
    task = plates.build_course_task(tmp_path / "plates", n_train=24, n_heldout=12, progress=False)
    learner.write_training_data(tmp_path, task, scorer="exact", tiles=1, system="sys", model_path="tiny")
    back = learner.read_training_data(tmp_path)
    assert back["name"] == "plates" and learner.is_plates(back) and back["n_heldout"] == 12
    assert back["n_train"] == len(json.loads(task["train"].read_text())) and back["sha256"] == learner.file_sha256(task["train"])
    assert back["heldout"] == task["heldout"] and back["image_folder"] == task["image_folder"]
    assert learner.is_plates(None)   # 04 ran before it wrote records: the plates


def test_own_data_record_names_the_learners_file_and_split(own_file, tmp_path):
    task = learner.split_own_data(own_file, artifacts=tmp_path / "art")
    learner.write_training_data(tmp_path / "art", task, scorer="exact", tiles=1, system=None)
    back = learner.read_training_data(tmp_path / "art")
    assert not learner.is_plates(back) and back["source"] == own_file and back["name"] == "train"
    assert back["root"] == task["train"].parent and (back["root"] / "heldout.json") == back["heldout"]
    assert back["image_folder"] == own_file.parent and back["n_train"] + back["n_heldout"] == 40


# --- the scorer, the score and the goal -----------------------------------------------------------------------


def test_score_and_lazy_baseline_follow_the_scorer():
    held = answers.with_meta([rec("Describe it.", "A handwritten digit seven, in white.", i=i) for i in range(3)]
                             + [rec("Describe it.", "A handwritten digit one, in white.", i=9)])
    lazy = answers.constant_answer_score(held, "text")
    assert 0.5 < lazy < 1.0   # the most frequent description matches three of four exactly, the fourth in part
    plate = plates.plates_records(40, "heldout")
    plate_meta = answers.with_meta(plate)
    assert answers.constant_answer_score(plate_meta, "exact") == compare.constant_answer_baseline(plate_meta)
    result = scoring.score(held, ["A handwritten digit seven, in white."] * 4, answers.matcher("text"))
    assert result["accuracy"] == 1.0   # chrF >= 50 for each; the headline below is the mean chrF
    assert answers.summarize(result["rows"], "text")["score"] == pytest.approx(lazy)


def test_evaluate_takes_a_scorer_and_reports_its_metric(monkeypatch, tmp_path):
    """scoring.evaluate(scorer=...) uses that scorer's match and adds its headline score; both together are refused."""
    torch = pytest.importorskip("torch")
    Image.new("RGB", (448, 448), "red").save(tmp_path / "img.png")
    records = [rec("Which option?\nA. cat\nB. dog", "B", i=0), rec("Which option?\nA. cat\nB. dog", "A", i=1)]

    class Scripted(torch.nn.Module):   # replies "The answer is B" to everything
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))

        def chat(self, tokenizer, pixels, question, generation_config):
            return "The answer is B"

    out = scoring.evaluate(Scripted(), None, records, tmp_path, batch_size=1, progress=False, scorer="choice")
    assert out["accuracy"] == 0.5 and out["score"] == 0.5 and out["metric"] == "accuracy" and out["scorer"] == "choice"
    with pytest.raises(ValueError, match="either scorer or match"):
        scoring.evaluate(Scripted(), None, records, tmp_path, progress=False, scorer="choice", match=lambda r, m: True)


def test_own_data_goal_needs_the_margin_over_the_base():
    goal = training_outcome.own_data_goal("chrF")
    assert goal.met(0.45, {"all": 0.45}, before=0.30) and not goal.met(0.35, {"all": 0.35}, before=0.30)
    assert not goal.met(0.9, {"all": 0.9})   # without the base model's score nothing is shown
    assert "chrF" in goal.describe()


# --- notebook 04's own cells, up to XTuner's dataset, with DATA set (no training) ---------------------------


def _cells_until(nb, marker: str):
    """NB's cells up to and including the first code cell whose source contains MARKER."""
    for i, cell in enumerate(nb.cells):
        if cell.cell_type == "code" and marker in cell.source:
            return nb.cells[: i + 1]
    raise AssertionError(f"{NB04.name} has no cell with {marker!r}: the test must follow the notebook")


def test_04s_config_edits_point_xtuner_at_the_learners_split(own_file, tmp_path):
    """Run 04's committed cells until XTuner's dataset is built from the edited config, with DATA = the learner's file."""
    if "internvl-course" not in runner.known_kernels():
        pytest.skip("kernel internvl-course is not registered (run make env)")
    nb = nbformat.read(NB04, as_version=4)
    nb.cells = _cells_until(nb, "BUILDER.build(cfg.train_dataloader.dataset)") + [nbformat.v4.new_code_cell(
        "import json as _j\n"
        "facts = dict(data_root=cfg.data_root, data_path=cfg.data_path, image_folder=cfg.image_folder,\n"
        "             max_length=cfg.max_length, freeze_vit=cfg.model.freeze_visual_encoder, samples=len(dataset),\n"
        "             epochs=cfg.max_epochs, iterations=ITERATIONS, scorer=SCORER_NAME, margin=goal.margin,\n"
        "             reasons=[why for _, _, why in EDITS], rules=rules, config=str(CONFIG))\n"
        "(ARTIFACTS / 'facts.json').write_text(_j.dumps(facts))")]
    part = tmp_path / "04_part.ipynb"
    nbformat.write(nb, part)
    art = tmp_path / "art"
    result = runner.run_notebook(part, art, {"DATA": str(own_file), "RESUME_DEMO": False}, progress=False)
    assert result.status == "pass", result.error
    facts = json.loads((art / "facts.json").read_text())
    task = learner.read_training_data(art)   # not written yet: 04 writes it after training
    assert task is None
    split = next((art / "data" / "own").glob("train-*"))
    assert facts["data_root"] == str(split) + "/" and facts["data_path"] == str(split / "train.json")
    assert facts["image_folder"] == str(own_file.parent) and facts["samples"] == 36
    assert facts["freeze_vit"] is True and any("pre-trained on plates only" in r for r in facts["rules"])
    assert any("longest of your samples" in r for r in facts["reasons"])
    assert facts["scorer"] == "exact" and facts["margin"] == training_outcome.OWN_DATA_MARGIN
    assert facts["iterations"] == -(-36 // 4) * facts["epochs"] and facts["epochs"] > 1
    assert Path(facts["config"]).name.endswith("_train.py")


def test_max_train_keeps_the_same_records_whatever_the_order(own_file, tmp_path):
    lines = own_file.read_text().splitlines()
    reordered = own_file.with_name("reordered.jsonl")
    reordered.write_text("\n".join(reversed(lines)) + "\n")
    a = learner.split_own_data(own_file, artifacts=tmp_path / "a", max_train=10)
    b = learner.split_own_data(reordered, artifacts=tmp_path / "b", max_train=10)
    ids = lambda t: sorted(r["id"] for r in json.loads(t["train"].read_text()))  # noqa: E731
    assert a["n_train"] == 10 and a["n_available"] == 36 and ids(a) == ids(b) and "10 of the 36" in a["held_out_by"]
    assert learner.split_own_data(own_file, artifacts=tmp_path / "c", max_train=100)["n_train"] == 36


def test_only_a_number_runs_that_notebook_not_its_lettered_siblings(tmp_path, monkeypatch):
    """`--only 06` runs 06_deploy_lmdeploy alone (06b-06d have their own numbers); `--only 06b` runs 06b."""
    seen = []
    def fake_run(path, *args, **kwargs):
        seen.append(path.stem)
        return runner.NotebookResult(notebook=path.stem, title="", kernel="", status=runner.PASS)

    monkeypatch.setattr(runner, "run_notebook", fake_run)
    monkeypatch.setattr(runner, "write_reports", lambda results, artifacts: {})
    monkeypatch.setattr(runner, "render_markdown", lambda report: "")
    for only, want in ((["06"], ["06_deploy_lmdeploy"]), (["06b", "03"], ["03_datasets", "06b_quantize_lmdeploy"])):
        seen.clear()
        runner.run_course(only, str(tmp_path / "art"))
        assert seen == want


def test_03b_converts_a_learners_swift_file_for_04(own_file, tmp_path):
    """03b with DATA = an ms-swift jsonl: recognised, converted under ARTIFACTS (the original untouched), validated, and
    the command for 04 printed with the learner's image folder."""
    if "internvl-course" not in runner.known_kernels():
        pytest.skip("kernel internvl-course is not registered (run make env)")
    from labsupport.datasets import formats

    swift = formats.save_records(own_file.parent / "swift.jsonl", formats.to_swift(own_file))
    before = swift.read_bytes()
    art = tmp_path / "art"
    result = runner.run_notebook(ROOT / "notebooks" / "03b_dataset_sources.ipynb", art, {"DATA": str(swift)}, progress=False)
    assert result.status == "pass", result.error
    assert swift.read_bytes() == before
    converted = art / "data" / "own" / "swift.internvl.jsonl"
    assert formats.load_records(converted) == formats.from_llava(own_file)
    nb = nbformat.read(art / "executed" / "03b_dataset_sources.ipynb", as_version=4)
    text = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    assert "swift (the first record has 'query'" in text and "scorer notebooks 04-07 will choose: exact" in text
    assert f"-p DATA {converted} -p IMAGE_FOLDER {own_file.parent}" in text


def test_04_warns_before_training_when_the_miniature_meets_shuffled_options(tmp_path):
    """Multiple choice whose options move from question to question: 04 prints the measured caveat before training."""
    if "internvl-course" not in runner.known_kernels():
        pytest.skip("kernel internvl-course is not registered (run make env)")
    folder = tmp_path / "mine"
    folder.mkdir()
    Image.new("RGB", (448, 448), "red").save(folder / "img.png")
    rows = []
    for i in range(40):
        options = [(i + k) % 4 for k in range(4)]   # the right option (0) at a different letter each time
        q = "Which number?\n" + "\n".join(f"{l}. {o}" for l, o in zip("ABCD", options))
        rows.append(rec(q, "ABCD"[options.index(0)], i=i))
    data = folder / "choice.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    nb = nbformat.read(NB04, as_version=4)
    nb.cells = _cells_until(nb, "schedule.miniature_caveat(")
    part = tmp_path / "04_part.ipynb"
    nbformat.write(nb, part)
    art = tmp_path / "art"
    result = runner.run_notebook(part, art, {"DATA": str(data), "RESUME_DEMO": False}, progress=False)
    assert result.status == "pass", result.error
    out = nbformat.read(art / "executed" / "04_part.ipynb", as_version=4)
    text = "".join(o.get("text", "") for c in out.cells if c.cell_type == "code" for o in c.outputs)
    assert "scorer: choice" in text and re.search(r"caveat: your questions list \d+ different option sets", text)
