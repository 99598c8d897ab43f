"""Tests of labsupport.datasets: the plates course task, the builders, the mixer."""
from __future__ import annotations

import collections
import json

import numpy as np
import pytest
from PIL import Image

from labsupport.datasets import formats as D, plates as plates_task


# ---------------------------------------------------------------- the plates course task
@pytest.fixture(scope="module")
def plates(tmp_path_factory):
    return plates_task.build_course_task(tmp_path_factory.mktemp("plates") / "plates", n_train=48, n_heldout=24, progress=False)


def test_plates_files_and_format(plates):
    train = json.loads(plates["train"].read_text(encoding="utf-8"))
    held = json.loads(plates["heldout"].read_text(encoding="utf-8"))
    assert len(train) == 48 and len(held) == 24
    assert {len(r["conversations"]) for r in train} == {6} and {len(r["conversations"]) for r in held} == {2}
    for rec in train + held:
        human, gpt = rec["conversations"][:2]
        assert [t["from"] for t in rec["conversations"]] == ["human", "gpt"] * (len(rec["conversations"]) // 2)
        assert human["value"].startswith("<image>\n") and human["value"].count("<image>") == 1
        with Image.open(plates["image_folder"] / rec["image"]) as im:
            assert list(im.size) == rec["image_wh"]
        assert gpt["value"] == rec["meta"]["answer"]
    assert {r["id"] for r in train}.isdisjoint({r["id"] for r in held})
    assert {r["image"] for r in train}.isdisjoint({r["image"] for r in held})


def test_training_images_are_asked_every_kind_in_their_own_order(plates):
    train = json.loads(plates["train"].read_text(encoding="utf-8"))
    orders = set()
    for rec in train:
        turns = rec["conversations"]
        asked = [next(k for (k, lang), q in plates_task.QUESTIONS.items() if q in t["value"] and lang == rec["meta"]["lang"])
                 for t in turns[0::2]]
        assert sorted(asked) == sorted(plates_task.KINDS) and asked[0] == rec["meta"]["kind"]
        for kind, answer in zip(asked, turns[1::2]):
            assert answer["value"] == plates_task.plates_answer(kind, str(rec["meta"][kind]), rec["meta"]["lang"])
        assert sum("<image>" in t["value"] for t in turns) == 1
        orders.add(tuple(asked[1:]))
    assert len(orders) > 1  # the later questions come in more than one order
    single = plates_task.plates_records(48, "train")  # the same plates, one question each
    assert [r["meta"] for r in single] == [r["meta"] for r in train]


def test_plates_balanced_bilingual_chance_quarter():
    recs = plates_task.plates_records(120, "train", seed=3)
    by_kind = collections.defaultdict(collections.Counter)
    for r in recs:
        by_kind[r["meta"]["kind"]][r["meta"]["value"]] += 1
    assert set(by_kind) == {"colour", "shape", "count"}
    for counter in by_kind.values():  # majority-class accuracy per kind is exactly 1/4
        assert len(counter) == 4 and max(counter.values()) / sum(counter.values()) <= 0.25
    langs = collections.Counter(r["meta"]["lang"] for r in recs)
    assert langs["en"] == langs["zh"] == 60
    zh = [r for r in recs if r["meta"]["lang"] == "zh"]
    assert all(any("\u4e00" <= ch <= "\u9fff" for ch in r["conversations"][0]["value"]) for r in zh)
    # the question never gives the answer away: one question text per (kind, language)
    texts = collections.defaultdict(set)
    for r in recs:
        texts[(r["meta"]["kind"], r["meta"]["lang"])].add(r["conversations"][0]["value"])
    assert all(len(v) == 1 for v in texts.values())


def test_plates_kinds_parameter_and_determinism():
    a = plates_task.plates_records(16, "train", kinds=("colour",), seed=1)
    assert {r["meta"]["kind"] for r in a} == {"colour"}
    assert a == plates_task.plates_records(16, "train", kinds=("colour",), seed=1)
    assert a != plates_task.plates_records(16, "train", kinds=("colour",), seed=2)
    with pytest.raises(ValueError, match="kinds"):
        plates_task.plates_records(4, "train", kinds=("size",))


def test_draw_plate_shows_the_colour():
    img = plates_task.draw_plate("red", "square", 4, (448, 448), seed=5)
    px = np.asarray(img.convert("RGB")).astype(int)
    r, g, b = px[..., 0], px[..., 1], px[..., 2]
    reddish = int(((r > 170) & (g < 90) & (b < 90)).sum())
    blueish = int(((b > 170) & (r < 90) & (g < 120)).sum())
    assert reddish > 2000 and blueish == 0


def test_plates_stamp_skips_rebuild_and_rebuilds_on_change(tmp_path):
    out = tmp_path / "p"
    plates_task.build_course_task(out, n_train=12, n_heldout=12, progress=False)
    mtime = (out / "train.json").stat().st_mtime_ns
    plates_task.build_course_task(out, n_train=12, n_heldout=12, progress=False)
    assert (out / "train.json").stat().st_mtime_ns == mtime
    plates_task.build_course_task(out, n_train=24, n_heldout=12, progress=False)
    assert len(json.loads((out / "train.json").read_text())) == 24
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".p.")]  # no temporary folders left behind


