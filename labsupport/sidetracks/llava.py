"""The LLaVA track (notebook 09): a tiny CLIP vision tower, plates data in LLaVA's format, and the config edits.

XTuner's LLaVA recipe joins a CLIP vision encoder (transformers' CLIPVisionModel) and a chat LLM with a 2-layer MLP
projector: stage 1 (pretrain) trains the projector on image-caption pairs, stage 2 (fine-tune) adds LoRA to the
LLM (and the vision tower) on question-answer pairs. Everything here is built deterministically and small enough
for a CPU; a learner with real weights points the same edits at clip-vit-large-patch14-336 and internlm2-chat-1_8b.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from labsupport.core.checkpoints import write_json_atomic
from labsupport.model.towers import CLIP_MEAN, CLIP_STD  # noqa: F401  CLIP's normalisation, kept importable from here
from labsupport.train.xtuner_configs import Edit
from labsupport.datasets import plates
from labsupport.model import chatllm
from labsupport.publish import hub, modelcard
from labsupport.train.training_outcome import train_seconds
from labsupport.train.xtuner import latest_checkpoint
from labsupport.train.xtuner_configs import xtuner_chat as chat_cli

if TYPE_CHECKING:
    from labsupport.train.xtuner import TrainRun


from labsupport.train.xtuner_configs import _QUANT  # noqa: E402  the same QLoRA block in XTuner's configs: one copy

PRETRAIN_CONFIG = "llava_internlm2_chat_1_8b_clip_vit_large_p14_336_e1_gpu8_pretrain"
FINETUNE_CONFIG = "llava_internlm2_chat_1_8b_qlora_clip_vit_large_p14_336_lora_e1_gpu8_finetune"
CLIP_NAME = "clip-vit-tiny-patch14-112"
def caption(meta: dict, lang: str = "en") -> str:
    """A one-line caption of a plate from its record's meta (colour, shape, count) for the pretrain stage."""

    n, colour, shape = int(meta["count"]), meta["colour"], meta["shape"]
    if lang == "zh":
        return f"盘子上有{n}个{plates.COLOURS[colour]}的{plates.SHAPES[shape]}。"
    return f"{n} {colour} {shape}{'s' if n > 1 else ''} on a plate."


def to_llava(records: Sequence[dict], captions: bool = False) -> list[dict]:
    """Plates records in LLaVA's json format (id, image, conversations); CAPTIONS: image -> caption pairs for pretraining."""
    out = []
    for rec in records:
        convs = rec["conversations"]
        if captions:
            lang = rec["meta"].get("lang", "en")
            convs = [{"from": "human", "value": "<image>"}, {"from": "gpt", "value": caption(rec["meta"], lang)}]
        out.append({"id": rec["id"], "image": rec["image"], "conversations": convs})
    return out


