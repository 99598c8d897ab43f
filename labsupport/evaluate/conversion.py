"""Notebook 04's training run found and converted to the official format, and the folder checked before use."""
from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from labsupport.core.paths import finetuned_dir as rule
from labsupport.core.checkpoints import write_json_atomic
from labsupport.model.folder_check import config_problems, weight_problems
from labsupport.train.runs import FINISHED, previous_run, run_finished, why_unfinished
from labsupport.train.xtuner import convert_to_official
from labsupport.train.xtuner_render import load_config

# ---- where the notebooks meet (ONE place: the lead adjusts these at merge) ---------------------------------
TRAIN_WORK_DIR = "xtuner/work_dirs/04_finetune"    # notebook 04's XTuner work dir, relative to ARTIFACTS
HELDOUT_NAME = "heldout.json"                        # the held-out split lies beside the training json the config names


PROVENANCE = ".training_run.json"  # in a converted folder: the run and checkpoint it came from (names only, no paths)


class TrainingRunMissing(FileNotFoundError):
    """Notebook 04 has not left a finished training run where notebook 05 looks for it."""


class IncompleteModelFolder(FileNotFoundError):
    """A converted model folder lacks a file that loading or serving it needs."""


# ---- 1. what notebook 04 left -------------------------------------------------------------------------------

@dataclass
class TrainingRun:
    """A finished XTuner run: its work dir, the config it ran, its last checkpoint and the base model it started from."""

    work_dir: Path
    config: Path
    checkpoint: Path
    base_model: Path
    mode: str  # lora | qlora | full
    vit_trained: bool = False  # whether the InternViT was unfrozen
    train_json: Path | None = None  # the (first) training json the config names
    max_num: int = 6  # tiles per image in training (max_dynamic_patch): evaluate with the same

    @property
    def heldout(self) -> Path | None:
        """The held-out split beside the training json (the course task writes train.json and heldout.json together)."""
        return self.train_json.parent / HELDOUT_NAME if self.train_json else None


def training_mode(config: str | os.PathLike) -> str:
    """'lora', 'qlora' or 'full', read from an XTuner config's model section."""

    model = load_config(config).model
    if model.get("quantization_llm"):
        return "qlora"
    return "lora" if model.get("llm_lora") is not None else "full"


def finished_run_dir(work_dir: str | os.PathLike, say: Callable[[str], None] | None = print) -> Path:
    """WORK_DIR when it holds a finished run (its completion marker), else its kept last finished run (.previous),
    else raise TrainingRunMissing naming the run and why it does not count."""
    work_dir = Path(work_dir)
    if run_finished(work_dir):
        return work_dir
    why = why_unfinished(work_dir)
    kept = previous_run(work_dir)
    if run_finished(kept):
        if say:
            say(f"[run] {why}; using the last finished run kept at {kept}")
        return kept
    raise TrainingRunMissing(f"no finished training run: {why}. Only a run that wrote {FINISHED} after its final "
                             "checkpoint is converted or published")


