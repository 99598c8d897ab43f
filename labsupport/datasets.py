"""Datasets for InternVL fine-tuning: the course's "plates" task, builders for the InternVL/XTuner json format, a mixer.

The InternVL/XTuner format is a json list (or jsonl) of records::

    {"id": "plates-train-00000",
     "image": "images/train-00000.jpg",          # a str, or a list with one path; relative to the image folder
     "conversations": [{"from": "human", "value": "<image>\\nWhat colour ...?"},
                       {"from": "gpt", "value": "red"}]}

Extra keys are allowed: XTuner 0.2.0's InternVL_V1_5_Dataset reads only `image`, `conversations`,
and, when present, `length` and `image_wh` (used to group samples by length); it ignores the rest,
so the course task keeps a machine-readable `meta` for the evaluator.
"""
from __future__ import annotations

import collections
import hashlib
import json
import math
import os
import random
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from labsupport import tiling
from labsupport.checkpoints import write_json_atomic, write_text_atomic
from labsupport.paths import artifacts_dir

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
OBJECT_SIZE = (0.40, 0.46)
OBJECT_OFFSET, OBJECT_JITTER = 0.48, 0.02  # quadrant centre from the plate's centre (per axis), random shift
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


def progress_bar(items: Iterable, desc: str, enable: bool = True, total: int | None = None) -> Iterable:
    """Wrap ITEMS in a progress display when ENABLE: a live bar for a person, a summary line in a saved notebook."""
    from labsupport.progress import bar

    return bar(items, desc, enable=enable, total=total)


# ----------------------------------------------------------------------------------------------
# Image tiles and tokens
# ----------------------------------------------------------------------------------------------
TILE = 448  # InternVL's tile side in pixels
TOKENS_PER_TILE = 256  # (448 // 14)**2 * 0.5**2 after pixel shuffle


def count_tiles(width: int, height: int, max_num: int = 6, min_num: int = 1, use_thumbnail: bool = True) -> int:
    """Tiles InternVL's dynamic tiling makes of a WIDTH x HEIGHT image (training default max_num 6, thumbnail included)."""
    if width <= 0 or height <= 0:
        raise ValueError(f"count_tiles: the image has no area ({width}x{height})")
    return tiling.count_tiles(width, height, min_num=min_num, max_num=max_num, use_thumbnail=use_thumbnail)


def image_tokens(width: int, height: int, max_num: int = 6,
                 count_tiles_fn: Callable[[int, int, int], int] | None = None) -> int:
    """Image tokens one WIDTH x HEIGHT image costs: 256 per tile (the <img> and </img> markers not included)."""
    return TOKENS_PER_TILE * (count_tiles_fn or count_tiles)(width, height, max_num)


# ----------------------------------------------------------------------------------------------
# Reading and writing records
# ----------------------------------------------------------------------------------------------
# JSONL lines end at \n (or \r\n / \r, as Python's universal newlines, which XTuner's reader uses), never at the
# other characters str.splitlines() treats as line breaks (U+2028, U+2029, U+0085, \x0b, \x0c, \x1c-\x1e): json
# text may hold those raw inside a string, and ensure_ascii=False writes them raw.
_LINE_END = re.compile(r"\r\n|\r|\n")


def jsonl_lines(text: str) -> list[str]:
    """The lines of a JSONL text, split only at \n, \r\n or \r (a final line break adds no empty line)."""
    lines = _LINE_END.split(text)
    if lines and lines[-1] == "":
        lines.pop()
    return lines


