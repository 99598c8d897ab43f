"""Accuracy of an InternVL2 model on the held-out split of the course task, through the model's own chat API.

    model, tokenizer = load_model(path)
    result = evaluate(model, tokenizer, "artifacts/data/plates/heldout.json", max_num=1)
    print(result["accuracy"], result["per_kind"], result["per_class"])

Each record is asked its question (with the image) via ``model.batch_chat`` (``model.chat`` one by one
when the model has no batch_chat); the reply counts as right when it matches the record's
``meta`` answer (labsupport.datasets.plates.answer_matches: either language, case and punctuation ignored).
A learner's own records (no ``meta``) are scored against their first gpt turn with the scorer
labsupport.evaluate.answers chose for them: pass ``match=answers.matcher(name)``.
"""
from __future__ import annotations

import json
import os
from collections import defaultdict
from pathlib import Path
from typing import Callable, Sequence

from labsupport.core.tiling import IMAGENET_MEAN, IMAGENET_STD
from labsupport.core.tiling import load_image
from labsupport.datasets.plates import answer_matches
from labsupport.core.progress import bar
from labsupport.evaluate.answers import constant_answer_score, matcher, summarize, with_meta


def load_model(path: str | os.PathLike, device: str = "cpu", dtype: str = "float32"):
    """Load an InternVL-format checkpoint (remote code) and its tokenizer for inference: (model, tokenizer)."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    path = Path(path)
    if not (path / "config.json").exists():
        raise FileNotFoundError(f"{path} holds no config.json: is it a model folder (e.g. one written by convert_to_official)?")
    model = AutoModel.from_pretrained(str(path), trust_remote_code=True, torch_dtype=getattr(torch, dtype))
    tokenizer = AutoTokenizer.from_pretrained(str(path), trust_remote_code=True)
    return model.to(device).eval(), tokenizer


def free_cuda_memory() -> None:
    """Give the GPU memory this process's PyTorch still caches back to the driver (a training process started next needs it)."""
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def simple_load_image(path: str | os.PathLike, input_size: int = 448, max_num: int = 1):
    """One 448-px tile of the image at PATH (bicubic resize + ImageNet normalisation): a [1, 3, 448, 448] tensor."""
    import numpy as np
    import torch
    from PIL import Image

    img = Image.open(path).convert("RGB").resize((input_size, input_size), Image.BICUBIC)
    x = torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0).permute(2, 0, 1)
    mean, std = torch.tensor(IMAGENET_MEAN)[:, None, None], torch.tensor(IMAGENET_STD)[:, None, None]
    return ((x - mean) / std).unsqueeze(0)


def _image_loader() -> Callable:
    """The course's dynamic tiling (labsupport.core.tiling.load_image), which every evaluation uses."""
    return load_image


def default_match(prediction: str, meta: dict) -> bool:
    """Whether PREDICTION answers the record whose META is given (the course task's rule, both languages)."""
    return answer_matches(prediction, meta)


def load_records(records: str | os.PathLike | Sequence[dict], image_folder: str | os.PathLike | None = None) -> tuple[list[dict], Path]:
    """Records from a json file (or a list already loaded) and the folder their image paths are relative to."""
    if isinstance(records, (str, os.PathLike)):
        path = Path(records)
        if not path.exists():
            raise FileNotFoundError(f"evaluation set {path} does not exist: build the course task first (labsupport.datasets.plates.build_course_task)")
        folder = Path(image_folder) if image_folder else path.parent
        records = json.loads(path.read_text(encoding="utf-8"))
    else:
        if image_folder is None:
            raise ValueError("records given as a list: pass image_folder too")
        folder = Path(image_folder)
    return with_meta(records), folder  # the learner's own records: the first gpt turn is the reference answer


def question_of(record: dict) -> str:
    """The first human turn of RECORD, with the <image> placeholder as InternVL's chat expects it."""
    text = next(t["value"] for t in record["conversations"] if t["from"] == "human")
    return text if "<image>" in text else "<image>\n" + text


