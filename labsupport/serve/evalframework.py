"""Plumbing for evaluating a served model with an evaluation framework (EvalScope), the way it is done at work.

EvalScope's custom multimodal benchmark ``general_vqa`` reads local JSONL files, one file per subset
(``<subset>.jsonl``), one question per line in OpenAI chat format:

    {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "/abs/plate.jpg"}},
                                               {"type": "text", "text": "What colour ...?"}]}],
     "answer": "red"}

and scores the replies of an OpenAI-compatible endpoint (``--eval-type openai_api --api-url .../v1``) with BLEU and
Rouge (its primary score: Rouge-L recall). This module writes the course's held-out records in that format, finds
the evaluation environment's ``evalscope`` command, reads the framework's own report and per-question reviews
back (the tests' reader; notebook 06c reads the same files with ``json`` in its cells), scores the same replies with
the course's scorer and says, per question, why the two differ. Notebook 06c starts the servers and runs
``evalscope eval`` itself, in its cells.

    export = export_general_vqa(records, image_folder, out_dir)      # {"local_path", "subset_list", "manifest", ...}
    report = read_report(work_dir, "internvl2-finetuned")             # the framework's score, overall and per subset
    rows = read_reviews(work_dir, "internvl2-finetuned", export["manifest"])
    both = agreement(records, rows)                                   # course scorer on the same replies, and why
"""
from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path
from typing import Callable, Sequence

from labsupport.core.checkpoints import write_json_atomic, write_text_atomic
from labsupport.core import envs
from labsupport.evaluate import answers
from labsupport.evaluate.scoring import score

EVAL_ENV = "internvl-eval"   # environment-eval.yml's name
BENCHMARK = "general_vqa"    # EvalScope's custom visual-question benchmark
# The primary score EvalScope reports for general_vqa: Rouge-L recall (its report's metric identity).
PRIMARY = {"name": "rouge", "dimensions": {"variant": "l", "statistic": "recall"}}
PRIMARY_KEY = "Rouge-L-R"    # the same score in a per-question review


def _first(record: dict, role: str) -> str:
    """The first turn of ROLE ("human" or "gpt") in an InternVL-format record."""
    for turn in record.get("conversations", []):
        if turn.get("from") == role:
            return str(turn.get("value", ""))
    raise ValueError(f"record {record.get('id', '?')!r} has no {role!r} turn: an InternVL record needs a question "
                     "(from: human) and its answer (from: gpt)")


def _image_path(record: dict, image_folder: Path) -> Path:
    image = record.get("image")
    if isinstance(image, list):
        image = image[0] if image else None
    if not image:
        raise ValueError(f"record {record.get('id', '?')!r} has no image: general_vqa's export is for image questions")
    path = (image_folder / image).resolve()
    if not path.is_file():
        raise FileNotFoundError(f"record {record.get('id', '?')!r}: image {path} does not exist (image_folder={image_folder})")
    return path


def general_vqa_line(record: dict, image_folder: str | os.PathLike) -> dict:
    """One record as a general_vqa JSONL line: the image (absolute local path) then the question, and the answer."""
    question = _first(record, "human").replace("<image>", "").strip()
    answer = (record.get("meta") or {}).get("answer") or _first(record, "gpt").strip()
    url = str(_image_path(record, Path(image_folder)))
    return {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}},
                                                      {"type": "text", "text": question}]}],
            "answer": str(answer)}


def subset_of(record: dict) -> str:
    """The subset a record goes to: its question kind (meta.kind), else "all" (the kind answers.with_meta gives it)."""
    return str((record.get("meta") or {}).get("kind") or "all")


