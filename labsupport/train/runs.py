"""Training runs that never lose work: data checked before training, the last good run kept until a new one
exists, and resume from the newest checkpoint that is intact.

    check_training_data(config)            # XTuner's own dataset code decides what passes; raises DataInvalid
    with keep_last_good_run(work_dir):     # the last finished run moves aside; restored unless the block finishes
        ...train...; mark_finished(work_dir, final_checkpoint)   # the completion marker, written last
    latest_intact_checkpoint(work_dir)     # skips a checkpoint cut short by a kill during its save

labsupport.train.xtuner.launch uses all three (through @safe_training), so a notebook only calls launch().
"""
from __future__ import annotations

import contextlib
import copy
import functools
import inspect
import json
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


# ----------------------------------------------------------------------- finished runs and live trainers
FINISHED = "run_finished.json"  # written last, atomically, after the final checkpoint: no marker = not finished
LOCK = "trainer.lock"  # the pid of the trainer writing into the work dir while it runs


def mark_finished(work_dir: str | os.PathLike, checkpoint: str | os.PathLike, **facts: Any) -> Path:
    """Write WORK_DIR's completion marker naming CHECKPOINT (its final checkpoint) and FACTS; the last file a run writes."""
    work_dir = Path(work_dir)
    marker = work_dir / FINISHED
    write_json_atomic(marker, {"checkpoint": Path(checkpoint).name, "finished_at": time.strftime("%Y-%m-%d %H:%M:%S"),
                               **facts})
    return marker


def clear_finished(work_dir: str | os.PathLike) -> None:
    """Remove WORK_DIR's completion marker (a resume makes the run unfinished again until it ends)."""
    (Path(work_dir) / FINISHED).unlink(missing_ok=True)


