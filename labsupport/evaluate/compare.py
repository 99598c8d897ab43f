"""Prove a converted fine-tune: the tensors that moved, the merge identity, equal logits, and the before/after tables.

    run = conversion.find_training_run(ARTIFACTS)            # labsupport.evaluate.conversion: what notebook 04 left
    out = conversion.convert(run, conversion.finetuned_dir(ARTIFACTS))   # XTuner's convert_to_official.py
    rows = weight_changes(run.base_model, out)               # which tensors changed, and by how much
    ref = reference_model(run.base_model, run.checkpoint, lora_scale(run.config))  # base + adapter, merged by hand
    report = compare_logits(merged, ref, base, fixed_inputs(merged, tokenizer))

The merged model must behave exactly like "base + adapter": that is what merging means. The check is
independent of XTuner's merge (peft's ``merge_and_unload``): here W' = W + (alpha / r) * B @ A is
computed by hand from the LoRA matrices saved in XTuner's checkpoint.
"""
from __future__ import annotations

import base64
import html
import io
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence
from labsupport.evaluate.conversion import IncompleteModelFolder
from labsupport.evaluate.conversion import TrainingRun
from labsupport.evaluate.conversion import _weight_files
from labsupport.train.runs import mmengine_scalars
from labsupport.train.xtuner_render import load_config

BEFORE_AFTER = "results/before_after.json"          # before/after numbers notebook 07's model card reads


class MergeMismatch(AssertionError):
    """The merged model's logits differ from base + adapter by more than the tolerance."""


# ---- 3. which tensors changed --------------------------------------------------------------------------------

def load_weights(folder: str | os.PathLike) -> dict:
    """Every tensor saved in a model FOLDER (safetensors or .bin, sharded or not), by name."""
    import torch
    from safetensors.torch import load_file

    files = _weight_files(Path(folder))
    if not files:
        raise IncompleteModelFolder(f"no weights (*.safetensors or pytorch_model*.bin) in {folder}")
    state: dict = {}
    for f in files:
        state.update(load_file(str(f)) if f.suffix == ".safetensors" else torch.load(f, map_location="cpu", weights_only=True))
    return state


def tensor_group(name: str, ndim: int = 2) -> tuple[str, str]:
    """(part, kind) of a tensor NAME with NDIM dimensions: part vision/projector/llm; kind linear/embedding/lm_head/norm/bias/scale."""
    part = "vision" if name.startswith("vision_model.") else "projector" if name.startswith("mlp1.") else \
        "llm" if name.startswith("language_model.") else "other"
    leaf = name.rsplit(".", 1)[-1]
    if "embed" in name:
        kind = "embedding"  # token embeddings; the ViT's patch/position embeddings and class token
    elif "lm_head" in name or name.endswith("output.weight"):
        kind = "lm_head"
    elif leaf == "bias":
        kind = "bias"
    elif leaf == "weight" and ndim >= 2:
        kind = "linear"
    elif leaf == "weight":
        kind = "norm"  # a 1-D weight: LayerNorm / RMSNorm
    else:
        kind = "scale"  # e.g. InternViT's layer scales ls1, ls2
    return part, kind


def weight_changes(base: str | os.PathLike | dict, merged: str | os.PathLike | dict) -> list[dict]:
    """One row per tensor of MERGED: part/kind, whether it differs from BASE (rounded to MERGED's dtype), max |change| and relative change (0-2)."""
    import torch

    base_w = base if isinstance(base, dict) else load_weights(base)
    new_w = merged if isinstance(merged, dict) else load_weights(merged)
    missing = sorted(set(base_w) - set(new_w))
    if missing:
        raise KeyError(f"{len(missing)} tensors of the base model are missing from the merged one, e.g. {missing[0]}")
    rows = []
    for name, new in new_w.items():
        old = base_w.get(name)
        part, kind = tensor_group(name, new.ndim)
        row = {"name": name, "part": part, "kind": kind, "shape": tuple(new.shape), "dtype": str(new.dtype).replace("torch.", "")}
        if old is None:
            row.update(changed=True, max_abs=float("nan"), rel=float("nan"), note="not in base")
        else:
            old32 = old.to(new.dtype).float()  # what the base holds once rounded like the merged file
            diff = new.float() - old32
            row.update(changed=bool((diff != 0).any()), max_abs=float(diff.abs().max()),
                       rel=float(diff.norm() / torch.maximum(old32.norm(), new.float().norm()).clamp_min(1e-12)), note="")
        rows.append(row)
    return rows


