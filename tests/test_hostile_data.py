"""Hostile inputs to validate() and the converters: every one a named problem or a ConversionError naming the file,
never a bare exception, a blocking read or a lost report (#31)."""
from __future__ import annotations

import gzip
import json
import os
import threading

import pytest
from PIL import Image

from labsupport.datasets import formats, sources
from labsupport.datasets.safe_read import DataFileError
from labsupport.datasets.validate import validate


def rec(i, image="img.png", **kw):
    return {"id": f"r{i}", "image": image, "conversations": [{"from": "human", "value": "<image>\nq"},
                                                             {"from": "gpt", "value": "a"}], **kw}


@pytest.fixture()
def root(tmp_path):
    Image.new("RGB", (64, 64), "red").save(tmp_path / "img.png")
    return tmp_path


def kinds(report):
    return {p.kind for p in report.problems}


def test_bad_image_paths_become_named_problems_and_the_report_survives(root):
    os.symlink(root / "loop_b.png", root / "loop_a.png")
    os.symlink(root / "loop_a.png", root / "loop_b.png")
    os.mkfifo(root / "pipe.png")
    records = [rec(0), rec(1, "loop_a.png"), rec(2, "bad\x01name.png"), rec(3, "x" * 300 + ".png"), rec(4, "pipe.png"),
               rec(5, "bad\x00nul.png")]
    (root / "d.json").write_text(json.dumps(records))
    done = {}
    t = threading.Thread(target=lambda: done.setdefault("r", validate(root / "d.json", root, progress=False)), daemon=True)
    t.start()
    t.join(60)
    assert "r" in done, "validate() blocked (a FIFO read?)"
    report = done["r"]
    by = {p.index: p for p in report.problems}
    assert 0 not in by and len(report.records) == 6
    assert by[1].kind == "image_unopenable" and "symlink loop" in by[1].message
    assert by[2].kind == "image_unopenable" and "U+0001" in by[2].message
    assert by[3].kind == "image_unopenable" and "longer than" in by[3].message
    assert by[4].kind == "image_unopenable" and "FIFO" in by[4].message
    assert by[5].kind == "image_unopenable" and "U+0000" in by[5].message


def test_a_fifo_or_device_as_the_data_file_is_refused_without_reading(tmp_path):
    os.mkfifo(tmp_path / "d.json")
    report = validate(tmp_path / "d.json", tmp_path, progress=False)  # would block forever if opened
    assert kinds(report) == {"unreadable_file"} and "FIFO" in report.problems[0].message
    if os.path.exists("/dev/zero"):
        report = validate("/dev/zero", tmp_path, progress=False)
        assert "character device" in report.problems[-1].message
    with pytest.raises(DataFileError, match="FIFO"):
        formats.load_records(tmp_path / "d.json")


def test_a_huge_integer_literal_is_a_named_problem(tmp_path):
    (tmp_path / "d.json").write_text('[{"id": "a", "length": ' + "9" * 5000 + "}]")
    assert kinds(validate(tmp_path / "d.json", tmp_path, progress=False)) == {"number_too_long"}
    (tmp_path / "d.jsonl").write_text('{"id": "a", "length": ' + "9" * 5000 + "}\n")
    assert "number_too_long" in kinds(validate(tmp_path / "d.jsonl", tmp_path, progress=False))
    with pytest.raises(DataFileError, match="more digits than Python reads"):
        formats.load_records(tmp_path / "d.json")


@pytest.mark.parametrize("data, kind, words", [
    (gzip.compress(json.dumps([rec(0)]).encode()), "compressed_file", "gunzip"),
    (json.dumps([rec(0)]).encode()[:20] + b"\x00" + json.dumps([rec(0)]).encode()[20:], "nul_bytes", "stray NUL"),
    (json.dumps([rec(0)]).encode("utf-16-le"), "utf16_file", "UTF-16LE"),
    (json.dumps([rec(0, meta="宫保鸡丁，麻婆豆腐，鱼香肉丝" * 3)], ensure_ascii=False).encode("gbk"), "gbk_file", "GB18030"),
])
def test_encodings_are_named_correctly(tmp_path, data, kind, words):
    (tmp_path / "d.json").write_bytes(data)
    report = validate(tmp_path / "d.json", tmp_path, check_images=False, progress=False)
    assert kinds(report) == {kind} and words in report.problems[0].message
    with pytest.raises(DataFileError, match=str(tmp_path / "d.json")) as err:
        formats.load_records(tmp_path / "d.json")
    assert err.value.kind == kind and "UTF-16" not in str(err.value) or kind == "utf16_file"


