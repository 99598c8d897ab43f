"""A model card written from the course's own results (notebooks 04-05), never typed in by hand.

    record = learner.read_training_data(artifacts)                   # notebook 04: data file, sha256, splits, scorer, prompt
    data, said = data_facts(record, artifacts, "tiny", model_dir)    # the plates task when there is no record (said so)
    training = read_training(artifacts / hub.TRAIN_WORK_DIR)        # XTuner config settings + loss curve
    evaluation = read_evaluation(artifacts / hub.EVAL_RESULTS_JSON)  # held-out scores before/after (notebook 05)
    card = build_card("me/InternVL2-tiny-plates", training, evaluation, base_model="OpenGVLab/InternVL2-2B", data=data)
    problems = check_card(card, training, evaluation, data)          # [] when valid and filled from the results
"""
from __future__ import annotations

import ast
import json
import os
from pathlib import Path
from typing import Sequence

from labsupport.core.paths import is_embedded
from labsupport.datasets.formats import load_records
from labsupport.datasets.learner import file_sha256
from labsupport.datasets.plates import build_course_task
from labsupport.model.prompts import training_system
from labsupport.serve.awq import is_awq
from labsupport.serve.quantize import AWQ_RESULTS_JSON, awq_model_dir
from labsupport.train.runs import mmengine_scalars
from labsupport.train.training_outcome import skipped_training, trained_tiles

# The settings of an XTuner config worth showing on a card, in this order.
CARD_SETTINGS = ["path", "data_paths", "max_length", "max_dynamic_patch", "prompt_template", "freeze_llm",
                 "freeze_visual_encoder", "lora_r", "lora_alpha", "lora_dropout", "batch_size", "accumulative_counts",
                 "max_iters", "max_epochs", "lr", "weight_decay", "max_norm"]
BASE_TAGS = ["internvl", "internvl2", "vision-language", "multimodal", "xtuner", "lmdeploy"]


def _dict_call(node: ast.Call) -> dict:
    """The literal keyword arguments of a dict(...) call node, nested dict(...) calls included."""
    out = {}
    for kw in node.keywords:
        if kw.arg is None:
            continue
        if isinstance(kw.value, ast.Call):
            out[kw.arg] = _dict_call(kw.value)
            continue
        try:
            out[kw.arg] = ast.literal_eval(kw.value)
        except ValueError:
            pass
    return out


def _model_settings(node: ast.Call) -> dict:
    """freeze_llm / freeze_visual_encoder and the LLM's LoRA (lora_r, lora_alpha, lora_dropout) of a model=dict(...) node."""
    model = _dict_call(node)
    out = {k: model[k] for k in ("freeze_llm", "freeze_visual_encoder") if k in model}
    lora = model.get("llm_lora")
    if isinstance(lora, dict) and "r" in lora:
        out.update(lora_r=lora["r"], lora_alpha=lora.get("lora_alpha"), lora_dropout=lora.get("lora_dropout"))
    return out


def read_config_settings(config_py: str | os.PathLike) -> dict:
    """The top-level `name = literal` settings of an XTuner/mmengine config file (PROMPT_TEMPLATE.x kept as its name)."""
    tree = ast.parse(Path(config_py).read_text(encoding="utf-8"))
    out = {}
    for node in tree.body:
        if not isinstance(node, ast.Assign):
            continue
        names = [t.id for t in node.targets if isinstance(t, ast.Name)]
        targets = [t for t in node.targets if isinstance(t, ast.Tuple)]
        if names == ["model"] and isinstance(node.value, ast.Call):
            out.update(_model_settings(node.value))  # mmengine's dumped config: model=dict(freeze_llm=…, llm_lora=dict(r=…))
            continue
        try:
            value = ast.literal_eval(node.value)
        except ValueError:
            if isinstance(node.value, ast.Attribute) and isinstance(node.value.value, ast.Name):
                value = node.value.attr  # prompt_template = PROMPT_TEMPLATE.phi3_chat -> "phi3_chat"
            else:
                continue
        for name in names:
            out[name] = value
        for tup in targets:  # lora_r, lora_alpha, lora_dropout = 8, 16, 0.05
            if isinstance(value, tuple) and len(value) == len(tup.elts):
                out.update({e.id: v for e, v in zip(tup.elts, value) if isinstance(e, ast.Name)})
    return out