def rounded_away_groups(checkpoint: str | os.PathLike | dict, base: str | os.PathLike | dict, dtype: str = "bfloat16") -> set[tuple[str, str]]:
    """The (part, kind) groups with a tensor that trained (XTuner's CHECKPOINT holds only those) yet equals BASE in DTYPE."""
    import torch

    # Two ways a trained weight ends up equal to the base: a float32 update below half a bfloat16 step is rounded away
    # on saving, or (bfloat16 training under DeepSpeed) the fp32 master copy moved less than that and the bfloat16
    # weight it saves never changed at all. Either way the tensor is in the checkpoint: it trained.
    state = checkpoint if isinstance(checkpoint, dict) else read_checkpoint(checkpoint)
    base_w = base if isinstance(base, dict) else load_weights(base)
    rounding = getattr(torch, dtype)
    groups = set()
    for key, trained in state.items():
        name = _model_key(key)
        old = base_w.get(name)
        if old is None or _LORA_KEY.match(key) or old.shape != trained.shape:
            continue
        if torch.equal(trained.to(rounding), old.to(rounding)):
            groups.add(tensor_group(name, trained.ndim))
    return groups


def prediction_matches(predicted: set, changed: set, rounded_away: set = frozenset()) -> bool:
    """Whether PREDICTED names every CHANGED group, and otherwise only groups whose update was ROUNDED_AWAY on saving."""
    return changed <= predicted <= changed | rounded_away


def change_summary(rows: Sequence[dict]):
    """A pandas table: per (part, kind), how many tensors there are, how many changed, and the largest relative change."""
    import pandas as pd

    df = pd.DataFrame(rows)
    out = df.groupby(["part", "kind"]).agg(tensors=("name", "size"), changed=("changed", "sum"),
                                           max_abs_change=("max_abs", "max"), max_rel_change=("rel", "max"))
    out["changed"] = out["changed"].astype(int)
    return out


def changed_groups(rows: Sequence[dict]) -> set[tuple[str, str]]:
    """The (part, kind) pairs in which at least one tensor changed."""
    return {(r["part"], r["kind"]) for r in rows if r["changed"]}


LORA_PARTS = {("llm", "linear"), ("projector", "linear"), ("projector", "bias"), ("projector", "norm")}
# XTuner 0.2.0 puts LoRA on every nn.Linear of the LLM except modules named lm_head or output_layer
# (xtuner/model/utils.py find_all_linear_names). InternLM2's head is called `output`, so it gets an adapter
# and its merged weight changes: expected, not a leak. Phi-3's and Qwen2's `lm_head` stays untouched.
XTUNER_LORA_SKIPPED_HEADS = ("lm_head", "output_layer")


def lora_adapts_head(name: str) -> bool:
    """True when XTuner's LoRA puts an adapter on the output head NAME (InternLM2's `output`), False for lm_head."""
    module = name.rsplit(".", 1)[0].rsplit(".", 1)[-1]
    return module not in XTUNER_LORA_SKIPPED_HEADS


def unexpected_changes(rows: Sequence[dict], mode: str, vit_trained: bool = False) -> list[str]:
    """Names of changed tensors a MODE run should not have touched (LoRA: LLM linear layers, InternLM2's head `output`
    (XTuner adapts it, see XTUNER_LORA_SKIPPED_HEADS) and the projector, plus the ViT if trained)."""
    if mode == "full":
        allowed = lambda part, kind: part in ("llm", "projector") or (vit_trained and part == "vision")  # noqa: E731
    else:
        def allowed(part: str, kind: str, name: str) -> bool:
            return ((part, kind) in LORA_PARTS or (vit_trained and part == "vision")
                    or (part, kind) == ("llm", "lm_head") and lora_adapts_head(name))
        return [r["name"] for r in rows if r["changed"] and not allowed(r["part"], r["kind"], r["name"])]
    return [r["name"] for r in rows if r["changed"] and not allowed(r["part"], r["kind"])]


