"""Planted problems for the notebooks' find-the-bug exercises (deterministic, so every learner gets the same one)."""
from __future__ import annotations

import os
from pathlib import Path

from .datasets import copy_record, load_records, save_records


def mystery_copy(json_path: str | os.PathLike, out_path: str | os.PathLike, n: int = 6, bad_index: int = 4) -> Path:
    """Copy the first N records of JSON_PATH to OUT_PATH with one planted problem: record BAD_INDEX's turns swapped."""
    records = [copy_record(r) for r in load_records(json_path)[:n]]
    if not 0 <= bad_index < len(records):
        raise ValueError(f"bad_index {bad_index} is outside the {len(records)} records copied from {json_path}")
    turns = records[bad_index]["conversations"]
    records[bad_index]["conversations"] = [turns[1], turns[0]] + turns[2:]
    return save_records(out_path, records)