def read_training(work_dir: str | os.PathLike, scalars_name: str = "scalars.json") -> dict | None:
    """What notebook 04 left in WORK_DIR: the config's settings and the loss curve, or None when it has not run."""
    work_dir = Path(work_dir)
    configs = sorted(work_dir.glob("*.py"), key=lambda p: p.stat().st_mtime) if work_dir.is_dir() else []
    if not configs:
        return None
    settings = read_config_settings(configs[-1])
    # show where things came from without publishing this machine's folders
    if isinstance(settings.get("path"), str):
        settings["path"] = Path(settings["path"]).name
    if isinstance(settings.get("data_paths"), list):
        settings["data_paths"] = ["/".join(Path(p).parts[-2:]) for p in settings["data_paths"]]
    scalars = mmengine_scalars(work_dir)  # mmengine's own <timestamp>/vis_data/scalars.json (or an older run's list)
    losses = [r for r in scalars if "loss" in r]
    return {
        "config": str(configs[-1]),
        "settings": {k: settings[k] for k in CARD_SETTINGS if k in settings},
        "mode": "LoRA" if "lora_r" in settings else ("projector only" if settings.get("freeze_llm") else "full"),
        "iters": losses[-1]["iter"] if losses else 0,
        "loss_first": losses[0]["loss"] if losses else None,
        "loss_last": losses[-1]["loss"] if losses else None,
    }


def read_evaluation(path: str | os.PathLike) -> dict | None:
    """Notebook 05's before/after evaluation ({"before": {"accuracy" or "score", "n"}, "after": {...}, "scorer"?}),
    or None when it has not run."""
    path = Path(path)
    if not path.exists():
        return None
    data = json.loads(path.read_text(encoding="utf-8"))
    for key in ("before", "after"):
        if isinstance(data.get(key), dict) and "accuracy" not in data[key] and "score" in data[key]:
            data[key]["accuracy"] = data[key]["score"]   # a scorer's headline ({"metric", "score"}, answers.summarize)
        if not isinstance(data.get(key), dict) or "accuracy" not in data[key]:
            raise ValueError(f"{path}: expected {{'before': {{'accuracy': …}}, 'after': {{'accuracy': …}}}}, "
                             f"but {key!r} is {data.get(key)!r}; re-run notebook 05 or fix labsupport.publish.hub.EVAL_RESULTS_JSON")
    return data


# What each of the course's scorers (labsupport.evaluate.answers.SCORERS) measures, in the card's words.
SCORER_WORDS = {"exact": "normalised exact match of the reply with the reference answer",
                "choice": "the option letter parsed from the reply, against the reference's letter (multiple choice)",
                "text": "chrF (sacrebleu) of the reply against the reference, mean over the questions / 100"}
PLATES_SCORER = "exact"   # the plates task's scorer (labsupport.evaluate.answers.choose_scorer on its records)


