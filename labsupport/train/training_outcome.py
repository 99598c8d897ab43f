"""What notebook 04's last run did for a model (trained, or skipped and why), for notebooks 05-07 to follow honestly.

    write_outcome(ARTIFACTS, MODEL_PATH, trained=False, reason=SKIP)       # notebook 04, after its training cell
    skipped_training(ARTIFACTS, MODEL_PATH)   # notebooks 05-07: 04's reason when it skipped training, else None
    trained_tiles(ARTIFACTS, model_dir)       # (tiles per image, where that number comes from)

The record is ARTIFACTS/results/04_training.json. It names the model it is about (labsupport.core.paths.model_name), so a
record left by another MODEL_PATH in the same ARTIFACTS is never taken for this one's.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from safetensors import safe_open
from labsupport.core.checkpoints import write_json_atomic
from labsupport.core.paths import finetuned_dir, model_name, repo_root
from labsupport.datasets.learner import is_plates
from labsupport.model.params import count_parameters
from labsupport.model.tinymodel import embedded_layout
from labsupport.model.towers import pretrained_weights
from labsupport.train.xtuner_presets import MINIATURE_MAX_PARAMS

OUTCOME_JSON = "results/04_training.json"     # notebook 04: {"model", "trained", "reason", "todo", "tiles", ...}
BEFORE_AFTER = "results/before_after.json"    # notebook 05: its "training" block names the run's base and tiling
SKIP_TODO = ("notebooks 05-07 work on the base model instead: 05 converts nothing, 06 serves the base model in both "
             "columns, 07 publishes the base weights and says so. To fine-tune, run notebook 04 where it can train "
             "this model (the reason above says where), then 05-07 again.")


def write_outcome(artifacts: str | os.PathLike, model_path: str | os.PathLike, trained: bool, reason: str | None = None,
                  tiles: int | None = None, work_dir: str | os.PathLike | None = None,
                  train_seconds: float | None = None) -> Path:
    """Record (atomically) whether notebook 04 trained MODEL_PATH, with the reason when it did not, and its training
    time (TRAIN_SECONDS: the wall seconds of the `xtuner train` process, the course's one definition); returns the file."""

    if not trained and not reason:
        raise ValueError("a skipped training needs its reason: the notebooks after 04 print it")
    record = {"model": model_name(model_path), "model_path": str(model_path), "trained": bool(trained),
              "reason": None if trained else reason, "todo": None if trained else SKIP_TODO,
              "tiles": int(tiles) if tiles else None, "work_dir": str(work_dir) if work_dir else None,
              # the course's one "training time": wall seconds of the `xtuner train` process, start-up included
              "train_seconds": round(float(train_seconds), 1) if train_seconds is not None else None,
              "written": time.strftime("%Y-%m-%d %H:%M:%S")}
    path = Path(artifacts) / OUTCOME_JSON
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(path, record)
    return path


def read_outcome(artifacts: str | os.PathLike, model_path: str | os.PathLike) -> dict | None:
    """Notebook 04's record for MODEL_PATH, or None when 04 has not run for this model (or left no record)."""

    path = Path(artifacts) / OUTCOME_JSON
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path} is not valid JSON ({exc}): delete it and run notebook 04 again") from exc
    return record if record.get("model") == model_name(model_path) else None


def recorded_train_seconds(artifacts: str | os.PathLike) -> tuple[float | None, str]:
    """Notebook 04's training time (wall seconds of its `xtuner train` process) from its record, and where it came from
    (or why there is none)."""
    path = Path(artifacts) / OUTCOME_JSON
    if not path.is_file():
        return None, f"{path} does not exist: run notebook 04 first"
    record = json.loads(path.read_text(encoding="utf-8"))
    seconds = record.get("train_seconds")
    if seconds is None:
        return None, f"{path} records no train_seconds: run notebook 04 again (it writes them)"
    return float(seconds), f"{path.name}, {record.get('written', 'undated')}"


def skipped_training(artifacts: str | os.PathLike, model_path: str | os.PathLike) -> str | None:
    """Notebook 04's reason for not training MODEL_PATH (its last run for this model skipped), or None."""
    record = read_outcome(artifacts, model_path)
    if record is None or record.get("trained"):
        return None
    return str(record.get("reason") or "notebook 04 skipped training without saying why: run it again")


