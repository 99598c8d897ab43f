"""What a fine-tune makes a model forget, and how mixing general records into the training set prevents it.

The embedded "tiny" model's LLM is random, so it can do nothing the plates fine-tune could take away. The variant
built here, ``internvl2-tiny-general`` (a clearly separate folder: notebook 04's default "tiny" stays as it is), is
the same checkpoint with its LLM pre-warmed on a general skill the plates task never trains: short text answers to
ordinary questions (``labsupport.datasets.formats.ORDINARY_QA``, the ones notebook 08's chat model is pre-warmed with),
under the prompt XTuner's InternVL dataset trains with (internlm2_chat, InternLM's system prompt). A few seconds of
plain PyTorch, deterministic, cached under ARTIFACTS/models with a record of the run.

    variant = build_general_variant(ARTIFACTS)                 # the pre-warmed copy, and its record
    general = general_set("")                                   # the regression set: GENERAL file or ORDINARY_QA
    score = general_accuracy(model, tokenizer, general)         # text-only chat(), exact replies
    mixed = mixed_training_set(plates_dir, general, 0.1, out)   # plates + 10 % general records, for XTuner
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from pathlib import Path
from typing import Sequence

from labsupport.core.checkpoints import write_json_atomic
from labsupport.core.paths import artifacts_dir
from labsupport.datasets.formats import ORDINARY_QA, load_records, mix
from labsupport.evaluate.scoring import load_model
from labsupport.model import chatllm
from labsupport.model.tinymodel import INTERNLM2_SYSTEM, resolve_model
from labsupport.train.xtuner_config import Edit, _line, _value

VARIANT_NAME = "internvl2-tiny-general"
RECORD_FILE = ".labsupport-general.json"
PREWARM_VERSION = 1  # bump when the pre-warm's data or recipe changes


def default_pairs() -> list[tuple[str, str]]:
    """The default regression set: the ordinary questions shipped with the course (labsupport.datasets.formats.ORDINARY_QA)."""

    return [(q, a) for q, a in ORDINARY_QA]


def general_set(path: str | os.PathLike = "") -> list[tuple[str, str]]:
    """(question, answer) pairs of the GENERAL regression set: PATH, an InternVL-format json/jsonl of text-only records
    (first human turn, first gpt turn), or the course's ordinary questions when PATH is empty."""
    if not path:
        return default_pairs()

    pairs = []
    for i, rec in enumerate(load_records(path)):
        turns = rec.get("conversations", [])
        q = next((t["value"] for t in turns if t.get("from") == "human"), None)
        a = next((t["value"] for t in turns if t.get("from") == "gpt"), None)
        if q is None or a is None or "<image>" in q:
            raise ValueError(f"{path}: record #{i} ({rec.get('id', '?')}) is not a text-only question and answer: a GENERAL "
                             "file holds InternVL records with a human turn (no <image>) and a gpt turn")
        pairs.append((q.strip(), a.strip()))
    if not pairs:
        raise ValueError(f"{path} holds no records")
    return pairs


def general_records(pairs: Sequence[tuple[str, str]], prefix: str = "general") -> list[dict]:
    """PAIRS as text-only InternVL-format records (no image: XTuner's InternVL dataset trains them as plain text)."""
    return [{"id": f"{prefix}-{i:04d}", "conversations": [{"from": "human", "value": q}, {"from": "gpt", "value": a}]}
            for i, (q, a) in enumerate(pairs)]


def _stamp(base: Path, pairs: Sequence[tuple[str, str]], steps: int, seed: int) -> str:
    h = hashlib.sha256(Path(__file__).read_bytes())
    h.update((base / "model.safetensors").read_bytes() if (base / "model.safetensors").exists() else str(base).encode())
    h.update(json.dumps({"pairs": list(pairs), "steps": steps, "seed": seed, "v": PREWARM_VERSION}).encode())
    return h.hexdigest()[:16]


def prewarm_llm(model, tokenizer, pairs: Sequence[tuple[str, str]], steps: int = 150, lr: float = 3e-3,
                seed: int = 0) -> list[float]:
    """Train the LLM of InternVL MODEL (all its weights; the ViT and projector untouched) on PAIRS as text-only chats
    under XTuner's internlm2_chat prompt with InternLM's system prompt; return the loss per step."""
    losses = chatllm.prewarm(model.language_model, tokenizer, pairs, steps=steps, lr=lr, seed=seed, system=INTERNLM2_SYSTEM)
    model.eval()  # the whole InternVL model, its ViT and projector untouched
    return losses


def general_accuracy(model, tokenizer, pairs: Sequence[tuple[str, str]], max_new_tokens: int = 24,
                     reference: Sequence[str] | None = None) -> dict:
    """Ask each question of PAIRS through the model's own text-only chat() (greedy); the share of replies equal to the
    answer (or to REFERENCE, e.g. the base model's own replies), with every reply."""
    import torch

    gen = dict(max_new_tokens=max_new_tokens, do_sample=False)
    rows = []
    with torch.inference_mode():
        for i, (q, a) in enumerate(pairs):
            reply = model.chat(tokenizer, None, q, gen).strip()
            expected = a if reference is None else reference[i]
            rows.append({"question": q, "expected": expected, "reply": reply, "ok": reply == expected.strip()})
    return {"accuracy": round(sum(r["ok"] for r in rows) / max(1, len(rows)), 4), "n": len(rows), "rows": rows}


