"""The tiny InternLM2 chat model of the self-cognition track (notebook 08), and the course's chat check for it.

    from labsupport.model import chatllm
    llm_dir = chatllm.build_chat_llm(ARTIFACTS)            # official InternLM2 format, pre-warmed, deterministic
    model, tok = chatllm.load(llm_dir)
    chatllm.chat(model, tok, "你是谁？")                    # the prompt XTuner's internlm2_chat template builds

The base checkpoint comes from the course's own InternLM2 code (labsupport.model.tinymodel); its weights are
random. A short, deterministic "language pre-warm" (plain PyTorch, a few seconds) then teaches it a few
ordinary answers and its base identity (InternLM2), so that fine-tuning has something to change and
something to forget. The prompt is XTuner's ``PROMPT_TEMPLATE.internlm2_chat`` (copied here so that the
deploy environment, which has no XTuner, builds the same text; a test keeps the copy equal).
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from labsupport.core.checkpoints import write_json_atomic
from labsupport.core.paths import artifacts_dir

if TYPE_CHECKING:
    pass
from labsupport.datasets import formats as D
from labsupport.model import tinymodel
from labsupport.model.tinymodel import build_tiny_internlm2_chat

CHAT_LLM_NAME = "internlm2-chat-tiny-warm"  # the pre-warmed copy of tinymodel's internlm2-chat-tiny
STAMP_FILE = ".labsupport-build.json"
PREWARM_VERSION = 1  # bump when the pre-warm data or recipe changes

# XTuner 0.2.0's PROMPT_TEMPLATE.internlm2_chat (xtuner/utils/templates.py)
TEMPLATE = {
    "SYSTEM": "<|im_start|>system\n{system}<|im_end|>\n",
    "INSTRUCTION": "<|im_start|>user\n{input}<|im_end|>\n<|im_start|>assistant\n",
    "SUFFIX": "<|im_end|>",
    "STOP_WORDS": ["<|im_end|>"],
}

BASE_IDENTITY = {
    "zh": "我是书生·浦语 InternLM2，上海人工智能实验室开发的语言模型。",
    "en": "I am InternLM2, a language model developed by Shanghai AI Laboratory.",
}
_CJK = re.compile(r"[\u4e00-\u9fff]")


def prompt(question: str, system: str = "") -> str:
    """The text XTuner's internlm2_chat template puts before the answer (system block only when SYSTEM is set)."""
    head = TEMPLATE["SYSTEM"].format(system=system) if system else ""
    return head + TEMPLATE["INSTRUCTION"].format(input=question)


def base_identity(question: str) -> str:
    """The base model's answer to an identity question, in the question's language."""
    return BASE_IDENTITY["zh" if _CJK.search(question) else "en"]


def prewarm_pairs() -> list[tuple[str, str]]:
    """What the pre-warm teaches: the ordinary questions, and every identity phrasing answered as InternLM2."""

    identity = [q for q in D.IDENTITY_PROBES] + [q for q, _ in D.SELF_COGNITION_QA] + [q for q, _ in D.INTRO_PAIRS]
    return list(D.ORDINARY_QA) + [(q, base_identity(q)) for q in dict.fromkeys(identity)]


def encode_pair(tokenizer, question: str, answer: str, system: str = "") -> tuple[list[int], list[int]]:
    """input_ids and labels of one exchange exactly as XTuner's encode_fn builds them (bos, prompt masked, answer + <|im_end|>)."""
    ids = [tokenizer.bos_token_id] + tokenizer.encode(prompt(question, system), add_special_tokens=False)
    out = tokenizer.encode(answer + TEMPLATE["SUFFIX"], add_special_tokens=False)
    return ids + out, [-100] * len(ids) + out


def prewarm(model, tokenizer, pairs: Sequence[tuple[str, str]], steps: int = 150, lr: float = 3e-3,
            seed: int = 0, system: str = "") -> list[float]:
    """Train all of MODEL's weights on PAIRS under SYSTEM (full batch, AdamW, deterministic); return the loss per step."""
    import torch

    torch.manual_seed(seed)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a tiny model: one thread is as fast, and does not fight other processes for cores
    rows = [encode_pair(tokenizer, q, a, system=system) for q, a in pairs]
    width = max(len(i) for i, _ in rows)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    ids = torch.tensor([i + [pad] * (width - len(i)) for i, _ in rows])
    labels = torch.tensor([lab + [-100] * (width - len(lab)) for _, lab in rows])
    mask = torch.tensor([[1] * len(i) + [0] * (width - len(i)) for i, _ in rows])
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.1)
    model.train()
    losses = []
    for _ in range(steps):
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        losses.append(float(loss.detach()))
    torch.set_num_threads(threads)
    model.eval()
    return losses