def data_facts(record: dict | None, artifacts: str | os.PathLike, model_path: str | os.PathLike,
               model_dir: str | os.PathLike, fine_tuned: bool = True) -> tuple[dict, str]:
    """(facts, said): what MODEL_DIR was trained on for the card (data file, sha256, split sizes, scorer, tiles,
    system prompt), from notebook 04's RECORD (labsupport.datasets.learner.read_training_data); without a record
    for MODEL_PATH, the plates task (the default); SAID tells which, in one or two sentences."""
    artifacts = Path(artifacts)
    stale = record is not None and record.get("model_path") not in (None, "", str(model_path))
    if record is not None and not stale:
        facts = {k: record.get(k) for k in ("name", "source", "sha256", "n_train", "n_heldout", "held_out_by", "train",
                                            "heldout", "image_folder", "scorer", "tiles", "system")}
        # a record that leaves a fact out (an older notebook 04's): read it from the split files themselves
        facts["source"] = Path(record.get("source") or record["train"]).name   # a file name: no machine paths on a card
        if not facts["name"]:
            facts["name"] = Path(record["train"]).parent.name
        if not facts["sha256"]:
            facts["sha256"] = file_sha256(record["train"])
        for n, split in (("n_train", "train"), ("n_heldout", "heldout")):
            if facts[n] is None:
                facts[n] = len(load_records(record[split]))
        if not facts["image_folder"] and facts["heldout"]:
            facts["image_folder"] = Path(record["heldout"]).parent
        facts["scorer"] = facts["scorer"] or PLATES_SCORER
        said = (f"notebook 04's record: trained on {facts['source']} (sha256 {str(facts['sha256'])[:12]}), "
                f"{facts['n_train']} train / {facts['n_heldout']} held-out records, scorer {facts['scorer']!r}")
    else:
        task = build_course_task(artifacts / "data" / "plates", progress=False)
        train, held = (json.loads(task[k].read_text(encoding="utf-8")) for k in ("train", "heldout"))
        facts = {"name": "plates", "source": task["train"].name, "sha256": file_sha256(task["train"]),
                 "n_train": len(train), "n_heldout": len(held), "held_out_by": "the plates task's own held-out split",
                 "train": task["train"], "heldout": task["heldout"], "image_folder": task["image_folder"],
                 "scorer": PLATES_SCORER, "tiles": None, "system": None}
        why = (f"its record is for MODEL_PATH={record.get('model_path')!r}, not {str(model_path)!r}" if stale
               else f"notebook 04 wrote no record at {artifacts / 'results' / 'training_data.json'}")
        said = f"{why}: the card assumes the plates task, the course's default ({len(train)} train / {len(held)} held-out records)"
    max_num, tiles_from = trained_tiles(artifacts, model_path, model_dir)   # 05's record, 04's outcome, else config.json
    if fine_tuned and facts["tiles"]:   # what 04 trained with is the fine-tune's tiling; another record disagreeing is said
        if int(facts["tiles"]) != max_num:
            said += f"; 04 recorded {facts['tiles']} tiles per image where {tiles_from} gives {max_num}: the card uses 04's"
        max_num, tiles_from = int(facts["tiles"]), "notebook 04's record of its training data"
    facts["tiles"], facts["tiles_from"] = max_num, tiles_from
    if not fine_tuned:
        facts["system"] = None   # the base model was not trained with any prompt: its own default applies
    elif not facts["system"]:
        facts["system"] = training_system(model_dir)   # what notebook 04 trains this model with (its chat()'s)
    return facts, said


def model_note(artifacts: str | os.PathLike, model_path: str | os.PathLike, fine_tuned: bool) -> str:
    """The card's sentence on what these weights are when they are not a fine-tune, or are the course's miniature."""
    note = "" if fine_tuned else (
        "These are the base weights: the course's notebook 04 skipped fine-tuning this model."
        if skipped_training(artifacts, model_path) else
        "These are the base weights: notebook 05 had not produced a fine-tuned model.")
    if is_embedded(model_path):
        note += " A miniature, course-built model for learning the workflow: its answers are not useful."
    return note.strip()


def scorer_of(evaluation: dict | None, data: dict | None) -> str:
    """The scorer that measured EVALUATION: notebook 05's own record first, else 04's choice in DATA, else exact."""
    return str((evaluation or {}).get("scorer") or (data or {}).get("scorer") or PLATES_SCORER)


def metric_of(scorer: str) -> str:
    """The name of the number a scorer produces: chrF for open answers, accuracy otherwise."""
    return "chrF" if scorer == "text" else "accuracy"


def percent(x: float) -> str:
    """An accuracy in [0, 1] as the card prints it: 35.0 %."""
    return f"{100 * x:.1f} %"


def dataset_names(training: dict | None, data: dict | None = None) -> list[str]:
    """Short names of the training sets: DATA's name (notebook 04's record), else the folder of each data json of
    TRAINING's config (artifacts/data/plates/train.json -> plates)."""
    if data and data.get("name"):
        return [str(data["name"])]
    paths = (training or {}).get("settings", {}).get("data_paths") or []
    return sorted({Path(p).parent.name or Path(p).stem for p in paths})


EXAMPLE_IMAGE = "examples/plate.png"   # the card's example image, published inside the model repository
EXAMPLE_QUESTION = "What colour are the objects on the plate? Answer with one colour."