def save_llava(path: str | os.PathLike, records: list[dict]) -> Path:
    """Write LLaVA-format RECORDS to PATH atomically; return PATH."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(path, records)
    return path
_AMP = '''    type=AmpOptimWrapper,'''
_AMP_TAIL = '''    accumulative_counts=accumulative_counts,
    loss_scale="dynamic",
    dtype="float16",'''


def config_edits(stage: str, llm: str, clip: str, data_json: str, image_folder: str, eval_image: str,
                 eval_question: str, batch_size: int = 8, max_epochs: int = 1, lr: float | None = None,
                 pretrained_pth: str = "", cpu: bool = True, seed: int = 0, llm_lora_r: int = 64,
                 llm_lora_alpha: int = 128, vision_lora: bool = True, checkpointing: bool = True,
                 group_by_length: bool = True) -> list[Edit]:
    """The edits to XTuner's LLaVA internlm2_chat_1_8b STAGE ("pretrain" or "finetune") config, each with its reason."""
    if stage not in ("pretrain", "finetune"):
        raise ValueError(f"stage is 'pretrain' or 'finetune', not {stage!r}")
    data = ("LLaVA-Pretrain/blip_laion_cc_sbu_558k.json", "LLaVA-Pretrain/images") if stage == "pretrain" else \
        ("LLaVA-Instruct-150K/llava_v1_5_mix665k.json", "llava_images")
    e = [
        Edit('llm_name_or_path = "internlm/internlm2-chat-1_8b"', f"llm_name_or_path = {llm!r}",
             "the chat LLM: a local folder (the course's tiny InternLM2 chat model, or internlm2-chat-1_8b)"),
        Edit('visual_encoder_name_or_path = "openai/clip-vit-large-patch14-336"', f"visual_encoder_name_or_path = {clip!r}",
             "the CLIP vision tower: a local folder (a tiny CLIPVisionModel, or clip-vit-large-patch14-336)"),
        Edit(f'data_path = data_root + "{data[0]}"', f"data_path = {data_json!r}",
             "the course's plates task in LLaVA format" + (" (captions for stage 1)" if stage == "pretrain" else "")),
        Edit(f'image_folder = data_root + "{data[1]}"', f"image_folder = {image_folder!r}",
             "the folder the records' image paths are relative to"),
        Edit(f"batch_size = {32 if stage == 'pretrain' else 16}  # per_device", f"batch_size = {batch_size}  # per_device",
             "a batch that suits a tiny model on a CPU"),
        Edit("dataloader_num_workers = 4", "dataloader_num_workers = 0", "load in the training process (2 CPU cores)"),
        Edit("max_epochs = 1", f"max_epochs = {max_epochs}", "passes over the (small) plates set"),
        Edit('evaluation_images = "https://llava-vl.github.io/static/images/view.jpg"',
             f"evaluation_images = {eval_image!r}", "a local plate picture (no network needed)"),
        Edit("randomness = dict(seed=None, deterministic=False)", f"randomness = dict(seed={seed}, deterministic=False)",
             "a fixed seed, so that a re-run gives the same weights"),
    ]
    if stage == "pretrain":
        e.append(Edit('evaluation_inputs = ["请描述一下这张照片", "Please describe this picture"]',
                      'evaluation_inputs = ["Please describe this picture"]', "one caption request is enough"))
    else:
        e.append(Edit('evaluation_inputs = ["请描述一下这张照片", "Please describe this picture"]',
                      f"evaluation_inputs = [{eval_question!r}]", "a question of the plates task"))
        e.append(Edit('pretrained_pth = "./work_dirs/llava_internlm2_chat_1_8b_clip_vit_large_p14_336_e1_gpu8_pretrain/iter_2181.pth"  # noqa: E501',
                      f"pretrained_pth = {pretrained_pth!r}", "the projector trained in stage 1"))
        e.append(Edit("        r=512,\n        lora_alpha=256,", f"        r={llm_lora_r},\n        lora_alpha={llm_lora_alpha},",
                      "LLM LoRA rank for a 128-wide tiny LLM (512 suits the 2048-wide 1.8B)"))
        if not vision_lora:
            e.append(Edit("    visual_encoder_lora=dict(\n        type=LoraConfig, r=64, lora_alpha=16, lora_dropout=0.05, bias=\"none\"\n    ),\n",
                          "", "no LoRA on the vision tower: it stays as pre-trained (tiny model, measured: 6 % less time per "
                          "iteration, the same held-out accuracy)"))
    if stage == "finetune" and not group_by_length:
        e.append(Edit("from xtuner.dataset.samplers import LengthGroupedSampler",
                      "from mmengine.dataset import DefaultSampler", "random order instead of batches grouped by length"))
        e.append(Edit('    sampler=dict(\n        type=LengthGroupedSampler,\n        length_property="modality_length",\n'
                      '        per_device_batch_size=batch_size * accumulative_counts,\n    ),',
                      "    sampler=dict(type=DefaultSampler, shuffle=True),",
                      "random order: batches grouped by length hold one language and one question order each (notebook 04's "
                      "tiny-cpu preset measured 0.63 with LengthGroupedSampler, 0.80 without)"))
    if not checkpointing:
        e.append(Edit("    freeze_visual_encoder=True,\n", "    freeze_visual_encoder=True,\n    use_activation_checkpointing=False,\n",
                      "no activation checkpointing (LLaVAModel switches it on): a tiny model's activations fit in memory, "
                      "recomputing them only costs time"))
    if lr is not None:
        e.append(Edit(f"lr = {'1e-3' if stage == 'pretrain' else '2e-4'}", f"lr = {lr!r}", "learning rate for the tiny model"))
    if cpu:
        e += [
            Edit("from xtuner.dataset import LLaVADataset",
                 "from labsupport.train.xtuner_shims import CPULLaVADataset, CPULLaVAModel  # CPU shims, see labsupport/train/xtuner_shims.py",
                 "CPU: the shims patch torch for XTuner and let datasets.map run in one process"),
            Edit("type=LLaVADataset,", "type=CPULLaVADataset,",
                 "CPU: XTuner's LLaVADataset with map_num_proc=1 (its hard-coded 32 forks 32 processes)"),
            Edit("type=LLaVAModel,", "type=CPULLaVAModel,",
                 "CPU: XTuner's LLaVAModel, named from the shim module so that mmengine imports it"),
            Edit("from mmengine.optim import AmpOptimWrapper, CosineAnnealingLR, LinearLR",
                 "from mmengine.optim import CosineAnnealingLR, LinearLR, OptimWrapper",
                 "CPU: AmpOptimWrapper (mixed precision) needs a GPU"),
            Edit(_QUANT, "        torch_dtype=torch.float32,",
                 "CPU: no 4-bit LLM (bitsandbytes needs CUDA) and no float16: float32"),
            Edit(_AMP, "    type=OptimWrapper,", "CPU: plain OptimWrapper"),
            Edit(_AMP_TAIL, "    accumulative_counts=accumulative_counts,", "CPU: no loss scaling, float32"),
        ]
    return e


