"""Datasets in InternVL's fine-tuning format: read and write json/jsonl, convert other formats, repeat and mix.

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
import contextlib
import json
import os
import random
import re
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

from labsupport.core import tiling
from labsupport.core.checkpoints import write_json_atomic, write_text_atomic
from labsupport.core.progress import bar
from labsupport.datasets.safe_read import DataFileError, data_text, parse_json



def progress_bar(items: Iterable, desc: str, enable: bool = True, total: int | None = None) -> Iterable:
    """Wrap ITEMS in a progress display when ENABLE: a live bar for a person, a summary line in a saved notebook."""

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
    """Read a json list or a jsonl file of records (raises ValueError naming the file, the line and the fix)."""
    path = Path(path)
    text = data_text(path)  # stat first (no FIFO, device or huge file), encodings named, a BOM dropped
    if path.suffix == ".jsonl":
        out = []
        for lineno, line in enumerate(jsonl_lines(text), start=1):
            if line.strip():
                try:
                    out.append(parse_json(line, path, line_offset=lineno - 1))
                except DataFileError as exc:
                    raise DataFileError(exc.kind, f"{exc}; run labsupport.datasets.validate.validate() for a full report") from None
        return out
    data = parse_json(text, path)
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


class ConversionError(ValueError):
    """A record a converter cannot convert; the message names the file, the record and what that format needs."""


@contextlib.contextmanager
def converting(source: object, index: int, rec: object, needs: str) -> Iterator[None]:
    """Turn a bare KeyError/IndexError/TypeError/AttributeError while converting record INDEX of SOURCE into a
    ConversionError naming the file, the record (and its id) and NEEDS, what the format's records hold."""
    try:
        yield
    except (KeyError, IndexError, TypeError, AttributeError) as exc:
        where = str(source) if isinstance(source, (str, os.PathLike)) else "the records given"
        rid = rec.get("id") if isinstance(rec, dict) else None
        what = (f"no key {exc.args[0]!r}" if isinstance(exc, KeyError) else
                "a list is empty or shorter than expected" if isinstance(exc, IndexError) else
                f"a field has the wrong type ({exc})")
        if not isinstance(rec, dict):
            what = f"the record is a {type(rec).__name__}, not a json object"
        raise ConversionError(f"{where}, record {index}" + (f" (id {rid!r})" if rid is not None else "")
                              + f": {what}; {needs}") from None


def _human(text: str, n_images: int) -> str:
    """A first human turn with the image tags InternVL expects in front."""
    return "<image>\n" * n_images + text.strip()


# ----------------------------------------------------------------------------------------------
# Builders
# ----------------------------------------------------------------------------------------------
def from_foodieqa(source: str | os.PathLike | list | dict, lang: str = "zh", with_choices: bool = True,
                  image_prefix: str = "") -> list[dict]:
    """Convert FoodieQA single-image VQA (sivqa) records to InternVL records: question (+ lettered choices) -> the right choice."""
    data = parse_json(data_text(source), source) if isinstance(source, (str, os.PathLike)) else source
    if isinstance(data, dict):  # the annotation files group questions by category: {"0": [...], "1": [...]}
        with converting(source, 0, data, 'FoodieQA files hold a list, or {"category": [records]}'):
            data = [q for group in data.values() for q in group]
    if not isinstance(data, list):
        raise ConversionError(f"{source if isinstance(source, (str, os.PathLike)) else 'the records given'}: a FoodieQA "
                              f"file holds a list of questions, not a {type(data).__name__}")
    out = []
    for i, q in enumerate(data):
        if not isinstance(q, dict):
            raise ConversionError(f"FoodieQA record {i} is a {type(q).__name__}, not a json object")
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
    needs = 'OpenAI chat records hold {"messages": [{"role": "user"|"assistant"|"system", "content": "..."}]}'
    for i, rec in enumerate(as_records(source)):
        with converting(source, i, rec, needs):
            turns = []
            for m in rec["messages"]:
                if m["role"] == "system":
                    continue
                if m["role"] not in _ROLE_TO_FROM:
                    raise ConversionError(f"record {i}: role {m['role']!r} is not user/assistant/system")
                if not isinstance(m["content"], str):
                    raise TypeError(f"'content' is a {type(m['content']).__name__}: only text messages convert")
                turns.append({"from": _ROLE_TO_FROM[m["role"]], "value": m["content"]})
            out.append({"id": rec.get("id", f"{id_prefix}-{i:05d}"), "conversations": turns})
    return out


