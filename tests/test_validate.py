"""Tests of labsupport.datasets.validate: one crafted bad record for each problem kind, the report, the clean file."""
from __future__ import annotations

import hashlib
import json

import pytest
from PIL import Image

from labsupport.datasets import exercises, validate as V


def good(i: int = 0) -> dict:
    return {"id": f"r{i}", "image": "good.jpg",
            "conversations": [{"from": "human", "value": "<image>\nWhat colour?"}, {"from": "gpt", "value": "red"}]}


@pytest.fixture()
def root(tmp_path):
    r = tmp_path / "imgs"
    r.mkdir()
    Image.new("RGB", (64, 48), (200, 10, 10)).save(r / "good.jpg")
    Image.new("RGB", (64, 48), (200, 10, 10)).save(r / "second.jpg")
    Image.new("RGB", (1200, 40), (0, 0, 0)).save(r / "strip.png")
    Image.new("RGB", (20, 20), (0, 0, 0)).save(r / "tiny.png")
    (r / "empty.jpg").write_bytes(b"")
    (r / "text.jpg").write_text("not an image")
    Image.new("RGB", (300, 300), (10, 120, 200)).save(r / "full.png")
    data = (r / "full.png").read_bytes()
    (r / "cut.png").write_bytes(data[: len(data) // 2])
    (tmp_path / "secret.jpg").write_bytes((r / "good.jpg").read_bytes())
    return r


def run(tmp_path, root, bad, **kw) -> V.Report:
    path = tmp_path / "data.json"
    path.write_text(json.dumps([good(0), bad]), encoding="utf-8")  # ascii escapes: a lone \ud800 survives
    return V.validate(path, root, progress=False, **kw)


def mutate(fn):
    rec = good(1)
    fn(rec)
    return rec


CASES = {
    "not_a_record": ["just a string"],
    "missing_key": [mutate(lambda r: r.pop("conversations"))],
    "missing_id": [mutate(lambda r: r.pop("id"))],
    "non_string": [mutate(lambda r: r["conversations"][1].update(value=3))],
    "unknown_role": [mutate(lambda r: r["conversations"][1].update({"from": "assistant"}))],
    "role_order": [mutate(lambda r: r["conversations"].reverse())],
    "empty_turn": [mutate(lambda r: r["conversations"][1].update(value="  "))],
    "image_tag_count": [mutate(lambda r: r["conversations"][0].update(value="What colour?"))],
    "image_tag_position": [mutate(lambda r: r["conversations"][0].update(value="What colour? <image>"))],
    "too_many_images": [mutate(lambda r: (r.update(image=["good.jpg", "second.jpg"]),
                                          r["conversations"][0].update(value="<image>\n<image>\nSame?")))],
    "duplicate_id": [mutate(lambda r: r.update(id="r0"))],
    "path_outside_root": [mutate(lambda r: r.update(image="../secret.jpg"))],
    "image_missing": [mutate(lambda r: r.update(image="nowhere.jpg"))],
    "image_empty": [mutate(lambda r: r.update(image="empty.jpg"))],
    "image_unreadable": [mutate(lambda r: r.update(image="text.jpg"))],
    "image_truncated": [mutate(lambda r: r.update(image="cut.png"))],
    "image_aspect": [mutate(lambda r: r.update(image="strip.png"))],
    "image_tiny": [mutate(lambda r: r.update(image="tiny.png"))],
    "image_wh_mismatch": [mutate(lambda r: r.update(image_wh=[10, 10]))],
    "non_utf8_text": [mutate(lambda r: r["conversations"][1].update(value="red\ud800"))],
    "replacement_char": [mutate(lambda r: r["conversations"][1].update(value="r\ufffdd"))],
}


@pytest.mark.parametrize("kind", sorted(CASES))
def test_each_record_kind_is_named(tmp_path, root, kind):
    report = run(tmp_path, root, CASES[kind][0])
    kinds_at = {(p.index, p.kind) for p in report.problems}
    assert (1, kind) in kinds_at, str(report)
    assert not [p for p in report.problems if p.index == 0], "the good record was blamed: " + str(report)
    p = next(p for p in report.problems if p.kind == kind)
    assert p.fix and p.file.endswith("data.json") and p.severity == V.KINDS[kind][0]
    if kind not in ("not_a_record", "missing_id"):
        assert p.id == ("r0" if kind == "duplicate_id" else "r1")


def test_too_long_counts_image_tokens(tmp_path, root):
    from tokenizers import Tokenizer, models, pre_tokenizers

    tok = Tokenizer(models.WordLevel({"[UNK]": 0, "what": 1}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    rec = good(1)
    rec["conversations"][1]["value"] = "word " * 50
    ok = run(tmp_path, root, good(1), tokenizer=tok, max_length=1820)
    assert ok.ok and set(ok.lengths) == {0, 1}
    # good.jpg is 64x48 (4:3): the closest grid with <= 6 tiles is 3x2 (1.5), plus the thumbnail = 7 tiles
    # of 256 tokens, +2 for <img></img>; the text "What colour?" + "red" is 4 word-level tokens
    assert ok.lengths[0] == 7 * 256 + 2 + 4
    long = run(tmp_path, root, rec, tokenizer=tok, max_length=1820)
    assert [p.kind for p in long.problems] == ["too_long"] and long.lengths[1] == 7 * 256 + 2 + 3 + 50
    one_tile = run(tmp_path, root, rec, tokenizer=tok, max_length=1820, count_tiles_fn=lambda w, h, n: 1)
    assert one_tile.ok and one_tile.lengths[1] == 256 + 2 + 3 + 50


def test_file_level_problems(tmp_path, root):
    missing = V.validate(tmp_path / "absent.json", root, progress=False)
    assert [p.kind for p in missing.problems] == ["unreadable_file"]
    broken = tmp_path / "broken.json"
    broken.write_text('[{"id": "a",}]')
    assert [p.kind for p in V.validate(broken, root, progress=False).problems] == ["bad_json"]
    obj = tmp_path / "obj.json"
    obj.write_text('{"id": "a"}')
    assert [p.kind for p in V.validate(obj, root, progress=False).problems] == ["not_a_list"]


def test_jsonl_bad_line_and_raw_non_utf8_bytes(tmp_path, root):
    path = tmp_path / "data.jsonl"
    lines = [json.dumps(good(0)).encode(), b'{"id": "r1", "image": ', json.dumps(good(2)).encode().replace(b"red", b"r\xffd")]
    path.write_bytes(b"\n".join(lines) + b"\n")
    report = V.validate(path, root, progress=False)
    assert {(p.index, p.kind) for p in report.problems} == {(1, "bad_jsonl_line"), (2, "non_utf8_text")}
    assert "line 2" in report.problems[0].message


def test_input_untouched_and_clean_file_written(tmp_path, root):
    path = tmp_path / "data.json"
    recs = [good(0), CASES["image_missing"][0], mutate(lambda r: r.update(id="r2"))]
    path.write_text(json.dumps(recs))
    before = hashlib.sha256(path.read_bytes()).hexdigest()
    clean = tmp_path / "out" / "clean.jsonl"
    report = V.validate(path, root, progress=False, clean_to=clean)
    assert hashlib.sha256(path.read_bytes()).hexdigest() == before
    assert [json.loads(l)["id"] for l in clean.read_text().splitlines()] == ["r0", "r2"]
    assert not report.ok and report.counts() == {"image_missing": 1}
    with pytest.raises(ValueError, match="refusing"):
        report.write_clean(path)
    assert "record 1 (id 'r1')" in str(report)


def test_broken_copy_plants_every_record_kind_and_validator_finds_each(tmp_path):
    from labsupport.datasets import plates
    from labsupport.datasets.datastats import ApproxTokenizer

    src = plates.build_course_task(tmp_path / "plates", n_train=12, n_heldout=12, progress=False)
    before = hashlib.sha256(src["train"].read_bytes()).hexdigest()
    b = exercises.make_broken_copy(src["train"], src["image_folder"], tmp_path / "broken", n_good=8, max_length=4096)
    assert hashlib.sha256(src["train"].read_bytes()).hexdigest() == before
    report = V.validate(b["json"], b["image_root"], tokenizer=ApproxTokenizer(), max_length=4096, progress=False)
    found = {(p.index, p.kind) for p in report.problems}
    assert all((i, k) in found for k, i in b["planted"].items()), str(report)
    assert not [p for p in report.problems if p.index is not None and p.index < 8], "a good record was blamed"
    record_kinds = set(V.KINDS) - set(V.FILE_KINDS) - {"bad_jsonl_line"}
    assert set(b["planted"]) <= record_kinds and len(b["planted"]) >= 20  # every kind: tests/test_bad_inputs.py
    jl = V.validate(b["jsonl"], b["image_root"], progress=False)
    assert {(p.index, p.kind) for p in jl.problems} == {(i, k) for k, i in b["planted_jsonl"].items()}
    assert "<byte 0xff>" in next(p.message for p in jl.problems if p.kind == "non_utf8_text")
    assert [p.kind for p in V.validate(b["bad_syntax"], b["image_root"], progress=False).problems] == ["bad_json"]
    clean = report.write_clean(tmp_path / "broken" / "clean.json")
    again = V.validate(clean, b["image_root"], tokenizer=ApproxTokenizer(), max_length=4096, progress=False)
    assert again.ok and len(again.records) == len(report.records) - len(report.bad_indices)


def test_template_tokens_are_added_to_lengths(tmp_path, root):
    from labsupport.datasets.datastats import ApproxTokenizer

    plain = run(tmp_path, root, good(1), tokenizer=ApproxTokenizer())
    more = run(tmp_path, root, good(1), tokenizer=ApproxTokenizer(), template_tokens=30, max_length=plain.lengths[0] + 10)
    assert more.lengths[0] == plain.lengths[0] + 30 and [p.kind for p in more.problems] == ["too_long", "too_long"]


def test_lone_surrogates_are_counted_with_a_real_fast_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers

    tok = Tokenizer(models.WordLevel({"a": 0, "?": 1, "[UNK]": 2}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    from transformers import PreTrainedTokenizerFast

    fast = PreTrainedTokenizerFast(tokenizer_object=tok)
    assert V.count_text_tokens(fast, "a \ud800 a") == 3


def test_counting_a_too_long_text_does_not_warn(capsys, caplog):
    """The validator measures over-long texts on purpose: transformers' 'longer than' warning is not for the learner."""
    from labsupport.model import tinymodel

    tok = tinymodel.load_tokenizer("tiny")
    text = "plate " * (tok.model_max_length + 10)
    n = V.count_text_tokens(tok, text)
    assert n > tok.model_max_length
    assert "longer than the specified maximum" not in capsys.readouterr().err + caplog.text