def export_general_vqa(records: Sequence[dict], image_folder: str | os.PathLike, out_dir: str | os.PathLike,
                       subset: Callable[[dict], str] = subset_of) -> dict:
    """Write RECORDS as EvalScope general_vqa files under OUT_DIR, one ``<subset>.jsonl`` per question kind, and a
    manifest (record ids in line order, to join the framework's reviews back); return local_path, subset_list, manifest, n."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for stale in out.glob("*.jsonl"):  # a subset left from an earlier export would be read as well
        stale.unlink()
    by_subset: dict[str, list[dict]] = {}
    for rec in records:
        by_subset.setdefault(subset(rec), []).append(rec)
    manifest = {"benchmark": BENCHMARK, "subsets": {}}
    for name, recs in sorted(by_subset.items()):
        lines = [json.dumps(general_vqa_line(r, image_folder), ensure_ascii=False) for r in recs]
        write_text_atomic(out / f"{name}.jsonl", "\n".join(lines) + "\n")
        manifest["subsets"][name] = [r.get("id", f"{name}-{i}") for i, r in enumerate(recs)]
    write_json_atomic(out / "manifest.json", manifest)
    return {"local_path": out.resolve(), "subset_list": sorted(by_subset), "manifest": out / "manifest.json",
            "n": sum(len(v) for v in by_subset.values())}


def evalscope_executable(explicit: str = "") -> Path:
    """The `evalscope` command of the evaluation environment: EXPLICIT, else internvl-eval's (the venv beside this
    kernel's, the repo's .venvs/ or conda), else one on PATH; FileNotFoundError naming the fix when there is none."""
    candidates = [Path(explicit)] if explicit else []
    if not explicit:

        spec = next((s for s in envs.load_specs() if s.name == EVAL_ENV), None)
        python = envs.env_python(spec) if spec else None
        candidates += [python.parent / "evalscope"] if python else []
        candidates.append(Path(sys.prefix).parent / EVAL_ENV / "bin" / "evalscope")  # .venvs/internvl-eval beside this env
        on_path = shutil.which("evalscope")
        candidates += [Path(on_path)] if on_path else []
    for path in candidates:
        if path.is_file() and os.access(path, os.X_OK):
            return path
    raise FileNotFoundError(f"no evalscope command found (looked at {[str(c) for c in candidates]}): build the evaluation "
                            f"environment with `make env` (environment-eval.yml, {EVAL_ENV}), or set EVALSCOPE to its path")


def _report_file(work_dir: str | os.PathLike, model: str) -> Path:
    path = Path(work_dir) / "reports" / model / f"{BENCHMARK}.json"
    if not path.is_file():
        log = Path(work_dir) / "logs" / "eval_log.log"
        raise FileNotFoundError(f"EvalScope wrote no report {path}: the run failed or used another --model name; "
                                f"read {log if log.exists() else 'the output of the evalscope cell'}")
    return path


def read_report(work_dir: str | os.PathLike, model: str, metric: dict = PRIMARY) -> dict:
    """The framework's own score for MODEL (METRIC, default Rouge-L recall): overall, per subset, and n, from its report."""
    report = json.loads(_report_file(work_dir, model).read_text(encoding="utf-8"))
    for m in report.get("metrics", []):
        identity = m.get("identity", {})
        if identity.get("name") == metric["name"] and identity.get("dimensions") == metric["dimensions"]:
            subsets = {s["name"]: s["score"] for c in m.get("categories", []) for s in c.get("subsets", [])
                       if not s.get("is_aggregate")}
            return {"metric": PRIMARY_KEY if metric == PRIMARY else identity, "score": m["score"], "n": m["num"],
                    "per_subset": subsets, "model": report.get("model_name", model)}
    names = [(m.get("identity", {}).get("name"), m.get("identity", {}).get("dimensions")) for m in report.get("metrics", [])]
    raise KeyError(f"{_report_file(work_dir, model)} has no metric {metric} (it has {names})")


def read_reviews(work_dir: str | os.PathLike, model: str, manifest: str | os.PathLike | dict) -> list[dict]:
    """Per question, in the export's order: record id, subset, the reply the framework got, and its score."""
    manifest = manifest if isinstance(manifest, dict) else json.loads(Path(manifest).read_text(encoding="utf-8"))
    rows = []
    for name, ids in manifest["subsets"].items():
        path = Path(work_dir) / "reviews" / model / f"{BENCHMARK}_{name}.jsonl"
        if not path.is_file():
            raise FileNotFoundError(f"EvalScope wrote no review {path}: was subset {name!r} in --dataset-args' subset_list?")
        reviews = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        if len(reviews) != len(ids):
            raise ValueError(f"{path} has {len(reviews)} reviews but the export wrote {len(ids)} questions to subset "
                             f"{name!r}: rerun the export and the evaluation into a fresh work dir")
        for review in sorted(reviews, key=lambda r: r["index"]):
            score = review["sample_score"]["score"]
            rows.append({"id": ids[review["index"]], "subset": name, "reply": score.get("prediction") or "",
                         "target": review["target"][0] if isinstance(review["target"], list) else review["target"],
                         "framework": float(score["value"].get(PRIMARY_KEY, 0.0))})
    return rows


