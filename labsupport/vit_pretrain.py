"""The embedded tiny InternVL2's pre-trained vision tower: how it was trained, and the weights the builder uses.

The real InternViT-300M was pre-trained on web images long before anyone fine-tuned InternVL2, and a LoRA
fine-tune keeps it frozen. A randomly initialised tiny ViT sees colour (an average of pixels) but not shape or
number: measured, a LoRA run on all three plates questions reached 0.28 after 600 iterations. So the tiny model
ships a pre-trained tower too, trained by this module on plates images of its own (a namespace no course split
uses) to tell colour, shape and count apart through three linear heads on its mean patch feature. The heads are
thrown away; the projector (mlp1) and the LLM stay random, so the tiny model still answers nothing before
notebook 04. Training needs a GPU (about 50 s on one H200); a 2-core CPU would need about a day, so the weights
travel with the package (labsupport/data/tiny_vit_plates.safetensors, ~0.35 MB) with the record of their run.

    from labsupport import vit_pretrain
    weights = vit_pretrain.pretrained_weights()   # {"vision_model.…": bf16 tensor}, what build_tiny_model writes
    python -m labsupport.vit_pretrain --device cuda           # train it again (writes labsupport/data/)
"""
from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import random
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

from labsupport.checkpoints import write_json_atomic
from labsupport.tiling import IMAGENET_MEAN, IMAGENET_STD

if TYPE_CHECKING:
    import numpy as np
    import torch

DATA = Path(__file__).resolve().parent / "data"
WEIGHTS = DATA / "tiny_vit_plates.safetensors"
RECORD = DATA / "tiny_vit_plates.json"
PREFIX = "vision_model."
RECIPE = {"images": 12000, "steps": 4000, "batch": 64, "lr": 1e-3, "weight_decay": 0.05, "warmup": 0.05,
          "seed": 0, "flip": "horizontal, every second step", "heads": "linear colour/shape/count on the mean patch feature"}
ATTRIBUTES = ("colour", "shape", "count")


def pretrain_sample(i: int) -> "tuple[np.ndarray, tuple[int, int, int]]":
    """Plate I of the pre-training set: a 448x448 RGB uint8 array (JPEG-compressed like the course's images) and its
    (colour, shape, count - 1) class indices."""
    import numpy as np
    from PIL import Image

    from labsupport import datasets as D

    rng = random.Random(f"vit-prewarm/{i}")  # no course split draws from this namespace
    colour, shape, count = rng.choice(list(D.COLOURS)), rng.choice(list(D.SHAPES)), rng.randint(1, 4)
    img = D.draw_plate(colour, shape, count, size=rng.choice(D.IMAGE_SIZES), seed=rng.randrange(2**31))
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=95)
    buf.seek(0)
    img = Image.open(buf).convert("RGB").resize((448, 448), Image.Resampling.BICUBIC)
    return np.asarray(img, dtype=np.uint8), (list(D.COLOURS).index(colour), list(D.SHAPES).index(shape), count - 1)


def pretrain_set(n: int, start: int = 0, processes: int = 1) -> "tuple[torch.Tensor, torch.Tensor]":
    """Plates START..START+N-1 as a uint8 tensor [N, 3, 448, 448] and their labels [N, 3] (drawn in PROCESSES)."""
    import numpy as np
    import torch

    indices = range(start, start + n)
    if processes > 1:
        from multiprocessing import Pool

        with Pool(processes) as pool:
            rows = pool.map(pretrain_sample, indices, chunksize=64)
    else:
        rows = [pretrain_sample(i) for i in indices]
    images = torch.from_numpy(np.stack([r[0] for r in rows])).permute(0, 3, 1, 2).contiguous()
    return images, torch.tensor([r[1] for r in rows])


def normalise(images: "torch.Tensor") -> "torch.Tensor":
    """uint8 [N, 3, H, W] -> the float pixel values InternViT expects (ImageNet mean and std)."""
    import torch

    mean = torch.tensor(IMAGENET_MEAN, device=images.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=images.device).view(1, 3, 1, 1)
    return (images.float() / 255 - mean) / std


def mean_patch_feature(vit, pixel_values: "torch.Tensor") -> "torch.Tensor":
    """The tower's last hidden state averaged over its patch tokens ([CLS] left out): [N, hidden]."""
    return vit(pixel_values=pixel_values).last_hidden_state[:, 1:].mean(1)


