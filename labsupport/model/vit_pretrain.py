"""How the embedded tiny models' vision towers were pre-trained (the weights themselves: labsupport.model.towers).

The real InternViT-300M (InternVL2) and CLIP ViT-L/14 (LLaVA) were pre-trained on web images long before anyone
fine-tuned a multimodal model on them, and a LoRA fine-tune keeps them frozen. A randomly initialised tiny tower sees
colour (an average of pixels) but not shape or number: measured, a LoRA run of the tiny InternVL2 on all three plates
questions reached 0.28 after 600 iterations. So each tiny tower ships pre-trained, trained by this module on plates
images of its own (a namespace no course split uses) to tell colour, shape and count apart through three linear heads
on its mean patch feature. The heads are thrown away; projectors and LLMs stay random.

* ``internvit`` (notebook 04's InternVL2, 448 px): needs a GPU (about 50 s on one H200; a 2-core CPU would need about
  a day); labsupport/data/tiny_vit_plates.safetensors, ~0.35 MB.
* ``clip`` (notebook 09's LLaVA, 112 px, the hidden state XTuner's LLaVA reads): about 6.5 minutes on one CPU
  thread; labsupport/data/tiny_clip_plates.safetensors, ~0.3 MB.

Each weights file travels with the record of its run (recipe, device, seconds, sha256, the heads' held-out accuracy).

    from labsupport.model import towers
    weights = towers.pretrained_weights()   # {"vision_model.…": bf16 tensor}, what build_tiny_model writes
    python -m labsupport.model.vit_pretrain --device cuda                      # train InternViT's again (writes labsupport/data/)
    python -m labsupport.model.vit_pretrain --tower clip --device cpu --threads 1  # the tiny CLIP's
"""
from __future__ import annotations

import argparse
import io
import os
import random
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from labsupport.core.checkpoints import write_json_atomic
from labsupport.core.tiling import IMAGENET_MEAN, IMAGENET_STD
from labsupport.model.towers import ATTRIBUTES
from labsupport.model.towers import PREFIX
from labsupport.model.towers import TOWERS
from labsupport.model.towers import Tower
from labsupport.model.towers import weights_digest
from labsupport.model.towers import DATA, RECIPE
from labsupport.datasets import plates
from labsupport.model.tinymodel import build_tiny_model
from labsupport.model.towers import build_tiny_clip

if TYPE_CHECKING:
    import numpy as np
    import torch