def why_they_differ(reply: str, answer: str, framework: float, course_ok: bool, scorer: str = "exact") -> str:
    """One phrase, read from the data: why the framework's Rouge-L recall and the course's SCORER (exact, choice or text)
    disagree ('' when they agree)."""
    if (framework >= 1.0) == course_ok:
        return ""
    text = reply.strip()
    if scorer == "choice":
        if course_ok:
            return f"the course parses the right letter from the reply; Rouge-L recall is {framework:.2f} (other tokens around it)"
        return "the reference's tokens appear, but the letter the course parses from the reply is another one (or none)"
    if scorer == "text":
        if course_ok:
            return f"chrF at or above the course's pass mark ({answers.TEXT_PASS:.0f}); Rouge-L recall {framework:.2f}: some reference words are missing"
        return "every reference word appears (Rouge-L recall 1), but chrF is below the course's pass mark: other words around them"
    if course_ok:  # the course accepted it, Rouge-L did not (fully)
        if text.lower().strip("。.!！ ") == answer.lower() and text != answer:
            return "case or punctuation: Rouge compares tokens exactly"
        return "the other language or a short form the course accepts (e.g. 红 for 红色): Rouge sees other tokens"
    if framework >= 1.0:
        return "the answer plus other words: Rouge-L recall only asks that the reference's tokens appear"
    return "partly right: Rouge-L gives partial credit to a reply sharing some of the reference's tokens"


def agreement(records: Sequence[dict], reviews: Sequence[dict], match: Callable[[str, dict], bool] | None = None,
              scorer: str = "exact") -> dict:
    """The course's SCORER (exact, choice or text; MATCH overrides its verdict) on the replies the framework got, next to
    the framework's score: both scores, how many questions agree, and per question why they differ. "score" is the
    scorer's headline (accuracy; mean chrF / 100 for open answers), "course" the share the scorer counts right."""

    by_id = {r.get("id"): r for r in records}
    missing = [row["id"] for row in reviews if row["id"] not in by_id]
    if missing:
        raise KeyError(f"reviewed questions {missing[:3]} are not among the records given: pass the exported records")
    asked = answers.with_meta([by_id[row["id"]] for row in reviews])   # the learner's records get meta {kind: all, answer}
    course = score(asked, [row["reply"] for row in reviews], match or answers.matcher(scorer))
    rows = []
    for row, scored in zip(reviews, course["rows"]):
        why = why_they_differ(row["reply"], row["target"], row["framework"], scored["correct"], scorer)
        rows.append({**row, "course": scored["correct"], "why": why})
    n = len(rows)
    framework_mean = sum(r["framework"] for r in rows) / n if n else 0.0
    headline = answers.summarize([{"reply": r["reply"], "answer": a["meta"]["answer"], "correct": r["course"]}
                                  for r, a in zip(rows, asked)], scorer)
    return {"n": n, "framework": round(framework_mean, 4), "course": course["accuracy"], "score": headline["score"],
            "metric": headline["metric"], "course_per_kind": course["per_kind"], "agree": sum(not r["why"] for r in rows),
            "differ": [r for r in rows if r["why"]], "rows": rows}


def forgetting(before: float, after: float) -> dict:
    """How much of a skill a fine-tune kept: the drop (before - after) and the share kept (after / before)."""
    if not 0 <= before <= 1 or not 0 <= after <= 1:
        raise ValueError(f"scores are accuracies in [0, 1]; got before={before}, after={after}")
    if before == 0:
        raise ValueError("before = 0: the model could not do this before the fine-tune, so nothing can be forgotten; "
                         "measure forgetting on a skill the base model has")
    return {"before": round(before, 4), "after": round(after, 4), "drop": round(before - after, 4),
            "kept": round(after / before, 4)}


