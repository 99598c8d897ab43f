"""Planted problems for the notebooks' find-the-bug exercises (deterministic, so every learner gets the same one)."""
from __future__ import annotations

import os
from pathlib import Path

from labsupport.datasets.formats import copy_record, load_records, save_records

import json
from typing import Any, Callable
from labsupport.datasets.validate import _write_text_atomic



def mystery_copy(json_path: str | os.PathLike, out_path: str | os.PathLike, n: int = 6, bad_index: int = 4) -> Path:
    """Copy the first N records of JSON_PATH to OUT_PATH with one planted problem: record BAD_INDEX's turns swapped."""
    records = [copy_record(r) for r in load_records(json_path)[:n]]
    if not 0 <= bad_index < len(records):
        raise ValueError(f"bad_index {bad_index} is outside the {len(records)} records copied from {json_path}")
    turns = records[bad_index]["conversations"]
    records[bad_index]["conversations"] = [turns[1], turns[0]] + turns[2:]
    return save_records(out_path, records)


def make_broken_copy(json_path: str | os.PathLike, image_root: str | os.PathLike, out_dir: str | os.PathLike,
                     n_good: int = 20, max_length: int = 4096) -> dict:
    """Copy N_GOOD records (and their images) to OUT_DIR, then plant one bad record of each kind; returns paths and where each problem is."""
    from PIL import Image


    out, root = Path(out_dir), Path(image_root)
    (out / "images").mkdir(parents=True, exist_ok=True)
    good = [copy_record(r) for r in load_records(json_path)[:n_good]]
    if not good or not isinstance(good[0].get("image"), str):
        raise ValueError(f"make_broken_copy: {json_path} needs records with one image each to copy from")
    for rec in good:
        dest = out / "images" / Path(rec["image"]).name
        dest.write_bytes((root / rec["image"]).read_bytes())
        rec["image"] = f"images/{dest.name}"
    base = good[0]
    full = (out / base["image"]).read_bytes()
    (out / "images" / "empty.jpg").write_bytes(b"")
    (out / "images" / "notes.jpg").write_text("this is text, not a picture\n")
    (out / "images" / "cut.jpg").write_bytes(full[: len(full) // 3])
    Image.new("RGB", (2000, 60), (90, 70, 50)).save(out / "images" / "strip.jpg")
    Image.new("RGB", (16, 16), (200, 30, 30)).save(out / "images" / "tiny.jpg")

    def bad(kind: str, change: Callable[[dict], Any]) -> tuple[str, Any]:
        rec = copy_record(base)
        rec["id"] = f"broken-{kind}"
        rec.pop("image_wh", None)  # so that only the planted problem shows
        result = change(rec)
        return kind, rec if result is None else result

    first_human = lambda r: r["conversations"][0]  # noqa: E731
    answer = lambda r: r["conversations"][1]  # noqa: E731
    planted = [
        bad("not_a_record", lambda r: "a string where a record should be"),
        bad("missing_key", lambda r: r.pop("conversations") and None),
        bad("missing_id", lambda r: r.pop("id") and None),
        bad("non_string", lambda r: answer(r).update(value=4)),
        bad("unknown_role", lambda r: answer(r).update({"from": "assistant"})),
        bad("role_order", lambda r: r["conversations"].reverse()),
        bad("empty_turn", lambda r: answer(r).update(value="")),
        bad("image_tag_count", lambda r: first_human(r).update(value=first_human(r)["value"].replace("<image>\n", ""))),
        bad("image_tag_position", lambda r: first_human(r).update(value=first_human(r)["value"].replace("<image>\n", "") + "\n<image>")),
        bad("too_many_images", lambda r: (r.update(image=[base["image"], good[1]["image"]]),
                                          first_human(r).update(value="<image>\n" + first_human(r)["value"])) and None),
        bad("duplicate_id", lambda r: r.update(id=base["id"])),
        bad("path_outside_root", lambda r: r.update(image="../" + Path(json_path).name)),
        bad("image_missing", lambda r: r.update(image="images/not-there.jpg")),
        bad("image_empty", lambda r: r.update(image="images/empty.jpg")),
        bad("image_unreadable", lambda r: r.update(image="images/notes.jpg")),
        bad("image_truncated", lambda r: r.update(image="images/cut.jpg")),
        bad("image_aspect", lambda r: r.update(image="images/strip.jpg")),
        bad("image_tiny", lambda r: r.update(image="images/tiny.jpg")),
        bad("image_wh_mismatch", lambda r: r.update(image_wh=[123, 45])),
        bad("non_utf8_text", lambda r: answer(r).update(value=answer(r)["value"] + "\udcff")),
        bad("replacement_char", lambda r: answer(r).update(value="\ufffd" + answer(r)["value"])),
        bad("too_long", lambda r: answer(r).update(value=" ".join(["very long answer"] * max_length))),
    ]
    records = list(good)
    where: dict[str, int] = {}
    for kind, rec in planted:
        where[kind] = len(records)
        records.insert(len(records), rec)
    # json: ensure_ascii escapes the lone surrogate as \udcff, which a json reader accepts but is not text
    paths = {"image_root": out, "json": out / "broken.json", "jsonl": out / "broken.jsonl", "bad_syntax": out / "broken_syntax.json"}
    _write_text_atomic(paths["json"], json.dumps(records, indent=1))
    lines = [json.dumps(r, ensure_ascii=False) for r in good[:3]]
    lines.insert(1, json.dumps(good[3], ensure_ascii=False)[:-25])  # a line cut short
    raw_bad = copy_record(good[4])
    answer(raw_bad)["value"] += "\udcff"  # written below through surrogateescape: a raw byte 0xff
    lines.append(json.dumps(raw_bad, ensure_ascii=False))  # a raw byte 0xff: not UTF-8
    _write_text_atomic(paths["jsonl"], "\n".join(lines) + "\n", errors="surrogateescape")
    _write_text_atomic(paths["bad_syntax"], json.dumps(good[:2], indent=1).replace("}\n]", "},\n]"))
    return {**paths, "planted": where, "planted_jsonl": {"bad_jsonl_line": 1, "non_utf8_text": 4}, "planted_syntax": "bad_json"}