def test_bom_and_trailing_comma_name_the_file(tmp_path):
    (tmp_path / "bom.json").write_bytes(b"\xef\xbb\xbf" + json.dumps([rec(0)]).encode())
    assert formats.load_records(tmp_path / "bom.json")[0]["id"] == "r0"  # a BOM carries no data: read past it
    (tmp_path / "comma.json").write_text('[{"id": "a"},\n]')
    with pytest.raises(DataFileError, match=r"comma.json: not valid json at line 2, column 1: a trailing comma"):
        formats.load_records(tmp_path / "comma.json")


@pytest.mark.parametrize("convert, records, words", [
    (formats.openai_to_internvl, [{"id": "c1"}], "no key 'messages'"),
    (formats.openai_to_internvl, [{"messages": [{"role": "user"}]}], "no key 'content'"),
    (formats.openai_to_internvl, ["just text"], "the record is a str"),
    (formats.from_llava, [{"id": 1, "image": "a.jpg", "conversations": []}], "empty or shorter"),
    (formats.from_llava, [{"conversations": [{"from": "human"}]}], "no key 'value'"),
    (formats.to_swift, [{"id": "x"}], "no key 'conversations'"),
    (formats.from_swift, [{"query": "q"}], "no key 'response'"),
    (formats.from_swift, [{"query": "q", "response": "a", "history": [["only one"]]}], "empty or shorter"),
    (formats.from_foodieqa, [{"question": "q"}], "FoodieQA record 0"),
    (formats.from_foodieqa, [3], "not a json object"),
])
def test_converters_name_the_record_and_the_format(tmp_path, convert, records, words):
    path = tmp_path / ("in.json" if convert is formats.from_foodieqa else "in.jsonl")
    formats.save_records(path, records)
    with pytest.raises(ValueError, match=words) as err:
        convert(path)
    if convert is not formats.from_foodieqa:
        assert str(path) in str(err.value) and "record 0" in str(err.value)
        assert type(err.value) is formats.ConversionError


def test_from_swift_takes_a_single_image_string_as_one_path():
    out = formats.from_swift([{"query": "what?", "response": "red", "images": "plate.jpg"}])
    assert out[0]["image"] == "plate.jpg" and out[0]["conversations"][0]["value"] == "<image>\nwhat?"


def test_a_gbk_file_is_named_by_the_converters_too(tmp_path):
    path = tmp_path / "cn.jsonl"
    path.write_bytes("\n".join(json.dumps({"type": "I2T", "text": "麻婆豆腐好吃" * 4, "image": "a.jpg"},
                                          ensure_ascii=False) for _ in range(3)).encode("gbk"))
    with pytest.raises(DataFileError, match="GB18030"):
        sources.from_oogiri(path)


def test_sources_read_jsonl_keeps_a_u2028_inside_a_record(tmp_path):
    path = tmp_path / "cn.jsonl"
    path.write_text(json.dumps({"type": "T2T", "text": "line\u2028break"}, ensure_ascii=False) + "\n", encoding="utf-8")
    assert sources.read_jsonl(path) == [{"type": "T2T", "text": "line\u2028break"}]
    assert sources.from_oogiri(path, types=("T2T",))[0]["conversations"][1]["value"] == "line\u2028break"
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"type": "I2T", "text": "t", "star": "many", "image": "a.jpg"}\n')
    with pytest.raises(formats.ConversionError, match="star is 'many'"):
        sources.from_oogiri(bad)