def find_training_run(artifacts: str | os.PathLike, work_dir: str | os.PathLike | None = None,
                      say: Callable[[str], None] | None = print) -> TrainingRun:
    """The finished training run notebook 04 left under ARTIFACTS (or in WORK_DIR, relative to ARTIFACTS), else its kept
    last finished run; raises TrainingRunMissing with the fix."""

    work_dir = Path(artifacts) / (work_dir or TRAIN_WORK_DIR)  # an absolute WORK_DIR replaces ARTIFACTS
    fix = "run notebooks/04_finetune_xtuner.ipynb first (it trains the model this notebook converts)"
    found = [*(Path(artifacts) / "xtuner").glob(f"*/{FINISHED}"), *(Path(artifacts) / "xtuner").glob(f"work_dirs/*/{FINISHED}")]
    others = sorted(str(p.parent) for p in found if p.parent != work_dir)
    if others:
        fix += f", or set WORK_DIR to one of the finished runs found: {', '.join(others)}"
    if not work_dir.is_dir() and not run_finished(previous_run(work_dir)):
        raise TrainingRunMissing(f"no training run: {work_dir} does not exist. {fix}.")
    try:
        work_dir = finished_run_dir(work_dir, say)
    except TrainingRunMissing as exc:
        raise TrainingRunMissing(f"{exc}. {fix}.") from None
    ckpt = work_dir / run_finished(work_dir)["checkpoint"]
    # mmengine copies the config it ran here; DeepSpeed adds its own zero_to_fp32.py script beside it
    configs = sorted((p for p in work_dir.glob("*.py") if p.name != "zero_to_fp32.py"), key=lambda p: p.stat().st_mtime)
    if not configs:
        raise TrainingRunMissing(f"{work_dir} holds a checkpoint but not the config that produced it (*.py). {fix}.")
    config = configs[-1]
    cfg = load_config(config)
    model = cfg.model
    base = Path(model.model_path)
    if not (base / "config.json").exists():
        raise TrainingRunMissing(f"the base model {base} named in {config.name} is gone: rebuild it (notebook 04 builds 'tiny'), then {fix}.")
    dataset = cfg.get("llava_dataset") or cfg.train_dataloader.dataset
    data = dataset.get("data_paths") or cfg.get("data_paths") or []
    data = [data] if isinstance(data, str) else list(data)
    # tiles per image: the dataset's own argument (the CPU shim), else what XTuner reads, the model's config.json
    tiles = dataset.get("max_dynamic_patch") or cfg.get("max_dynamic_patch") \
        or json.loads((base / "config.json").read_text()).get("max_dynamic_patch") or 6
    return TrainingRun(work_dir, config, ckpt, base, training_mode(config), not model.get("freeze_visual_encoder", False),
                       Path(data[0]) if data else None, int(tiles))