# ---- 4. base + adapter, merged by hand, and the logits check --------------------------------------------------

def checkpoint_bytes(path: str | os.PathLike) -> int:
    """Size of a checkpoint: an iter_N.pth file, or every file of a DeepSpeed checkpoint folder (what a GPU run writes)."""
    path = Path(path)
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.is_dir() else path.stat().st_size


def read_checkpoint(path: str | os.PathLike) -> dict:
    """The trained tensors in an XTuner/mmengine checkpoint (iter_N.pth file, or a DeepSpeed checkpoint folder)."""
    import torch

    path = Path(path)
    if path.is_dir():  # DeepSpeed: iter_N.pth/ holds mp_rank_00_model_states.pt
        files = sorted(path.rglob("*mp_rank_00_model_states.pt"))
        if not files:
            raise FileNotFoundError(f"{path} is a folder without mp_rank_00_model_states.pt: not a DeepSpeed checkpoint")
        state = torch.load(files[0], map_location="cpu", weights_only=False)["module"]
    else:
        state = torch.load(path, map_location="cpu", weights_only=False)
        state = state.get("state_dict", state)
    return {k.removeprefix("module."): v for k, v in state.items()}


def lora_scale(config: str | os.PathLike) -> float | None:
    """alpha / r of the LLM LoRA in an XTuner config (None when the run is not LoRA)."""

    lora = load_config(config).model.get("llm_lora")
    return None if lora is None else float(lora["lora_alpha"]) / float(lora["r"])


_LORA_KEY = re.compile(r"^(.*)\.lora_([AB])(?:\.default)?\.weight$")


def _model_key(key: str) -> str:
    """A checkpoint key (XTuner wrapper, peft wrapper) as the name of the same tensor in the official model."""
    key = key.removeprefix("model.")
    return key.replace("base_model.model.", "", 1).replace(".base_layer.", ".")


def merge_by_hand(model, state: dict, scale: float | None, delta_dtype: str | None = None) -> dict:
    """Apply an XTuner checkpoint STATE to MODEL in place: W += SCALE * B @ A per LoRA pair (the update rounded to DELTA_DTYPE if given), copy the rest."""
    import torch

    params = dict(model.named_parameters())
    pairs: dict[str, dict] = {}
    copied = 0
    with torch.no_grad():
        for key, value in state.items():
            m = _LORA_KEY.match(key)
            if m:
                pairs.setdefault(_model_key(m.group(1)), {})[m.group(2)] = value
                continue
            name = _model_key(key)
            if name not in params:
                raise KeyError(f"checkpoint tensor {key} has no counterpart {name} in the model")
            params[name].copy_(value.to(params[name].dtype))
            copied += 1
        if pairs and scale is None:
            raise ValueError("the checkpoint holds LoRA matrices: pass scale = lora_alpha / r (compare.lora_scale(config))")
        for module, ab in pairs.items():
            weight = params[module + ".weight"]
            delta = ab["B"].float() @ ab["A"].float() * scale
            if delta_dtype:  # a merge done in bfloat16 adds a bfloat16 update
                delta = delta.to(getattr(torch, delta_dtype)).float()
            weight.add_(delta.to(weight.dtype))
    return {"lora_pairs": len(pairs), "copied": copied}


def merge_identity(base: str | os.PathLike, merged: str | os.PathLike, state: dict, scale: float) -> list[dict]:
    """Per LoRA-adapted layer: max |merged W - (W + SCALE * B @ A)|, with the base, B, A and the update in bfloat16 as the script merges."""
    import torch

    base_w, merged_w = load_weights(base), load_weights(merged)
    pairs: dict[str, dict] = {}
    for key, value in state.items():
        m = _LORA_KEY.match(key)
        if m:
            pairs.setdefault(_model_key(m.group(1)), {})[m.group(2)] = value
    rows = []
    bf16 = torch.bfloat16
    for module, ab in sorted(pairs.items()):
        name = module + ".weight"
        if name not in base_w or name not in merged_w:
            raise KeyError(f"adapted layer {module}: {name} is missing from the base or the merged folder")
        update = (ab["B"].to(bf16) @ ab["A"].to(bf16)) * scale
        expected = base_w[name].to(bf16) + update.to(bf16)
        diff = (merged_w[name].float() - expected.float()).abs().max().item()
        update_max = update.float().abs().max().item()
        # a merge done elsewhere (a GPU's matmul, another summation order) may round the sum to the neighbouring
        # bfloat16 value: one step is at most eps * |value|. Measured on an H200: 2.4e-4 on InternVL2-2B's shape.
        step = torch.finfo(bf16).eps * expected.float().abs().max().item()
        rows.append({"layer": module, "shape": tuple(base_w[name].shape), "rank": int(ab["A"].shape[0]),
                     "update_max": round(update_max, 6), "max_diff": diff, "tolerance": step + 1e-2 * update_max})
    return rows