def evaluate(model, tokenizer, records: str | os.PathLike | Sequence[dict], image_folder: str | os.PathLike | None = None,
             max_num: int = 1, batch_size: int = 8, max_new_tokens: int = 8, limit: int | None = None,
             progress: bool = True, match: Callable[[str, dict], bool] | None = None,
             load_image: Callable | None = None, system: str | None = None, scorer: str | None = None) -> dict:
    """Accuracy of MODEL on RECORDS (overall, per question kind and per class) with the replies, asked through batch_chat/chat;
    SYSTEM, when given, is the system prompt chat() uses (`model.system_message`, as InternVL's model card shows).
    SCORER ("exact", "choice", "text": labsupport.evaluate.answers) picks the match and adds the headline "score" and
    its "metric" (accuracy, or for open answers the mean chrF / 100) and the "lazy" score of the most frequent answer."""
    import torch

    records, folder = load_records(records, image_folder)
    records = records[:limit] if limit else records
    if scorer and match:
        raise ValueError("pass either scorer or match, not both: the scorer brings its own match")
    match = match or (matcher(scorer) if scorer else default_match)
    load_image = load_image or _image_loader()
    device = next(model.parameters()).device
    dtype = next(model.parameters()).dtype
    gen = dict(max_new_tokens=max_new_tokens, do_sample=False)
    batches = [records[i:i + batch_size] for i in range(len(records))[::batch_size]]
    if progress:
        batches = bar(batches, "evaluating", unit="batch")
    replies: list[str] = []
    if system is not None:
        model.system_message = system
    with torch.inference_mode():
        for batch in batches:
            pixels = [load_image(folder / (r["image"][0] if isinstance(r["image"], list) else r["image"]), input_size=448, max_num=max_num)
                      for r in batch]
            questions = [question_of(r) for r in batch]
            if getattr(model, "batch_chat", None) and len(batch) > 1:
                pv = torch.cat(pixels).to(device, dtype)
                replies += list(model.batch_chat(tokenizer, pv, num_patches_list=[p.shape[0] for p in pixels],
                                                 questions=questions, generation_config=gen))
            else:
                replies += [model.chat(tokenizer, p.to(device, dtype), q, gen) for p, q in zip(pixels, questions)]
    result = score(records, replies, match)
    if scorer:
        result.update(summarize(result["rows"], scorer), scorer=scorer)   # metric, score (and n, the same)
        result["lazy"] = constant_answer_score(records, scorer)   # what the most frequent answer per kind would score
    return result


def score(records: Sequence[dict], replies: Sequence[str], match: Callable[[str, dict], bool] | None = None) -> dict:
    """Accuracy of REPLIES against RECORDS' meta answers: overall, per kind, per kind/class, and the rows."""
    if len(records) != len(replies):
        raise ValueError(f"{len(records)} records but {len(replies)} replies")
    match = match or default_match
    hits, kind_tot, cls_tot = [], defaultdict(lambda: [0, 0]), defaultdict(lambda: [0, 0])
    rows = []
    for rec, reply in zip(records, replies):
        meta = rec["meta"]
        ok = bool(match(reply, meta))
        hits.append(ok)
        cls = f"{meta['kind']}/{meta.get('value', meta['answer'])}"
        for table, key in ((kind_tot, meta["kind"]), (cls_tot, cls)):
            table[key][0] += ok
            table[key][1] += 1
        rows.append({"id": rec.get("id"), "kind": meta["kind"], "answer": meta["answer"], "reply": reply, "correct": ok})
    acc = lambda t: {k: round(v[0] / v[1], 4) for k, v in sorted(t.items())}  # noqa: E731
    return {"accuracy": round(sum(hits) / len(hits), 4) if hits else 0.0, "n": len(hits),
            "per_kind": acc(kind_tot), "per_class": acc(cls_tot), "rows": rows}
