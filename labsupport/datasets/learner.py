"""The learner's own dataset (`DATA`, `HELDOUT`): checked, split reproducibly, and recorded for notebooks 05-07.

    task = split_own_data("my_train.jsonl", heldout="", image_folder="", artifacts=ARTIFACTS)
    task["train"], task["heldout"], task["image_folder"]      # what XTuner's config and the scorer read
    write_training_data(ARTIFACTS, task, scorer="exact", tiles=6, system="...")   # notebook 04, after training
    read_training_data(ARTIFACTS)                                                 # notebooks 05, 06, 07

The learner's file is never modified: both splits are new files under ARTIFACTS/data/own/, written atomically,
whose records keep their image paths (relative to IMAGE_FOLDER, or to the file's own folder when it is empty).
Without HELDOUT the held-out slice is fixed by the records' content (the HELDOUT_SHARE of records whose sha256
is smallest, at most HELDOUT_MAX), so it does not move when the file is re-ordered or another record is added.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from labsupport.core.checkpoints import write_json_atomic
from labsupport.datasets.formats import load_records
from labsupport.datasets.validate import validate

HELDOUT_SHARE = 0.10
HELDOUT_MAX = 200
HELDOUT_MIN_TRAIN = 4              # fewer training records than this is not a fine-tune
TRAINING_DATA = "results/training_data.json"   # notebook 04 writes it; 05, 06 and 07 read it


class OwnDataInvalid(ValueError):
    """The learner's file would crash XTuner or the scorer: the message names the file, the records and the fix."""


def file_sha256(path: str | os.PathLike) -> str:
    """sha256 of the file at PATH, read in blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def record_key(record: dict) -> str:
    """A record's content hash: what fixes the held-out slice independently of the file's order."""
    return hashlib.sha256(json.dumps(record, sort_keys=True, ensure_ascii=False).encode("utf-8")).hexdigest()


def heldout_slice(records: list[dict], share: float = HELDOUT_SHARE, cap: int = HELDOUT_MAX) -> tuple[list[dict], list[dict]]:
    """(train, heldout): the SHARE of RECORDS with the smallest content hashes held out (at least 1, at most CAP)."""
    n_held = min(cap, max(1, round(share * len(records))))
    order = sorted(range(len(records)), key=lambda i: record_key(records[i]))
    held = set(order[:n_held])
    return [r for i, r in enumerate(records) if i not in held], [r for i, r in enumerate(records) if i in held]


def check_own_file(path: Path, image_folder: Path, role: str, **validate_kwargs) -> tuple[list[dict], object]:
    """(records, report) of the learner's PATH once the course validator found nothing that would stop XTuner."""
    if not path.is_file():
        raise OwnDataInvalid(f"{role} = {str(path)!r} is not a file: give the path of an InternVL-format .json or .jsonl "
                             "(a relative path starts from where you run the command, or from notebooks/ in JupyterLab)")
    report = validate(path, image_folder, **validate_kwargs)
    if not report.ok:
        raise OwnDataInvalid(f"{role} {path} cannot be trained on as it is ({len(report.errors)} problems; the file "
                             f"was not changed):\n{report}")
    return load_records(path), report


def data_digest(data: str | os.PathLike, heldout: str | os.PathLike = "") -> str:
    """The sha256 that names a training set: DATA's, combined with HELDOUT's when one is given."""
    digest = file_sha256(Path(data).expanduser().resolve())
    if heldout:
        digest = hashlib.sha256((digest + file_sha256(Path(heldout).expanduser().resolve())).encode()).hexdigest()
    return digest