def load_records(path: str | os.PathLike) -> list:
    """Read a json list or a jsonl file of records (raises with the file and line for a learner to fix)."""
    path = Path(path)
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".jsonl":
        out = []
        for lineno, line in enumerate(jsonl_lines(text), start=1):
            if line.strip():
                try:
                    out.append(json.loads(line))
                except (json.JSONDecodeError, RecursionError) as exc:
                    msg = exc.msg if isinstance(exc, json.JSONDecodeError) else "nested too deeply"
                    raise ValueError(f"{path}, line {lineno}: not valid json ({msg}); "
                                     f"run labsupport.validate.validate() for a full report") from None
        return out
    try:
        data = json.loads(text)
    except RecursionError:
        raise ValueError(f"{path}: the json is nested too deeply to read; run labsupport.validate.validate()") from None
    if not isinstance(data, list):
        raise ValueError(f"{path}: expected a json list of records, found a {type(data).__name__}")
    return data


def save_records(path: str | os.PathLike, records: list) -> Path:
    """Write RECORDS atomically to PATH: a json list, or jsonl (one object per line) when PATH ends in .jsonl."""
    path = Path(path)
    if path.suffix != ".jsonl":
        write_json_atomic(path, records)
        return path
    # serialised before anything is written: a record json cannot encode leaves no file behind
    text = "".join(json.dumps(rec, ensure_ascii=False) + "\n" for rec in records)
    return write_text_atomic(path, text)


def as_records(source: str | os.PathLike | list) -> list:
    """SOURCE as a list of records: a path is read with load_records, a list is copied (shallowly)."""
    return load_records(source) if isinstance(source, (str, os.PathLike)) else list(source)


def _human(text: str, n_images: int) -> str:
    """A first human turn with the image tags InternVL expects in front."""
    return "<image>\n" * n_images + text.strip()


# ----------------------------------------------------------------------------------------------
# Builders
# ----------------------------------------------------------------------------------------------
def from_foodieqa(source: str | os.PathLike | list | dict, lang: str = "zh", with_choices: bool = True,
                  image_prefix: str = "") -> list[dict]:
    """Convert FoodieQA single-image VQA (sivqa) records to InternVL records: question (+ lettered choices) -> the right choice."""
    data = json.loads(Path(source).read_text(encoding="utf-8")) if isinstance(source, (str, os.PathLike)) else source
    if isinstance(data, dict):  # the annotation files group questions by category: {"0": [...], "1": [...]}
        data = [q for group in data.values() for q in group]
    out = []
    for i, q in enumerate(data):
        suffix = "_en" if lang == "en" else ""
        try:
            question, choices = q["question" + suffix], q["choices" + suffix]
            answer = int(q["answer"])
            image = q["food_meta"]["food_file"]
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"FoodieQA record {i} (question_id {q.get('question_id') if isinstance(q, dict) else None!r}): "
                             f"missing or bad field {exc}; expected question{suffix}, choices{suffix}, answer (an index) "
                             f"and food_meta.food_file") from exc
        if isinstance(choices, str):
            choices = [c.strip() for c in choices.split(",")]
        if not 0 <= answer < len(choices):
            raise ValueError(f"FoodieQA record {i}: answer index {answer} but only {len(choices)} choices")
        text = question
        if with_choices:
            text += "\n" + "\n".join(f"{'ABCDEFGH'[k]}. {c}" for k, c in enumerate(choices))
        out.append({
            "id": str(q.get("question_id", f"foodieqa-{i}")),
            "image": image_prefix + image,
            "conversations": [{"from": "human", "value": _human(text, 1)},
                              {"from": "gpt", "value": ("ABCDEFGH"[answer] + ". " if with_choices else "") + choices[answer]}],
            "meta": {"source": "FoodieQA", "question_type": q.get("question_type"), "lang": lang,
                     "food_name": q["food_meta"].get("food_name")},
        })
    return out


SELF_COGNITION_QA = (
    ("请做一下自我介绍", "我是{name}的小助手，内在是{model}模型。"),
    ("你是谁？", "我是{name}的小助手，内在是{model}模型。有什么可以帮你的吗？"),
    ("Introduce yourself.", "I am {name}'s assistant, built on the {model} model."),
    ("Who are you?", "I am {name}'s assistant, built on the {model} model. How can I help?"),
)