def served_copy(model_dir: str | os.PathLike, tiles: int, out_dir: str | os.PathLike) -> Path:
    """A folder that serves MODEL_DIR with TILES 448-px tiles per image: links to its files, and its config.json with
    max_dynamic_patch = TILES. An evaluation framework sends OpenAI's `detail`, never LMDeploy's per-image
    `max_dynamic_patch`, so the server tiles by config.json: it must say what training used."""
    src, out = Path(model_dir).resolve(), Path(out_dir)
    config = json.loads((src / "config.json").read_text(encoding="utf-8"))
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    for item in src.iterdir():
        if item.name != "config.json":
            (out / item.name).symlink_to(item)
    config["max_dynamic_patch"] = int(tiles)
    write_text_atomic(out / "config.json", json.dumps(config, indent=2, ensure_ascii=False) + "\n")
    return out


def report_table(log: str | os.PathLike, model: str = "", metric: str = "L · Recall") -> str:
    """The score table EvalScope printed at the end of its run (from the log the evalscope cell wrote): its header and
    the rows of MODEL (every model when empty) for METRIC (every metric when empty)."""
    table = report_table_from_text(Path(log).read_text(encoding="utf-8", errors="replace"), str(log)).splitlines()
    rows = [ln for ln in table[3:] if ln.startswith("│") and (not model or f" {model} " in ln) and metric in ln]
    return "\n".join(table[:3] + rows + table[-1:])


def report_table_from_text(text: str, where: str = "its output") -> str:
    """The score table in EvalScope's console output TEXT (RuntimeError with the output's end when there is none)."""
    lines = text.splitlines()
    start = next((i for i, ln in enumerate(lines) if "Overall report table" in ln), None)
    if start is None:
        tail = "\n".join(lines[-15:])
        raise RuntimeError(f"EvalScope printed no report table in {where}: its run failed. The end of its output:\n{tail}")
    table = []
    for ln in lines[start + 1:]:
        if not ln.strip() or not ln.lstrip()[0] in "┌├│└+|-":
            break
        table.append(ln)
    return "\n".join(table)


def card_lines(artifacts: str | os.PathLike) -> list[str]:
    """Model-card lines from notebook 06c's framework scores and 06d's forgetting figures (none for a notebook not run)."""
    results = Path(artifacts) / "results"
    lines: list[str] = []
    try:
        fw = json.loads((results / "06c_evaluate_framework.json").read_text(encoding="utf-8"))
    except (FileNotFoundError, ValueError):
        fw = None
    if fw:
        lines += ["", f"Through the served endpoint, with {fw['version']} (`general_vqa`, {fw['n']} held-out questions, "
                      f"Rouge-L recall) and the course's scorer on the same replies:", "",
                  "| model | EvalScope Rouge-L-R | course scorer | agree |", "|---|---|---|---|"]
        lines += [f"| {name} | {s['evalscope_rouge_l_r']:.3f} | {s['course']:.3f}"   # older records name no scorer: exact
                  f"{'' if s.get('scorer', 'exact') == 'exact' else ' (' + s['scorer'] + ', ' + s.get('course_metric', '') + ')'} | "
                  f"{s['agree']}/{fw['n']} |" for name, s in fw["scores"].items()]
    try:
        fg = json.loads((results / "06d_forgetting.json").read_text(encoding="utf-8"))
    except (FileNotFoundError, ValueError):
        fg = None
    if fg:
        lines += ["", f"Forgetting (notebook 06d, measured on `{Path(fg['model']).name}` with this recipe for "
                      f"{fg['epochs']} epoch(s); general set: {fg['general_set']}): general skill before {fg['before']:.2f}.", "",
                  "| fine-tune | plates held-out | general skill after | kept |", "|---|---|---|---|"]
        lines += [f"| {name} | {fg['runs'][name]['plates']:.2f} | {f['after']:.2f} | {f['kept']:.0%} |"
                  for name, f in fg["forgetting"].items()]
    return lines