def split_own_data(data: str | os.PathLike, heldout: str | os.PathLike = "", image_folder: str | os.PathLike = "",
                   artifacts: str | os.PathLike = "artifacts", max_train: int | None = None, **validate_kwargs) -> dict:
    """The learner's DATA (and HELDOUT, or a fixed slice of DATA) as course-task files under ARTIFACTS/data/own/;
    VALIDATE_KWARGS (tokenizer, max_length, max_num) go to the validator, whose report comes back as "report".
    MAX_TRAIN, when given, keeps at most that many training records (those whose content hash is smallest: the same
    ones on every run), for a CPU run that must stay short; "n_available" says how many there were."""
    data = Path(data).expanduser().resolve()
    folder = Path(image_folder).expanduser().resolve() if image_folder else data.parent
    records, report = check_own_file(data, folder, "DATA", **validate_kwargs)
    digest = data_digest(data, heldout)
    if heldout:
        held_path = Path(heldout).expanduser().resolve()
        held, _ = check_own_file(held_path, folder, "HELDOUT", **validate_kwargs)
        train, how = records, f"HELDOUT = {held_path.name} ({len(held)} records)"
    else:
        train, held = heldout_slice(records)
        how = (f"a fixed slice of {data.name}: the {len(held)} records (of {len(records)}) whose content hash is smallest "
               f"({HELDOUT_SHARE:.0%}, at most {HELDOUT_MAX})")
    n_available = len(train)
    if max_train and len(train) > max_train:
        kept = {record_key(r) for r in sorted(train, key=record_key)[:max_train]}
        train = [r for r in train if record_key(r) in kept][:max_train]
        how += f"; {len(train)} of the {n_available} training records kept (max_train={max_train})"
    if len(train) < HELDOUT_MIN_TRAIN:
        raise OwnDataInvalid(f"DATA {data} leaves {len(train)} records to train on after holding out {len(held)}: "
                             f"give at least {HELDOUT_MIN_TRAIN + 1} records, or pass HELDOUT as a separate file")
    out = Path(artifacts) / "data" / "own" / f"{data.stem}-{digest[:8]}" / (f"max{max_train}" if len(train) < n_available else "")
    write_json_atomic(out / "train.json", train)
    write_json_atomic(out / "heldout.json", held)
    return {"name": data.stem, "root": out, "train": out / "train.json", "heldout": out / "heldout.json", "image_folder": folder,
            "source": data, "sha256": digest, "n_train": len(train), "n_available": n_available, "n_heldout": len(held), "held_out_by": how,
            "report": report}


def write_training_data(artifacts: str | os.PathLike, task: dict, scorer: str, tiles: int, system: str | None,
                        model_path: str = "") -> Path:
    """Record what notebook 04 trained on (data, hashes, split sizes, scorer, tiles, system prompt) for 05-07; TASK is
    split_own_data's dict, or plates.build_course_task's (then the record says "plates" and counts the splits itself)."""
    path = Path(artifacts) / TRAINING_DATA
    record = {k: (str(v) if isinstance(v, Path) else v) for k, v in task.items() if k != "report"}
    if "source" not in task:   # the plates task: the course's own files, counted and hashed here
        record.update(name="plates", source="", sha256=file_sha256(task["train"]),
                      n_train=len(load_records(task["train"])), n_heldout=len(load_records(task["heldout"])),
                      held_out_by="the plates task's own held-out drawings (labsupport.datasets.plates)")
    record.update({"scorer": scorer, "tiles": tiles, "system": system, "model_path": str(model_path)})
    write_json_atomic(path, record)
    return path


def is_plates(record: dict | None) -> bool:
    """Whether a training record (read_training_data) is about the plates task, the course's default data."""
    return record is None or record.get("name") == "plates" or not record.get("source")


def read_training_data(artifacts: str | os.PathLike) -> dict | None:
    """What notebook 04 recorded about its training data, or None when it has not run."""
    path = Path(artifacts) / TRAINING_DATA
    if not path.exists():
        return None
    record = json.loads(path.read_text(encoding="utf-8"))
    for key in ("root", "train", "heldout", "image_folder", "source"):
        if record.get(key):
            record[key] = Path(record[key])
    return record


def require_trained_on(record: dict | None, data: str | os.PathLike = "", heldout: str | os.PathLike = "") -> dict | None:
    """RECORD (notebook 04's) when DATA/HELDOUT are empty or the files it trained on (same sha256), else OwnDataInvalid."""
    if not data and not heldout:
        return record   # 05-07 follow whatever 04 trained on
    if not data:
        raise OwnDataInvalid(f"HELDOUT {heldout} was given without DATA: pass the same DATA and HELDOUT notebook 04 was run with")
    path = Path(data).expanduser().resolve()
    if not path.is_file():
        raise OwnDataInvalid(f"DATA {path} does not exist: pass the file notebook 04 trained on, or leave DATA empty to "
                             "follow notebook 04's record")
    digest = data_digest(path, heldout)
    trained = "nothing yet (no record)" if record is None else (
        "the plates task" if is_plates(record) else f"{record.get('source')} (sha256 {str(record.get('sha256'))[:12]})")
    if record is None or is_plates(record) or record.get("sha256") != digest:
        raise OwnDataInvalid(f"DATA {path.name} (sha256 {digest[:12]}) is not what notebook 04 trained on: {trained}. Run "
                             f"notebook 04 with the same DATA{' and HELDOUT' if heldout else ''} first, or leave DATA empty "
                             "here to follow notebook 04's record")
    return record
