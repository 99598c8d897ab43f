"""Tests of labsupport.serve.task: what notebook 06 serves and asks, from notebook 04's record or the plates task."""
from __future__ import annotations

import json

import pytest

from labsupport.datasets.learner import TRAINING_DATA
from labsupport.datasets.plates import QUESTIONS
from labsupport.serve import task as served


def _record(question: str, answer: str, image: str = "a.png", second: str | None = None) -> dict:
    turns = [{"from": "human", "value": "<image>\n" + question}, {"from": "gpt", "value": answer}]
    if second:
        turns += [{"from": "human", "value": second}, {"from": "gpt", "value": "x"}]
    return {"image": image, "conversations": turns}


def test_served_task_reads_notebook_04s_record(tmp_path):
    held = tmp_path / "own" / "heldout.json"
    held.parent.mkdir()
    held.write_text(json.dumps([_record("Which dish? A. noodles B. rice", "B")]))
    trained = {"name": "foodie", "train": tmp_path / "own" / "train.json", "heldout": held,
               "image_folder": tmp_path / "images", "n_train": 9, "n_heldout": 1, "scorer": "choice", "tiles": 6,
               "system": "Be brief."}
    task = served.served_task(trained, tmp_path, tmp_path / "no-model")
    assert (task["heldout"], task["images"], task["tiles"], task["scorer"], task["system"]) == \
        (held, tmp_path / "images", 6, "choice", "Be brief.")
    assert task["recorded"] and "foodie" in task["why"] and "'choice'" in task["why"] and TRAINING_DATA in task["why"]
    with pytest.raises(ValueError, match="scorer 'bleu'"):
        served.served_task(dict(trained, scorer="bleu"), tmp_path, tmp_path / "no-model")


def test_without_a_record_the_plates_task_stands_in_and_says_so(tmp_path, monkeypatch):
    held = tmp_path / "plates" / "heldout.json"
    held.parent.mkdir()
    held.write_text(json.dumps([_record("What colour?", "red")]))
    asked = []
    monkeypatch.setattr(served, "trained_task", lambda artifacts, base: (held, 1, "the default course task"))
    monkeypatch.setattr(served, "chat_system", lambda model: f"chat() of {model.name}")
    monkeypatch.setattr(served, "xtuner_prompt_any_env",
                        lambda model, q, system: asked.append((model, q, system)) or ("prompt", system, "note"))
    task = served.served_task(None, tmp_path, tmp_path / "model", tmp_path / "finetuned")
    # the question and system the prompt table asks with: one child process of the course env, cached
    assert asked == [(tmp_path / "finetuned", "What colour?", "chat() of finetuned")]
    assert (task["heldout"], task["images"], task["tiles"], task["scorer"], task["system"]) == \
        (held, held.parent, 1, "exact", "chat() of finetuned")
    # where XTuner cannot train the model there is no training prompt to serve
    monkeypatch.setattr(served, "xtuner_prompt_any_env", lambda model, q, system: (None, None, "Qwen2"))
    assert served.served_task(None, tmp_path, tmp_path / "model")["system"] is None
    assert not task["recorded"] and "no record" in task["why"] and "plates" in task["why"]
    # a record whose held-out file is gone is not trusted either
    gone = served.served_task({"heldout": tmp_path / "missing.json", "scorer": "exact"}, tmp_path, tmp_path / "model")
    assert not gone["recorded"]


def test_follow_up_prefers_the_records_own_second_question():
    assert served.follow_up(_record("Q1?", "a", second="Q2?"))[0] == "Q2?"
    plate = dict(_record("What colour?", "red"), meta={"kind": "colour", "lang": "en", "answer": "red"})
    question, why = served.follow_up(plate, QUESTIONS)
    assert question == QUESTIONS[("count", "en")] and "count" in why
    assert served.follow_up(_record("Only one?", "yes"))[0] == "Only one?"


def test_scored_rows_use_the_recorded_scorer():
    records = [_record("Which? A. tea B. rice", "B"), _record("Which? A. tea B. rice", "A")]
    rows = served.scored_rows(records, ["A", "A"], ["The answer is B", "(A)"], "choice")
    assert [r["fine-tuned_ok"] for r in rows] == [True, True] and [r["base_ok"] for r in rows] == [False, True]
    assert rows[0]["reference"] == "B" and rows[0]["question"] == "Which? A. tea B. rice" and rows[0]["kind"] == "all"
    exact = served.scored_rows([_record("Name?", "Mount Fuji")], ["mount fuji."], ["Fuji"], "exact")
    assert exact[0]["base_ok"] and not exact[0]["fine-tuned_ok"]


def test_open_answers_are_scored_by_their_chrf_not_a_pass_rate():
    """06 reports open answers in chrF, as 04 does: the row's score is chrF / 100, right or wrong at TEXT_PASS aside."""
    from labsupport.evaluate import answers

    rec = _record("Describe it.", "The image shows a handwritten seven.")
    rows = served.scored_rows([rec], ["The image shows a handwritten one."], ["The image shows a handwritten seven."], "text")
    assert rows[0]["fine-tuned_score"] == 1.0
    assert rows[0]["base_score"] == answers.chrf("The image shows a handwritten one.", rec["conversations"][1]["value"]) / 100
    assert 0 < rows[0]["base_score"] < 1 and rows[0]["base_ok"]
    assert served.scored_rows([_record("Which? A. tea B. rice", "B")], ["A"], ["B"], "choice")[0]["fine-tuned_score"] == 1.0
