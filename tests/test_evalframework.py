"""labsupport.serve.evalframework: the general_vqa export EvalScope reads, its report read back, and the agreement with the course scorer."""
import base64
import hashlib
import json
import os
import subprocess
from pathlib import Path

import pytest

from labsupport.serve import evalframework
from labsupport.datasets.plates import build_course_task
from labsupport.datasets.formats import load_records


@pytest.fixture(scope="module")
def plates(tmp_path_factory):
    paths = build_course_task(tmp_path_factory.mktemp("plates"), n_train=12, n_heldout=12, progress=False)
    return load_records(paths["heldout"]), paths["root"]


def test_export_writes_one_openai_messages_file_per_kind(plates, tmp_path):
    records, folder = plates
    out = evalframework.export_general_vqa(records, folder, tmp_path / "ds")
    assert out["subset_list"] == ["colour", "count", "shape"] and out["n"] == len(records)
    manifest = json.loads(out["manifest"].read_text())
    for kind in out["subset_list"]:
        lines = [json.loads(ln) for ln in (tmp_path / "ds" / f"{kind}.jsonl").read_text().splitlines()]
        assert len(lines) == len(manifest["subsets"][kind])
        for line, rid in zip(lines, manifest["subsets"][kind]):
            rec = next(r for r in records if r["id"] == rid)
            image, text = line["messages"][0]["content"]
            assert line["messages"][0]["role"] == "user" and image["type"] == "image_url" and text["type"] == "text"
            assert image["image_url"]["url"] == str((folder / rec["image"]).resolve())
            assert "<image>" not in text["text"] and text["text"] in rec["conversations"][0]["value"]
            assert line["answer"] == rec["meta"]["answer"] and rec["meta"]["kind"] == kind


def test_export_refuses_a_record_without_its_image(plates, tmp_path):
    records, folder = plates
    broken = dict(records[0], image="images/missing.jpg")
    with pytest.raises(FileNotFoundError, match="missing.jpg"):
        evalframework.export_general_vqa([broken], folder, tmp_path / "ds")


def test_agreement_explains_each_difference_from_the_reply():
    records = [{"id": f"r{i}", "meta": {"kind": "colour", "value": "red", "answer": a}} for i, a in enumerate(["red", "red", "红色", "red"])]
    reviews = [{"id": "r0", "subset": "colour", "reply": "red", "target": "red", "framework": 1.0},
               {"id": "r1", "subset": "colour", "reply": "Red.", "target": "red", "framework": 0.0},
               {"id": "r2", "subset": "colour", "reply": "红", "target": "红色", "framework": 0.0},
               {"id": "r3", "subset": "colour", "reply": "red circle", "target": "red", "framework": 1.0}]
    both = evalframework.agreement(records, reviews)
    assert both["course"] == 0.75 and both["framework"] == 0.5 and both["agree"] == 1
    why = {r["id"]: r["why"] for r in both["rows"]}
    assert why["r0"] == "" and "case or punctuation" in why["r1"] and "short form" in why["r2"] and "other words" in why["r3"]


def _learner(i, question, answer, image="a.png"):
    return {"id": f"d{i}", "image": image, "conversations": [{"from": "human", "value": "<image>\n" + question},
                                                            {"from": "gpt", "value": answer}]}


def test_agreement_scores_a_learners_records_with_their_scorer():
    # a learner's records have no meta: the course's scorer for their answers judges the framework's replies
    letters = [_learner(0, "A. 3 B. 5", "B"), _learner(1, "A. 3 B. 5", "A")]
    reviews = [{"id": "d0", "subset": "all", "reply": "The answer is B.", "target": "B", "framework": 1.0},
               {"id": "d1", "subset": "all", "reply": "(A)", "target": "A", "framework": 0.0}]
    both = evalframework.agreement(letters, reviews, scorer="choice")
    assert both["course"] == 1.0 and both["score"] == 1.0 and both["metric"] == "accuracy" and both["agree"] == 1
    assert "right letter" in both["differ"][0]["why"] and both["course_per_kind"] == {"all": 1.0}
    sentences = [_learner(0, "Which digit?", "This is the digit three."), _learner(1, "Which digit?", "This is the digit five.")]
    reviews = [{"id": "d0", "subset": "all", "reply": "This is the digit three.", "target": "This is the digit three.", "framework": 1.0},
               {"id": "d1", "subset": "all", "reply": "A cat.", "target": "This is the digit five.", "framework": 0.0}]
    both = evalframework.agreement(sentences, reviews, scorer="text")
    assert both["metric"] == "chrF" and 0.4 < both["score"] < 0.6 and both["course"] == 0.5 and both["agree"] == 2
    with pytest.raises(KeyError):   # the plates' rule needs a plates record: a learner's record is judged by its scorer
        evalframework.agreement(sentences, reviews, match=lambda reply, meta: meta["value"] == reply)


