"""A reproducible corpus of bad (and tricky but valid) inputs for the dataset validator, generated in tmp_path.

For every case: validate() does not crash, the expected problem is reported at the expected record with a
message that names the file, the record (or "whole file") and a fix, the input bytes are unchanged, and
nothing is written half: write_clean() leaves either a complete file that validates without errors, or no
file and a clear ValueError, and no temporary file anywhere.
"""
from __future__ import annotations

import gzip
import hashlib
import json
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest
from PIL import Image

from labsupport.datasets import validate as V

GOOD_IMAGE = "good.jpg"


def good(i: int = 0, image: str | None = GOOD_IMAGE) -> dict:
    rec = {"id": f"r{i}", "conversations": [{"from": "human", "value": "<image>\nWhat colour?"},
                                            {"from": "gpt", "value": "red"}]}
    if image is not None:
        rec["image"] = image
    return rec


def text_only(i: int = 0) -> dict:
    return {"id": f"t{i}", "conversations": [{"from": "human", "value": "Hello?"}, {"from": "gpt", "value": "Hi."}]}


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def header_only_png(width: int, height: int) -> bytes:
    """A few hundred bytes that claim WIDTH x HEIGHT pixels (a decompression bomb's header): IDAT holds one row."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    row = zlib.compress(b"\x00" * 64)
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", row) + png_chunk(b"IEND", b"")


def make_images(root: Path) -> None:
    """Every image the corpus refers to, drawn deterministically (small files only)."""
    import numpy as np

    root.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (64, 48), (200, 10, 10)).save(root / GOOD_IMAGE)
    Image.new("RGB", (64, 48), (10, 200, 10)).save(root / "second.jpg")
    Image.new("RGB", (1200, 40)).save(root / "strip.png")
    Image.new("RGB", (20, 20)).save(root / "tiny.png")
    (root / "empty.jpg").write_bytes(b"")
    (root / "text.jpg").write_text("not an image")
    (root / "page.png").write_text("<html><body>404 not found</body></html>")
    (root / "drawing.svg").write_text('<svg xmlns="http://www.w3.org/2000/svg"><circle r="4"/></svg>')
    Image.new("RGB", (300, 300), (10, 120, 200)).save(root / "full.png")
    data = (root / "full.png").read_bytes()
    (root / "cut.png").write_bytes(data[: len(data) // 2])
    Image.effect_noise((300, 300), 40).convert("RGB").save(root / "full.jpg", quality=90)
    data = (root / "full.jpg").read_bytes()
    (root / "cut.jpg").write_bytes(data[: len(data) // 3])
    (root / "bomb.png").write_bytes(header_only_png(30000, 30000))       # 900 megapixels in a few hundred bytes
    (root / "huge.png").write_bytes(header_only_png(12247, 12247))       # 150 megapixels: below PIL's bomb error
    Image.fromarray(np.full((64, 64), 40000, dtype=np.uint16)).save(root / "deep16.png")  # 16-bit grey
    Image.fromarray(np.full((64, 64), 0.5, dtype=np.float32)).save(root / "float.tif")
    Image.new("RGBA", (64, 64), (255, 0, 0, 0)).save(root / "clear.png")
    half = Image.new("RGBA", (64, 64), (255, 0, 0, 255))
    half.paste((0, 0, 0, 0), (0, 0, 64, 32))
    half.save(root / "half_clear.png")
    frames = [Image.new("RGB", (64, 64), c) for c in ((255, 0, 0), (0, 255, 0), (0, 0, 255))]
    frames[0].save(root / "anim.gif", save_all=True, append_images=frames[1:], duration=100, loop=0)
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.new("RGB", (64, 48), (200, 10, 10)).save(root / "rotated.jpg", exif=exif)
    Image.new("CMYK", (64, 48), (0, 200, 200, 0)).save(root / "cmyk.jpg")
    Image.new("L", (64, 48), 128).save(root / "grey.png")
    Image.new("P", (64, 48), 5).save(root / "palette.png")
    Image.new("RGB", (64, 48), (1, 2, 3)).save(root / "photo.bmp")
    Image.new("RGB", (64, 48), (1, 2, 3)).save(root / "photo.webp")
    Image.new("1", (64, 48), 1).save(root / "bilevel.png")
    (root / "folder.jpg").mkdir()
    (root / "sub").mkdir()
    Image.new("RGB", (64, 48)).save(root / "sub" / "nested.jpg")
    (root.parent / "outside.jpg").write_bytes((root / GOOD_IMAGE).read_bytes())
    (root / "link_out.jpg").symlink_to(root.parent / "outside.jpg")


@dataclass
class Case:
    """One corpus entry: the file to validate, the problem expected (None: must validate cleanly) and where."""

    name: str
    build: Callable[[Path, Path], Path]  # (tmp folder, image root) -> the data file
    kind: str | None
    index: int | None = 1  # the record expected to carry KIND (None: the whole file)
    kwargs: dict | None = None


def json_file(records: list, name: str = "data.json", **dump) -> Callable[[Path, Path], Path]:
    def build(tmp: Path, root: Path) -> Path:
        path = tmp / name
        path.write_text(json.dumps(records, **dump), encoding="utf-8")
        return path
    return build


def jsonl_file(records: list, name: str = "data.jsonl") -> Callable[[Path, Path], Path]:
    def build(tmp: Path, root: Path) -> Path:
        path = tmp / name
        path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
        return path
    return build


def raw_file(data: bytes, name: str = "data.json") -> Callable[[Path, Path], Path]:
    def build(tmp: Path, root: Path) -> Path:
        path = tmp / name
        path.write_bytes(data)
        return path
    return build


def with_record(change: Callable[[dict], object], base: Callable[[], dict] = lambda: good(1), fmt: str = "json"):
    rec = base()
    result = change(rec)
    bad = rec if result is None or isinstance(result, tuple) else result  # a tuple: several changes to REC
    return (json_file if fmt == "json" else jsonl_file)([good(0), bad])


def turn(rec: dict, i: int) -> dict:
    return rec["conversations"][i]


def deep(n: int) -> str:
    return "[" * n + "]" * n


GOOD_JSON = json.dumps([good(0), good(1)]).encode()
CASES: list[Case] = [
    # --- the defects of issue 17 ------------------------------------------------------------------
    Case("null_record", json_file([good(0), None]), "not_a_record"),
    Case("value_null", with_record(lambda r: turn(r, 1).update(value=None)), "non_string"),
    Case("from_null", with_record(lambda r: turn(r, 1).update({"from": None})), "non_string"),
    Case("image_wh_string", with_record(lambda r: r.update(image_wh="448x448")), "bad_image_wh"),
    Case("length_string", with_record(lambda r: r.update(length="long")), "bad_length"),
    Case("image_tag_only_in_answer", with_record(lambda r: (turn(r, 0).update(value="What colour?"),
                                                            turn(r, 1).update(value="<image>\nred"))), "image_tag_in_answer"),
    Case("a_third_of_images_missing", json_file([good(i, GOOD_IMAGE if i % 3 else f"gone{i}.jpg") for i in range(6)]),
         "image_missing", 0),
    Case("brackets_100k_nested", raw_file(deep(100_000).encode()), "too_deep", None),
    Case("record_3000_deep", raw_file(b'[{"id": "a", "conversations": ' + deep(3000).encode() + b"}]"), "too_deep", None),
    Case("jsonl_line_3000_deep", raw_file(json.dumps(good(0)).encode() + b"\n" + deep(3000).encode() + b"\n",
                                          "data.jsonl"), "too_deep", 1),
    Case("bomb_png_900_megapixels", with_record(lambda r: r.update(image="bomb.png")), "image_too_large"),
    Case("png_150_megapixels", with_record(lambda r: r.update(image="huge.png")), "image_too_large"),
    Case("png_16_bit", with_record(lambda r: r.update(image="deep16.png")), "image_high_bit_depth"),
    Case("tiff_32_bit_float", with_record(lambda r: r.update(image="float.tif")), "image_high_bit_depth"),
    Case("rgba_fully_transparent", with_record(lambda r: r.update(image="clear.png")), "image_transparent"),
    Case("rgba_half_transparent", with_record(lambda r: r.update(image="half_clear.png")), "image_alpha"),
    Case("animated_gif", with_record(lambda r: r.update(image="anim.gif")), "image_animated"),
    Case("exif_rotated_jpeg", with_record(lambda r: r.update(image="rotated.jpg")), "image_exif_rotated"),
    Case("empty_list", raw_file(b"[]"), "empty_dataset", None),
    Case("utf16_le_bom", raw_file("\ufeff".encode("utf-16-le") + json.dumps([good(0)]).encode("utf-16-le")), "utf16_file", None),
    Case("utf16_be_no_bom", raw_file(json.dumps([good(0)]).encode("utf-16-be")), "utf16_file", None),
    Case("utf32", raw_file(json.dumps([good(0)]).encode("utf-32")), "utf16_file", None),
    # --- file level --------------------------------------------------------------------------------
    Case("missing_file", lambda tmp, root: tmp / "absent.json", "unreadable_file", None),
    Case("folder_not_file", lambda tmp, root: (tmp / "dir.json").mkdir() or tmp / "dir.json", "unreadable_file", None),
    Case("txt_suffix", raw_file(GOOD_JSON, "data.txt"), "unsupported_suffix", None),
    Case("csv_suffix", raw_file(b"id,image\nr0,good.jpg\n", "data.csv"), "unsupported_suffix", None),
    Case("zero_bytes", raw_file(b""), "empty_file", None),
    Case("whitespace_only", raw_file(b"  \n\n "), "empty_file", None),
    Case("empty_jsonl", raw_file(b"", "data.jsonl"), "empty_file", None),
    Case("utf8_bom", raw_file(b"\xef\xbb\xbf" + GOOD_JSON), "utf8_bom", None),
    Case("trailing_comma", raw_file(b'[{"id": "a",}]'), "bad_json", None),
    Case("missing_comma", raw_file(GOOD_JSON.replace(b"}, {", b"} {", 1)), "bad_json", None),
    Case("unclosed_list", raw_file(GOOD_JSON[:-1]), "bad_json", None),
    Case("single_quotes", raw_file(b"[{'id': 'a'}]"), "bad_json", None),
    Case("python_none", raw_file(b'[{"id": "a", "image": None}]'), "bad_json", None),
    Case("cut_in_half", raw_file(GOOD_JSON[: len(GOOD_JSON) // 2]), "bad_json", None),
    Case("jsonl_named_json", raw_file(b"\n".join(json.dumps(good(i)).encode() for i in range(3)) + b"\n"), "jsonl_in_json", None),
    Case("json_named_jsonl", raw_file(json.dumps([good(0), good(1)], indent=1).encode(), "data.jsonl"), "json_in_jsonl", None),
    Case("top_level_object", raw_file(b'{"id": "a"}'), "not_a_list", None),
    Case("top_level_string", raw_file(b'"records"'), "not_a_list", None),
    Case("top_level_number", raw_file(b"42"), "not_a_list", None),
    Case("jsonl_blank_line", raw_file(json.dumps(good(0)).encode() + b"\n\n" + json.dumps(good(1)).encode() + b"\n",
                                      "data.jsonl"), "blank_jsonl_line", None),
    Case("jsonl_cut_line", raw_file(json.dumps(good(0)).encode() + b"\n" + json.dumps(good(1)).encode()[:-9] + b"\n",
                                    "data.jsonl"), "bad_jsonl_line"),
    Case("jsonl_two_records_one_line", raw_file(json.dumps(good(0)).encode() + b"\n" + json.dumps(good(1)).encode() * 2,
                                                "data.jsonl"), "bad_jsonl_line"),
    Case("jsonl_crlf_is_valid", raw_file(json.dumps(good(0)).encode() + b"\r\n" + json.dumps(good(1)).encode() + b"\r\n",
                                         "data.jsonl"), None),
    Case("jsonl_cr_only_is_valid", raw_file(json.dumps(good(0)).encode() + b"\r" + json.dumps(good(1)).encode(),
                                            "data.jsonl"), None),
    # --- text encodings ----------------------------------------------------------------------------
    Case("raw_byte_ff", raw_file(GOOD_JSON.replace(b'"red"', b'"r\xffd"', 1)), "non_utf8_text", 0),
    Case("latin1_text", raw_file(GOOD_JSON.replace(b'"red"', "\"rouge fonc\u00e9\"".encode("latin-1"), 1)), "non_utf8_text", 0),
    Case("gbk_chinese", raw_file(GOOD_JSON.replace(b'"red"', "\"\u7ea2\u8272\"".encode("gbk"), 1)), "non_utf8_text", 0),
    Case("lone_surrogate_escape", raw_file(GOOD_JSON.replace(b'"red"', b'"red\\ud800"', 1)), "non_utf8_text", 0),
    Case("surrogate_in_key", raw_file(GOOD_JSON.replace(b'"id"', b'"i\\udc80d"', 1)), "non_utf8_text", 0),
    Case("replacement_char", with_record(lambda r: turn(r, 1).update(value="r\ufffdd")), "replacement_char"),
    # --- record shape ------------------------------------------------------------------------------
    Case("record_is_string", json_file([good(0), "just a string"]), "not_a_record"),
    Case("record_is_list", json_file([good(0), [good(1)]]), "not_a_record"),
    Case("record_is_number", json_file([good(0), 7]), "not_a_record"),
    Case("jsonl_null_line", raw_file(json.dumps(good(0)).encode() + b"\nnull\n", "data.jsonl"), "not_a_record"),
    Case("no_conversations", with_record(lambda r: r.pop("conversations") and None), "missing_key"),
    Case("conversations_null", with_record(lambda r: r.update(conversations=None)), "non_string"),
    Case("conversations_string", with_record(lambda r: r.update(conversations="human: hi")), "non_string"),
    Case("conversations_object", with_record(lambda r: r.update(conversations={"from": "human"})), "missing_key"),
    Case("turn_is_string", with_record(lambda r: r["conversations"].__setitem__(1, "red")), "missing_key"),
    Case("turn_without_from", with_record(lambda r: turn(r, 1).pop("from") and None), "missing_key"),
    Case("turn_without_value", with_record(lambda r: turn(r, 1).pop("value") and None), "missing_key"),
    Case("no_id", with_record(lambda r: r.pop("id") and None), "missing_id"),
    Case("id_is_list", with_record(lambda r: r.update(id=["a"])), "non_string"),
    Case("id_is_bool", with_record(lambda r: r.update(id=True)), "non_string"),
    Case("duplicate_id", with_record(lambda r: r.update(id="r0")), "duplicate_id"),
    Case("value_is_number", with_record(lambda r: turn(r, 1).update(value=3)), "non_string"),
    Case("value_is_list", with_record(lambda r: turn(r, 1).update(value=["red"])), "non_string"),
    Case("from_is_number", with_record(lambda r: turn(r, 1).update({"from": 1})), "non_string"),
    Case("image_is_number", with_record(lambda r: r.update(image=5)), "non_string"),
    Case("image_is_object", with_record(lambda r: r.update(image={"path": GOOD_IMAGE})), "non_string"),
    Case("length_float", with_record(lambda r: r.update(length=3.5)), "bad_length"),
    Case("length_bool", with_record(lambda r: r.update(length=True)), "bad_length"),
    Case("image_wh_empty", with_record(lambda r: r.update(image_wh=[])), "bad_image_wh"),
    Case("image_wh_zero", with_record(lambda r: r.update(image_wh=[0, 448])), "bad_image_wh"),
    Case("image_wh_three", with_record(lambda r: r.update(image_wh=[448, 448, 3])), "bad_image_wh"),
    Case("image_wh_strings", with_record(lambda r: r.update(image_wh=["64", "48"])), "bad_image_wh"),
    Case("image_wh_wrong_size", with_record(lambda r: r.update(image_wh=[10, 10])), "image_wh_mismatch"),
    # --- roles and turns ---------------------------------------------------------------------------
    Case("role_assistant", with_record(lambda r: turn(r, 1).update({"from": "assistant"})), "unknown_role"),
    Case("role_user", with_record(lambda r: turn(r, 0).update({"from": "user"})), "unknown_role"),
    Case("role_system", with_record(lambda r: r["conversations"].insert(0, {"from": "system", "value": "Be brief."})),
         "unknown_role"),
    Case("roles_reversed", with_record(lambda r: r["conversations"].reverse()), "role_order"),
    Case("two_human_turns", with_record(lambda r: turn(r, 1).update({"from": "human"})), "role_order"),
    Case("ends_with_human", with_record(lambda r: r["conversations"].append({"from": "human", "value": "And?"})), "role_order"),
    Case("single_turn", with_record(lambda r: r["conversations"].pop() and None), "role_order"),
    Case("empty_answer", with_record(lambda r: turn(r, 1).update(value="")), "empty_turn"),
    Case("whitespace_question", with_record(lambda r: turn(r, 0).update(value="  "), base=lambda: text_only(1)), "empty_turn"),
    Case("answer_only_image_tag", with_record(lambda r: turn(r, 1).update(value="<image>")), "empty_turn"),
    Case("empty_conversations", with_record(lambda r: r.update(conversations=[])), "empty_turn"),
    # --- image tags ----------------------------------------------------------------------------------
    Case("no_image_tag", with_record(lambda r: turn(r, 0).update(value="What colour?")), "image_tag_count"),
    Case("two_tags_one_image", with_record(lambda r: turn(r, 0).update(value="<image>\n<image>\nWhat colour?")), "image_tag_count"),
    Case("tag_in_two_turns", with_record(lambda r: r["conversations"].extend(
        [{"from": "human", "value": "<image>\nAgain?"}, {"from": "gpt", "value": "red"}])), "image_tag_count"),
    Case("tag_in_text_only", with_record(lambda r: turn(r, 0).update(value="<image>\nHello?"), base=lambda: text_only(1)),
         "image_tag_count"),
    Case("tag_after_text", with_record(lambda r: turn(r, 0).update(value="What colour? <image>")), "image_tag_position"),
    Case("tag_in_second_question", with_record(lambda r: (turn(r, 0).update(value="Look."), r["conversations"].extend(
        [{"from": "human", "value": "<image>\nWhat colour?"}, {"from": "gpt", "value": "red"}]))), "image_tag_position"),
    Case("image_context_token", with_record(lambda r: turn(r, 1).update(value="red <IMG_CONTEXT>")), "reserved_token"),
    Case("im_end_marker", with_record(lambda r: turn(r, 1).update(value="red<|im_end|>")), "template_marker"),
    Case("img_marker", with_record(lambda r: turn(r, 0).update(value="<image>\n<img>What colour?")), "template_marker"),
    # --- image paths and files ---------------------------------------------------------------------
    Case("two_images", with_record(lambda r: (r.update(image=[GOOD_IMAGE, "second.jpg"]),
                                              turn(r, 0).update(value="<image>\n<image>\nSame?"))), "too_many_images"),
    Case("image_empty_list", with_record(lambda r: r.update(image=[])), "no_images"),
    Case("image_empty_string", with_record(lambda r: r.update(image="")), "image_missing"),
    Case("image_not_there", with_record(lambda r: r.update(image="nowhere.jpg")), "image_missing"),
    Case("image_is_folder", with_record(lambda r: r.update(image="folder.jpg")), "image_missing"),
    Case("image_dot_dot", with_record(lambda r: r.update(image="../outside.jpg")), "path_outside_root"),
    Case("image_absolute", lambda tmp, root: with_record(lambda r: r.update(image=str(root / GOOD_IMAGE)))(tmp, root),
         "path_outside_root"),
    Case("image_symlink_out", with_record(lambda r: r.update(image="link_out.jpg")), "path_outside_root"),
    Case("image_zero_bytes", with_record(lambda r: r.update(image="empty.jpg")), "image_empty"),
    Case("image_is_text", with_record(lambda r: r.update(image="text.jpg")), "image_unreadable"),
    Case("image_is_html", with_record(lambda r: r.update(image="page.png")), "image_unreadable"),
    Case("image_is_svg", with_record(lambda r: r.update(image="drawing.svg")), "image_unreadable"),
    Case("png_cut_short", with_record(lambda r: r.update(image="cut.png")), "image_truncated"),
    Case("jpeg_cut_short", with_record(lambda r: r.update(image="cut.jpg")), "image_truncated"),
    Case("thin_strip", with_record(lambda r: r.update(image="strip.png")), "image_aspect"),
    Case("tiny_image", with_record(lambda r: r.update(image="tiny.png")), "image_tiny"),
    Case("too_long", with_record(lambda r: turn(r, 1).update(value="very long answer " * 400)), "too_long",
         kwargs={"max_length": 2048}),
    Case("xtuner_code_fails", json_file([good(0), good(1)]), "xtuner_error", 0,
         kwargs={"length_fn": lambda rec, size: (_ for _ in ()).throw(KeyError("conversations"))}),
    # --- tricky but valid: must pass without an error -----------------------------------------------
    Case("image_as_one_item_list", with_record(lambda r: r.update(image=[GOOD_IMAGE])), None),
    Case("image_null_text_only", with_record(lambda r: (r.update(image=None), turn(r, 0).update(value="Hello?"))), None),
    Case("extra_keys", with_record(lambda r: r.update(meta={"source": "x"}, note="kept")), None),
    Case("image_wh_nested", with_record(lambda r: r.update(image_wh=[[64, 48]])), None),
    Case("length_int", with_record(lambda r: r.update(length=2000)), None),
    Case("subfolder_image", with_record(lambda r: r.update(image="sub/nested.jpg")), None),
    Case("cmyk_jpeg", with_record(lambda r: r.update(image="cmyk.jpg")), None),
    Case("greyscale_png", with_record(lambda r: r.update(image="grey.png")), None),
    Case("palette_png", with_record(lambda r: r.update(image="palette.png")), None),
    Case("bilevel_png", with_record(lambda r: r.update(image="bilevel.png")), None),
    Case("bmp_image", with_record(lambda r: r.update(image="photo.bmp")), None),
    Case("webp_image", with_record(lambda r: r.update(image="photo.webp")), None),
    Case("multi_turn", with_record(lambda r: r["conversations"].extend(
        [{"from": "human", "value": "Sure?"}, {"from": "gpt", "value": "yes"}])), None),
    Case("chinese_text", with_record(lambda r: turn(r, 1).update(value="\u7ea2\u8272")), None),
    Case("emoji_text", with_record(lambda r: turn(r, 1).update(value="red \U0001f534")), None),
    Case("integer_id", with_record(lambda r: r.update(id=17)), None),
    Case("jsonl_u2028_in_value", with_record(lambda r: turn(r, 1).update(value="red\u2028line"), fmt="jsonl"), None),
    Case("jsonl_u0085_in_value", with_record(lambda r: turn(r, 1).update(value="red\u0085line"), fmt="jsonl"), None),
    Case("jsonl_u2029_and_formfeed", with_record(lambda r: turn(r, 1).update(value="red\u2029\x0c\x1eline"), fmt="jsonl"), None),
    Case("jsonl_without_final_newline", raw_file(json.dumps(good(0)).encode(), "data.jsonl"), None),
    # the hostile user's cases (#31): each a named problem, never a bare exception or a lost report
    Case("gzip_data", raw_file(gzip.compress(json.dumps([good(0)]).encode())), "compressed_file", None),
    Case("stray_nul", raw_file(json.dumps([good(0), good(1)]).encode().replace(b'"r1"', b'"r\x001"')), "nul_bytes", None),
    Case("gbk_file", raw_file(json.dumps([good(0), dict(good(1), note="宫保鸡丁，麻婆豆腐" * 4)],
                                         ensure_ascii=False).encode("gbk")), "gbk_file", None),
    Case("file_over_the_limit", json_file([good(0), good(1)]), "file_too_large", None, {"max_file_bytes": 100}),
    Case("int_over_4300_digits", raw_file(b'[{"id": "a", "length": ' + b"9" * 5000 + b"}]"), "number_too_long", None),
    Case("control_char_image", with_record(lambda r: r.update(image="bad\x01.jpg")), "image_unopenable"),
    Case("name_300_chars", with_record(lambda r: r.update(image="x" * 300 + ".jpg")), "image_unopenable"),
    Case("tile_counter_fails", with_record(lambda r: None), "check_failed", 1,
         {"max_length": 10**6, "count_tiles_fn": lambda w, h, n: 1 // 0}),
]
CORPUS = {c.name: c for c in CASES}


def snapshot(folder: Path) -> dict[str, str]:
    """sha256 of every file under FOLDER (symlinks by target name)."""
    out = {}
    for p in sorted(folder.rglob("*")):
        if p.is_symlink():
            out[str(p)] = "link:" + str(p.readlink())
        elif p.is_file():
            out[str(p)] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


@pytest.fixture(scope="module")
def image_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("corpus") / "images"
    make_images(root)
    return root


def test_the_corpus_is_big_enough_and_covers_every_kind():
    bad = [c for c in CASES if c.kind]
    assert len(CASES) == len(CORPUS), "case names must be unique"
    assert len(bad) >= 80, f"only {len(bad)} bad-input kinds"
    assert {c.kind for c in bad} == set(V.KINDS), set(V.KINDS) ^ {c.kind for c in bad}


@pytest.mark.parametrize("name", sorted(CORPUS))
def test_bad_input(name, tmp_path, image_root):
    from labsupport.datasets.datastats import ApproxTokenizer

    case = CORPUS[name]
    data = case.build(tmp_path, image_root)
    watched = [tmp_path, image_root.parent]
    before = {k: v for w in watched for k, v in snapshot(w).items()}
    kwargs = {"progress": False, **(case.kwargs or {})}
    if "max_length" in kwargs:
        kwargs["tokenizer"] = ApproxTokenizer()
    report = V.validate(data, image_root, **kwargs)  # must not raise, whatever the input
    text = str(report)
    if case.kind is None:
        assert report.ok, text
    else:
        assert (case.index, case.kind) in {(p.index, p.kind) for p in report.problems}, text
    for p in report.problems:
        line = str(p)
        assert Path(p.file).name in line and p.fix and p.kind in V.KINDS, line
        assert ("whole file" in line) if p.index is None else (f"record {p.index}" in line), line
        assert p.severity == V.KINDS[p.kind][0]
    # writing the clean records: a complete file that validates, or nothing and a clear error
    out = tmp_path / "out" / ("clean" + (".jsonl" if str(data).endswith(".jsonl") else ".json"))
    if report.clean_records():
        report.write_clean(out)
        again = V.validate(out, image_root, **kwargs)
        assert again.ok, str(again)
    else:
        with pytest.raises(ValueError, match="not written"):
            report.write_clean(out)
        assert not out.exists()
    after = {k: v for w in watched for k, v in snapshot(w).items() if not k.startswith(str(tmp_path / "out"))}
    assert after == before, "an input file was changed or a stray file was written"
    assert not [p for w in watched for p in w.rglob("*.tmp")], "a temporary file was left behind"
