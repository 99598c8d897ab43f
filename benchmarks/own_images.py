"""Why the embedded tiny did not learn a learner's own images (scikit-learn's digits) in notebook 04, lever by lever.

Two measurements, printed as rows (docs/levers-own-images.md holds the ones the schedule rule rests on):

    python -m benchmarks.own_images probe --data digits_short.jsonl            # do the frozen ViT's features hold the digits?
    python -m benchmarks.own_images replica --data digits_short.jsonl \\
        --variants '[{"vit": "frozen", "iters": 600}, {"vit": "full", "iters": 300}]'   # loss curve and held-out accuracy

`probe` fits a linear classifier (first 600 records, 200 held out) on the raw 8x8 pixels and on the tiny's frozen
features (ViT output, projector output; mean-pooled or pooled to 8x8 cells). `replica` is a plain-PyTorch copy of
notebook 04's tiny-cpu LoRA run (LoRA r=32/alpha 64 on every LLM linear, the projector trained, AdamW lr 1e-3, 3 %
warm-up then cosine, clip 1, batch 4, the tokenizer's chat template = XTuner's, loss on the answer and <|im_end|>)
with the ViT frozen (its features computed once), trained whole ("full") or with LoRA ("lora"); greedy replies
to 200 held-out records, exact match. It ranks levers; notebook 04's XTuner run is the measurement.
Run in the course env with PYTHONPATH at the repo root; short answers ("0".."9") only.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import time
from collections import Counter
from pathlib import Path
from typing import Sequence

from labsupport.core.checkpoints import write_json_atomic
from labsupport.core.tiling import load_image
from labsupport.model.tinymodel import resolve_model

IMG = "<img>" + "<IMG_CONTEXT>" * 256 + "</img>"
N_TRAIN, N_HELD = 600, 200


def _records(data: Path) -> tuple[list[dict], list[dict]]:
    """The first N_TRAIN records and the last N_HELD of DATA (a .jsonl)."""
    recs = [json.loads(line) for line in data.read_text().splitlines() if line.strip()]
    return recs[:N_TRAIN], recs[-N_HELD:]


def _pixels(data: Path, recs: list[dict]):
    """One 448-px tile per record, as XTuner's dataset and the course's evaluation load it."""
    import torch  # noqa: PLC0415  (heavy)

    return torch.cat([load_image(data.parent / r["image"], max_num=1)[:1] for r in recs])


def _linear_probe(F, y, n_train: int, steps: int = 300, wd: float = 1e-3) -> float:
    """Held-out accuracy of a linear classifier on standardised features F (rows past N_TRAIN held out)."""
    import torch  # noqa: PLC0415  (heavy)

    F = (F - F[:n_train].mean(0)) / (F[:n_train].std(0) + 1e-6)
    W = torch.zeros(F.shape[1], 10, requires_grad=True)
    b = torch.zeros(10, requires_grad=True)
    opt = torch.optim.Adam([W, b], lr=1e-2)
    for _ in range(steps):
        loss = torch.nn.functional.cross_entropy(F[:n_train] @ W + b, y[:n_train]) + wd * (W ** 2).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return ((F[n_train:] @ W + b).argmax(1) == y[n_train:]).float().mean().item()


def probe(data: Path, model_dir: Path) -> list[dict]:
    """Linear-probe rows: how much of the digit each frozen stage of MODEL_DIR still holds."""
    import numpy as np  # noqa: PLC0415  (heavy)
    import torch  # noqa: PLC0415  (heavy)
    from PIL import Image  # noqa: PLC0415  (heavy)
    from transformers import AutoModel  # noqa: PLC0415  (heavy)

    train, held = _records(data)
    recs = train + held
    y = torch.tensor([int(r["conversations"][1]["value"]) for r in recs])
    model = AutoModel.from_pretrained(model_dir, trust_remote_code=True, torch_dtype=torch.float32).eval()
    X = _pixels(data, recs)
    with torch.no_grad():
        vit = torch.cat([model.vision_model(pixel_values=X[i:i + 50]).last_hidden_state[:, 1:] for i in range(0, len(X), 50)])
        feat = torch.cat([model.extract_feature(X[i:i + 50]) for i in range(0, len(X), 50)])
    raw = torch.tensor(np.stack([np.asarray(Image.open(data.parent / r["image"]).convert("L").resize((8, 8), Image.NEAREST),
                                            dtype=np.float32).ravel() for r in recs]))

    def cells(t, side):  # [N, side*side, C] -> pooled to 8x8 cells, flattened
        return torch.nn.functional.adaptive_avg_pool2d(t.reshape(len(t), side, side, -1).permute(0, 3, 1, 2), 8).flatten(1)

    rows = [("raw 8x8 pixels", raw), ("ViT output, mean over patches", vit.mean(1)),
            ("projector (mlp1) output, mean over the 256 tokens", feat.mean(1)),
            ("ViT output pooled to 8x8 cells", cells(vit, 32)), ("projector output pooled to 8x8 cells", cells(feat, 16))]
    out = []
    for name, F in rows:
        out.append({"features": name, "dim": int(F.shape[1]), "heldout_accuracy": round(_linear_probe(F, y, len(train)), 3)})
        print(json.dumps(out[-1]), flush=True)
    return out


def _lora(module, r: int, alpha: int) -> None:
    """Every nn.Linear under MODULE wrapped with a LoRA adapter (B zero, A Kaiming as peft does)."""
    import torch.nn as nn  # noqa: PLC0415  (heavy)

    class LoRA(nn.Module):
        def __init__(self, base, r, alpha):
            super().__init__()
            self.base, self.scale = base, alpha / r
            self.A = nn.Parameter(nn.init.kaiming_uniform_(base.weight.new_empty(r, base.in_features), a=math.sqrt(5)))
            self.B = nn.Parameter(base.weight.new_zeros(base.out_features, r))

        def forward(self, x):
            return self.base(x) + (x @ self.A.T @ self.B.T) * self.scale

    for name, child in list(module.named_children()):
        if isinstance(child, nn.Linear):
            setattr(module, name, LoRA(child, r, alpha))
        else:
            _lora(child, r, alpha)


def replica(data: Path, model_dir: Path, v: dict) -> dict:
    """One replica run of variant V (vit: frozen|full|lora, iters, lr, r, alpha, bs, seed): loss curve, accuracy, time."""
    import torch  # noqa: PLC0415  (heavy)
    from transformers import AutoModel, AutoTokenizer  # noqa: PLC0415  (heavy)

    v = {"vit": "frozen", "iters": 150, "lr": 1e-3, "r": 32, "alpha": 64, "bs": 4, "seed": 0, **v}
    torch.manual_seed(v["seed"])
    tok = AutoTokenizer.from_pretrained(model_dir, trust_remote_code=True)
    m = AutoModel.from_pretrained(model_dir, trust_remote_code=True, torch_dtype=torch.float32)
    m.img_context_token_id = tok.convert_tokens_to_ids("<IMG_CONTEXT>")
    train, held = _records(data)
    PT, PH = _pixels(data, train), _pixels(data, held)
    m.requires_grad_(False)
    _lora(m.language_model, v["r"], v["alpha"])
    m.mlp1.requires_grad_(True)
    if v["vit"] == "full":
        m.vision_model.requires_grad_(True)
    elif v["vit"] == "lora":
        _lora(m.vision_model, v.get("vr", 16), v.get("valpha", 32))
    if v["vit"] == "frozen":   # its features once: an iteration then costs the projector and the LLM only
        with torch.no_grad():
            def shuffled(X):
                e = m.vision_model(pixel_values=X).last_hidden_state[:, 1:]
                e = m.pixel_shuffle(e.reshape(len(e), 32, 32, -1), scale_factor=m.downsample_ratio)
                return e.reshape(len(e), -1, e.shape[-1])
            cached = {"T": torch.cat([shuffled(PT[i:i + 50]) for i in range(0, len(PT), 50)]),
                      "H": torch.cat([shuffled(PH[i:i + 50]) for i in range(0, len(PH), 50)])}
        m.extract_feature = lambda key: m.mlp1(cached[key[0]][key[1]])
        pix_t, pix_h = (lambda idx: ("T", idx)), (lambda sl: ("H", sl))
    else:
        pix_t, pix_h = (lambda idx: PT[idx]), (lambda sl: PH[sl])

    def prompt(rec):
        text = tok.apply_chat_template([{"role": "user", "content": rec["conversations"][0]["value"].replace("<image>", IMG)}],
                                       add_generation_prompt=True, tokenize=False)
        return tok(text, add_special_tokens=True)["input_ids"]

    enc = []
    for rec in train:
        p, a = prompt(rec), tok(rec["conversations"][1]["value"] + "<|im_end|>", add_special_tokens=False)["input_ids"]
        enc.append((p + a, [-100] * len(p) + a))
    params = [p for p in m.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=v["lr"], weight_decay=0.0)
    iters, warm = v["iters"], max(2, round(0.03 * v["iters"]))
    g, order, losses, curve = torch.Generator().manual_seed(v["seed"]), [], [], []
    m.train()
    start = time.time()
    for i in range(iters):
        if len(order) < v["bs"]:
            order += torch.randperm(len(train), generator=g).tolist()
        idx, order = order[:v["bs"]], order[v["bs"]:]
        L = max(len(enc[j][0]) for j in idx)
        ids = torch.tensor([enc[j][0] + [0] * (L - len(enc[j][0])) for j in idx])
        lab = torch.tensor([enc[j][1] + [-100] * (L - len(enc[j][1])) for j in idx])
        att = torch.tensor([[1] * len(enc[j][0]) + [0] * (L - len(enc[j][0])) for j in idx])
        lr = v["lr"] * ((1e-5 + (1 - 1e-5) * i / warm) if i < warm else 0.5 * (1 + math.cos(math.pi * (i - warm) / (iters - warm))))
        for group in opt.param_groups:
            group["lr"] = lr
        out = m(pixel_values=pix_t(idx), input_ids=ids, attention_mask=att,
                image_flags=torch.ones(len(idx), 1, dtype=torch.long), labels=lab)
        opt.zero_grad()
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        losses.append(out.loss.item())
        if (i + 1) % 50 == 0:
            curve.append([i + 1, round(sum(losses[-50:]) / 50, 3)])
            print(f"  {v['vit']} iteration {i + 1}: mean loss of the last 50 {curve[-1][1]}", flush=True)
    seconds = time.time() - start
    m.eval()
    P = [prompt(r) for r in held]
    L, pad = max(map(len, P)), tok.pad_token_id or 2
    ids = torch.tensor([[pad] * (L - len(p)) + p for p in P])
    att = torch.tensor([[0] * (L - len(p)) + [1] * len(p) for p in P])
    replies = []
    with torch.no_grad():
        for s in range(0, len(P), 50):
            emb = m._merge_image_tokens(ids[s:s + 50], m.extract_feature(pix_h(slice(s, s + 50))))
            res = m.language_model.generate(inputs_embeds=emb, attention_mask=att[s:s + 50], max_new_tokens=4, do_sample=False,
                                            eos_token_id=[tok.convert_tokens_to_ids("<|im_end|>"), 2], pad_token_id=pad)
            replies += [r.strip() for r in tok.batch_decode(res, skip_special_tokens=True)]
    gold = [r["conversations"][1]["value"].strip() for r in held]
    row = {"variant": v, "heldout_accuracy": round(sum(a == b for a, b in zip(replies, gold)) / len(gold), 3),
           "loss_every_50": curve, "train_s": round(seconds, 1), "s_per_iteration": round(seconds / iters, 2),
           "top_replies": Counter(replies).most_common(3)}
    print(json.dumps(row), flush=True)
    return row


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: probe | replica (see the module docstring)."""
    p = argparse.ArgumentParser(prog="python -m benchmarks.own_images", description=__doc__.split("\n\n")[0])
    p.add_argument("cmd", choices=["probe", "replica"])
    p.add_argument("--data", type=Path, required=True, help="an InternVL .jsonl with short digit answers")
    p.add_argument("--model", default="tiny", help="MODEL_PATH (default: the embedded tiny)")
    p.add_argument("--variants", default='[{"vit": "frozen"}]', help="replica: a JSON list of variants")
    p.add_argument("--out", type=Path, default=None, help="where the rows go (json)")
    a = p.parse_args(argv)
    import torch  # noqa: PLC0415  (heavy)

    torch.set_num_threads(int(os.environ.get("THREADS", "2")))
    model_dir = resolve_model(a.model)
    rows = probe(a.data, model_dir) if a.cmd == "probe" else [replica(a.data, model_dir, v) for v in json.loads(a.variants)]
    if a.out:
        write_json_atomic(a.out, rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
