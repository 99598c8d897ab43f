"""A model card written from the course's own results (notebooks 04-05), never typed in by hand.

    training = read_training(artifacts / hub.TRAIN_WORK_DIR)        # XTuner config settings + loss curve
    evaluation = read_evaluation(artifacts / hub.EVAL_RESULTS_JSON)  # held-out accuracy before/after
    card = build_card("me/InternVL2-tiny-plates", training, evaluation, base_model="OpenGVLab/InternVL2-2B")
    problems = check_card(card, training, evaluation)                # [] when valid and filled from the results
"""
from __future__ import annotations

import ast
import json
import os
from pathlib import Path
from labsupport.train.runs import mmengine_scalars

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
    """Notebook 05's before/after evaluation ({"before": {"accuracy", "n"}, "after": {...}}), or None when it has not run."""
    path = Path(path)
    if not path.exists():
        return None
    data = json.loads(path.read_text(encoding="utf-8"))
    for key in ("before", "after"):
        if not isinstance(data.get(key), dict) or "accuracy" not in data[key]:
            raise ValueError(f"{path}: expected {{'before': {{'accuracy': …}}, 'after': {{'accuracy': …}}}}, "
                             f"but {key!r} is {data.get(key)!r}; re-run notebook 05 or fix labsupport.publish.hub.EVAL_RESULTS_JSON")
    return data


def percent(x: float) -> str:
    """An accuracy in [0, 1] as the card prints it: 35.0 %."""
    return f"{100 * x:.1f} %"


def dataset_names(training: dict | None) -> list[str]:
    """Short names of the training sets (the folder of each data json: artifacts/data/plates/train.json -> plates)."""
    paths = (training or {}).get("settings", {}).get("data_paths") or []
    return sorted({Path(p).parent.name or Path(p).stem for p in paths})


EXAMPLE_IMAGE = "examples/plate.png"   # the card's example image, published inside the model repository
EXAMPLE_QUESTION = "What colour are the objects on the plate? Answer with one colour."


def usage_snippet(repo_id: str, question: str = EXAMPLE_QUESTION, image: str = EXAMPLE_IMAGE, max_num: int = 6) -> str:
    """The card's transformers snippet as plain Python: it runs as written on the Hub id or a local copy of the repo."""
    return f'''import os
import torch
import torchvision.transforms as T
from PIL import Image
from torchvision.transforms.functional import InterpolationMode
from transformers import AutoModel, AutoTokenizer

# InternVL2's own image loader (the official model cards'): dynamic 448-px tiles + ImageNet normalisation
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)

def build_transform(input_size):
    return T.Compose([T.Lambda(lambda img: img.convert("RGB") if img.mode != "RGB" else img),
                      T.Resize((input_size, input_size), interpolation=InterpolationMode.BICUBIC),
                      T.ToTensor(), T.Normalize(mean=IMAGENET_MEAN, std=IMAGENET_STD)])

def find_closest_aspect_ratio(aspect_ratio, target_ratios, width, height, image_size):
    best_ratio_diff, best_ratio, area = float("inf"), (1, 1), width * height
    for ratio in target_ratios:
        ratio_diff = abs(aspect_ratio - ratio[0] / ratio[1])
        if ratio_diff < best_ratio_diff:
            best_ratio_diff, best_ratio = ratio_diff, ratio
        elif ratio_diff == best_ratio_diff and area > 0.5 * image_size * image_size * ratio[0] * ratio[1]:
            best_ratio = ratio
    return best_ratio

def dynamic_preprocess(image, min_num=1, max_num=12, image_size=448, use_thumbnail=False):
    width, height = image.size
    ratios = sorted({{(i, j) for n in range(min_num, max_num + 1) for i in range(1, n + 1) for j in range(1, n + 1)
                     if min_num <= i * j <= max_num}}, key=lambda x: x[0] * x[1])
    cols, rows = find_closest_aspect_ratio(width / height, ratios, width, height, image_size)
    resized = image.resize((image_size * cols, image_size * rows))
    tiles = [resized.crop(((k % cols) * image_size, (k // cols) * image_size,
                           (k % cols + 1) * image_size, (k // cols + 1) * image_size)) for k in range(cols * rows)]
    if use_thumbnail and len(tiles) != 1:
        tiles.append(image.resize((image_size, image_size)))
    return tiles

def load_image(image_file, input_size=448, max_num=12):
    image = Image.open(image_file).convert("RGB")
    transform = build_transform(input_size)
    return torch.stack([transform(t) for t in dynamic_preprocess(image, image_size=input_size, use_thumbnail=True,
                                                                  max_num=max_num)])

path = "{repo_id}"  # the Hub id, or the folder you downloaded or cloned it into
if not os.path.isdir(path):
    from huggingface_hub import snapshot_download
    path = snapshot_download(path)
device = "cuda" if torch.cuda.is_available() else "cpu"
dtype = torch.bfloat16 if device == "cuda" else torch.float32
model = AutoModel.from_pretrained(path, torch_dtype=dtype, trust_remote_code=True).eval().to(device)
tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=True)
pixel_values = load_image(os.path.join(path, "{image}"), max_num={max_num}).to(device, dtype)  # [tiles, 3, 448, 448]
question = "<image>\\n{question}"
print(model.chat(tokenizer, pixel_values, question, dict(max_new_tokens=8, do_sample=False)))
'''