IMAGE_HELPERS = '''import torchvision.transforms as T
from PIL import Image
from torchvision.transforms.functional import InterpolationMode

MEAN, STD, TILE = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), 448  # InternVL2's ImageNet normalisation, 448-px tiles


def tiles(image, max_num):
    """InternVL's dynamic tiling: the grid of at most MAX_NUM tiles closest to the image's aspect ratio, plus a thumbnail."""
    w, h = image.size
    grids = sorted({(c, r) for n in range(1, max_num + 1) for c in range(1, n + 1) for r in range(1, n + 1)
                    if c * r <= max_num}, key=lambda g: g[0] * g[1])
    best, best_diff = (1, 1), float("inf")
    for c, r in grids:  # closest ratio wins; a tie goes to the larger grid when the image is big enough to fill it
        diff = abs(w / h - c / r)
        if diff < best_diff or (diff == best_diff and w * h > 0.5 * TILE * TILE * c * r):
            best, best_diff = (c, r), diff
    cols, rows = best
    big = image.resize((TILE * cols, TILE * rows))
    out = [big.crop((x * TILE, y * TILE, (x + 1) * TILE, (y + 1) * TILE)) for y in range(rows) for x in range(cols)]
    return out + [image.resize((TILE, TILE))] if len(out) > 1 else out


def load_image(path, max_num):
    """The image at PATH as the [tiles, 3, 448, 448] tensor InternVL2's chat() takes."""
    norm = T.Compose([T.Resize((TILE, TILE), interpolation=InterpolationMode.BICUBIC), T.ToTensor(), T.Normalize(MEAN, STD)])
    return torch.stack([norm(t) for t in tiles(Image.open(path).convert("RGB"), max_num)])
'''


def usage_snippet(repo_id: str, question: str = EXAMPLE_QUESTION, image: str = EXAMPLE_IMAGE, max_num: int = 6,
                  system: str | None = None) -> str:
    """The card's transformers snippet: plain Python on the model's own code (no course package), as trained."""
    sys_line = (f"model.system_message = {system!r}  # the system prompt the fine-tune was trained with\n"
                if system else "")
    return f'''import os
import torch
from transformers import AutoModel, AutoTokenizer
{IMAGE_HELPERS}
path = "{repo_id}"  # the Hub id, or the folder you downloaded or cloned it into
if not os.path.isdir(path):
    from huggingface_hub import snapshot_download
    path = snapshot_download(path)
device = "cuda" if torch.cuda.is_available() else "cpu"
dtype = torch.bfloat16 if device == "cuda" else torch.float32
model = AutoModel.from_pretrained(path, torch_dtype=dtype, trust_remote_code=True).eval().to(device)
tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=True)
{sys_line}pixel_values = load_image(os.path.join(path, "{image}"), max_num={max_num}).to(device, dtype)  # as trained: <= {max_num} tiles
print(model.chat(tokenizer, pixel_values, "<image>\\n" + {question!r}, dict(max_new_tokens=64, do_sample=False)))
'''


def lmdeploy_snippet(repo_id: str, question: str = EXAMPLE_QUESTION, image: str = EXAMPLE_IMAGE, max_num: int = 6,
                     system: str | None = None) -> str:
    """The card's LMDeploy snippet: remote code trusted, the trained tiling per image, the trained system prompt."""
    sys_msg = f'{{"role": "system", "content": {system!r}}},  # the system prompt the fine-tune was trained with\n    ' if system else ""
    return f'''import os
from lmdeploy import GenerationConfig, PytorchEngineConfig, pipeline

path = "{repo_id}"  # the Hub id, or the folder you downloaded or cloned it into
if not os.path.isdir(path):
    from huggingface_hub import snapshot_download
    path = snapshot_download(path)
# LMDeploy reads InternVL2's config only through its remote code, and takes the tokenizer's chat template
pipe = pipeline(path, backend_config=PytorchEngineConfig(tp=1), trust_remote_code=True)
messages = [  # the trained tiling: at most {max_num} tiles per image
    {sys_msg}{{"role": "user", "content": [
        {{"type": "text", "text": {question!r}}},
        {{"type": "image_url", "image_url": {{"url": os.path.join(path, "{image}"), "max_dynamic_patch": {max_num}}}}},
    ]}},
]
print(pipe(messages, gen_config=GenerationConfig(max_new_tokens=64, do_sample=False)).text)
'''


