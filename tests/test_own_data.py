"""The learner's own data: the scorer chosen from the answers, each scorer, and a reproducible held-out split."""
from __future__ import annotations

import json
import random

import pytest
from PIL import Image

from labsupport.datasets import learner, plates
from labsupport.evaluate import answers


def rec(q: str, a: str, image: str = "img.png", i: int = 0) -> dict:
    return {"id": f"r{i}", "image": image, "conversations": [{"from": "human", "value": f"<image>\n{q}"},
                                                             {"from": "gpt", "value": a}]}


MCQ = "Which dish is this?\nA. dumplings\nB. noodles\nC. rice\nD. soup\nAnswer with the option's letter."


def test_scorer_follows_the_answers():
    assert answers.choose_scorer([rec(MCQ, "B"), rec(MCQ, "(D)")])[0] == "choice"
    assert answers.choose_scorer([rec(MCQ, "C. rice"), rec(MCQ, "A. dumplings")])[0] == "choice"  # FoodieQA's shape
    assert answers.choose_scorer([rec("What digit is this?", "7"), rec("这是什么？", "饺子")])[0] == "exact"
    long = "A steaming bowl of hand-pulled noodles in a clear beef broth, topped with coriander and chilli oil."
    name, why = answers.choose_scorer([rec("Describe the dish.", long)] * 5)
    assert name == "text" and "chrF" in why
    held = plates.plates_records(6, "heldout")
    assert answers.choose_scorer(held)[0] == "exact" and "plates" in answers.choose_scorer(held)[1]


def test_the_scorers_reason_names_the_records_it_read():
    records = [rec("What digit is this?", "7")] * 3
    assert "3 of 3 held-out answers" in answers.choose_scorer(records)[1]
    assert "3 of 3 training answers" in answers.choose_scorer(records, which="training")[1]
    with pytest.raises(ValueError, match="no training records"):
        answers.choose_scorer([], which="training")


def test_a_letter_not_among_the_options_is_not_multiple_choice():
    assert not answers.is_choice(rec("Which vitamin is this?", "A"))  # "A" with no options listed: a short answer
    assert answers.choose_scorer([rec("Which vitamin?", "A")] * 3)[0] == "exact"


def test_override_is_checked():
    assert answers.choose_scorer([rec("q", "a")], override="text")[0] == "text"
    with pytest.raises(ValueError, match="SCORER"):
        answers.choose_scorer([rec("q", "a")], override="bleu")


@pytest.mark.parametrize("reply,letter", [("B", "B"), ("(B)", "B"), ("B. noodles", "B"), ("The answer is C.", "C"),
                                          ("答案是D", "D"), ("b", "B"), ("I think A or B", None), ("noodles", None),
                                          ("J", "J"), ("I", "I"), ("答案是J", "J"), ("I think it is B", "B"),
                                          ("I'm sure: C", "C")])
def test_parse_choice(reply, letter):
    assert answers.parse_choice(reply) == letter


def test_each_scorer_marks_right_and_wrong():
    exact, choice, text = (answers.matcher(n) for n in answers.SCORERS)
    assert exact("Seven.", {"answer": "seven"}) and not exact("seventy", {"answer": "seven"})
    assert exact("饺子。", {"answer": "饺子"}) and not exact("面条", {"answer": "饺子"})
    meta = plates.plates_records(1, "heldout")[0]["meta"]
    zh = plates.plates_answer(meta["kind"], meta["value"], "zh")
    assert exact(zh, meta)  # the plates rule: the answer in the other language counts too
    assert choice("The answer is B.", {"answer": "B"}) and not choice("A", {"answer": "B"})
    assert choice("C. 新疆菜", {"answer": "C. 新疆菜"}) and choice("答案是C", {"answer": "C. 新疆菜"})
    ref = "A bowl of beef noodle soup with coriander."
    assert text(ref, {"answer": ref}) and not text("A red square.", {"answer": ref})


def test_summary_is_accuracy_or_mean_chrf():
    rows = [{"reply": "B", "answer": "B", "correct": True}, {"reply": "A", "answer": "B", "correct": False}]
    assert answers.summarize(rows, "choice") == {"metric": "accuracy", "score": 0.5, "n": 2}
    same = [{"reply": "a bowl of noodles", "answer": "a bowl of noodles", "correct": True}]
    assert answers.summarize(same, "text") == {"metric": "chrF", "score": 1.0, "n": 1}


def test_with_meta_keeps_the_original_records():
    records = [rec("q", "a")]
    out = answers.with_meta(records)
    assert out[0]["meta"] == {"kind": "all", "answer": "a"} and "meta" not in records[0]


@pytest.fixture()
def own_file(tmp_path):
    Image.new("RGB", (32, 32), "red").save(tmp_path / "img.png")
    records = [rec(f"What number is {i}?", str(i), i=i) for i in range(40)]
    path = tmp_path / "mine.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path, records