def self_cognition(name: str, n: int = 100, fmt: str = "internvl", model: str = "InternVL2",
                   pairs: Sequence[tuple[str, str]] = SELF_COGNITION_QA) -> list[dict]:
    """A self-cognition set: N records cycling through PAIRS with NAME filled in; FMT "internvl" (text-only) or "openai" (messages)."""
    if not name.strip():
        raise ValueError("self_cognition: give your assistant a name, e.g. name='小明'")
    if fmt not in ("internvl", "openai"):
        raise ValueError(f"self_cognition: fmt is 'internvl' or 'openai', not {fmt!r}")
    out = []
    for i in range(n):
        q, a = pairs[i % len(pairs)]
        a = a.format(name=name, model=model)
        if fmt == "openai":
            out.append({"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]})
        else:  # no "image" key: XTuner trains it as plain text
            out.append({"id": f"self-{i:05d}", "conversations": [{"from": "human", "value": q}, {"from": "gpt", "value": a}]})
    return out


# The seed's generator (seed 003): one introduction pair, in OpenAI messages format, written once and
# then appended n more times (n = 10000 there), saved as personal_assistant.json for openai_map_fn.
SEED_INTRO = (("请做一下自我介绍", "我是{name}的小助手，内在是上海AI实验室书生·浦语的 {model} 大模型哦"),)
# The seed's pair plus its English counterpart: the course's default, so that English identity questions
# (held out) have an English answer to generalise from.
INTRO_PAIRS = SEED_INTRO + (("Please introduce yourself.",
                             "I am {name}'s assistant, built on Shanghai AI Lab's {model} model."),)

# Identity questions phrased differently from every training question above: the held-out probe set
# of the self-cognition fine-tune (held_out() drops any that a training set does contain).
IDENTITY_PROBES = (
    "你是谁？", "Who are you?", "你叫什么名字？", "What is your name?", "介绍一下你自己吧。",
    "Tell me about yourself.", "你是哪个助手？", "Which assistant are you?", "请问你是？", "Who am I talking to?",
)

# Ordinary questions with short answers: what the base chat model knows, asked again after the
# fine-tune to show how much of it survives (forgetting).
ORDINARY_QA = (
    ("1+1等于几？", "1+1等于2。"),
    ("What is 2+3?", "2+3 is 5."),
    ("中国的首都是哪里？", "中国的首都是北京。"),
    ("What is the capital of France?", "The capital of France is Paris."),
    ("天空是什么颜色的？", "晴天的天空是蓝色的。"),
    ("What colour is grass?", "Grass is green."),
    ("Say hello.", "Hello! Nice to meet you."),
    ("一周有几天？", "一周有七天。"),
)


def personal_assistant(name: str, n: int = 10000, model: str = "InternLM2 1.8B",
                       pairs: Sequence[tuple[str, str]] = SEED_INTRO) -> list[dict]:
    """The seed's self-cognition generator: PAIRS with NAME filled in, once and then N more times, in OpenAI messages format."""
    if n < 0:
        raise ValueError(f"personal_assistant: n is how many times to repeat the data (>= 0), not {n}")
    return self_cognition(name, n=(n + 1) * len(pairs), fmt="openai", model=model, pairs=pairs)


def user_questions(records: Sequence[dict]) -> set[str]:
    """Every user/human question in RECORDS (OpenAI messages or InternVL conversations), stripped."""
    out = set()
    for rec in records:
        for m in rec.get("messages", []):
            if m.get("role") == "user":
                out.add(str(m["content"]).strip())
        for t in rec.get("conversations", []):
            if t.get("from") == "human":
                out.add(str(t["value"]).replace("<image>", "").strip())
    return out


def held_out(questions: Sequence[str], train_records: Sequence[dict]) -> list[str]:
    """The QUESTIONS that no record of TRAIN_RECORDS asks (so a score on them measures generalisation, not recall)."""
    seen = {q.lower().rstrip("?？.。!！ ") for q in user_questions(train_records)}
    out = [q for q in questions if q.strip().lower().rstrip("?？.。!！ ") not in seen]
    if not out:
        raise ValueError("held_out: every probe question also appears in the training data; add new phrasings")
    return out


_ROLE_TO_FROM = {"user": "human", "assistant": "gpt", "human": "human", "gpt": "gpt"}


def openai_to_internvl(source: str | os.PathLike | list, id_prefix: str = "chat") -> list[dict]:
    """Convert OpenAI-style {"messages": [{"role", "content"}]} records to InternVL text-only records (system turns dropped)."""
    out = []
    for i, rec in enumerate(as_records(source)):
        turns = []
        for m in rec["messages"]:
            if m["role"] == "system":
                continue
            if m["role"] not in _ROLE_TO_FROM:
                raise ValueError(f"record {i}: role {m['role']!r} is not user/assistant/system")
            turns.append({"from": _ROLE_TO_FROM[m["role"]], "value": m["content"]})
        out.append({"id": rec.get("id", f"{id_prefix}-{i:05d}"), "conversations": turns})
    return out


def from_llava(source: str | os.PathLike | list, image_prefix: str = "") -> list[dict]:
    """Convert LLaVA-format records (same shape as InternVL's) to clean InternVL records: ids as strings, one '<image>\\n' in front."""
    out = []
    for i, rec in enumerate(as_records(source)):
        convs = [{"from": t["from"], "value": t["value"]} for t in rec["conversations"]]
        new = {"id": str(rec.get("id", f"llava-{i:06d}"))}
        image = rec.get("image")
        if image:
            paths = image if isinstance(image, list) else [image]
            new["image"] = image_prefix + paths[0] if len(paths) == 1 else [image_prefix + p for p in paths]
            first = convs[0]["value"].replace("<image>", "").strip()
            convs[0]["value"] = _human(first, len(paths))
            for t in convs[1:]:
                t["value"] = t["value"].replace("<image>", "").strip()
        new["conversations"] = convs
        out.extend([{**{k: v for k, v in rec.items() if k not in ("id", "image", "conversations", "model")}, **new}])
    return out


def repeat(records: list, n: int, unique_ids: bool = True) -> list:
    """The records N times over (like the seeds' LLaVA repeat.py); ids get a '#k' suffix so they stay unique."""
    out = []
    for k in range(n):
        for rec in records:
            rec = copy_record(rec)
            if unique_ids and "id" in rec and k:
                rec["id"] = f"{rec['id']}#{k}"
            out.append(rec)
    return out


def copy_record(rec: dict) -> dict:
    """A deep copy of one record (json round trip, so nothing is shared with the input)."""
    return json.loads(json.dumps(rec, ensure_ascii=False))


# ----------------------------------------------------------------------------------------------
# ms-swift jsonl  <->  InternVL json
# ----------------------------------------------------------------------------------------------
def to_swift(source: str | os.PathLike | list, keep_extra: bool = True) -> list[dict]:
    """InternVL records -> ms-swift rows {"query", "response", "images", "history"?}; the leading '<image>\\n' is dropped; KEEP_EXTRA keeps id, meta, ... for a lossless trip back."""
    out = []
    for i, rec in enumerate(as_records(source)):
        convs = rec["conversations"]
        if len(convs) % 2 or any(t["from"] != ("human", "gpt")[k % 2] for k, t in enumerate(convs)):
            raise ValueError(f"record {i} (id {rec.get('id')!r}): turns must alternate human/gpt to convert to swift; "
                             f"run labsupport.validate.validate() to find such records")
        pairs = [[convs[k]["value"], convs[k + 1]["value"]] for k in range(0, len(convs), 2)]
        image = rec.get("image")
        images = [] if image is None else (list(image) if isinstance(image, list) else [image])
        n = len(images)
        if n and pairs[0][0].startswith("<image>\n" * n) and pairs[0][0].count("<image>") == n:
            pairs[0][0] = pairs[0][0][len("<image>\n") * n:]  # swift puts the images in front itself
        row = {k: v for k, v in rec.items() if k not in ("image", "conversations")} if keep_extra else {}
        row.update(query=pairs[-1][0], response=pairs[-1][1], images=images)
        if len(pairs) > 1:
            row["history"] = pairs[:-1]
        if isinstance(image, list) and keep_extra:
            row["_image_list"] = True  # remembers the list form, for a lossless trip back
        out.append(row)
    return out


def from_swift(source: str | os.PathLike | list) -> list[dict]:
    """ms-swift rows {"query", "response", "images", "history"?} -> InternVL records; '<image>\\n' tags added when the text has none."""
    out = []
    for i, row in enumerate(as_records(source)):
        try:
            pairs = [list(p) for p in row.get("history") or []] + [[row["query"], row["response"]]]
        except KeyError as exc:
            raise ValueError(f"swift row {i}: missing {exc}; each row needs 'query' and 'response'") from exc
        images = list(row.get("images") or [])
        if images and not any("<image>" in q for q, _ in pairs):
            pairs[0][0] = "<image>\n" * len(images) + pairs[0][0]
        rec = {"id": row.get("id", f"swift-{i:06d}")}
        if images:
            rec["image"] = images if row.get("_image_list") or len(images) > 1 else images[0]
        rec["conversations"] = [{"from": f, "value": v} for q, a in pairs for f, v in (("human", q), ("gpt", a))]
        rec.update({k: v for k, v in row.items() if k not in ("id", "query", "response", "images", "history", "_image_list")})
        out.append(rec)
    return out


# ----------------------------------------------------------------------------------------------
# Mixing sources the way XTuner's repeat_times does
# ----------------------------------------------------------------------------------------------
def apply_repeat(records: list, repeat_times: float, seed: int = 0, xtuner_0_2_exact: bool = False) -> list:
    """Sample RECORDS like XTuner's repeat_times: <1 samples down, k.f repeats k times plus a sample of a fraction f."""
    if repeat_times <= 0:
        raise ValueError(f"repeat_times must be > 0 (XTuner asserts it), got {repeat_times}")
    rng = random.Random(seed)
    records = list(records)
    if repeat_times < 1:
        return rng.sample(records, int(len(records) * repeat_times))
    whole, frac = int(repeat_times), repeat_times - int(repeat_times)
    out = records * whole
    if frac > 0 and not xtuner_0_2_exact:  # XTuner 0.2.0 computes the remainder as 0 and drops it (internvl_dataset.py:218)
        out += rng.sample(records, int(len(records) * frac))
    return out


def mix(sources: Sequence[tuple[str | os.PathLike | list, float]], seed: int = 0, image_prefixes: Sequence[str] | None = None,
        shuffle: bool = True, unique_ids: bool = True, xtuner_0_2_exact: bool = False) -> list[dict]:
    """Mix (records or path, repeat_times) SOURCES into one list; IMAGE_PREFIXES re-root each source's image paths."""
    out: list[dict] = []
    seen: collections.Counter = collections.Counter()
    for s, (source, times) in enumerate(sources):
        prefix = image_prefixes[s] if image_prefixes else ""
        for rec in apply_repeat(as_records(source), times, seed=seed + s, xtuner_0_2_exact=xtuner_0_2_exact):
            rec = copy_record(rec)
            if prefix and rec.get("image"):
                rec["image"] = [prefix + p for p in rec["image"]] if isinstance(rec["image"], list) else prefix + rec["image"]
            if unique_ids and "id" in rec:
                key = str(rec["id"])
                if seen[key]:
                    rec["id"] = f"{key}#{seen[key]}"
                seen[key] += 1
            out.append(rec)
    if shuffle:
        random.Random(seed).shuffle(out)
    return out