def python_blocks(card_text: str) -> list[str]:
    """The ```python fenced blocks of a card, in order."""
    import re

    return re.findall(r"```python\n(.*?)```", str(card_text), flags=re.S)


def _usage(repo_id: str, question: str = EXAMPLE_QUESTION, image: str = EXAMPLE_IMAGE, max_num: int = 6,
           fine_tuned: bool = True, system: str | None = None) -> str:
    """The usage snippets of the card: transformers, LMDeploy's pipeline and its OpenAI-compatible server."""
    asked = ("the question the fine-tuning taught, cut into 448-px tiles exactly as training did"
             if fine_tuned else "a question of the course task, cut into 448-px tiles")
    prompt = (f" and the system prompt it was trained with ({system!r})" if system else "")
    return f"""## How to use

With transformers (the model ships its own code, hence `trust_remote_code=True`). The image is the example
published with the model (`{image}`), {asked} (at most {max_num}){prompt}; the few lines of preprocessing are
InternVL's own recipe, written out so that nothing beyond the model's requirements is needed:

```python
{usage_snippet(repo_id, question, image, max_num, system)}```

With LMDeploy (GPU), the same tiling and prompt:

```python
{lmdeploy_snippet(repo_id, question, image, max_num, system)}```

or as an OpenAI-compatible server, asked with the same messages (a `system` message first):
`lmdeploy serve api_server {repo_id} --backend pytorch --trust-remote-code --server-name 127.0.0.1`.
"""