def skip_message(artifacts: str | os.PathLike, model_path: str | os.PathLike) -> str | None:
    """The paragraph notebooks 05-07 print when 04 skipped training MODEL_PATH: the reason and what to do; else None."""
    reason = skipped_training(artifacts, model_path)
    if reason is None:
        return None
    return f"Notebook 04 did not train this model: {reason}\nWhat this means here: {SKIP_TODO}"


LEARNED_KIND = 0.5  # a miniature of unknown make: some question kind answered at twice chance (4 answers per kind)
# An official-format miniature with the course's pre-trained ViT (labsupport.model.official): notebook 04's CPU preset,
# trained with the checkpoint's own chat() system prompt, measured on such miniatures (OFFICIAL_RUNS, one row per size
# run); below the embedded model's 0.9 / 0.8 because colour and shape lag behind count there.
COURSE_VIT_OVERALL = 0.75
COURSE_VIT_PER_KIND = 0.6
OFFICIAL_RUNS = "docs/cpu/official-format-04.json"


def official_runs_text() -> str:
    """The measured notebook-04 runs on official-format miniatures (OFFICIAL_RUNS), one phrase each, or why there are none."""
    path = repo_root() / OFFICIAL_RUNS
    if not path.is_file():
        return f"no measured run ({OFFICIAL_RUNS} is missing)"
    rows = json.loads(path.read_text(encoding="utf-8"))["runs"]
    return "; ".join(f"{r['model']} {r['before']:.3f} -> {r['after']:.3f} on {r['n']} held-out questions ("
                     + " / ".join(f"{k} {v:.3f}" for k, v in r["per_kind"].items()) + ")" for r in rows)


@dataclass
class AccuracyGoal:
    """What a fine-tune's held-out accuracy must reach, and why that much (a None bar is not checked)."""

    overall: float | None
    per_kind: float | None
    why: str
    best_kind: float | None = None
    margin: float | None = None        # the learner's own data: after must beat before by this much
    metric: str = "accuracy"

    def met(self, accuracy: float, per_kind: dict[str, float], before: float | None = None,
            lazy: float | None = None) -> bool:
        """True when ACCURACY and PER_KIND ({kind: accuracy}) reach every bar the goal has (BEFORE: the base's score;
        LAZY: what the most frequent answer of each kind scores, which a gain over a base that scores 0 must beat too)."""
        kinds = list(per_kind.values()) or [0.0]
        return ((self.overall is None or accuracy >= self.overall)
                and (self.per_kind is None or min(kinds) >= self.per_kind)
                and (self.best_kind is None or max(kinds) >= self.best_kind)
                and (self.margin is None or (before is not None and accuracy >= before + self.margin - 1e-9
                                             and (lazy is None or accuracy > lazy + 1e-9))))

    def describe(self) -> str:
        """The goal in words, for a checkpoint's name."""
        parts = [f"held-out accuracy >= {self.overall:.2f} overall"] if self.overall is not None else []
        if self.per_kind is not None:
            parts.append(f">= {self.per_kind} for each kind")
        if self.best_kind is not None:
            parts.append(f"held-out accuracy >= {self.best_kind} on at least one question kind")
        if self.margin is not None:
            parts.append(f"held-out {self.metric} at least {self.margin:.2f} above the base model's and above the "
                         "lazy answer's (the most frequent answer of each kind, given to every question)")
        return " and ".join(parts)


OWN_DATA_MARGIN = 0.10  # what "the fine-tune learned your data" means when nobody measured what it can reach


def own_data_goal(metric: str = "accuracy", margin: float = OWN_DATA_MARGIN) -> AccuracyGoal:
    """The goal on the learner's own data: the fine-tune beats the base model by MARGIN on the held-out split."""
    return AccuracyGoal(None, None, (f"your own data: nobody measured what this checkpoint can reach on it, so the goal "
                                     f"is a clear gain over the base model on your held-out split (+{margin:.2f} {metric})"),
                        margin=margin, metric=metric)


def goal_for_task(model_dir: str | os.PathLike, record: dict | None, overall: float,
                  per_kind: float | None = None) -> AccuracyGoal:
    """accuracy_goal for the plates task (notebook 04's RECORD None or the plates), else own_data_goal in RECORD's metric."""
    if is_plates(record):
        return accuracy_goal(model_dir, overall, per_kind)
    return own_data_goal("chrF" if record.get("scorer") == "text" else "accuracy")