def build_general_variant(artifacts: str | os.PathLike | None = None, base: str | os.PathLike | None = None,
                          pairs: Sequence[tuple[str, str]] | None = None, steps: int = 150, seed: int = 0,
                          force: bool = False) -> Path:
    """Write (or reuse) ARTIFACTS/models/internvl2-tiny-general: BASE (default: the embedded "tiny") with its LLM
    pre-warmed on PAIRS (default: the ordinary questions), and a record of the run (losses, seconds, accuracy)."""
    import torch


    base = Path(base) if base else resolve_model("tiny", artifacts)
    pairs = list(pairs or default_pairs())
    out = artifacts_dir(artifacts) / "models" / VARIANT_NAME
    stamp = _stamp(base, pairs, steps, seed)
    try:
        if not force and json.loads((out / RECORD_FILE).read_text())["stamp"] == stamp:
            return out
    except (FileNotFoundError, KeyError, ValueError):
        pass  # no record or an unreadable one: build
    tmp = out.with_name(out.name + "-building")  # no dot: transformers names remote-code modules after the folder
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(base, tmp)
    started = time.time()
    with torch.random.fork_rng():
        model, tok = load_model(tmp)
        losses = prewarm_llm(model, tok, pairs, steps=steps, seed=seed)
        score = general_accuracy(model, tok, pairs)
    model.to(torch.bfloat16).save_pretrained(tmp, safe_serialization=True)  # the embedded model's own dtype
    write_json_atomic(tmp / RECORD_FILE, {"stamp": stamp, "base": str(base), "pairs": len(pairs), "steps": steps,
                                          "seed": seed, "first_loss": round(losses[0], 4), "last_loss": round(losses[-1], 4),
                                          "accuracy": score["accuracy"], "seconds": round(time.time() - started, 1)})
    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp, out)
    return out


def variant_record(model_dir: str | os.PathLike) -> dict:
    """What build_general_variant recorded about the pre-warm of MODEL_DIR."""
    return json.loads((Path(model_dir) / RECORD_FILE).read_text(encoding="utf-8"))


def mixed_training_set(task_root: str | os.PathLike, pairs: Sequence[tuple[str, str]], share: float,
                       out_dir: str | os.PathLike, seed: int = 0) -> dict:
    """A training folder for XTuner: TASK_ROOT's train.json plus general records making up SHARE of the samples
    (labsupport.datasets.formats.mix, as notebook 03b mixes), its images hard-linked in; returns root, train, counts."""

    if not 0 < share < 1:
        raise ValueError(f"share is the fraction of general records in the mix, in (0, 1); got {share}")
    task_root, out = Path(task_root), Path(out_dir)
    train = json.loads((task_root / "train.json").read_text(encoding="utf-8"))
    general = general_records(pairs)
    times = share * len(train) / (1 - share) / len(general)  # repeats of the general set that give SHARE of the mix
    records = mix([(train, 1.0), (general, times)], seed=seed)
    images = out / "images"
    if images.is_symlink():  # an earlier layout: XTuner's checks refuse image paths that resolve outside the data root
        images.unlink()
    images.mkdir(parents=True, exist_ok=True)
    for src in (task_root / "images").iterdir():  # hard links: the same files, inside this folder, no copy
        dst = images / src.name
        if not dst.exists():
            try:
                os.link(src, dst)
            except OSError:  # another file system: copy
                shutil.copy2(src, dst)
    write_json_atomic(out / "train.json", records)
    n_general = sum(1 for r in records if not r.get("image"))
    return {"root": out, "train": out / "train.json", "n": len(records), "general": n_general,
            "share": round(n_general / len(records), 3)}


def recipe_edits(config_text: str, model_dir: str | os.PathLike, epochs: int,
                 data_root: str | os.PathLike | None = None) -> list:
    """The edits that turn notebook 04's XTuner config (CONFIG_TEXT) into the same recipe for MODEL_DIR, EPOCHS passes,
    and (when given) another training folder DATA_ROOT (xtuner_config.Edit objects, each with its reason)."""

    def line(name: str) -> str:
        found = _line(config_text, name)
        if found is None:
            raise ValueError(f"notebook 04's config has no `{name} = ...` line: rerun notebook 04 to write it")
        return found

    edits = [Edit(line("path"), [f"path = {str(model_dir)!r}"], "the model whose general skill is measured"),
             Edit(line("max_epochs"), [f"max_epochs = {int(epochs)}"], "the EPOCHS parameter of this notebook")]
    if data_root is not None:
        edits.append(Edit(line("data_root"), [f"data_root = {str(data_root).rstrip('/') + '/'!r}"],
                          "plates plus general records (train.json; images/ holds hard links to the plates' images)"))
    return edits


def data_root_of(config_text: str) -> Path:
    """The training folder (data_root) an XTuner config trains on."""

    value = _value(config_text, "data_root")
    if value is None:
        raise ValueError("the config has no `data_root = ...` line")
    return Path(value.strip("'\""))