def from_llava(source: str | os.PathLike | list, image_prefix: str = "") -> list[dict]:
    """Convert LLaVA-format records (same shape as InternVL's) to clean InternVL records: ids as strings, one '<image>\\n' in front."""
    out = []
    needs = 'LLaVA records hold "conversations": [{"from": "human", "value": "<image>\\n..."}, {"from": "gpt", ...}]'
    for i, rec in enumerate(as_records(source)):
        with converting(source, i, rec, needs):
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


FORMATS = {  # how a record of each format is recognised, in the order they are tried
    "internvl": ("conversations", 'InternVL/LLaVA: "conversations": [{"from": "human", "value": ...}, {"from": "gpt", ...}]'),
    "swift": ("query", 'ms-swift: "query", "response" (and "history", "images")'),
    "openai": ("messages", 'OpenAI chat: "messages": [{"role": ..., "content": ...}]'),
    "foodieqa": ("choices", 'FoodieQA: "question", "choices", "answer" (an index), "food_meta"'),
}


def detect_format(records: Sequence) -> tuple[str, str]:
    """The format of RECORDS (a key of FORMATS) judged by the first record, and why; ConversionError when none fits."""
    first = next((r for r in records if isinstance(r, dict)), None)
    for name, (key, shape) in FORMATS.items():
        if first is not None and key in first:
            return name, f"the first record has {key!r}: {shape}"
    keys = sorted(first)[:8] if first is not None else []
    raise ConversionError("no record format recognised (first record's keys: " + (", ".join(keys) or "none")
                          + "); the course converts " + "; ".join(shape for _, shape in FORMATS.values()))


def to_internvl(source: str | os.PathLike) -> tuple[list[dict], str, str]:
    """SOURCE (a .json or .jsonl file in any format of FORMATS) as InternVL records, with the format found and why."""
    path = Path(source)
    if path.suffix == ".json" and isinstance(parse_json(data_text(path), path), dict):  # FoodieQA's files by category
        return from_foodieqa(path), "foodieqa", "a json object of categories, each a list of FoodieQA questions"
    name, why = detect_format(load_records(path))
    convert = {"internvl": from_llava, "swift": from_swift, "openai": openai_to_internvl, "foodieqa": from_foodieqa}[name]
    return convert(path), name, why   # the path, not the records: a converter's errors then name the file


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
        with converting(source, i, rec, 'InternVL records hold "conversations": [{"from": "human"|"gpt", "value": ...}]'):
            out.append(_to_swift_row(i, rec, keep_extra))
    return out


def _to_swift_row(i: int, rec: dict, keep_extra: bool) -> dict:
    convs = rec["conversations"]
    if len(convs) % 2 or any(t["from"] != ("human", "gpt")[k % 2] for k, t in enumerate(convs)):
        raise ValueError(f"record {i} (id {rec.get('id')!r}): turns must alternate human/gpt to convert to swift; "
                         f"run labsupport.datasets.validate.validate() to find such records")
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
    return row


def from_swift(source: str | os.PathLike | list) -> list[dict]:
    """ms-swift rows {"query", "response", "images", "history"?} -> InternVL records; '<image>\\n' tags added when the text has none."""
    out = []
    for i, row in enumerate(as_records(source)):
        with converting(source, i, row, "each swift row needs 'query' and 'response' (and may hold 'history' "
                                        "[[q, a], ...] and 'images' [paths])"):
            out.append(_from_swift_row(i, row))
    return out


def _from_swift_row(i: int, row: dict) -> dict:
    pairs = [list(p) for p in row.get("history") or []] + [[row["query"], row["response"]]]
    if any(len(p) != 2 for p in pairs):
        raise IndexError("a history entry is not a [query, response] pair")
    images = row.get("images") or []
    images = [images] if isinstance(images, str) else list(images)  # "plate.jpg" is one path, not nine
    if images and not any("<image>" in q for q, _ in pairs):
        pairs[0][0] = "<image>\n" * len(images) + pairs[0][0]
    rec = {"id": row.get("id", f"swift-{i:06d}")}
    if images:
        rec["image"] = images if row.get("_image_list") or len(images) > 1 else images[0]
    rec["conversations"] = [{"from": f, "value": v} for q, a in pairs for f, v in (("human", q), ("gpt", a))]
    rec.update({k: v for k, v in row.items() if k not in ("id", "query", "response", "images", "history", "_image_list")})
    return rec


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
        for i, rec in enumerate(apply_repeat(as_records(source), times, seed=seed + s, xtuner_0_2_exact=xtuner_0_2_exact)):
            if not isinstance(rec, dict):
                raise ConversionError(f"{source if isinstance(source, (str, os.PathLike)) else f'source {s}'}: a record "
                                      f"is a {type(rec).__name__}, not a json object")
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