def converted_from_finished_run(folder: str | os.PathLike) -> str | None:
    """None when FOLDER was converted by convert() from a finished run's final checkpoint, else why not (one sentence)."""
    record = Path(folder) / PROVENANCE
    try:
        facts = json.loads(record.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return (f"{folder} does not record the training run it was converted from ({PROVENANCE} is missing or "
                "unreadable): run notebook 05 again, which converts only a finished run")
    if not (isinstance(facts, dict) and facts.get("finished")):
        return (f"{folder} was converted from {facts.get('checkpoint') if isinstance(facts, dict) else '?'} of "
                f"{facts.get('run') if isinstance(facts, dict) else '?'}, a run that had not finished: train again "
                "(notebook 04), then convert (notebook 05)")
    return None


def record_provenance(run: TrainingRun, folder: str | os.PathLike) -> Path:
    """Write FOLDER's record of the run and checkpoint it was converted from, and whether that run had finished."""
    facts = run_finished(run.work_dir)
    path = Path(folder) / PROVENANCE
    write_json_atomic(path, {"run": run.work_dir.name, "checkpoint": run.checkpoint.name,
                             "finished": facts is not None and facts["checkpoint"] == run.checkpoint.name})
    return path


def finetuned_dir(artifacts: str | os.PathLike, model_path: str = "tiny") -> Path:
    """Where the converted fine-tune of MODEL_PATH goes: ARTIFACTS/models/<model name>-finetuned (labsupport.core.paths)."""

    return rule(artifacts, model_path)


# ---- 2. conversion and a complete folder --------------------------------------------------------------------

def convert(run: TrainingRun, save_dir: str | os.PathLike) -> Path:
    """Convert RUN's checkpoint with XTuner's convert_to_official.py (through labsupport.train.xtuner) and check the result is complete."""

    out = convert_to_official(run.config, run.checkpoint, save_dir, model_path=run.base_model)
    record_provenance(run, out)
    copied = fill_from_base(out, run.base_model)
    if copied:
        print(f"[convert] copied from the base model what the script did not write: {', '.join(copied)}")
    require_complete(out, run.base_model)
    return out


def fill_from_base(folder: str | os.PathLike, base: str | os.PathLike) -> list[str]:
    """Copy the generation config and any missing remote-code .py file from BASE into FOLDER; return the names copied."""
    folder, base = Path(folder), Path(base)
    names = ["generation_config.json"] + [p.name for p in base.glob("*.py")]
    copied = [n for n in names if (base / n).exists() and not (folder / n).exists()]
    for name in copied:
        shutil.copy2(base / name, folder / name)
    return copied


_REL_IMPORT = re.compile(r"^\s*from\s+\.(\w+)\s+import", re.MULTILINE)


def remote_code_files(folder: str | os.PathLike) -> list[str]:
    """The .py files FOLDER's config.json points at (auto_map), with the files they import relatively, in order."""
    folder = Path(folder)
    cfg = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    todo = [ref.split(".")[0].split("--")[-1] + ".py" for ref in (cfg.get("auto_map") or {}).values()]
    seen: list[str] = []
    while todo:
        name = todo.pop(0)
        if name in seen:
            continue
        seen.append(name)
        path = folder / name
        if path.exists():
            todo += [m + ".py" for m in _REL_IMPORT.findall(path.read_text(encoding="utf-8"))]
    return seen


def _weight_files(folder: Path) -> list[Path]:
    return sorted(folder.glob("*.safetensors")) + sorted(folder.glob("pytorch_model*.bin"))


def check_model_folder(folder: str | os.PathLike, base: str | os.PathLike | None = None) -> list[str]:
    """Every problem that keeps FOLDER from loading with AutoModel/AutoTokenizer or chatting, one line each with the fix ([] = complete)."""
    folder = Path(folder)
    src = f"the base model folder {base}" if base else "the base model folder"
    if not folder.is_dir():
        return [f"{folder} does not exist: convert the checkpoint first (compare.convert)"]
    if not (folder / "config.json").exists():
        return [f"{folder / 'config.json'} is missing: the conversion did not finish; run compare.convert again"]
    problems = config_problems(folder)
    try:
        if not isinstance(json.loads((folder / "config.json").read_text(encoding="utf-8")), dict):
            return problems
    except (OSError, ValueError):
        return problems  # the remote code and tokenizer checks read config.json: nothing more can be said
    weights = _weight_files(folder)
    if not weights:
        problems.append(f"no weights (*.safetensors or pytorch_model*.bin) in {folder}: the conversion did not finish; run compare.convert again")
    problems += weight_problems(folder)
    for index in folder.glob("*.index.json"):
        shards = set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values())
        problems += [f"weight shard {folder / s} (listed in {index.name}) is missing: run compare.convert again"
                     for s in sorted(shards) if not (folder / s).exists()]
    try:
        code = remote_code_files(folder)
    except (ValueError, AttributeError):
        code = []  # config_problems named what is wrong with config.json
    for name in code:
        if not (folder / name).exists():
            problems.append(f"modeling file {folder / name} is missing (config.json's auto_map needs it; XTuner's "
                            f"convert_to_official.py does not copy remote code): copy {name} from {src}")
    tok_cfg = folder / "tokenizer_config.json"
    fix_tok = f"save the tokenizer there: AutoTokenizer.from_pretrained(<{src}>, trust_remote_code=True).save_pretrained('{folder}')"
    if not tok_cfg.exists():
        problems.append(f"tokenizer file {tok_cfg} is missing: {fix_tok}")
    else:
        if not any((folder / n).exists() for n in ("tokenizer.json", "tokenizer.model", "vocab.json")):
            problems.append(f"tokenizer vocabulary {folder / 'tokenizer.json'} (or tokenizer.model) is missing: {fix_tok}")
        has_template = "chat_template" in json.loads(tok_cfg.read_text(encoding="utf-8")) or any(
            (folder / n).exists() for n in ("chat_template.jinja", "chat_template.json"))
        if not has_template:
            problems.append(f"no chat template in {tok_cfg} (LMDeploy then falls back to a bare prompt): {fix_tok}")
    if not (folder / "generation_config.json").exists():
        problems.append(f"{folder / 'generation_config.json'} is missing (stop tokens for chat and serving): copy it from {src}")
    return problems


def require_complete(folder: str | os.PathLike, base: str | os.PathLike | None = None) -> Path:
    """Raise IncompleteModelFolder naming each missing file and its fix, unless FOLDER is complete; return FOLDER."""
    problems = check_model_folder(folder, base)
    if problems:
        raise IncompleteModelFolder(f"the model folder {folder} is not complete:\n  - " + "\n  - ".join(problems))
    return Path(folder)


def folder_listing(folder: str | os.PathLike) -> list[tuple[str, int]]:
    """(file name, size in bytes) of every file in FOLDER, sorted by name."""
    return [(p.name, p.stat().st_size) for p in sorted(Path(folder).iterdir()) if p.is_file()]