def build_card(repo_id: str, training: dict | None, evaluation: dict | None, base_model: str | None = None,
               license: str = "mit", language: list[str] | None = None, model_note: str = "",
               question: str = EXAMPLE_QUESTION, image: str = EXAMPLE_IMAGE, max_num: int = 6, system: str | None = None,
               more_results: Sequence[str] = (), data: dict | None = None):
    """A huggingface_hub ModelCard for REPO_ID: metadata (base model, licence, datasets, tags, eval results) and text from the results.
    MORE_RESULTS: lines added to its Results (the framework's scores and forgetting, labsupport.serve.evalframework.card_lines).
    DATA: what the fine-tune was trained on (data_facts: file, sha256, split sizes, scorer, tiles, system prompt).

    QUESTION, IMAGE (a path inside the repository), MAX_NUM and SYSTEM make the usage snippets ask what the model was
    tuned for, with the tiling and the system prompt it was trained with."""
    from huggingface_hub import EvalResult, ModelCard, ModelCardData

    name = repo_id.split("/")[-1]
    datasets = dataset_names(training, data)
    scorer = scorer_of(evaluation, data)
    metric = metric_of(scorer)
    tags = BASE_TAGS + (["lora"] if training and training["mode"] == "LoRA" else [])
    evals = None
    if evaluation:
        evals = [EvalResult(task_type="visual-question-answering", dataset_type=(datasets or ["heldout"])[0],
                            dataset_name=f"{(datasets or ['course'])[0]} (held-out split)", dataset_split="heldout",
                            metric_type=metric.lower(), metric_name=f"{metric} ({scorer} scorer)",
                            metric_value=round(float(evaluation["after"]["accuracy"]), 4))]
    meta = ModelCardData(model_name=name, base_model=base_model or None, license=license, language=language or ["en", "zh"],
                         datasets=datasets or None, tags=tags, pipeline_tag="image-text-to-text",
                         library_name="transformers", eval_results=evals)
    body = [f"# {name}", ""]
    start = (f" from [{base_model}](https://huggingface.co/{base_model})" if base_model else
             f" from the local model `{training['settings']['path']}`" if training and training["settings"].get("path") else "")
    fine_tuned = bool(training or evaluation)
    if fine_tuned:
        body.append(f"An InternVL2 model fine-tuned with XTuner in the InternVL course{start}. {model_note}".strip())
    else:  # never claim a fine-tune that did not happen
        body.append(f"InternVL2 base weights{start}, published with the InternVL course's workflow; **not fine-tuned**. "
                    f"{model_note}".strip())
    body += ["", "## Results", ""]
    if evaluation:
        b, a = evaluation["before"], evaluation["after"]
        body += [f"Held-out {metric}, measured by the course's notebook 05 (same questions, greedy decoding) with the "
                 f"`{scorer}` scorer: {SCORER_WORDS.get(scorer, scorer)}:", "",
                 f"| model | {metric} | questions |", "|---|---|---|",
                 f"| before fine-tuning | {percent(b['accuracy'])} | {b.get('n', '')} |",
                 f"| after fine-tuning | {percent(a['accuracy'])} | {a.get('n', '')} |"]
        kinds = sorted(set(b.get("per_kind") or {}) | set(a.get("per_kind") or {}))
        if kinds:
            body += ["", "| question kind | before | after |", "|---|---|---|"]
            body += [f"| {k} | {percent((b.get('per_kind') or {}).get(k, 0.0))} | {percent((a.get('per_kind') or {}).get(k, 0.0))} |"
                     for k in kinds]
    else:
        body.append("No evaluation results were found (notebook 05 has not run, or had no fine-tune to evaluate): "
                    "this card reports none.")
    body += list(more_results) if evaluation else []
    if data and fine_tuned:
        body += ["", "## Training data", "", "| | |", "|---|---|",
                 f"| file | `{data['source']}` (sha256 `{str(data['sha256'])[:12]}`) |",
                 f"| records | {data['n_train']} trained on, {data['n_heldout']} held out ({data.get('held_out_by') or 'a separate file'}) |",
                 f"| scorer | `{scorer}`: {SCORER_WORDS.get(scorer, scorer)} |",
                 f"| tiles per image | at most {max_num} (448 px each) |",
                 f"| system prompt | {'`' + system + '`' if system else 'none'} |"]
    body += ["", "## Training", ""]
    if training:
        body += [f"Fine-tuned with XTuner ({training['mode']}) for {training['iters']} iterations; "
                 + (f"loss {training['loss_first']:.3f} → {training['loss_last']:.3f}." if training["loss_last"] is not None
                    else "no loss was logged."), "", "| setting | value |", "|---|---|"]
        body += [f"| `{k}` | `{v!r}` |" for k, v in training["settings"].items()]
    else:
        body.append("No training record was found (notebook 04 has not run, or did not train this model): these are "
                    "the base weights.")
    body += ["", _usage(repo_id, question, image, max_num, fine_tuned, system), "## Licence", "",
             f"{license.upper() if license == 'mit' else license}, like the InternVL2 code; the language model inside keeps its own licence."]
    content = f"---\n{meta.to_yaml()}\n---\n\n" + "\n".join(body) + "\n"
    return ModelCard(content)


def check_card(card, training: dict | None, evaluation: dict | None, data: dict | None = None,
               keyword: str = "InternVL") -> list[str]:
    """What is wrong with CARD (empty list: valid, and its numbers are those of TRAINING, EVALUATION and DATA)."""
    from huggingface_hub import ModelCard

    problems = []
    try:
        parsed = ModelCard(str(card))  # round trip through the YAML front matter, as the Hub reads it
    except Exception as exc:  # a broken front matter is exactly what this check reports
        return [f"the card's metadata does not parse: {exc}"]
    meta = parsed.data.to_dict()
    for key in ("license", "tags", "pipeline_tag", "library_name"):
        if not meta.get(key):
            problems.append(f"metadata lacks {key!r}")
    for tag in ("internvl", "xtuner", "lmdeploy"):
        if tag not in (meta.get("tags") or []):
            problems.append(f"tag {tag!r} missing")
    if keyword not in (parsed.data.model_name or ""):
        problems.append(f"model name {parsed.data.model_name!r} lacks {keyword!r}")
    text = parsed.text
    for snippet in ("AutoModel.from_pretrained", "lmdeploy"):
        if snippet not in text:
            problems.append(f"usage snippet with {snippet} missing")
    if evaluation:
        for key in ("before", "after"):
            if percent(evaluation[key]["accuracy"]) not in text:
                problems.append(f"{key} accuracy {percent(evaluation[key]['accuracy'])} from the results is not on the card")
        index = parsed.data.eval_results or []
        if not index or abs(float(index[0].metric_value) - float(evaluation["after"]["accuracy"])) > 1e-4:
            problems.append("model-index accuracy differs from the results file")
    if data:
        facts = {"data file": f"`{data['source']}`", "sha256 prefix": f"`{str(data['sha256'])[:12]}`",
                 "split sizes": f"{data['n_train']} trained on, {data['n_heldout']} held out",
                 "scorer": f"`{scorer_of(evaluation, data)}`", "tiles in the snippets": f"max_num={data['tiles']}"}
        if data.get("system"):
            facts["system prompt in the snippets"] = f"model.system_message = {data['system']!r}"
        problems += [f"{what} ({shown}) is not on the card" for what, shown in facts.items() if shown not in text]
    if training:
        if f"{training['iters']} iterations" not in text:
            problems.append("the number of training iterations is not on the card")
        for k, v in training["settings"].items():
            if f"`{v!r}`" not in text:
                problems.append(f"training setting {k} = {v!r} is not on the card")
    return problems


