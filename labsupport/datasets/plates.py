"""The course task: plates drawn deterministically, the bilingual questions about them, and the built splits."""
from __future__ import annotations

import hashlib
import json
import math
import os
import random
import shutil
import tempfile
from pathlib import Path
from typing import Any, Sequence

from labsupport.core.checkpoints import write_json_atomic
from labsupport.core.paths import artifacts_dir
from labsupport.datasets.formats import progress_bar

# ----------------------------------------------------------------------------------------------
# The course task: "plates"
# ----------------------------------------------------------------------------------------------
PLATES_VERSION = 4  # bump when the drawing or the questions change: it invalidates built copies (2: bigger objects;
                    # 3: training images asked about every kind; 4: English questions end with the kind asked)

COLOURS = {"red": "红色", "green": "绿色", "blue": "蓝色", "yellow": "黄色"}
SHAPES = {"circle": "圆形", "square": "正方形", "triangle": "三角形", "star": "星形"}
COUNTS = {"1": "1", "2": "2", "3": "3", "4": "4"}
CLASSES = {"colour": COLOURS, "shape": SHAPES, "count": COUNTS}
KINDS = ("colour", "shape", "count")

# The English colour and shape questions end with the kind they ask for: with "Answer with one word." for both they
# differed in their second word only, and the tiny model (XTuner LoRA, 600 iterations, seed 42) answered English colour
# questions with a shape half the time (held-out 0.80, colour 0.60; the Chinese ones, whose kind word closes the
# question sentence, were all right); ending with "one colour." / "one shape.": 0.98.
QUESTIONS = {
    ("colour", "en"): "What colour are the objects on the plate? Answer with one colour.",
    ("colour", "zh"): "盘子上的物体是什么颜色？请用一个词回答。",
    ("shape", "en"): "What shape are the objects on the plate? Answer with one shape.",
    ("shape", "zh"): "盘子上的物体是什么形状？请用一个词回答。",
    ("count", "en"): "How many objects are on the plate? Answer with one digit.",
    ("count", "zh"): "盘子上有几个物体？请用一个数字回答。",
}

IMAGE_SIZES = ((448, 448), (512, 384), (384, 512), (640, 360))  # (width, height): varied so tiling shows something

_RGB = {"red": (214, 40, 40), "green": (40, 160, 60), "blue": (40, 80, 210), "yellow": (240, 200, 20)}
# How far an object reaches from its centre, as a fraction of the plate's inner radius (min, max), and where
# the four quadrant centres sit. One circle covers ~18 of a tile's 256 image tokens (a star ~8; the old
# circle ~7): with reaches of 0.24-0.36 the tiny model mixed up red and yellow for hundreds of iterations more (measured:
# the loss fell at iteration ~240 with these sizes, not within 500 with 0.36-0.40). Centres >= 0.92 apart
# and reaches <= 0.46 keep four objects from touching whatever their shape (_REACH: a shape's farthest
# point per unit of its size).
OBJECT_OFFSET, OBJECT_JITTER = 0.48, 0.02  # quadrant centre from the plate's centre (per axis), random shift


OBJECT_SIZE = (0.40, 0.46)
_REACH = {"circle": 1.0, "square": 1.05, "triangle": 1.30, "star": 1.2}
_TABLES = ((150, 111, 80), (120, 90, 70), (170, 150, 120), (110, 110, 115), (90, 75, 60), (185, 170, 150))


def plates_texts() -> dict[str, list[str]]:
    """Every question and answer string of the plates task, by language (for building or checking a tokenizer)."""
    out: dict[str, list[str]] = {"en": [], "zh": []}
    for (_, lang), question in QUESTIONS.items():
        out[lang].append(question)
    for table in CLASSES.values():
        out["en"].extend(table.keys())
        out["zh"].extend(table.values())
    return out


def plates_answer(kind: str, value: str, lang: str) -> str:
    """The reference answer for KIND with class VALUE (English key, e.g. "red" or "3") in language LANG ("en"/"zh")."""
    if kind not in CLASSES:
        raise ValueError(f"unknown question kind {kind!r}: choose from {KINDS}")
    if value not in CLASSES[kind]:
        raise ValueError(f"{value!r} is not a {kind}: choose from {list(CLASSES[kind])}")
    return value if lang == "en" else CLASSES[kind][value]


def answer_matches(prediction: str, meta: dict) -> bool:
    """True when PREDICTION (a model's reply) gives the answer in META ({"kind", "answer", ...}) in either language."""
    kind, value = meta["kind"], meta["value"]
    text = prediction.strip().strip("。.!！ \n").lower()
    accepted = {value.lower(), CLASSES[kind][value]}
    if kind == "colour":
        accepted.add(CLASSES[kind][value].rstrip("色"))  # "红" as well as "红色"
    return text in accepted