def test_plates_rebuild_when_the_drawing_changes(tmp_path, monkeypatch):
    """A copy drawn with other object sizes is stale even though the parameters match."""
    out = tmp_path / "p"
    plates_task.build_course_task(out, n_train=4, n_heldout=4, progress=False)
    mtime = (out / "train.json").stat().st_mtime_ns
    monkeypatch.setattr(plates_task, "OBJECT_SIZE", (0.2, 0.25))
    plates_task.build_course_task(out, n_train=4, n_heldout=4, progress=False)
    assert (out / "train.json").stat().st_mtime_ns != mtime


def test_objects_cover_a_visible_share_of_the_plate():
    """One object (the smallest case) must cover enough image tokens for the tiny model to find its colour."""
    import numpy as np

    for shape in plates_task.SHAPES:
        img = np.asarray(plates_task.draw_plate("blue", shape, 1, (448, 448), seed=3)).astype(int)
        blue = (img[..., 2] > 150) & (img[..., 0] < 110) & (img[..., 1] < 150)
        assert blue.mean() > 0.02, f"one {shape} covers only {blue.mean():.1%} of the image"


def test_answer_matches_both_languages():
    meta = {"kind": "colour", "value": "red"}
    assert plates_task.answer_matches("Red.", meta) and plates_task.answer_matches("红色", meta) and plates_task.answer_matches("红", meta)
    assert not plates_task.answer_matches("blue", meta)
    assert plates_task.answer_matches(" 3 ", {"kind": "count", "value": "3"})


def test_plates_texts_cover_questions_and_answers():
    texts = plates_task.plates_texts()
    assert "星形" in texts["zh"] and "triangle" in texts["en"] and len(texts["en"]) == 3 + 12


# ---------------------------------------------------------------- tiles
@pytest.mark.parametrize("w,h,max_num,tiles", [
    (448, 448, 6, 1),      # square and small: 1x1 and 2x2 tie on ratio, area too small for 2x2 -> 1 tile, no thumbnail
    (896, 896, 6, 5),      # square and large: the 2x2 tie goes to the bigger grid (area > half of 4 tiles) -> 4 + thumbnail
    (640, 360, 6, 3),      # 16:9 -> 2x1 (2.0 is the closest ratio) + thumbnail
    (1920, 1080, 12, 9),   # 16:9 with 12 allowed -> 4x2 + thumbnail
    (384, 512, 6, 7),      # 3:4 -> 2x3 (0.667) + thumbnail
])
def test_count_tiles(w, h, max_num, tiles):
    assert D.count_tiles(w, h, max_num) == tiles
    assert D.image_tokens(w, h, max_num) == 256 * tiles