def pretrain_sample(i: int, size: int = 448, fill: "tuple[int, int, int] | None" = None
                    ) -> "tuple[np.ndarray, tuple[int, int, int]]":
    """Plate I of the pre-training set: a SIZExSIZE RGB uint8 array (JPEG-compressed like the course's images; padded
    to a square with FILL first when given, as XTuner's pad_image_to_square does) and its (colour, shape, count - 1)
    class indices."""
    import numpy as np
    from PIL import Image


    rng = random.Random(f"vit-prewarm/{i}")  # no course split draws from this namespace
    colour, shape, count = rng.choice(list(plates.COLOURS)), rng.choice(list(plates.SHAPES)), rng.randint(1, 4)
    img = plates.draw_plate(colour, shape, count, size=rng.choice(plates.IMAGE_SIZES), seed=rng.randrange(2**31))
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=95)
    buf.seek(0)
    img = Image.open(buf).convert("RGB")
    if fill is not None and img.width != img.height:
        square = Image.new("RGB", (max(img.size),) * 2, tuple(fill))
        square.paste(img, ((square.width - img.width) // 2, (square.height - img.height) // 2))
        img = square
    img = img.resize((size, size), Image.Resampling.BICUBIC)
    return np.asarray(img, dtype=np.uint8), (list(plates.COLOURS).index(colour), list(plates.SHAPES).index(shape), count - 1)


def pretrain_set(n: int, start: int = 0, processes: int = 1, size: int = 448,
                 fill: "tuple[int, int, int] | None" = None) -> "tuple[torch.Tensor, torch.Tensor]":
    """Plates START..START+N-1 as a uint8 tensor [N, 3, SIZE, SIZE] and their labels [N, 3] (drawn in PROCESSES;
    FILL: see pretrain_sample)."""
    import functools

    import numpy as np
    import torch

    indices = range(start, start + n)
    sample = functools.partial(pretrain_sample, size=size, fill=fill)
    if processes > 1:
        from multiprocessing import Pool

        with Pool(processes) as pool:
            rows = pool.map(sample, indices, chunksize=64)
    else:
        rows = [sample(i) for i in indices]
    images = torch.from_numpy(np.stack([r[0] for r in rows])).permute(0, 3, 1, 2).contiguous()
    return images, torch.tensor([r[1] for r in rows])


def normalise(images: "torch.Tensor", mean: Sequence[float] = IMAGENET_MEAN,
              std: Sequence[float] = IMAGENET_STD) -> "torch.Tensor":
    """uint8 [N, 3, H, W] -> float pixel values with MEAN and STD (InternViT's ImageNet ones by default; CLIP has its own)."""
    import torch

    mean = torch.tensor(mean, device=images.device).view(1, 3, 1, 1)
    std = torch.tensor(std, device=images.device).view(1, 3, 1, 1)
    return (images.float() / 255 - mean) / std


def mean_patch_feature(vit, pixel_values: "torch.Tensor", layer: int | None = None) -> "torch.Tensor":
    """The tower's last hidden state (or hidden state LAYER, e.g. -2, the one LLaVA's projector reads) averaged over
    its patch tokens ([CLS] left out): [N, hidden]."""
    if layer is None:
        return vit(pixel_values=pixel_values).last_hidden_state[:, 1:].mean(1)
    return vit(pixel_values=pixel_values, output_hidden_states=True).hidden_states[layer][:, 1:].mean(1)


def train_tower(vit, images: "torch.Tensor", labels: "torch.Tensor", steps: int, batch: int, lr: float,
                weight_decay: float, warmup: float, seed: int, val: "tuple[torch.Tensor, torch.Tensor] | None" = None,
                log_every: int = 250, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD,
                layer: int | None = None) -> list[dict]:
    """Train VIT (and three linear heads, then dropped) to classify colour, shape and count from the mean patch
    feature of hidden state LAYER (None: the last) of images normalised with MEAN and STD; return the log."""
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
        pixels = normalise(images[idx], mean, std)
        if step % 2 == 0:
            pixels = pixels.flip(-1)  # a mirrored plate has the same colour, shape and count
        feats = mean_patch_feature(vit, pixels, layer)
        loss = sum(nn.functional.cross_entropy(h(feats), labels[idx, k]) for k, h in enumerate(heads))
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if val is not None and (step % log_every == 0 or step == steps):
            vit.eval()
            with torch.no_grad():
                f = torch.cat([mean_patch_feature(vit, normalise(val[0][i:i + 128], mean, std), layer)
                               for i in range(0, len(val[0]), 128)])
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


def random_tower(tower: Tower, device: str = "cpu"):
    """The starting point of TOWER's pre-training: the tiny model's vision tower with its seeded random weights."""
    import torch
    from transformers import AutoModel, CLIPVisionModel

    with tempfile.TemporaryDirectory() as tmp:
        if tower.name == "clip":

            return CLIPVisionModel.from_pretrained(build_tiny_clip(Path(tmp) / "clip", pretrained=False)).to(device)

        base = build_tiny_model(Path(tmp) / "base", seed=0, pretrained_vision=False)
        return AutoModel.from_pretrained(base, trust_remote_code=True, torch_dtype=torch.float32).vision_model.to(device)


def tower_state(vit) -> "dict[str, torch.Tensor]":
    """VIT's tensors without the "vision_model." prefix (CLIPVisionModel has it, InternViT's module does not), bf16."""
    import torch

    return {k.removeprefix(PREFIX): v.detach().to("cpu", torch.bfloat16).contiguous() for k, v in vit.state_dict().items()}


def main(argv: "list[str] | None" = None) -> None:
    """Train a tiny tower (--tower internvit or clip) again and write its weights and record (in --out)."""
    import torch
    from safetensors.torch import save_file

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tower", choices=sorted(TOWERS), default="internvit")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--out", default=str(DATA), help="folder for the weights (.safetensors) and the record (.json)")
    ap.add_argument("--processes", type=int, default=max(1, (os.cpu_count() or 2) - 1), help="processes drawing images")
    ap.add_argument("--threads", type=int, default=0, help="torch threads on a CPU (0: torch's default)")
    for key in ("images", "steps", "batch", "lr"):
        ap.add_argument(f"--{key}", type=type(RECIPE[key]), default=None)
    args = ap.parse_args(argv)
    tower = TOWERS[args.tower]
    if args.threads:
        torch.set_num_threads(args.threads)
    recipe = {**tower.recipe, **{k: getattr(args, k) for k in ("images", "steps", "batch", "lr") if getattr(args, k)}}
    started = time.time()
    images, labels = pretrain_set(recipe["images"] + 512, processes=args.processes, size=tower.size, fill=tower.fill)
    drawn = time.time() - started
    print(f"drew {len(images)} plates in {drawn:.0f} s", flush=True)
    images, labels = images.to(args.device), labels.to(args.device)
    vit = random_tower(tower, args.device)
    n = recipe["images"]
    log = train_tower(vit, images[:n], labels[:n], recipe["steps"], recipe["batch"], recipe["lr"], recipe["weight_decay"],
                      recipe["warmup"], recipe["seed"], val=(images[n:], labels[n:]), mean=tower.mean, std=tower.std,
                      layer=tower.layer)
    out = Path(args.out)
    tmp = out / (tower.weights.name + ".partial")
    save_file(tower_state(vit), str(tmp), metadata={"format": "pt"})
    tmp.chmod(0o644)  # safetensors writes a private file; the package's data is for everyone
    os.replace(tmp, out / tower.weights.name)
    device = torch.cuda.get_device_name() if args.device == "cuda" else f"cpu, {torch.get_num_threads()} thread(s)"
    write_json_atomic(out / tower.record.name, {
        "tower": tower.name, "recipe": recipe, "device": device, "torch": torch.__version__,
        "seconds": round(time.time() - started, 1), "drawing_seconds": round(drawn, 1),
        "sha256": weights_digest(out / tower.weights.name), "log": log})
    print(f"wrote {out / tower.weights.name} ({time.time() - started:.0f} s)")


if __name__ == "__main__":
    main()