def _star(cx: float, cy: float, r: float, angle: float) -> list[tuple[float, float]]:
    pts = []
    for k in range(10):
        rad = r if k % 2 == 0 else r * 0.45
        a = angle + k * math.pi / 5 - math.pi / 2
        pts.append((cx + rad * math.cos(a), cy + rad * math.sin(a)))
    return pts


def _polygon(cx: float, cy: float, r: float, sides: int, angle: float) -> list[tuple[float, float]]:
    return [(cx + r * math.cos(angle + 2 * math.pi * k / sides - math.pi / 2),
             cy + r * math.sin(angle + 2 * math.pi * k / sides - math.pi / 2)) for k in range(sides)]


def draw_plate(colour: str, shape: str, count: int, size: tuple[int, int] = (448, 448), seed: int = 0):
    """Draw one plate on a table with COUNT objects of COLOUR and SHAPE (a PIL image of SIZE = (width, height))."""
    from PIL import Image, ImageDraw

    if colour not in COLOURS or shape not in SHAPES or not 1 <= int(count) <= 4:
        raise ValueError(f"draw_plate: colour in {list(COLOURS)}, shape in {list(SHAPES)}, count 1-4; got {colour}, {shape}, {count}")
    rng = random.Random(seed)
    w, h = size
    table = tuple(min(255, max(0, c + rng.randint(-15, 15))) for c in rng.choice(_TABLES))
    img = Image.new("RGB", (w, h), table)
    d = ImageDraw.Draw(img)
    for y in range(0, h, rng.randint(14, 30)):  # wood grain
        shade = tuple(max(0, c - rng.randint(5, 20)) for c in table)
        d.line([(0, y), (w, y + rng.randint(-6, 6))], fill=shade, width=rng.randint(1, 3))
    m = min(w, h)
    pr = m * rng.uniform(0.40, 0.46)  # plate radius
    cx = w / 2 + rng.uniform(-1, 1) * (w / 2 - pr - 4)
    cy = h / 2 + rng.uniform(-1, 1) * (h / 2 - pr - 4)
    rim = tuple(rng.randint(215, 235) for _ in range(3))
    d.ellipse([cx - pr, cy - pr, cx + pr, cy + pr], fill=rim, outline=(150, 150, 150), width=2)
    inner = pr * 0.82
    face = tuple(min(255, c + 15) for c in rim)
    d.ellipse([cx - inner, cy - inner, cx + inner, cy + inner], fill=face)
    # objects sit in distinct quadrants of the plate, so they never overlap
    slots = rng.sample([(-1, -1), (1, -1), (-1, 1), (1, 1)], int(count))
    base = tuple(min(255, max(0, c + rng.randint(-20, 20))) for c in _RGB[colour])
    for sx, sy in slots:
        r = inner * rng.uniform(*OBJECT_SIZE) / _REACH[shape]
        ox = cx + sx * inner * OBJECT_OFFSET + rng.uniform(-1, 1) * inner * OBJECT_JITTER
        oy = cy + sy * inner * OBJECT_OFFSET + rng.uniform(-1, 1) * inner * OBJECT_JITTER
        angle = rng.uniform(-0.4, 0.4)
        edge = tuple(max(0, c - 60) for c in base)
        if shape == "circle":
            d.ellipse([ox - r, oy - r, ox + r, oy + r], fill=base, outline=edge, width=2)
        elif shape == "square":
            d.polygon(_polygon(ox, oy, r * 1.05, 4, angle + math.pi / 4), fill=base, outline=edge)
        elif shape == "triangle":
            d.polygon(_polygon(ox, oy + r * 0.15, r * 1.15, 3, angle), fill=base, outline=edge)
        else:
            d.polygon(_star(ox, oy, r * 1.2, angle), fill=base, outline=edge)
    return img