def test_forgetting_is_the_drop_and_the_share_kept():
    assert evalframework.forgetting(0.8, 0.2) == {"before": 0.8, "after": 0.2, "drop": 0.6, "kept": 0.25}
    with pytest.raises(ValueError, match="nothing can be forgotten"):
        evalframework.forgetting(0.0, 0.0)


def test_served_copy_sets_the_trained_tiling_and_links_the_rest(tmp_path):
    src = tmp_path / "model"
    src.mkdir()
    (src / "config.json").write_text(json.dumps({"max_dynamic_patch": 12, "x": 1}))
    (src / "model.safetensors").write_bytes(b"weights")
    out = evalframework.served_copy(src, 1, tmp_path / "served")
    assert json.loads((out / "config.json").read_text()) == {"max_dynamic_patch": 1, "x": 1}
    assert (out / "model.safetensors").is_symlink() and (out / "model.safetensors").read_bytes() == b"weights"
    assert json.loads((src / "config.json").read_text())["max_dynamic_patch"] == 12


class _ScriptedPipe:
    """Replies by image: the reference, a variant the two scorers judge differently, or a wrong colour."""

    def __init__(self, replies):
        self.replies = replies

    def __call__(self, messages, gen_config=None):
        from labsupport.serve.lmdeploy_cpu import Response

        url = next(c["image_url"]["url"] for c in messages[-1]["content"] if c["type"] == "image_url")
        # the endpoint hands the model a data URL's image as a file it wrote (labsupport.serve.openai_cpu.parse_request)
        data = base64.b64decode(url.split(",", 1)[1]) if url.startswith("data:") else Path(url).read_bytes()
        return Response(self.replies[hashlib.sha256(data).hexdigest()])


def test_evalscope_reads_the_export_and_its_score_agrees_with_the_course_scorer(plates, tmp_path):
    try:
        evalscope = evalframework.evalscope_executable()
    except FileNotFoundError as exc:
        pytest.skip(f"the evaluation environment is not built: {exc}")
    from labsupport.serve import demo_app, lmdeploy_cpu

    records, folder = plates
    export = evalframework.export_general_vqa(records, folder, tmp_path / "ds")
    styles = ["same", "upper", "extra", "wrong"]
    replies, expect = {}, {}
    for i, rec in enumerate(records):
        answer, style = rec["meta"]["answer"], styles[i % 4]
        reply = {"same": answer, "upper": answer.upper() + ".", "extra": f"{answer} {answer}s", "wrong": "purple"}[style]
        if style == "upper" and answer.upper() == answer:  # a digit or Chinese has no case: keep the reference
            reply, style = answer, "same"
        replies[hashlib.sha256((folder / rec["image"]).read_bytes()).hexdigest()] = reply
        expect[rec["id"]] = style
    port = demo_app.free_port()
    server = lmdeploy_cpu.serve_openai(_ScriptedPipe(replies), port, model_name="scripted")
    try:
        args = json.dumps({"general_vqa": {"local_path": str(export["local_path"]), "subset_list": export["subset_list"],
                                           "metric_list": ["Rouge"]}})
        done = subprocess.run([str(evalscope), "eval", "--model", "scripted", "--eval-type", "openai_api",
                               "--api-url", f"http://127.0.0.1:{port}/v1", "--api-key", "EMPTY", "--datasets", "general_vqa",
                               "--dataset-args", args, "--work-dir", str(tmp_path / "work"), "--no-timestamp"],
                              capture_output=True, text=True, timeout=300, env=dict(os.environ, NO_COLOR="1"))
    finally:
        server.shutdown()
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    report = evalframework.read_report(tmp_path / "work", "scripted")
    reviews = evalframework.read_reviews(tmp_path / "work", "scripted", export["manifest"])
    both = evalframework.agreement(records, reviews)
    assert report["n"] == len(records) == both["n"]
    assert report["score"] == pytest.approx(both["framework"], abs=1e-6)
    for row in both["rows"]:
        style = expect[row["id"]]
        assert row["course"] == (style in ("same", "upper")), row
        assert (row["framework"] == 1.0) == (style in ("same", "extra")), row
        assert bool(row["why"]) == (style in ("upper", "extra")), row
    table = evalframework.report_table_from_text(done.stdout + done.stderr)
    assert "General-VQA" in table and "\x1b[" not in table