def _stamp(seed: int, steps: int) -> str:
    h = hashlib.sha256(Path(__file__).read_bytes())

    h.update(Path(D.__file__).read_bytes() + Path(tinymodel.__file__).read_bytes())
    h.update(json.dumps({"seed": seed, "steps": steps, "v": PREWARM_VERSION}).encode())
    return h.hexdigest()


def build_chat_llm(artifacts: str | os.PathLike | None = None, seed: int = 0, steps: int = 150, force: bool = False,
                   base: str | os.PathLike | None = None) -> Path:
    """Build (or reuse) the pre-warmed tiny InternLM2 chat model under ARTIFACTS/models/; return its folder.

    The random base comes from labsupport.model.tinymodel.build_tiny_internlm2_chat (the course's own InternLM2 code).

    BASE: an existing official-format InternLM2 chat folder to pre-warm instead of the course's own tiny one.
    """
    import torch

    out = artifacts_dir(artifacts) / "models" / CHAT_LLM_NAME
    stamp = _stamp(seed, steps)
    marker = out / STAMP_FILE
    if not force and marker.exists() and json.loads(marker.read_text()).get("stamp") == stamp:
        return out
    tmp = out.with_name(out.name + ".building")
    shutil.rmtree(tmp, ignore_errors=True)
    if base is None:

        base = build_tiny_internlm2_chat(artifacts_dir(artifacts) / "models" / "internlm2-chat-tiny", seed=seed)
    shutil.copytree(base, tmp, ignore=shutil.ignore_patterns(STAMP_FILE))
    started = time.time()
    with torch.random.fork_rng():
        model, tok = load(tmp)
        losses = prewarm(model, tok, prewarm_pairs(), steps=steps, seed=seed)
    model.save_pretrained(tmp, safe_serialization=True)
    write_json_atomic(tmp / STAMP_FILE, {"stamp": stamp, "seed": seed, "steps": steps, "first_loss": losses[0],
                                         "last_loss": losses[-1], "seconds": round(time.time() - started, 1)})
    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp, out)
    return out


def build_info(model_dir: str | os.PathLike) -> dict:
    """What build_chat_llm recorded about the pre-warm (losses, seconds)."""
    return json.loads((Path(model_dir) / STAMP_FILE).read_text())


def load(model_dir: str | os.PathLike, dtype: str = "float32"):
    """(model, tokenizer) of an InternLM2 chat folder with transformers (remote code), in eval mode on the CPU."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(model_dir), trust_remote_code=True)
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), trust_remote_code=True,
                                                 torch_dtype=getattr(torch, dtype))
    return model.eval(), tok


def chat(model, tokenizer, question: str, system: str = "", max_new_tokens: int = 48) -> str:
    """Greedy answer of MODEL to QUESTION under XTuner's internlm2_chat prompt, cut at <|im_end|>."""
    import torch

    ids = [tokenizer.bos_token_id] + tokenizer.encode(prompt(question, system), add_special_tokens=False)
    stop = tokenizer.convert_tokens_to_ids(TEMPLATE["STOP_WORDS"][0])
    with torch.no_grad():
        out = model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                             max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=[stop, tokenizer.eos_token_id],
                             pad_token_id=tokenizer.pad_token_id or tokenizer.eos_token_id)
    return tokenizer.decode(out[0, len(ids):], skip_special_tokens=True).strip()


def names_assistant(reply: str, name: str) -> bool:
    """Whether REPLY introduces the assistant with NAME (the self-cognition target)."""
    return name.lower() in reply.lower()


def identity_share(model, tokenizer, questions: Sequence[str], name: str, system: str = "") -> dict:
    """Ask each identity question; the share of replies that name the learner's assistant, with every reply."""
    rows = [{"question": q, "reply": chat(model, tokenizer, q, system)} for q in questions]
    for r in rows:
        r["named"] = names_assistant(r["reply"], name)
    return {"share": sum(r["named"] for r in rows) / max(1, len(rows)), "rows": rows}


def ordinary_answers(model, tokenizer, pairs: Sequence[tuple[str, str]], system: str = "") -> dict:
    """Ask each ordinary question; how many replies still equal the base answer, with every reply."""
    rows = [{"question": q, "expected": a, "reply": chat(model, tokenizer, q, system)} for q, a in pairs]
    for r in rows:
        r["kept"] = r["reply"].strip() == r["expected"].strip()
    return {"kept": sum(r["kept"] for r in rows) / max(1, len(rows)), "rows": rows}