def plates_records(n: int, split: str, kinds: Sequence[str] = KINDS, seed: int = 0, ask_all: bool = False) -> list[dict]:
    """N plates records for SPLIT (images not drawn): kinds in turn, classes balanced, half English half Chinese.
    ASK_ALL: each record goes on after its question with one turn per other kind in KINDS, in a random order."""
    kinds = tuple(kinds)
    bad = [k for k in kinds if k not in CLASSES]
    if not kinds or bad:
        raise ValueError(f"kinds must be a non-empty subset of {KINDS}; got {kinds}")
    rng = random.Random(f"plates/{split}/{seed}")
    group = len(kinds) * 4  # one of each (kind, class) pair
    records = []
    for i in range(n):
        kind = kinds[i % len(kinds)]
        value = list(CLASSES[kind])[(i // len(kinds)) % 4]
        lang = ("en", "zh")[(i // group) % 2]
        attrs = {"colour": rng.choice(list(COLOURS)), "shape": rng.choice(list(SHAPES)), "count": rng.choice(list(COUNTS))}
        attrs[kind] = value
        w, h = rng.choice(IMAGE_SIZES)
        conversations = [{"from": "human", "value": "<image>\n" + QUESTIONS[(kind, lang)]},
                         {"from": "gpt", "value": plates_answer(kind, value, lang)}]
        if ask_all:  # its own order per record (a separate stream: the images stay those of ask_all=False)
            more = [k for k in kinds if k != kind]
            random.Random(f"plates/{split}/{seed}/turns/{i}").shuffle(more)
            for k in more:
                conversations += [{"from": "human", "value": QUESTIONS[(k, lang)]},
                                  {"from": "gpt", "value": plates_answer(k, str(attrs[k]), lang)}]
        records.append({
            "image_wh": [w, h],
            "conversations": conversations,
            "meta": {"kind": kind, "value": value, "answer": plates_answer(kind, value, lang), "lang": lang,
                     "colour": attrs["colour"], "shape": attrs["shape"], "count": int(attrs["count"]),
                     "draw_seed": rng.randrange(2**31)},
        })
    rng.shuffle(records)
    for i, rec in enumerate(records):
        rec["id"] = f"plates-{split}-{i:05d}"
        rec["image"] = f"images/{split}-{i:05d}.jpg"
    return [{"id": r["id"], "image": r["image"], **{k: v for k, v in r.items() if k not in ("id", "image")}} for r in records]


def _stamp(**params: Any) -> str:
    """Hash of what a built copy depends on: PARAMS, PLATES_VERSION, the questions and the drawing code with its sizes."""
    import inspect

    drawing = inspect.getsource(draw_plate) + repr((OBJECT_SIZE, OBJECT_OFFSET, OBJECT_JITTER, _REACH, _RGB, _TABLES))
    questions = sorted((f"{kind}/{lang}", text) for (kind, lang), text in QUESTIONS.items())
    text = json.dumps({"version": PLATES_VERSION, "drawing": drawing, "questions": questions, **params}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def build_course_task(out_dir: str | os.PathLike | None = None, n_train: int = 600, n_heldout: int = 120,
                      kinds: Sequence[str] = KINDS, seed: int = 0, force: bool = False,
                      progress: bool = True, ask_all: bool = True) -> dict[str, Path]:
    """Build the plates task (images/, train.json, heldout.json) under OUT_DIR (default artifacts/data/plates); skip when its stamp matches.
    ASK_ALL: every training image is asked about each kind in KINDS, one turn each (held-out records keep one question)."""
    out = Path(out_dir) if out_dir else artifacts_dir() / "data" / "plates"
    kinds = tuple(kinds)
    stamp = _stamp(n_train=n_train, n_heldout=n_heldout, kinds=list(kinds), seed=seed, ask_all=ask_all)
    paths = {"root": out, "image_folder": out, "images": out / "images",
             "train": out / "train.json", "heldout": out / "heldout.json", "stamp": out / "stamp.json"}
    if not force and paths["stamp"].exists() and paths["train"].exists() and paths["heldout"].exists():
        try:
            if json.loads(paths["stamp"].read_text(encoding="utf-8")).get("stamp") == stamp:
                return paths
        except (json.JSONDecodeError, OSError):
            pass  # an unreadable stamp means: rebuild
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.building-", dir=out.parent))
    try:
        (tmp / "images").mkdir()
        splits = {"train": plates_records(n_train, "train", kinds, seed, ask_all=ask_all),
                  "heldout": plates_records(n_heldout, "heldout", kinds, seed)}
        jobs = [rec for recs in splits.values() for rec in recs]
        for rec in progress_bar(jobs, "drawing plates", enable=progress):
            m = rec["meta"]
            img = draw_plate(m["colour"], m["shape"], m["count"], tuple(rec["image_wh"]), seed=m["draw_seed"])
            img.save(tmp / rec["image"], quality=92)
        for name, recs in splits.items():
            write_json_atomic(tmp / f"{name}.json", recs)
        write_json_atomic(tmp / "stamp.json", {"stamp": stamp, "version": PLATES_VERSION, "n_train": n_train,
                                               "n_heldout": n_heldout, "kinds": list(kinds), "seed": seed,
                                               "ask_all": ask_all})
        if out.exists():  # swap: the old copy leaves only once the new one is complete
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
            os.replace(out, old / out.name)
            os.replace(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return paths