def merge_identity_holds(rows: list[dict]) -> bool:
    """True when every merge_identity row is within its tolerance (one bfloat16 rounding step + 1 % of the update)."""
    return all(r["max_diff"] <= r["tolerance"] for r in rows)


def load_model(path: str | os.PathLike, dtype: str = "float32"):
    """An InternVL-format model folder loaded with AutoModel (trust_remote_code), in eval mode on the CPU."""
    import torch
    from transformers import AutoModel

    return AutoModel.from_pretrained(str(path), trust_remote_code=True, torch_dtype=getattr(torch, dtype)).eval()


def round_to(model, dtype: str) -> None:
    """Round MODEL's parameters to DTYPE and back in place (what saving in DTYPE then loading in float32 does)."""
    import torch

    with torch.no_grad():
        for p in model.parameters():
            p.copy_(p.to(getattr(torch, dtype)).to(p.dtype))


def saved_dtype(folder: str | os.PathLike) -> str:
    """The dtype of the floating-point weights saved in FOLDER ('bfloat16', 'float32', ...)."""
    return str(next(v.dtype for v in load_weights(folder).values() if v.is_floating_point())).replace("torch.", "")


def reference_model(base: str | os.PathLike, checkpoint: str | os.PathLike | dict, scale: float | None,
                    trained_dtype: str = "bfloat16", saved: str | None = "bfloat16"):
    """BASE + the trained CHECKPOINT merged by hand in float32, rounded like XTuner's script does (see below)."""
    import torch

    # XTuner loads the base in TRAINED_DTYPE; convert_to_official.py casts the model, LoRA matrices included,
    # to bfloat16, merges there (W and the update B @ A both bfloat16) and saves: so the base, the checkpoint,
    # the update and the result are rounded to SAVED here too. Left in float32, the rounding differences
    # alone move the logits by about 1 % of the training effect.
    model = load_model(base)
    if trained_dtype != "float32":
        round_to(model, trained_dtype)
    state = checkpoint if isinstance(checkpoint, dict) else read_checkpoint(checkpoint)
    if saved and saved != "float32":
        state = {k: v.to(getattr(torch, saved)).float() if v.is_floating_point() else v for k, v in state.items()}
    merge_by_hand(model, state, scale, delta_dtype=saved if saved != "float32" else None)
    if saved and saved != "float32":
        round_to(model, saved)
    return model


def fixed_inputs(model, tokenizer, image=None, question: str = "What colour are the objects on the plate?") -> dict:
    """A fixed forward input for an InternVL model: IMAGE (a PIL image; default a seeded pattern) as one tile, plus QUESTION."""
    import numpy as np
    import torch
    from PIL import Image

    size = model.config.force_image_size or model.config.vision_config.image_size
    if image is None:
        rng = np.random.default_rng(0)
        image = Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8))
    img = image.convert("RGB").resize((size, size), Image.BICUBIC)
    x = torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0).permute(2, 0, 1)
    mean = torch.tensor((0.485, 0.456, 0.406))[:, None, None]
    std = torch.tensor((0.229, 0.224, 0.225))[:, None, None]
    pixel_values = ((x - mean) / std).unsqueeze(0)
    text = "<img>" + "<IMG_CONTEXT>" * model.num_image_token + "</img>\n" + question
    ids = tokenizer(text, return_tensors="pt")
    return {"pixel_values": pixel_values, "input_ids": ids["input_ids"], "attention_mask": ids["attention_mask"],
            "image_flags": torch.ones(1, dtype=torch.long)}


