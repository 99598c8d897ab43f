"""formats.detect_format / to_internvl: notebook 03b converts a learner's DATA whatever format it is in."""
import json

import pytest

from labsupport.datasets import formats


def _write(path, rows, jsonl=False):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows) if jsonl else json.dumps(rows, ensure_ascii=False))
    return path


@pytest.mark.parametrize("name, rows, jsonl", [
    ("internvl", [{"id": 1, "image": "a.png", "conversations": [{"from": "human", "value": "<image>\nWhat?"},
                                                                 {"from": "gpt", "value": "A cat."}]}], True),
    ("swift", [{"query": "What?", "response": "A cat.", "images": ["a.png"]}], True),
    ("openai", [{"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}]}], False),
    ("foodieqa", [{"question": "哪个菜系?", "choices": ["川菜", "粤菜", "鲁菜", "新疆菜"], "answer": "3",
                   "food_meta": {"food_file": "images/x.jpg"}, "question_type": "cuisine_type"}], False),
])
def test_each_format_is_recognised_and_converted(tmp_path, name, rows, jsonl):
    src = _write(tmp_path / ("in.jsonl" if jsonl else "in.json"), rows, jsonl)
    before = src.read_bytes()
    records, found, why = formats.to_internvl(src)
    assert found == name and why
    assert records and all(t["from"] in ("human", "gpt") for t in records[0]["conversations"])
    assert src.read_bytes() == before   # the learner's file is not modified


def test_swift_images_become_an_image_tag_and_path(tmp_path):
    src = _write(tmp_path / "in.jsonl", [{"query": "What?", "response": "A cat.", "images": ["a.png"]}], jsonl=True)
    rec = formats.to_internvl(src)[0][0]
    assert rec["image"] == "a.png" and rec["conversations"][0]["value"].startswith("<image>")


def test_an_unknown_format_names_its_keys_and_the_formats_known(tmp_path):
    src = _write(tmp_path / "in.json", [{"prompt": "x", "completion": "y"}])
    with pytest.raises(formats.ConversionError, match=r"completion, prompt.*ms-swift"):
        formats.to_internvl(src)


def test_a_broken_record_is_named_with_the_file(tmp_path):
    src = _write(tmp_path / "in.jsonl", [{"query": "q", "response": "a"}, {"query": "no response"}], jsonl=True)
    with pytest.raises(formats.ConversionError, match=r"in\.jsonl, record 1.*'response'"):
        formats.to_internvl(src)
