"""Training runs that never lose work: data checked before training, the last good run kept until a new one
exists, and resume from the newest checkpoint that is intact.

    check_training_data(config)            # XTuner's own dataset code decides what passes; raises DataInvalid
    with keep_last_good_run(work_dir):     # the old run moves aside; restored if the block fails
        ...train...
    latest_intact_checkpoint(work_dir)     # skips a checkpoint cut short by a kill during its save

labsupport.train.xtuner.launch uses all three (through @safe_training), so a notebook only calls launch().
"""
from __future__ import annotations

import contextlib
import copy
import functools
import inspect
import os
import re
import shutil
import time
import warnings
import zipfile
from pathlib import Path
from typing import Any, Callable, Iterator

from labsupport.datasets.validate import IMG_CONTEXT, IMG_END, IMG_START, Report, validate
from labsupport.core.checkpoints import write_json_atomic
from labsupport.datasets.formats import count_tiles
from labsupport.train.xtuner_render import load_config


class DataInvalid(ValueError):
    """The training data has errors that would crash XTuner or train the wrong thing; nothing was trained."""


# ------------------------------------------------------------------------------------- checkpoints
def checkpoint_intact(path: str | os.PathLike) -> bool:
    """Whether PATH is a complete checkpoint: a torch zip archive whose directory reads (a cut-off save has none),
    or a DeepSpeed checkpoint folder whose *.pt files all are."""
    path = Path(path)
    if path.is_dir():
        parts = list(path.rglob("*.pt"))
        return bool(parts) and all(checkpoint_intact(p) for p in parts)
    try:
        if path.stat().st_size == 0:
            return False
        with zipfile.ZipFile(path) as zf:
            names = zf.namelist()
            return bool(names) and any(n.endswith("data.pkl") for n in names)
    except (OSError, zipfile.BadZipFile, ValueError):
        return False


def _iter_number(path: Path) -> int:
    found = re.findall(r"\d+", path.stem)
    return int(found[-1]) if found else -1


def checkpoints(work_dir: str | os.PathLike) -> list[Path]:
    """The iter_N.pth checkpoints in WORK_DIR, newest first."""
    return sorted(Path(work_dir).glob("iter_*.pth"), key=_iter_number, reverse=True)


def latest_intact_checkpoint(work_dir: str | os.PathLike, say: Callable[[str], None] | None = print) -> Path | None:
    """The newest checkpoint in WORK_DIR that is complete (mmengine's last_checkpoint marker first), or None.

    A run killed while saving leaves its newest iter_N.pth cut short; resuming from it fails, so it is
    skipped (and named through SAY) in favour of the one before.
    """
    work_dir = Path(work_dir)
    candidates: list[Path] = []
    marker = work_dir / "last_checkpoint"
    if marker.exists():
        p = Path(marker.read_text(encoding="utf-8", errors="replace").strip())
        p = p if p.is_absolute() else work_dir / p
        if p.exists():
            candidates.append(p)
    candidates += [p for p in checkpoints(work_dir) if p not in candidates]
    for p in candidates:
        if checkpoint_intact(p):
            return p
        if say:
            say(f"[resume] {p.name} is incomplete (cut short while it was saved?): skipped")
    return None


def mmengine_scalars(work_dir: str | os.PathLike) -> list[dict]:
    """mmengine's own record of the newest run in WORK_DIR: the rows of <timestamp>/vis_data/scalars.json (one JSON object
    per logged iteration: iter, loss, lr, time, ...), or the course's older WORK_DIR/scalars.json list; [] when neither exists."""
    import json

    work_dir = Path(work_dir)
    runs = sorted(work_dir.glob("[0-9]*_[0-9]*/vis_data/scalars.json")) if work_dir.is_dir() else []
    if runs:
        lines = runs[-1].read_text(encoding="utf-8").splitlines()
        return [json.loads(line) for line in lines if line.strip()]
    old = work_dir / "scalars.json"
    return json.loads(old.read_text(encoding="utf-8")) if old.exists() else []


# ------------------------------------------------------------------------------ the last good run
def _aside(work_dir: Path, what: str) -> Path:
    return work_dir.with_name(f".{work_dir.name}.{what}")


