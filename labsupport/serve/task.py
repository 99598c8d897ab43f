"""What notebook 06 serves and asks: notebook 04's record of its training data (or the plates task), scored its way.

    task = served_task(learner.read_training_data(ARTIFACTS), ARTIFACTS, BASE_DIR)
    task["heldout"], task["images"], task["tiles"], task["scorer"], task["system"], task["why"]
    rows = scored_rows(asked, base_answers, tuned_answers, task["scorer"])

Notebook 04 records what it trained on (labsupport.datasets.learner.write_training_data: the data file and its
sha256, both splits, the scorer, the tiles per image and the system prompt). Without that record (04 not run, or
an older 04) the plates task stands in, with the tiling notebook 05 recorded and the system prompt 04 trains the model with,
and the sentence in "why" says so.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Sequence

from labsupport.datasets.learner import TRAINING_DATA
from labsupport.evaluate.answers import SCORERS, judge, matcher, question, reference, with_meta
from labsupport.model.prompts import QUESTION, chat_system, xtuner_prompt_any_env
from labsupport.serve.deploy import trained_task


def served_task(trained: dict | None, artifacts: str | os.PathLike, base: str | os.PathLike,
                served: str | os.PathLike | None = None) -> dict:
    """The held-out split, image folder, tiles, scorer and system prompt to serve with, from notebook 04's record
    TRAINED (learner.read_training_data), else the plates task with the system prompt 04 trains SERVED (default BASE) with,
    asked once for the first held-out question (the prompt table asks the same, from the cache); "why" says which."""
    record = Path(artifacts) / TRAINING_DATA
    if trained and trained.get("heldout") and Path(trained["heldout"]).is_file():
        heldout = Path(trained["heldout"])
        scorer = trained.get("scorer") or "exact"
        if scorer not in SCORERS:
            raise ValueError(f"{record} names the scorer {scorer!r}; the course knows {', '.join(SCORERS)}: "
                             "run notebook 04 again (it writes the record) or fix the 'scorer' key")
        tiles = int(trained.get("tiles") or 1)
        name = trained.get("name") or heldout.parent.name
        sizes = f"{trained.get('n_train', '?')} training / {trained.get('n_heldout', '?')} held-out records"
        return {"name": name, "heldout": heldout, "train": Path(trained["train"]) if trained.get("train") else None,
                "images": Path(trained.get("image_folder") or heldout.parent), "tiles": tiles, "scorer": scorer,
                "system": trained.get("system"), "recorded": True,
                "why": f"notebook 04's record {record}: {name}, {sizes}, scorer {scorer!r}, {tiles} tile(s) per image"}
    heldout, tiles, why = trained_task(artifacts, base)
    first = json.loads(heldout.read_text(encoding="utf-8"))[:1]
    model = Path(served or base)
    system = chat_system(model)   # what notebook 04 trains with (prompts.training_system), where XTuner can train it
    if xtuner_prompt_any_env(model, question(first[0]) if first else QUESTION, system)[0] is None:
        system = None
    return {"name": "plates", "heldout": heldout, "train": heldout.with_name("train.json"), "images": heldout.parent,
            "tiles": tiles, "scorer": "exact", "system": system, "recorded": False,
            "why": f"no record of notebook 04's training data at {record}, so the plates task: {why}; "
                   "the system prompt 04 trains this model with (its chat()'s)"}


def follow_up(record: dict, questions: dict | None = None) -> tuple[str, str]:
    """(a second question about RECORD's image, where it comes from): the record's own second human turn, else for the
    plates task another kind's question in the same language (QUESTIONS maps (kind, lang) to its wording)."""
    humans = [t["value"] for t in record.get("conversations", []) if t.get("from") == "human"]
    if len(humans) > 1:
        return humans[1].replace("<image>", "").strip(), "the record's own second question"
    meta = record.get("meta") or {}
    if questions and "kind" in meta and "lang" in meta:
        kind = next(k for k in ("count", "shape", "colour") if k != meta["kind"])
        return questions[(kind, meta["lang"])], f"the plates task's {kind} question"
    return humans[0].replace("<image>", "").strip(), "the same question again (the record asks one)"


def scored_rows(records: Sequence[dict], base: Sequence[str], tuned: Sequence[str], scorer: str) -> list[dict]:
    """One row per record: question, reference, both answers, whether each is right by SCORER (answers.matcher) and its
    score (chrF / 100 for open answers, as notebook 04 averages them; 1 or 0 otherwise)."""
    matcher(scorer)   # an unknown scorer is refused before any reply is judged
    rows = []
    for r, b, f in zip(with_meta(records), base, tuned):
        (base_ok, base_score), (ft_ok, ft_score) = judge(scorer, b, r["meta"]), judge(scorer, f, r["meta"])
        rows.append({"id": r.get("id"), "kind": r["meta"].get("kind", "all"), "question": question(r), "reference": reference(r),
                     "base": b, "fine-tuned": f, "base_ok": base_ok, "fine-tuned_ok": ft_ok,
                     "base_score": base_score, "fine-tuned_score": ft_score})
    return rows