def run_finished(work_dir: str | os.PathLike) -> dict | None:
    """WORK_DIR's completion marker ({'checkpoint', ...}) when the run finished and its final checkpoint is intact, else None."""
    marker = Path(work_dir) / FINISHED
    try:
        facts = json.loads(marker.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(facts, dict) or not isinstance(facts.get("checkpoint"), str):
        return None
    return facts if checkpoint_intact(Path(work_dir) / facts["checkpoint"]) else None


def why_unfinished(work_dir: str | os.PathLike) -> str:
    """One sentence on why WORK_DIR is not a finished run (what it holds), for a refusal."""
    work_dir = Path(work_dir)
    if not work_dir.is_dir():
        return f"{work_dir} does not exist"
    found = checkpoints(work_dir)
    if not found:
        return f"{work_dir} holds no checkpoint (iter_*.pth)"
    if (work_dir / FINISHED).exists():
        return f"{work_dir}'s completion marker {FINISHED} names a checkpoint that is missing or cut short"
    pid = live_trainer(work_dir)
    if pid:
        return f"a trainer (pid {pid}) is still writing {work_dir}"
    return (f"{work_dir} holds checkpoints up to {found[0].name} but no completion marker {FINISHED}: the run was "
            "killed or failed before its final checkpoint")


def _pid_is_trainer(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # alive, owned by another user
    proc = Path(f"/proc/{pid}")
    if not proc.exists():  # not Linux: alive is all we can tell
        return True
    try:
        if "\nState:\tZ" in (proc / "status").read_text():
            return False  # a zombie writes nothing
        text = (proc / "cmdline").read_bytes().decode("utf-8", "replace")
    except OSError:
        return False  # it ended while we looked
    # a recycled pid of another program does not count; an empty cmdline is a process caught mid-exec
    return not text or "train" in text or "torch.distributed" in text


def live_trainer(work_dir: str | os.PathLike) -> int | None:
    """The pid of a trainer still running into WORK_DIR (its lock file names it and it is alive), else None."""
    lock = Path(work_dir) / LOCK
    try:
        pid = int(json.loads(lock.read_text(encoding="utf-8"))["pid"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return pid if _pid_is_trainer(pid) else None


class TrainerStillRunning(RuntimeError):
    """Another trainer is still writing the work dir; a new run there would mix their checkpoints."""


def refuse_live_trainer(work_dir: str | os.PathLike) -> None:
    """Raise TrainerStillRunning naming the pid and the fix when a live trainer still writes WORK_DIR."""
    pid = live_trainer(work_dir)
    if pid:
        raise TrainerStillRunning(
            f"a trainer (pid {pid}) from an earlier launch is still writing {work_dir} (its kernel was interrupted "
            f"or killed?): wait for it to end, or stop it with `kill {pid}`, then run this cell again")


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


def previous_run(work_dir: str | os.PathLike) -> Path:
    """Where keep_last_good_run keeps WORK_DIR's last finished run while a new one trains (.<name>.previous)."""
    return _aside(Path(work_dir), "previous")


def _replace_dir(src: Path, dst: Path) -> None:
    shutil.rmtree(dst, ignore_errors=True)
    os.replace(src, dst)


@contextlib.contextmanager
def keep_last_good_run(work_dir: str | os.PathLike, say: Callable[[str], None] | None = print,
                       carry: tuple[str | os.PathLike, ...] = ()) -> Iterator[Path]:
    """Give the block an empty WORK_DIR, keeping the last finished run (run_finished) aside until a new one finishes.

    A finished run in WORK_DIR moves to .<name>.previous; an unfinished one (killed, failed) moves to .<name>.failed
    and never replaces the finished run kept there. When the block fails, or returns without a completion marker,
    the attempt goes to .<name>.failed and the finished run comes back into WORK_DIR. The finished run is deleted
    only once the new run's completion marker exists. Files in CARRY inside WORK_DIR are copied into the fresh WORK_DIR.
    """
    work_dir = Path(work_dir)
    previous, failed = _aside(work_dir, "previous"), _aside(work_dir, "failed")
    source = None  # where the carried files are read from
    if work_dir.exists() and any(work_dir.iterdir()):
        if run_finished(work_dir):
            _replace_dir(work_dir, previous)  # a newer finished run than any kept before
            source = previous
            if say:
                say(f"[run] the previous run in {work_dir} is kept at {previous} until this one finishes")
        else:
            _replace_dir(work_dir, failed)
            source = failed
            if say:
                kept = f"; the last finished run stays at {previous}" if run_finished(previous) else ""
                say(f"[run] {work_dir} held an unfinished run (no {FINISHED}): moved to {failed}{kept}")
    work_dir.mkdir(parents=True, exist_ok=True)
    for item in carry if source else ():
        try:
            rel = Path(item).resolve().relative_to(work_dir.resolve())
        except ValueError:
            continue  # outside WORK_DIR: untouched by the move
        if (source / rel).exists():
            (work_dir / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source / rel, work_dir / rel)
    good = run_finished(previous) is not None
    try:
        yield work_dir
    except BaseException as exc:
        if good:
            _replace_dir(work_dir, failed)
            os.replace(previous, work_dir)
            exc.add_note(f"(the failed attempt's files, its log included, are now in {failed}; "
                         f"{work_dir} holds the last finished run again)")
            if say:
                say(f"[run] this run failed: the last finished run is back in {work_dir}; the failed attempt is in {failed}")
        raise
    if run_finished(work_dir):
        shutil.rmtree(previous, ignore_errors=True)
    elif good:  # the block ended without finishing: the same as a failure for what the notebooks may use
        _replace_dir(work_dir, failed)
        os.replace(previous, work_dir)
        if say:
            say(f"[run] this run wrote no completion marker {FINISHED}: the last finished run is back in {work_dir}; "
                f"the attempt is in {failed}")


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
    """Wrap a launcher launch(config, work_dir, resume=False, ...): refuse a work dir a live trainer writes, check the
    data, and for a fresh run keep the last finished run until the new one has finished (check_data=False: no data check)."""
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
        refuse_live_trainer(work_dir)  # before anything moves: a live trainer would keep writing the moved folder
        if bound.arguments.get("resume"):
            return launch(*bound.args, **bound.kwargs)  # a resume continues the same run in place
        with keep_last_good_run(work_dir, carry=(config,)):
            return launch(*bound.args, **bound.kwargs)

    return wrapper
