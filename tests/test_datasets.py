"""Tests of labsupport.datasets: the plates course task, the builders, the mixer."""
from __future__ import annotations

import collections
import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from labsupport import datasets as D


# ---------------------------------------------------------------- the plates course task
@pytest.fixture(scope="module")
def plates(tmp_path_factory):
    return D.build_course_task(tmp_path_factory.mktemp("plates") / "plates", n_train=48, n_heldout=24, progress=False)


def test_plates_files_and_format(plates):
    train = json.loads(plates["train"].read_text(encoding="utf-8"))
    held = json.loads(plates["heldout"].read_text(encoding="utf-8"))
    assert len(train) == 48 and len(held) == 24
    for rec in train + held:
        human, gpt = rec["conversations"]
        assert (human["from"], gpt["from"]) == ("human", "gpt")
        assert human["value"].startswith("<image>\n") and human["value"].count("<image>") == 1
        with Image.open(plates["image_folder"] / rec["image"]) as im:
            assert list(im.size) == rec["image_wh"]
        assert gpt["value"] == rec["meta"]["answer"]
    assert {r["id"] for r in train}.isdisjoint({r["id"] for r in held})
    assert {r["image"] for r in train}.isdisjoint({r["image"] for r in held})


def test_plates_balanced_bilingual_chance_quarter():
    recs = D.plates_records(120, "train", seed=3)
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
    a = D.plates_records(16, "train", kinds=("colour",), seed=1)
    assert {r["meta"]["kind"] for r in a} == {"colour"}
    assert a == D.plates_records(16, "train", kinds=("colour",), seed=1)
    assert a != D.plates_records(16, "train", kinds=("colour",), seed=2)
    with pytest.raises(ValueError, match="kinds"):
        D.plates_records(4, "train", kinds=("size",))


def test_draw_plate_shows_the_colour():
    img = D.draw_plate("red", "square", 4, (448, 448), seed=5)
    px = np.asarray(img.convert("RGB")).astype(int)
    r, g, b = px[..., 0], px[..., 1], px[..., 2]
    reddish = int(((r > 170) & (g < 90) & (b < 90)).sum())
    blueish = int(((b > 170) & (r < 90) & (g < 120)).sum())
    assert reddish > 2000 and blueish == 0


def test_plates_stamp_skips_rebuild_and_rebuilds_on_change(tmp_path):
    out = tmp_path / "p"
    D.build_course_task(out, n_train=12, n_heldout=12, progress=False)
    mtime = (out / "train.json").stat().st_mtime_ns
    D.build_course_task(out, n_train=12, n_heldout=12, progress=False)
    assert (out / "train.json").stat().st_mtime_ns == mtime
    D.build_course_task(out, n_train=24, n_heldout=12, progress=False)
    assert len(json.loads((out / "train.json").read_text())) == 24
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".p.")]  # no temporary folders left behind


def test_answer_matches_both_languages():
    meta = {"kind": "colour", "value": "red"}
    assert D.answer_matches("Red.", meta) and D.answer_matches("红色", meta) and D.answer_matches("红", meta)
    assert not D.answer_matches("blue", meta)
    assert D.answer_matches(" 3 ", {"kind": "count", "value": "3"})


def test_plates_texts_cover_questions_and_answers():
    texts = D.plates_texts()
    assert "星形" in texts["zh"] and "triangle" in texts["en"] and len(texts["en"]) == 3 + 12