# ---------------------------------------------------------------- builders
def test_from_foodieqa_published_schema():
    sivqa = {"0": [{"question": "图片中的食物通常属于哪个菜系?", "choices": ["京菜", "徽菜", "新疆菜", "桂菜"], "answer": "2",
                    "question_type": "cuisine_type", "food_name": "大盘鸡", "question_id": "vqa-0",
                    "food_meta": {"main_ingredient": ["鸡"], "id": 217, "food_name": "大盘鸡", "food_type": "新疆菜",
                                  "food_location": "餐馆", "food_file": "images/217.jpg"}}]}
    (rec,) = D.from_foodieqa(sivqa, image_prefix="FoodieQA/")
    assert rec["id"] == "vqa-0" and rec["image"] == "FoodieQA/images/217.jpg"
    human, gpt = rec["conversations"]
    assert human["from"] == "human" and human["value"].startswith("<image>\n图片中的食物")
    assert "C. 新疆菜" in human["value"] and gpt == {"from": "gpt", "value": "C. 新疆菜"}
    (bare,) = D.from_foodieqa(sivqa, with_choices=False)
    assert bare["conversations"][1]["value"] == "新疆菜" and "A." not in bare["conversations"][0]["value"]
    with pytest.raises(ValueError, match="vqa-0"):
        D.from_foodieqa([{**sivqa["0"][0], "answer": "x"}])


def test_self_cognition_both_formats():
    chat = D.self_cognition("小明", n=10, fmt="openai")
    assert len(chat) == 10 and chat[0]["messages"][0] == {"role": "user", "content": "请做一下自我介绍"}
    assert all("小明" in r["messages"][1]["content"] for r in chat)
    vl = D.self_cognition("小明", n=10)
    assert len({r["id"] for r in vl}) == 10 and all("image" not in r for r in vl)
    assert all("小明" in r["conversations"][1]["value"] and "<image>" not in r["conversations"][0]["value"] for r in vl)
    assert D.openai_to_internvl(chat)[0]["conversations"] == vl[0]["conversations"]
    with pytest.raises(ValueError, match="name"):
        D.self_cognition("  ")


def test_from_llava_and_repeat():
    llava = [{"id": 33471, "image": "coco/1.jpg", "model": "x",
              "conversations": [{"from": "human", "value": "What is it?\n<image>"}, {"from": "gpt", "value": "A bus."},
                                {"from": "human", "value": "Colour?"}, {"from": "gpt", "value": "Red."}]}]
    (rec,) = D.from_llava(llava, image_prefix="data/")
    assert rec["id"] == "33471" and rec["image"] == "data/coco/1.jpg" and "model" not in rec
    assert rec["conversations"][0]["value"] == "<image>\nWhat is it?" and len(rec["conversations"]) == 4
    assert llava[0]["conversations"][0]["value"] == "What is it?\n<image>"  # input untouched
    rep = D.repeat([rec], 3)
    assert [r["id"] for r in rep] == ["33471", "33471#1", "33471#2"]
    rep[1]["conversations"][0]["value"] = "changed"
    assert rec["conversations"][0]["value"] == "<image>\nWhat is it?"


def test_swift_round_trip_is_lossless(tmp_path):
    recs = plates_task.plates_records(12, "train") + D.self_cognition("Ada", n=2) + [
        {"id": "multi", "image": ["a.jpg"], "conversations": [
            {"from": "human", "value": "<image>\nQ1"}, {"from": "gpt", "value": "A1"},
            {"from": "human", "value": "Q2"}, {"from": "gpt", "value": "A2"}]},
        {"id": "tag-later", "image": "b.jpg", "conversations": [
            {"from": "human", "value": "Look: <image> what?"}, {"from": "gpt", "value": "x"}]}]
    rows = D.to_swift(recs)
    assert rows[0]["images"] == [recs[0]["image"]] and "<image>" not in rows[0]["query"]
    assert rows[-2]["history"] == [["Q1", "A1"]] and rows[-2]["query"] == "Q2"
    D.save_records(tmp_path / "s.jsonl", rows)
    back = D.from_swift(tmp_path / "s.jsonl")
    assert back == recs
    assert D.to_swift(back) == rows
    plain = D.to_swift(recs[:1], keep_extra=False)[0]
    assert set(plain) == {"query", "response", "images"}