# ---- notebook 06b's AWQ variant: its own card ---------------------------------------------------------------
# ---- the AWQ variant's model card (notebook 07) ----------------------------------------------------------------------
AWQ_TAGS = ["internvl", "internvl2", "vision-language", "multimodal", "xtuner", "lmdeploy", "awq", "4-bit", "quantized"]


def read_awq_result(artifacts: str | os.PathLike) -> dict | None:
    """Notebook 06b's record (ARTIFACTS/results/awq.json: accuracy before/after, sizes, settings), or None when it has not run."""
    path = Path(artifacts) / AWQ_RESULTS_JSON
    if not path.is_file():
        return None
    data = json.loads(path.read_text(encoding="utf-8"))
    for key in ("before", "after"):
        if "accuracy" not in (data.get(key) or {}):
            raise ValueError(f"{path}: {key!r} has no 'accuracy'; run notebook 06b again")
    return data


def awq_publish_reason(artifacts: str | os.PathLike, model_path: str | os.PathLike, fine_tuned_dir: str | os.PathLike,
                       fine_tuned: bool) -> str:
    """'' when notebook 06b's AWQ folder of FINE_TUNED_DIR can be published beside it, else why not (one sentence)."""
    awq_dir = awq_model_dir(artifacts, model_path)
    if not fine_tuned:
        return "nothing fine-tuned is published, so there is no AWQ variant of it"
    if not is_awq(awq_dir):
        return f"no AWQ folder at {awq_dir}: run notebook 06b first"
    result = read_awq_result(artifacts)
    if result is None:
        return f"no {Path(artifacts) / AWQ_RESULTS_JSON}: run notebook 06b to the end (it measures the AWQ model's accuracy)"
    if Path(result["quantized_from"]).resolve() != Path(fine_tuned_dir).resolve():
        return (f"{AWQ_RESULTS_JSON} measured an AWQ model of {result['quantized_from']}, not of {fine_tuned_dir}: "
                "run notebook 06b again")
    return ""