def train_tower(vit, images: "torch.Tensor", labels: "torch.Tensor", steps: int, batch: int, lr: float,
                weight_decay: float, warmup: float, seed: int, val: "tuple[torch.Tensor, torch.Tensor] | None" = None,
                log_every: int = 250) -> list[dict]:
    """Train VIT (and three linear heads, then dropped) to classify colour, shape and count; return the log."""
    import torch
    from torch import nn

    device = images.device
    torch.manual_seed(seed)
    heads = nn.ModuleList([nn.Linear(vit.config.hidden_size, 4) for _ in ATTRIBUTES]).to(device)
    opt = torch.optim.AdamW(list(vit.parameters()) + list(heads.parameters()), lr=lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=warmup)
    gen = torch.Generator(device=device).manual_seed(seed)
    log, started = [], time.time()
    vit.train()
    for step in range(1, steps + 1):
        idx = torch.randint(0, len(images), (batch,), device=device, generator=gen)
        pixels = normalise(images[idx])
        if step % 2 == 0:
            pixels = pixels.flip(-1)  # a mirrored plate has the same colour, shape and count
        feats = mean_patch_feature(vit, pixels)
        loss = sum(nn.functional.cross_entropy(h(feats), labels[idx, k]) for k, h in enumerate(heads))
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if val is not None and (step % log_every == 0 or step == steps):
            vit.eval()
            with torch.no_grad():
                f = torch.cat([mean_patch_feature(vit, normalise(val[0][i:i + 128])) for i in range(0, len(val[0]), 128)])
                acc = {a: round((h(f).argmax(-1) == val[1][:, k]).float().mean().item(), 3)
                       for k, (a, h) in enumerate(zip(ATTRIBUTES, heads))}
            vit.train()
            log.append({"step": step, "loss": round(loss.item(), 4), "val_accuracy": acc, "seconds": round(time.time() - started, 1)})
            print(log[-1], flush=True)
    vit.eval()
    return log


def probe_accuracy(features: "torch.Tensor", labels: "torch.Tensor", n_fit: int) -> dict[str, float]:
    """Accuracy per attribute of a linear probe (softmax regression) fitted on the first N_FIT rows of FEATURES,
    scored on the rest."""
    import torch

    x = (features - features[:n_fit].mean(0)) / (features[:n_fit].std(0) + 1e-6)
    out = {}
    for k, attr in enumerate(ATTRIBUTES):
        probe = torch.nn.Linear(x.shape[1], 4)
        opt = torch.optim.LBFGS(probe.parameters(), max_iter=200, line_search_fn="strong_wolfe")

        def closure():
            opt.zero_grad()
            loss = torch.nn.functional.cross_entropy(probe(x[:n_fit]), labels[:n_fit, k]) + 1e-3 * probe.weight.square().sum()
            loss.backward()
            return loss

        opt.step(closure)
        with torch.no_grad():
            out[attr] = round(float((probe(x[n_fit:]).argmax(1) == labels[n_fit:, k]).double().mean()), 3)
    return out


def pretrained_weights(path: str | os.PathLike = WEIGHTS) -> "dict[str, torch.Tensor]":
    """The shipped tower's tensors, named as in the InternVL checkpoint ("vision_model.…"), bfloat16."""
    from safetensors.torch import load_file

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: it ships with labsupport (restore it with `git checkout -- "
                                f"labsupport/data/{WEIGHTS.name}`), or train it again with "
                                "`python -m labsupport.vit_pretrain --device cuda`")
    return {PREFIX + k: v for k, v in load_file(str(path)).items()}


def weights_digest(path: str | os.PathLike = WEIGHTS) -> str:
    """sha256 of the shipped weights file (part of the tiny model's build stamp)."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def main(argv: "list[str] | None" = None) -> None:
    """Train the tiny tower again and write WEIGHTS and RECORD (in --out)."""
    import torch
    from safetensors.torch import save_file
    from transformers import AutoModel

    from labsupport.tinymodel import build_tiny_model

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--out", default=str(DATA), help="folder for tiny_vit_plates.safetensors/.json")
    ap.add_argument("--processes", type=int, default=max(1, (os.cpu_count() or 2) - 1), help="processes drawing images")
    for key in ("images", "steps", "batch", "lr"):
        ap.add_argument(f"--{key}", type=type(RECIPE[key]), default=RECIPE[key])
    args = ap.parse_args(argv)
    recipe = {**RECIPE, **{k: getattr(args, k) for k in ("images", "steps", "batch", "lr")}}
    started = time.time()
    images, labels = pretrain_set(recipe["images"] + 512, processes=args.processes)
    print(f"drew {len(images)} plates in {time.time() - started:.0f} s", flush=True)
    images, labels = images.to(args.device), labels.to(args.device)
    with tempfile.TemporaryDirectory() as tmp:  # the tiny model with its random ViT: the starting point
        base = build_tiny_model(Path(tmp) / "base", seed=0, pretrained_vision=False)
        vit = AutoModel.from_pretrained(base, trust_remote_code=True, torch_dtype=torch.float32).vision_model.to(args.device)
    n = recipe["images"]
    log = train_tower(vit, images[:n], labels[:n], recipe["steps"], recipe["batch"], recipe["lr"], recipe["weight_decay"],
                      recipe["warmup"], recipe["seed"], val=(images[n:], labels[n:]))
    out = Path(args.out)
    tmp = out / (WEIGHTS.name + ".partial")
    save_file({k: v.detach().to("cpu", torch.bfloat16).contiguous() for k, v in vit.state_dict().items()}, str(tmp),
              metadata={"format": "pt"})
    tmp.chmod(0o644)  # safetensors writes a private file; the package's data is for everyone
    os.replace(tmp, out / WEIGHTS.name)
    write_json_atomic(out / RECORD.name, {"recipe": recipe, "device": torch.cuda.get_device_name() if args.device == "cuda" else "cpu",
                                          "torch": torch.__version__, "seconds": round(time.time() - started, 1),
                                          "sha256": weights_digest(out / WEIGHTS.name), "log": log})
    print(f"wrote {out / WEIGHTS.name} ({time.time() - started:.0f} s)")


if __name__ == "__main__":
    main()