def logits_of(model, inputs: dict, tokenizer=None):
    """MODEL's logits (float32, CPU) on the fixed INPUTS from fixed_inputs()."""
    import torch

    if tokenizer is not None:
        model.img_context_token_id = tokenizer.convert_tokens_to_ids("<IMG_CONTEXT>")
    if getattr(model, "img_context_token_id", None) is None:
        raise ValueError("model.img_context_token_id is not set: pass the tokenizer to logits_of()")
    dtype = next(model.parameters()).dtype
    with torch.inference_mode():
        out = model(**{k: (v.to(dtype) if k == "pixel_values" else v) for k, v in inputs.items()})
    return out.logits.float()


@dataclass
class LogitsReport:
    """How far the merged model's logits are from base + adapter, against how far the adapter moved them."""

    max_diff: float        # max |merged - reference|
    adapter_effect: float  # max |reference - base|: how much training changed the logits
    tolerance: float
    same_argmax: float     # share of positions where merged and reference pick the same next token

    @property
    def passed(self) -> bool:
        """Whether the merged logits are within tolerance of base + adapter."""
        return self.max_diff <= self.tolerance

    def __str__(self) -> str:
        verdict = "EQUAL within tolerance" if self.passed else "DIFFERENT: the merge is wrong"
        return (f"max |merged - (base+adapter)| = {self.max_diff:.3g} (tolerance {self.tolerance:.3g}); "
                f"training moved the logits by up to {self.adapter_effect:.3g}; same next token at "
                f"{self.same_argmax:.0%} of positions -> {verdict}")


def compare_logits(merged_logits, reference_logits, base_logits, atol: float = 1e-3, rtol: float = 0.02) -> LogitsReport:
    """Compare logits: pass when max |merged - reference| <= ATOL + RTOL * max |reference - base| (the adapter's own effect)."""
    if merged_logits.shape != reference_logits.shape or base_logits.shape != reference_logits.shape:
        raise ValueError(f"logits shapes differ: merged {tuple(merged_logits.shape)}, reference {tuple(reference_logits.shape)}, "
                         f"base {tuple(base_logits.shape)}: give all three models the same inputs")
    diff = float((merged_logits - reference_logits).abs().max())
    effect = float((reference_logits - base_logits).abs().max())
    same = float((merged_logits.argmax(-1) == reference_logits.argmax(-1)).float().mean())
    return LogitsReport(diff, effect, atol + rtol * effect, same)


def assert_same_logits(report: LogitsReport) -> LogitsReport:
    """Raise MergeMismatch (with what usually causes it) unless REPORT passed; return REPORT."""
    if not report.passed:
        raise MergeMismatch(f"{report}. Usual causes: the LoRA was not merged (merge_and_unload), a wrong scale "
                            "(lora_alpha / r), or the wrong base model; convert again with compare.convert().")
    return report


# ---- 5. before / after ----------------------------------------------------------------------------------------

def before_after(base: dict, tuned: dict, settings: dict | None = None, **extra) -> dict:
    """The record notebook 07 reads: accuracy overall/per kind/per class before and after, their gain, and the training settings."""
    keys = ("accuracy", "n", "per_kind", "per_class")
    out = {"before": {k: base[k] for k in keys}, "after": {k: tuned[k] for k in keys},
           "gain": round(tuned["accuracy"] - base["accuracy"], 4),
           "gain_per_kind": {k: round(tuned["per_kind"][k] - base["per_kind"].get(k, 0.0), 4) for k in tuned["per_kind"]}}
    if settings is not None:
        out["training"] = settings
    out.update(extra)
    return out


def constant_answer_baseline(records: Sequence[dict]) -> float:
    """Accuracy of the best lazy model: the same answer to every question of a kind (its most frequent class)."""
    from collections import Counter

    by_kind: dict[str, Counter] = {}
    for r in records:
        meta = r["meta"]
        by_kind.setdefault(meta["kind"], Counter())[str(meta.get("value", meta["answer"]))] += 1
    return round(sum(c.most_common(1)[0][1] for c in by_kind.values()) / max(1, len(records)), 4)