def awq_card(repo_id: str, result: dict, fp_repo_id: str, license: str = "mit", question: str = EXAMPLE_QUESTION,
             system: str | None = None, dataset: str = "course task"):
    """A huggingface_hub ModelCard for the AWQ variant REPO_ID of FP_REPO_ID, its numbers read from 06b's RESULT;
    its snippet asks QUESTION (of the data DATASET it was trained on) with the trained SYSTEM prompt."""
    from huggingface_hub import EvalResult, ModelCard, ModelCardData

    q, name = result["quantization_config"], repo_id.split("/")[-1]
    messages = ([{"role": "system", "content": system}] if system else []) + [
        {"role": "user", "content": [{"type": "text", "text": question},
                                     {"type": "image_url", "image_url": {"url": "image.png", "max_dynamic_patch": result["tiles"]}}]}]
    evals = [EvalResult(task_type="visual-question-answering", dataset_type="heldout", dataset_name=f"{dataset} (held-out split)",
                        dataset_split="heldout", metric_type="accuracy", metric_value=round(float(result["after"]["accuracy"]), 4))]
    data = ModelCardData(model_name=name, base_model=fp_repo_id, base_model_relation="quantized", license=license,
                         language=["en", "zh"], tags=AWQ_TAGS, pipeline_tag="image-text-to-text", library_name="lmdeploy",
                         eval_results=evals)
    b, a = result["before"], result["after"]
    kinds = sorted(set(b.get("per_kind") or {}) | set(a.get("per_kind") or {}))
    mib = {k: result["bytes"][k] / 2**20 for k in ("before", "after")}
    body = [f"# {name}", "",
            f"[{fp_repo_id}](https://huggingface.co/{fp_repo_id}) quantized with LMDeploy's `auto_awq`: the LLM's linear layers "
            f"in {q['bits']}-bit weights with a float16 scale and a zero point per group of {q['group_size']} input channels "
            f"(AWQ, version {q['version']}), calibrated on {result['calibration']['samples']} sequences of "
            f"{result['calibration']['seqlen']} tokens of the fine-tune's own training conversations. The vision tower, the "
            "projector, the embeddings and the output head stay float16.", "",
            "## Results", "",
            f"Held-out accuracy on {result['n']} questions, measured by the course's notebook 06b with the same tiles "
            f"({result['tiles']} per image), prompt and scorer as the fine-tune's own card:", "",
            "| question kind | bf16 fine-tune | AWQ |", "|---|---|---|",
            *[f"| {k} | {percent(b['per_kind'].get(k, 0.0))} | {percent(a['per_kind'].get(k, 0.0))} |" for k in kinds],
            f"| all | {percent(b['accuracy'])} | {percent(a['accuracy'])} |", "",
            f"Weights on disk: {mib['before']:.1f} MiB -> {mib['after']:.1f} MiB. {len(result.get('flips') or [])} of "
            f"{result['n']} answers changed their verdict. The AWQ answers were computed by: {result['ran']['after']}.", "",
            "## How to serve it", "",
            "LMDeploy's PyTorch engine has w4a16 kernels for these weights (an NVIDIA GPU):", "",
            "```python",
            "from lmdeploy import pipeline, PytorchEngineConfig, ChatTemplateConfig", "",
            f'pipe = pipeline("{repo_id}", backend_config=PytorchEngineConfig(model_format="awq"), trust_remote_code=True,',
            f'                chat_template_config=ChatTemplateConfig(model_name="hf", model_path="{repo_id}"))',
            f"messages = {messages!r}  # the trained system prompt and tiling; image.png: your image",
            "print(pipe(messages).text)",
            "```", "",
            f"As an OpenAI-compatible server: `lmdeploy serve api_server {repo_id} --backend pytorch --model-format awq "
            "--trust-remote-code --chat-template hf`. On a machine with CUDA 12, TurboMind reads it too "
            "(`TurbomindEngineConfig(model_format=\"awq\")`; InternLM2 and Qwen2 LLMs only). `transformers` alone does not "
            "run the packed tensors; use the bf16 fine-tune there.", "",
            "## Licence", "", f"{license.upper() if license == 'mit' else license}, like the model it was quantized from."]
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(body) + "\n")


def check_awq_card(card, result: dict) -> list[str]:
    """What is wrong with the AWQ CARD (empty: valid, its accuracy is RESULT's, and it says how to serve it)."""
    from huggingface_hub import ModelCard


    try:
        parsed = ModelCard(str(card))
    except Exception as exc:  # a broken front matter is exactly what this check reports
        return [f"the card's metadata does not parse: {exc}"]
    problems = [f"{key} accuracy {percent(result[key]['accuracy'])} is not on the card"
                for key in ("before", "after") if percent(result[key]["accuracy"]) not in parsed.text]
    index = parsed.data.eval_results or []
    if not index or abs(float(index[0].metric_value) - float(result["after"]["accuracy"])) > 1e-4:
        problems.append("model-index accuracy differs from notebook 06b's result")
    for needed in ('model_format="awq"', "--model-format awq"):
        if needed not in parsed.text:
            problems.append(f"the card does not say how to serve it ({needed} missing)")
    if "awq" not in (parsed.data.tags or []):
        problems.append("tag 'awq' missing")
    return problems