# ---- forgetting: the regression set, the mixed training folder, notebook 04's recipe edited ----------------------

def test_general_set_reads_a_text_only_file_and_refuses_image_questions(tmp_path):
    from labsupport.evaluate import forgetting
    from labsupport.datasets.formats import ORDINARY_QA

    assert forgetting.general_set("") == list(ORDINARY_QA)
    good = tmp_path / "general.jsonl"
    good.write_text(json.dumps({"conversations": [{"from": "human", "value": " Hi? "}, {"from": "gpt", "value": "Hello."}]}) + "\n")
    assert forgetting.general_set(good) == [("Hi?", "Hello.")]
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{"id": "x", "conversations": [{"from": "human", "value": "<image>\nWhat?"}, {"from": "gpt", "value": "A"}]}]))
    with pytest.raises(ValueError, match="record #0 \\(x\\) is not a text-only"):
        forgetting.general_set(bad)


def test_mixed_training_set_reaches_the_share_and_keeps_every_plate(plates, tmp_path):
    from labsupport.evaluate import forgetting

    _, root = plates
    train = json.loads((root / "train.json").read_text())
    out = forgetting.mixed_training_set(root, forgetting.default_pairs(), 0.25, tmp_path / "mixed")
    records = json.loads(out["train"].read_text())
    assert sorted(r["id"] for r in records if r.get("image")) == sorted(r["id"] for r in train)
    assert out["general"] == len(records) - len(train) and abs(out["share"] - 0.25) < 0.05
    assert all((out["root"] / r["image"]).is_file() for r in records if r.get("image"))
    with pytest.raises(ValueError, match="share"):
        forgetting.mixed_training_set(root, forgetting.default_pairs(), 1.0, tmp_path / "m2")


def test_recipe_edits_change_only_model_epochs_and_data(tmp_path):
    from labsupport.evaluate import forgetting
    from labsupport.train import xtuner_config as xc

    config = tmp_path / "04.py"
    config.write_text("path = '/m/tiny'\ndata_root = '/d/plates/'\nmax_epochs = 4  # passes\nlr = 0.001\n")
    edits = forgetting.recipe_edits(config.read_text(), "/m/general", 1, data_root="/d/mixed")
    out = xc.write_edited_config(config, edits, tmp_path / "06d.py")
    assert out.read_text() == "path = '/m/general'\ndata_root = '/d/mixed/'\nmax_epochs = 1\nlr = 0.001\n"
    assert forgetting.data_root_of(out.read_text()) == Path("/d/mixed")