def accuracy_table(base: dict, tuned: dict):
    """A pandas table of accuracy per kind and per class, before (base) and after (fine-tuned), with the gain."""
    import pandas as pd

    rows = [("overall", "all", base["accuracy"], tuned["accuracy"])]
    rows += [("kind", k, base["per_kind"].get(k, 0.0), v) for k, v in tuned["per_kind"].items()]
    rows += [("class", k, base["per_class"].get(k, 0.0), v) for k, v in tuned["per_class"].items()]
    df = pd.DataFrame(rows, columns=["level", "group", "before", "after"])
    df["gain"] = (df["after"] - df["before"]).round(4)
    return df.set_index(["level", "group"])


def _thumb(path: Path, size: int = 160) -> str:
    from PIL import Image

    img = Image.open(path).convert("RGB")
    img.thumbnail((size, size))
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=80)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode()


def pick_examples(records: Sequence[dict], n: int = 8, by: str = "kind") -> list[int]:
    """Indices of N records spread over the values of meta[BY] (round robin), in a fixed order."""
    groups: dict[str, list[int]] = {}
    for i, r in enumerate(records):
        groups.setdefault(str(r.get("meta", {}).get(by, "")), []).append(i)
    picked, queues = [], [list(v) for _, v in sorted(groups.items())]
    while len(picked) < n and any(queues):
        for q in queues:
            if q and len(picked) < n:
                picked.append(q.pop(0))
    return picked


def gallery_html(records: Sequence[dict], image_folder: str | os.PathLike, base_rows: Sequence[dict],
                 tuned_rows: Sequence[dict], indices: Iterable[int]) -> str:
    """HTML table: image, question, reference answer, base reply and fine-tuned reply (✓/✗) for the records at INDICES."""
    folder = Path(image_folder)
    mark = lambda row: ("✅ " if row["correct"] else "❌ ") + html.escape(repr(row["reply"]))  # noqa: E731
    cells = []
    for i in indices:
        rec = records[i]
        image = rec["image"][0] if isinstance(rec["image"], list) else rec["image"]
        question = next(t["value"] for t in rec["conversations"] if t["from"] == "human").replace("<image>", "").strip()
        cells.append(f"<tr><td><img src='{_thumb(folder / image)}'></td><td>{html.escape(question)}</td>"
                     f"<td><b>{html.escape(str(rec['meta']['answer']))}</b></td><td>{mark(base_rows[i])}</td>"
                     f"<td>{mark(tuned_rows[i])}</td></tr>")
    head = "<tr><th>image</th><th>question</th><th>answer</th><th>base model</th><th>fine-tuned</th></tr>"
    return f"<table style='font-size:12px'>{head}{''.join(cells)}</table>"


def training_summary(run: TrainingRun) -> dict:
    """The settings of RUN as its config states them (mode, lr, iterations, batch, LoRA rank...) and its last logged loss."""

    cfg = load_config(run.config)
    keys = ("lr", "max_iters", "max_epochs", "batch_size", "accumulative_counts", "max_length", "max_dynamic_patch",
            "lora_r", "lora_alpha", "freeze_llm", "freeze_visual_encoder")
    out = {"config": str(run.config), "checkpoint": str(run.checkpoint), "base_model": str(run.base_model),
           "mode": run.mode, **{k: cfg.get(k) for k in keys if cfg.get(k) is not None}}
    lora = cfg.model.get("llm_lora")  # XTuner's own configs keep r and alpha inside the model's llm_lora dict
    if lora is not None:
        out.setdefault("lora_r", lora.get("r"))
        out.setdefault("lora_alpha", lora.get("lora_alpha"))
    out.update(freeze_llm=cfg.model.get("freeze_llm"), freeze_visual_encoder=cfg.model.get("freeze_visual_encoder"),
               max_dynamic_patch=run.max_num, heldout=str(run.heldout) if run.heldout else None)
    rows = mmengine_scalars(run.work_dir)  # mmengine's own log of the run
    if rows:
        out.update(first_loss=rows[0].get("loss"), last_loss=rows[-1].get("loss"), last_iter=rows[-1].get("iter"))
    return out