def python_blocks(card_text: str) -> list[str]:
    """The ```python fenced blocks of a card, in order."""
    import re

    return re.findall(r"```python\n(.*?)```", str(card_text), flags=re.S)


def _usage(repo_id: str, question: str = EXAMPLE_QUESTION, image: str = EXAMPLE_IMAGE, max_num: int = 6,
           fine_tuned: bool = True) -> str:
    """The usage snippets of the card: transformers and LMDeploy."""
    asked = ("the question one the fine-tuning taught; `load_image` cuts it into 448-px tiles exactly as training did"
             if fine_tuned else "a question of the course task; `load_image` cuts it into 448-px tiles as the model's "
             "config.json says")
    return f"""## How to use

With transformers (the model ships its own code, hence `trust_remote_code=True`). The image is the example
published with the model (`{image}`), {asked} (at most {max_num}), with InternVL2's own loader; the snippet needs torch, torchvision, transformers and Pillow only:

```python
{usage_snippet(repo_id, question, image, max_num)}```

With LMDeploy (GPU):

```python
from lmdeploy import pipeline, PytorchEngineConfig
from lmdeploy.vl import load_image

pipe = pipeline("{repo_id}", backend_config=PytorchEngineConfig(tp=1))
print(pipe(("{question}", load_image("{image}"))).text)
```

or as an OpenAI-compatible server: `lmdeploy serve api_server {repo_id} --backend pytorch`.
"""


def build_card(repo_id: str, training: dict | None, evaluation: dict | None, base_model: str | None = None,
               license: str = "mit", language: list[str] | None = None, model_note: str = "",
               question: str = EXAMPLE_QUESTION, image: str = EXAMPLE_IMAGE, max_num: int = 6):
    """A huggingface_hub ModelCard for REPO_ID: metadata (base model, licence, datasets, tags, eval results) and text from the results.

    QUESTION, IMAGE (a path inside the repository) and MAX_NUM make the usage snippet ask what the model was tuned for."""
    from huggingface_hub import EvalResult, ModelCard, ModelCardData

    name = repo_id.split("/")[-1]
    datasets = dataset_names(training)
    tags = BASE_TAGS + (["lora"] if training and training["mode"] == "LoRA" else [])
    evals = None
    if evaluation:
        evals = [EvalResult(task_type="visual-question-answering", dataset_type=(datasets or ["heldout"])[0],
                            dataset_name=f"{(datasets or ['course'])[0]} (held-out split)", dataset_split="heldout",
                            metric_type="accuracy", metric_value=round(float(evaluation["after"]["accuracy"]), 4))]
    data = ModelCardData(model_name=name, base_model=base_model or None, license=license, language=language or ["en", "zh"],
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
        body += ["Held-out accuracy, measured by the course's notebook 05 (same questions, greedy decoding):", "",
                 "| model | accuracy | questions |", "|---|---|---|",
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
    body += ["", "## Training", ""]
    if training:
        body += [f"Fine-tuned with XTuner ({training['mode']}) for {training['iters']} iterations; "
                 + (f"loss {training['loss_first']:.3f} → {training['loss_last']:.3f}." if training["loss_last"] is not None
                    else "no loss was logged."), "", "| setting | value |", "|---|---|"]
        body += [f"| `{k}` | `{v!r}` |" for k, v in training["settings"].items()]
    else:
        body.append("No training record was found (notebook 04 has not run, or did not train this model): these are "
                    "the base weights.")
    body += ["", _usage(repo_id, question, image, max_num, fine_tuned), "## Licence", "",
             f"{license.upper() if license == 'mit' else license}, like the InternVL2 code; the language model inside keeps its own licence."]
    content = f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(body) + "\n"
    return ModelCard(content)


def check_card(card, training: dict | None, evaluation: dict | None, keyword: str = "InternVL") -> list[str]:
    """What is wrong with CARD (empty list: valid, and its numbers are those of TRAINING and EVALUATION)."""
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
    if training:
        if f"{training['iters']} iterations" not in text:
            problems.append("the number of training iterations is not on the card")
        for k, v in training["settings"].items():
            if f"`{v!r}`" not in text:
                problems.append(f"training setting {k} = {v!r} is not on the card")
    return problems