def test_card_lines_report_the_framework_and_forgetting_results(tmp_path):
    from labsupport.core.checkpoints import write_json_atomic

    assert evalframework.card_lines(tmp_path) == []
    write_json_atomic(tmp_path / "results" / "06c_evaluate_framework.json",
                      {"version": "evalscope 1.14.1", "n": 48, "scores": {"internvl2-finetuned": {"evalscope_rouge_l_r": 0.958,
                                                                                                  "course": 0.979, "agree": 47}}})
    write_json_atomic(tmp_path / "results" / "06d_forgetting.json",
                      {"model": "/a/internvl2-tiny-general", "epochs": 1, "general_set": "ORDINARY_QA", "before": 0.75,
                       "runs": {"plates only": {"plates": 0.7}}, "forgetting": {"plates only": {"after": 0.25, "kept": 0.3333}}})
    text = "\n".join(evalframework.card_lines(tmp_path))
    assert "| internvl2-finetuned | 0.958 | 0.979 | 47/48 |" in text and "evalscope 1.14.1" in text
    assert "`internvl2-tiny-general`" in text and "| plates only | 0.70 | 0.25 | 33% |" in text
    write_json_atomic(tmp_path / "results" / "06c_evaluate_framework.json",   # a learner's open answers: the scorer is named
                      {"version": "evalscope 1.14.1", "n": 20, "scores": {"internvl2-finetuned": {
                          "evalscope_rouge_l_r": 0.9, "course": 0.85, "course_metric": "chrF", "scorer": "text", "agree": 18}}})
    assert "| internvl2-finetuned | 0.900 | 0.850 (text, chrF) | 18/20 |" in "\n".join(evalframework.card_lines(tmp_path))


def test_report_table_keeps_the_header_and_the_models_primary_rows(tmp_path):
    log = tmp_path / "evalscope.log"
    log.write_text("INFO: Args ...\nINFO: Overall report table: \n"
                   "┌───┐\n│ Model │ Dataset │ Metric │ Subset │ Num │ Score │\n├───┤\n"
                   "│ a │ General-VQA │ ROUGE ↑ · L · Recall │ colour │ 2 │ 50% │\n├───┤\n"
                   "│ a │ General-VQA │ ROUGE ↑ · n-gram 1 · Recall │ colour │ 2 │ 50% │\n├───┤\n"
                   "│ b │ General-VQA │ ROUGE ↑ · L · Recall │ colour │ 2 │ 0% │\n└───┘ \n\nINFO: done\n", encoding="utf-8")
    table = evalframework.report_table(log, "a").splitlines()
    assert table[1].startswith("│ Model") and len([r for r in table if "General-VQA" in r]) == 1 and "L · Recall" in table[3]
    (tmp_path / "failed.log").write_text("Traceback ...\nValueError: boom\n")
    with pytest.raises(RuntimeError, match="(?s)no report table.*ValueError: boom"):
        evalframework.report_table(tmp_path / "failed.log")


def test_evalscopes_own_rouge_gives_the_values_notebook_06c_teaches():
    """06c's section 7 runs this metric in the eval env's Python; its exercise expects these values."""
    try:
        evalscope = evalframework.evalscope_executable()
    except FileNotFoundError as exc:
        pytest.skip(f"the evaluation environment is not built: {exc}")
    script = ("import json, sys; from evalscope.benchmarks.general_qa_vqa_metrics import calculate_metric_score as metric; "
              "print(json.dumps([metric('Rouge', reply, ref)['Rouge-L-R'] for reply, ref in json.load(sys.stdin)]))")
    pairs = [("Red.", "red"), ("red circle", "red"), ("红", "红色"), ("红色", "红色")]
    done = subprocess.run([str(evalscope.parent / "python"), "-c", script], input=json.dumps(pairs), capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout.strip().splitlines()[-1]) == [0.0, 1.0, 0.0, 1.0]


def test_the_eval_environment_has_no_kernel_and_the_doctor_checks_it_by_prefix(repo, monkeypatch):
    from labsupport.core import envs
    from labsupport.course import doctor

    spec = next(s for s in envs.load_specs(repo) if s.name == evalframework.EVAL_ENV)
    assert spec.kernel == "" and "evalscope==1.14.1" in spec.pip and not any("torch" in p for p in spec.pip)
    assert not [c for c in envs.build_commands(spec, "venv") if "ipykernel" in c]
    monkeypatch.setattr(doctor, "load_specs", lambda: [spec])
    monkeypatch.setattr(doctor, "env_python", lambda s: None)
    report = doctor.diagnose(repo, needed_gb=0.0, model_dir=repo)
    entry = report["environments"][0]
    assert entry["error"] == "internvl-eval is not built: run `make env`" and "code_path" not in entry and not entry["ok"]
    assert "no kernel: a command-line tool" in doctor.render_markdown(report)