# --- inference: what `xtuner chat --visual-encoder ... --llava ...` does, in-process ------------------------

class LLaVAChat:
    """The LLM (+ its LoRA adapter), the CLIP tower (+ adapter) and the projector of a `pth_to_hf` LLaVA folder."""

    def __init__(self, llm: str | os.PathLike, clip: str | os.PathLike, llava_dir: str | os.PathLike | None,
                 visual_select_layer: int = -2):
        import torch
        from peft import PeftModel
        from transformers import AutoModel, AutoModelForCausalLM, AutoTokenizer, CLIPImageProcessor, CLIPVisionModel

        self.tokenizer = AutoTokenizer.from_pretrained(str(llm), trust_remote_code=True)
        self.llm = AutoModelForCausalLM.from_pretrained(str(llm), trust_remote_code=True, torch_dtype=torch.float32)
        self.clip = CLIPVisionModel.from_pretrained(str(clip), torch_dtype=torch.float32)
        self.processor = CLIPImageProcessor.from_pretrained(str(clip))
        self.projector = None
        if llava_dir is not None:
            d = Path(llava_dir)
            if (d / "llm_adapter").is_dir():
                self.llm = PeftModel.from_pretrained(self.llm, str(d / "llm_adapter"))
            if (d / "visual_encoder_adapter").is_dir():
                self.clip = PeftModel.from_pretrained(self.clip, str(d / "visual_encoder_adapter"))
            self.projector = AutoModel.from_pretrained(str(d / "projector"), trust_remote_code=True,
                                                       torch_dtype=torch.float32).eval()
        self.llm.eval(), self.clip.eval()
        self.layer = visual_select_layer

    def ask(self, image, question: str, max_new_tokens: int = 16) -> str:
        """Greedy answer about IMAGE (a path or PIL image) under XTuner's internlm2_chat prompt, as `xtuner chat` builds it."""
        import torch
        from PIL import Image
        from xtuner.dataset.utils import expand2square
        from xtuner.model.utils import prepare_inputs_labels_for_multimodal
        from xtuner.utils import DEFAULT_IMAGE_TOKEN, IMAGE_TOKEN_INDEX


        if self.projector is None:
            raise RuntimeError("no projector: the base LLM and CLIP are not connected before stage 1 trains one")
        img = image if isinstance(image, Image.Image) else Image.open(image).convert("RGB")
        img = expand2square(img, tuple(int(x * 255) for x in self.processor.image_mean))
        pixels = self.processor.preprocess(img, return_tensors="pt")["pixel_values"]
        text = chatllm.prompt(DEFAULT_IMAGE_TOKEN + "\n" + question)
        before, after = text.split(DEFAULT_IMAGE_TOKEN)
        ids = self.tokenizer.encode(before) + [IMAGE_TOKEN_INDEX] + self.tokenizer.encode(after, add_special_tokens=False)
        stop = self.tokenizer.convert_tokens_to_ids(chatllm.TEMPLATE["STOP_WORDS"][0])
        with torch.no_grad():
            feats = self.clip(pixels, output_hidden_states=True).hidden_states[self.layer][:, 1:]
            mm = prepare_inputs_labels_for_multimodal(llm=self.llm, input_ids=torch.tensor([ids]),
                                                      pixel_values=self.projector(feats))
            if mm.get("attention_mask") is None:  # one unpadded sequence: every position counts
                mm["attention_mask"] = torch.ones(mm["inputs_embeds"].shape[:2], dtype=torch.long)
            out = self.llm.generate(**mm, max_new_tokens=max_new_tokens, do_sample=False,
                                    eos_token_id=[stop, self.tokenizer.eos_token_id],
                                    pad_token_id=self.tokenizer.eos_token_id, bos_token_id=self.tokenizer.bos_token_id)
        return self.tokenizer.decode(out[0], skip_special_tokens=True).strip()