@contextlib.contextmanager
def keep_last_good_run(work_dir: str | os.PathLike, say: Callable[[str], None] | None = print,
                       carry: tuple[str | os.PathLike, ...] = ()) -> Iterator[Path]:
    """Move WORK_DIR's previous run aside, give an empty WORK_DIR to the block, and on failure put the previous run back.

    The failed attempt is kept next to it as .<name>.failed (its log explains the failure); on success the
    previous run is deleted. The block never sees the old checkpoints, so a new run cannot pick them up.
    Files in CARRY that lie inside WORK_DIR (e.g. the config the new run reads) are copied into the fresh WORK_DIR.
    """
    work_dir = Path(work_dir)
    previous = _aside(work_dir, "previous")
    if previous.exists() and not (work_dir.exists() and any(work_dir.iterdir())):
        # an earlier attempt was interrupted after moving the good run aside: that run is still the last good one
        shutil.rmtree(work_dir, ignore_errors=True)
        os.replace(previous, work_dir)
    moved = False
    if work_dir.exists() and any(work_dir.iterdir()):
        shutil.rmtree(previous, ignore_errors=True)
        os.replace(work_dir, previous)
        moved = True
        if say:
            say(f"[run] the previous run in {work_dir} is kept at {previous} until this one succeeds")
    work_dir.mkdir(parents=True, exist_ok=True)
    for item in carry if moved else ():
        try:
            rel = Path(item).resolve().relative_to(work_dir.resolve())
        except ValueError:
            continue  # outside WORK_DIR: untouched by the move
        (work_dir / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(previous / rel, work_dir / rel)
    try:
        yield work_dir
    except BaseException as exc:
        if moved:
            failed = _aside(work_dir, "failed")
            shutil.rmtree(failed, ignore_errors=True)
            os.replace(work_dir, failed)
            os.replace(previous, work_dir)
            exc.add_note(f"(the failed attempt's files, its log included, are now in {failed}; "
                         f"{work_dir} holds the previous run again)")
            if say:
                say(f"[run] this run failed: the previous run is back in {work_dir}; the failed attempt is in {failed}")
        raise
    if moved:
        shutil.rmtree(previous, ignore_errors=True)


# ------------------------------------------------------------------------------------ data checks
def xtuner_dataset(config: Any, probe_dir: str | os.PathLike) -> Any:
    """XTuner's dataset object built from CONFIG's train dataset settings on a one-record probe file (for its tokenizer,
    template and tiling settings); CONFIG is a path or an mmengine Config."""
    from xtuner.registry import BUILDER

    cfg = _load_config(config)
    ds_cfg = copy.deepcopy(cfg.train_dataloader.dataset)
    probe = Path(probe_dir) / "probe.json"
    write_json_atomic(probe, [{"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "hi"}]}])
    ds_cfg.update(data_paths=[str(probe)], image_folders=[None], repeat_times=[1])
    import logging

    from mmengine.logging import MMLogger

    logger = MMLogger.get_current_instance()
    level = logger.level
    logger.setLevel(logging.WARNING)  # XTuner logs its loading steps at INFO: noise in a notebook
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(None):
            warnings.simplefilter("ignore")
            return BUILDER.build(ds_cfg)
    finally:
        logger.setLevel(level)


def xtuner_length(dataset: Any) -> Callable[[dict, tuple[int, int] | None], int]:
    """A function (record, (width, height) or None) -> the tokens XTuner's DATASET makes of it before any cut."""

    def length(record: dict, size: tuple[int, int] | None) -> int:
        image_tokens = None
        if size is not None:
            tiles = count_tiles(size[0], size[1], max_num=dataset.max_dynamic_patch, min_num=dataset.min_dynamic_patch,
                                use_thumbnail=dataset.use_thumbnail)
            image_tokens = f"{IMG_START}{IMG_CONTEXT * (tiles * dataset.patch_token)}{IMG_END}"
        saved, dataset.max_length = dataset.max_length, 10**12
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                out = dataset.get_inputid_labels(copy.deepcopy(record["conversations"]), image_tokens)
        finally:
            dataset.max_length = saved
        return len(out["input_ids"])

    return length


def _load_config(config: Any) -> Any:
    if not isinstance(config, (str, os.PathLike)):
        return config

    return load_config(config)


def _as_list(value: Any) -> list:
    """A config's path field as a list (a single string is one path, not its characters)."""
    return [value] if isinstance(value, (str, os.PathLike)) or value is None else list(value)


def check_training_data(config: Any, probe_dir: str | os.PathLike | None = None, progress: bool = False,
                        say: Callable[[str], None] | None = print) -> list[Report]:
    """Validate every dataset CONFIG trains on, with XTuner's own tokenizer, template, tiling and max_length;
    raise DataInvalid (naming file, record and fix) when any record has an error. Returns the reports."""
    import tempfile

    cfg = _load_config(config)
    ds_cfg = cfg.train_dataloader.dataset
    if "data_paths" not in ds_cfg:  # a chat-LLM or LLaVA dataset (process_hf_dataset, LLaVADataset): not InternVL json
        if say:
            say(f"[data] {getattr(ds_cfg.get('type'), '__name__', ds_cfg.get('type'))} is not XTuner's InternVL dataset: "
                "the course's validator checks InternVL json only, so XTuner's own loader checks these records")
        return []
    # XTuner's official configs give one path as a plain string; the dataset accepts both forms
    paths, folders = _as_list(ds_cfg.data_paths), _as_list(ds_cfg.image_folders)
    missing = [p for p in paths if not Path(p).is_file()]
    reports = []
    if missing:  # no need to build XTuner's dataset to say this
        reports = [validate(p, f or ".", check_images=False, progress=progress) for p, f in zip(paths, folders)]
    else:
        with tempfile.TemporaryDirectory(dir=probe_dir) as tmp:
            dataset = xtuner_dataset(cfg, tmp)
        length = xtuner_length(dataset)
        for p, f in zip(paths, folders):
            reports.append(validate(p, f if f is not None else ".", length_fn=length, max_length=int(ds_cfg.max_length),
                                    progress=progress))
    bad = [r for r in reports if not r.ok]
    for r in reports:
        if say and r.ok:
            n_warn = len(r.problems)
            say(f"[data] {r.file}: {len(r.records)} records, no errors" + (f", {n_warn} warnings" if n_warn else ""))
    if bad:
        lines = []
        for r in bad:
            lines.append(r.summary())
            lines += [f"  {p}" for p in r.errors[:10]]
            if len(r.errors) > 10:
                lines.append(f"  ... {len(r.errors) - 10} more errors: print(labsupport.datasets.validate.validate(...)) lists all")
        raise DataInvalid("the training data has errors, so XTuner was not started (it would crash, or silently train "
                          "on other samples):\n" + "\n".join(lines) +
                          "\nFix the records, or write the good ones to a new file with report.write_clean(path) and "
                          "train on that.")
    return reports


# --------------------------------------------------------------------------------- the decorator
def safe_training(launch: Callable[..., Any]) -> Callable[..., Any]:
    """Wrap a launcher launch(config, work_dir, resume=False, ...): check the data first, and for a fresh run keep the
    last good run until the new one has succeeded (check_data=False skips the data check)."""
    sig = inspect.signature(launch)
    first, second = list(sig.parameters)[:2]  # the config and the work dir, whatever the launcher calls them

    @functools.wraps(launch)
    def wrapper(*args: Any, check_data: bool = True, **kwargs: Any) -> Any:
        bound = sig.bind(*args, **kwargs)
        bound.apply_defaults()
        config, work_dir = Path(bound.arguments[first]), Path(bound.arguments[second])
        if check_data and config.exists():
            started = time.time()
            try:
                cfg = _load_config(config)
            except Exception as exc:  # a config that does not load: XTuner's train.py reports it in full
                print(f"[data] not checked: the config does not load ({type(exc).__name__}); XTuner will say why")
            else:
                check_training_data(cfg)
                print(f"[data] checked with XTuner's tokenizer and template in {time.time() - started:.1f} s")
        if bound.arguments.get("resume"):
            return launch(*bound.args, **bound.kwargs)  # a resume continues the same run in place
        with keep_last_good_run(work_dir, carry=(config,)):
            return launch(*bound.args, **bound.kwargs)

    return wrapper