def test_split_is_reproducible_and_order_free(own_file, tmp_path):
    path, records = own_file
    before = path.read_bytes()
    a = learner.split_own_data(path, artifacts=tmp_path / "a")
    shuffled = records[:]
    random.Random(1).shuffle(shuffled)
    path2 = path.with_name("mine2.jsonl")
    path2.write_text("".join(json.dumps(r) + "\n" for r in shuffled), encoding="utf-8")
    b = learner.split_own_data(path2, artifacts=tmp_path / "b")
    ids = lambda p: sorted(r["id"] for r in json.loads(p.read_text()))  # noqa: E731
    assert ids(a["heldout"]) == ids(b["heldout"]) and a["n_heldout"] == 4 and a["n_train"] == 36
    assert not set(ids(a["heldout"])) & set(ids(a["train"]))
    assert path.read_bytes() == before  # the learner's file is never modified
    assert a["image_folder"] == path.parent


def test_a_heldout_file_is_used_as_given(own_file, tmp_path):
    path, records = own_file
    held = tmp_path / "test.json"
    held.write_text(json.dumps(records[:3]), encoding="utf-8")
    task = learner.split_own_data(path, heldout=held, artifacts=tmp_path / "art")
    assert task["n_heldout"] == 3 and task["n_train"] == 40 and "HELDOUT" in task["held_out_by"]


def test_a_file_that_would_crash_xtuner_stops_with_its_name(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{"id": "x", "image": "missing.png", "conversations": [{"from": "human", "value": "hi"}]}]))
    with pytest.raises(learner.OwnDataInvalid, match="bad.json"):
        learner.split_own_data(bad, artifacts=tmp_path / "art")
    with pytest.raises(learner.OwnDataInvalid, match="not a file"):
        learner.split_own_data(tmp_path / "nope.json", artifacts=tmp_path / "art")


def test_training_record_round_trip(own_file, tmp_path):
    path, _ = own_file
    task = learner.split_own_data(path, artifacts=tmp_path)
    learner.write_training_data(tmp_path, task, scorer="exact", tiles=6, system="You are helpful.")
    back = learner.read_training_data(tmp_path)
    assert back["heldout"] == task["heldout"] and back["scorer"] == "exact" and back["sha256"] == task["sha256"]
    assert learner.read_training_data(tmp_path / "none") is None


def test_05_to_07_refuse_data_that_04_did_not_train_on(own_file, tmp_path):
    path, records = own_file
    held = tmp_path / "test.json"
    held.write_text(json.dumps(records[:3]), encoding="utf-8")
    task = learner.split_own_data(path, heldout=held, artifacts=tmp_path)
    learner.write_training_data(tmp_path, task, scorer="exact", tiles=1, system=None)
    record = learner.read_training_data(tmp_path)
    assert learner.require_trained_on(record) is record  # no DATA: follow 04's record
    assert learner.require_trained_on(record, path, held) is record  # the same files
    other = path.with_name("other.jsonl")
    other.write_text("".join(json.dumps(r) + "\n" for r in records[:20]), encoding="utf-8")
    with pytest.raises(learner.OwnDataInvalid, match="other.jsonl.*not what notebook 04 trained on.*mine.jsonl"):
        learner.require_trained_on(record, other)
    with pytest.raises(learner.OwnDataInvalid, match="not what notebook 04 trained on"):
        learner.require_trained_on(record, path)  # DATA without the HELDOUT 04 was given
    with pytest.raises(learner.OwnDataInvalid, match="nothing yet"):
        learner.require_trained_on(None, path)
    with pytest.raises(learner.OwnDataInvalid, match="does not exist"):
        learner.require_trained_on(record, tmp_path / "gone.json")


def test_foodieqa_records_get_the_multiple_choice_scorer():
    """03b's FoodieQA conversion (options in the question, "C. 新疆菜" as the answer) is scored, not a KeyError."""
    from labsupport.datasets import formats, sources

    food = formats.from_foodieqa(sources.sample_dir("foodieqa") / "sivqa_tidy.json", lang="zh", with_choices=True)
    assert answers.choose_scorer(food)[0] == "choice"
    scored = answers.with_meta(food)
    match = answers.matcher("choice")
    assert all(match(answers.reference(r), r["meta"]) for r in scored)


def test_ten_options_in_a_fixed_order_are_multiple_choice():
    """digits_choice10's shape: all ten digits as options A-J, the letter as the answer (I and J included)."""
    q = "Which digit?\n" + "\n".join(f"{l}. {d}" for l, d in zip("ABCDEFGHIJ", range(10)))
    assert answers.is_choice(rec(q, "I")) and answers.is_choice(rec(q, "J"))
    assert answers.choose_scorer([rec(q, l) for l in "ABCDEFGHIJ"])[0] == "choice"