def evaluate(chat: "LLaVAChat", records: Sequence[dict], image_folder: str | os.PathLike) -> dict:
    """Accuracy of CHAT on plates RECORDS (datasets.answer_matches), with every reply (asked on one CPU thread)."""
    import torch


    rows, threads = [], torch.get_num_threads()
    torch.set_num_threads(1)  # a tiny model: one thread is as fast, and on a busy machine far faster than two
    try:
        for rec in records:
            q = rec["conversations"][0]["value"].replace("<image>", "").strip()
            reply = chat.ask(Path(image_folder) / rec["image"], q)
            rows.append({"id": rec["id"], "kind": rec["meta"]["kind"], "answer": rec["meta"]["answer"], "reply": reply,
                         "correct": plates.answer_matches(reply, rec["meta"])})
    finally:
        torch.set_num_threads(threads)
    return {"accuracy": sum(r["correct"] for r in rows) / max(1, len(rows)), "n": len(rows), "rows": rows}


def by_kind(rows: Sequence[dict]) -> dict[str, float]:
    """Accuracy per question kind (colour, shape, count) of evaluate()'s ROWS."""
    out: dict[str, list[bool]] = {}
    for r in rows:
        out.setdefault(r["kind"], []).append(bool(r["correct"]))
    return {k: sum(v) / len(v) for k, v in out.items()}


def chat_command(llm: str | os.PathLike, clip: str | os.PathLike, llava_dir: str | os.PathLike, image: str | os.PathLike) -> str:
    """The `xtuner chat` command line of the seed: the LLM, the CLIP tower, the converted LLaVA folder and an image."""
    return (f"xtuner chat {llm} --visual-encoder {clip} --llava {llava_dir} --prompt-template internlm2_chat "
            f"--image {image}")


def xtuner_chat(llm: str | os.PathLike, clip: str | os.PathLike, llava_dir: str | os.PathLike, image: str | os.PathLike,
                questions: Sequence[str], max_new_tokens: int = 16) -> list[str]:
    """Run the real `xtuner chat ... --llava ... --image ...` with QUESTIONS typed on its stdin; return its replies."""

    extra = ["--visual-encoder", str(clip), "--llava", str(llava_dir), "--image", str(image)]
    return chat_cli(llm, questions, extra=extra, max_new_tokens=max_new_tokens)