def accuracy_goal(model_dir: str | os.PathLike, overall: float, per_kind: float | None,
                  reached_by: str = "its CPU preset was measured to reach it") -> AccuracyGoal:
    """The goal for a fine-tune of MODEL_DIR: OVERALL / PER_KIND for the embedded model (REACHED_BY says what was
    measured to reach it) and for real weights; for an official-format miniature with the course's pre-trained ViT,
    COURSE_VIT_OVERALL / COURSE_VIT_PER_KIND (measured, OFFICIAL_RUNS); for any other miniature, random weights the course never measured, one
    question kind answered at LEARNED_KIND (a random vision tower tells colour apart but not shape or count)."""

    if count_parameters(Path(model_dir))["total"] >= MINIATURE_MAX_PARAMS:
        return AccuracyGoal(overall, per_kind, "real weights on the plates task: the goal the embedded model was measured to "
                                               "reach (no run with real weights is recorded in the course)")
    layout = embedded_layout(model_dir)
    if layout:
        return AccuracyGoal(overall, per_kind, f"the embedded model ({layout}): {reached_by}")
    if has_course_vit(model_dir):
        return AccuracyGoal(COURSE_VIT_OVERALL, None if per_kind is None else COURSE_VIT_PER_KIND, (
            f"an official-format miniature (published remote code, random LLM) with the course's pre-trained ViT: "
            f"notebook 04's CPU preset, trained with the checkpoint's own system prompt, was measured at "
            f"{official_runs_text()} ({OFFICIAL_RUNS}); colour and shape lag behind count, so the goal is "
            f"{COURSE_VIT_OVERALL} overall" + ("" if per_kind is None else f" and {COURSE_VIT_PER_KIND} per kind")
            + f", not {overall}"))
    return AccuracyGoal(None, None, (
        f"a miniature checkpoint the course did not build: its random weights were never measured, and what LoRA learns "
        f"in minutes depends on them (a random vision tower, for one, tells colour apart but not shape or count), so "
        f"{overall} cannot be promised; the goal is one kind at twice chance (measured on official-format InternVL2-2B "
        f"miniatures: random ViT colour 0.83 / count 0.38 / shape 0.13; the course's ViT colour 0.40 / count 0.98 / shape 0.45)"),
        best_kind=LEARNED_KIND)


def has_course_vit(model_dir: str | os.PathLike) -> bool:
    """Whether MODEL_DIR's vision tower is the course's pre-trained one, tensor for tensor (labsupport.model.towers)."""
    files = sorted(Path(model_dir).glob("*.safetensors"))
    try:
        course = pretrained_weights()
    except FileNotFoundError:
        return False
    found: dict = {}
    for f in files:
        with safe_open(str(f), "pt") as st:
            found.update({k: st.get_tensor(k) for k in st.keys() if k in course})
    return bool(found) and set(found) == set(course) and all(
        tuple(found[k].shape) == tuple(v.shape) and bool((found[k].to(v.dtype) == v).all()) for k, v in course.items())


def trained_tiles(artifacts: str | os.PathLike, model_path: str | os.PathLike,
                  model_dir: str | os.PathLike) -> tuple[int, str]:
    """(most 448-px tiles per image, where that number comes from) for MODEL_DIR, as it was trained.

    MODEL_DIR is notebook 05's fine-tune of MODEL_PATH: the tiling of its run (05's record, else 04's). Any other folder
    (the base model, also when notebook 04 skipped training): max_dynamic_patch of its own config.json (12 when absent,
    InternVL2's chat default)."""

    model_dir = Path(model_dir)
    if model_dir.resolve() == finetuned_dir(artifacts, model_path).resolve():
        record = Path(artifacts) / BEFORE_AFTER
        if record.is_file():
            data = json.loads(record.read_text(encoding="utf-8"))
            tiles = (data.get("training") or {}).get("max_dynamic_patch")
            if tiles and data.get("model") and Path(data["model"]).resolve() == model_dir.resolve():
                return int(tiles), f"the tiling of the training run, as notebook 05 recorded it in {record}"
        outcome = read_outcome(artifacts, model_path)
        if outcome and outcome.get("trained") and outcome.get("tiles"):
            return int(outcome["tiles"]), f"the tiling notebook 04 trained with ({Path(artifacts) / OUTCOME_JSON})"
    config = model_dir / "config.json"
    tiles = json.loads(config.read_text(encoding="utf-8")).get("max_dynamic_patch") or 12
    return int(tiles), f"max_dynamic_patch of {config} (no training run of this folder recorded under {artifacts})"