def test_from_swift_seed_rows():
    rows = [{"query": "55555", "response": "66666", "images": ["image_path"]}]
    (rec,) = D.from_swift(rows)
    assert rec["image"] == "image_path"
    assert rec["conversations"] == [{"from": "human", "value": "<image>\n55555"}, {"from": "gpt", "value": "66666"}]


def test_apply_repeat_and_mix_follow_repeat_times():
    recs = [{"id": str(i), "image": f"{i}.jpg", "conversations": []} for i in range(10)]
    assert len(D.apply_repeat(recs, 0.5)) == 5 and len({r["id"] for r in D.apply_repeat(recs, 0.5)}) == 5
    assert len(D.apply_repeat(recs, 2)) == 20
    assert len(D.apply_repeat(recs, 2.5)) == 25
    assert len(D.apply_repeat(recs, 2.5, xtuner_0_2_exact=True)) == 20
    with pytest.raises(ValueError):
        D.apply_repeat(recs, 0)
    mixed = D.mix([(recs, 2), (recs[:4], 0.5)], image_prefixes=["a/", "b/"], seed=1)
    assert len(mixed) == 22 and len({r["id"] for r in mixed}) == 22
    assert sum(r["image"].startswith("b/") for r in mixed) == 2
    assert recs[0]["image"] == "0.jpg"  # inputs untouched
    assert mixed == D.mix([(recs, 2), (recs[:4], 0.5)], image_prefixes=["a/", "b/"], seed=1)


def test_load_records_names_the_bad_line(tmp_path):
    p = tmp_path / "x.jsonl"
    p.write_text('{"a": 1}\n{"a": \n')
    with pytest.raises(ValueError, match="line 2"):
        D.load_records(p)


def test_jsonl_splits_records_only_at_line_ends(tmp_path):
    odd = ["a\u2028b", "c\u2029d", "e\u0085f", "g\x0bh", "i\x0cj", "k\x1cl", "m\x1dn", "o\x1ep"]
    records = [{"id": str(i), "conversations": [{"from": "human", "value": v}, {"from": "gpt", "value": v}]}
               for i, v in enumerate(odd)]
    path = D.save_records(tmp_path / "odd.jsonl", records)
    assert len(path.read_bytes().split(b"\n")) == len(records) + 1, "one line per record"
    assert D.load_records(path) == records
    crlf = tmp_path / "crlf.jsonl"
    crlf.write_bytes(b'{"id": "a"}\r\n{"id": "b"}\r{"id": "c"}')
    assert [r["id"] for r in D.load_records(crlf)] == ["a", "b", "c"]
    assert D.jsonl_lines("x\u2028y\nz\n") == ["x\u2028y", "z"]


def test_a_changed_question_rebuilds_the_task(tmp_path, monkeypatch):
    out = tmp_path / "plates"
    plates_task.build_course_task(out, n_train=4, n_heldout=4, progress=False)
    question = ("colour", "en")
    monkeypatch.setitem(plates_task.QUESTIONS, question, "Which colour? Answer with one colour.")
    plates_task.build_course_task(out, n_train=4, n_heldout=4, progress=False)  # the same parameters: only the question changed
    asked = [t["value"] for r in json.loads((out / "train.json").read_text(encoding="utf-8")) for t in r["conversations"]]
    assert any(a.endswith("Which colour? Answer with one colour.") for a in asked)