def trained_parts(checkpoint: str | os.PathLike) -> dict[str, int]:
    """Parameters per top-level module (projector, llm, visual_encoder) in an XTuner LLaVA checkpoint: what trained."""
    import torch

    state = torch.load(str(checkpoint), map_location="cpu", weights_only=False)
    state = state.get("state_dict", state)
    out: dict[str, int] = {}
    for name, t in state.items():
        if hasattr(t, "numel"):
            out[name.split(".")[0]] = out.get(name.split(".")[0], 0) + int(t.numel())
    return out


# --- results and the comparison with notebook 04 ----------------------------------------------------------

RESULTS = "llava/results.json"


def save_results(artifacts: str | os.PathLike, results: dict) -> Path:
    """Write notebook 09's measurements to ARTIFACTS/llava/results.json (atomically); return the path."""
    path = Path(artifacts) / RESULTS
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(path, {k: v for k, v in results.items()})
    return path


def iterations(run: "TrainRun") -> int:
    """Iterations a finished XTuner RUN trained: the number in its last checkpoint's name (iter_N.pth; the log shows
    only every tenth)."""
    import re

    m = re.search(r"iter_(\d+)", Path(run.checkpoint).name)
    return int(m.group(1)) if m else int(run.last_iter)


def trained_parameters(checkpoint: str | os.PathLike) -> int:
    """Parameters stored in an XTuner checkpoint: XTuner saves only what trains (projector, LoRA, unfrozen weights)."""
    import torch

    state = torch.load(str(checkpoint), map_location="cpu", weights_only=False)
    state = state.get("state_dict", state)
    return int(sum(t.numel() for t in state.values() if hasattr(t, "numel")))


def checkpoint_mode(checkpoint: str | os.PathLike) -> str:
    """What an XTuner checkpoint trained, read from its tensor names: "LoRA" (adapters, maybe with a projector),
    "projector only", or "full"."""
    import torch

    state = torch.load(str(checkpoint), map_location="cpu", weights_only=False)
    names = list(state.get("state_dict", state))
    if any("lora_" in n for n in names):
        return "LoRA"
    if names and all(n.split(".")[0] in ("projector", "mlp1") or ".mlp1." in n for n in names):
        return "projector only"
    return "full"


def comparison(artifacts: str | os.PathLike, after: dict, runs: Sequence) -> list[dict]:
    """One row per model: held-out accuracy, training seconds and iterations, parameters trained (notebook 04's from ARTIFACTS)."""

    rows = [{"model": "LLaVA (CLIP + InternLM2), notebook 09", "accuracy": f"{after['accuracy']:.0%}",
             "training s": round(sum(r.seconds for r in runs), 1), "iterations": sum(iterations(r) for r in runs),
             "parameters trained": f"{trained_parameters(runs[-1].checkpoint):,}"}]
    work = Path(artifacts) / hub.TRAIN_WORK_DIR
    training = modelcard.read_training(work)
    evaluation = modelcard.read_evaluation(Path(artifacts) / hub.EVAL_RESULTS_JSON)
    if training is None:
        rows.append({"model": "InternVL2, notebook 04", "accuracy": "not run here", "training s": "—", "iterations": "—",
                     "parameters trained": "—", "note": f"no saved run in {work}: run notebooks 04 and 05 first"})
        return rows
    seconds = train_seconds(artifacts)  # the course's one training time: wall seconds of 04's `xtuner train`
    ckpt = latest_checkpoint(work)
    mode = checkpoint_mode(ckpt) if ckpt else training["mode"]
    rows.append({"model": f"InternVL2 ({mode}), notebook 04",
                 "accuracy": f"{evaluation['after']['accuracy']:.0%}" if evaluation else "notebook 05 not run",
                 "training s": round(seconds) if seconds is not None else "?", "iterations": training["iters"],
                 "parameters trained": f"{trained_parameters(ckpt):,}" if ckpt else "no checkpoint"})
    return rows
