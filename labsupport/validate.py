"""Validate an InternVL/XTuner fine-tuning file (json or jsonl): one named problem per bad record, with the fix.

    report = validate("train.json", image_root="data/", tokenizer=tok, max_length=2048)
    print(report)                          # a summary and one line per problem
    report.write_clean("train.clean.json")  # the records without errors, written atomically to a NEW file

The input file is only ever read. Errors make a record unusable (it is left out of the clean file);
warnings point at something that trains, but probably not the way you meant.
"""
from __future__ import annotations

import collections
import json
import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

from labsupport.datasets import TOKENS_PER_TILE, count_tiles, progress_bar, save_records

ERROR, WARNING = "error", "warning"
ROLES = ("human", "gpt")

# kind -> (severity, what to do about it). Every problem the validator can report is listed here.
KINDS: dict[str, tuple[str, str]] = {
    "unreadable_file": (ERROR, "check the path; the file must exist and be readable"),
    "bad_json": (ERROR, "fix the json syntax at the line and column given (a missing comma or bracket, or a trailing comma)"),
    "bad_jsonl_line": (ERROR, "make this line one complete json object (jsonl = one record per line)"),
    "not_a_list": (ERROR, "a .json file must hold a list of records: [ {...}, {...} ]"),
    "not_a_record": (ERROR, "each record must be a json object with 'id', 'image' and 'conversations'"),
    "non_utf8_text": (ERROR, "save the file as UTF-8 (the bytes or \\ud800-style escapes given are not valid text)"),
    "replacement_char": (WARNING, "the text holds '\ufffd', the mark of an earlier bad decoding: re-export the source as UTF-8"),
    "missing_key": (ERROR, "add the missing key"),
    "missing_id": (WARNING, "give every record a unique 'id' so problems and results can be traced back"),
    "non_string": (ERROR, "ids, image paths, 'from' and 'value' must be json strings"),
    "unknown_role": (ERROR, "'from' must be 'human' or 'gpt' (convert 'user'/'assistant' with labsupport.datasets)"),
    "role_order": (ERROR, "turns must alternate human, gpt, human, gpt ... and end with gpt"),
    "empty_turn": (ERROR, "write the turn's text, or drop the record"),
    "image_tag_count": (ERROR, "put exactly one '<image>' per image in the human turns (none for a text-only record)"),
    "image_tag_position": (WARNING, "start the first human turn with '<image>\\n', as InternVL's data does"),
    "too_many_images": (ERROR, "XTuner 0.2.0's InternVL dataset takes one image per record: split the record"),
    "duplicate_id": (ERROR, "ids must be unique: renumber the duplicates"),
    "path_outside_root": (ERROR, "image paths must be relative and stay inside image_root (no '..', no absolute paths)"),
    "image_missing": (ERROR, "copy the image into image_root, or fix the path (it is relative to image_root)"),
    "image_empty": (ERROR, "the image file has zero bytes or a zero side: re-export it"),
    "image_unreadable": (ERROR, "the file is not an image PIL can open: re-export it as JPEG or PNG"),
    "image_truncated": (ERROR, "the image file is cut short (an interrupted download or copy): copy it again"),
    "image_aspect": (ERROR, "the image is a thin strip: crop or pad it to a sensible aspect ratio"),
    "image_tiny": (WARNING, "the image is smaller than one 14-pixel patch grid would resolve: use a larger one"),
    "image_wh_mismatch": (WARNING, "'image_wh' disagrees with the real size: fix or delete it (XTuner uses it to group lengths)"),
    "too_long": (ERROR, "shorten the text, lower max_num (fewer tiles) or raise max_length; XTuner would cut it off"),
}


@dataclass
class Problem:
    """One problem: which file and record, what kind, what is wrong and how to fix it."""

    file: str
    index: int | None  # position of the record (0-based; the line number - 1 in a jsonl file); None = the whole file
    id: str | None
    kind: str
    message: str
    severity: str = ERROR
    fix: str = ""

    def __str__(self) -> str:
        where = "whole file" if self.index is None else f"record {self.index}" + (f" (id {self.id!r})" if self.id is not None else "")
        return f"[{self.severity}] {Path(self.file).name}, {where}: {self.kind}: {self.message} -> {self.fix}"


@dataclass
class Report:
    """The result of validate(): the records read, the problems found, the token lengths measured."""

    file: str
    image_root: str
    records: list[Any] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    lengths: dict[int, int] = field(default_factory=dict)  # record index -> tokens (text + image), when a tokenizer was given
    fmt: str = "json"

    @property
    def ok(self) -> bool:
        """True when no problem is an error."""
        return not any(p.severity == ERROR for p in self.problems)

    @property
    def bad_indices(self) -> set[int]:
        """Indices of the records with at least one error."""
        return {p.index for p in self.problems if p.severity == ERROR and p.index is not None}

    def counts(self) -> dict[str, int]:
        """Number of problems of each kind."""
        return dict(collections.Counter(p.kind for p in self.problems))

    def by_record(self) -> dict[int | None, list[Problem]]:
        """The problems grouped by record index (None = whole file)."""
        out: dict[int | None, list[Problem]] = collections.defaultdict(list)
        for p in self.problems:
            out[p.index].append(p)
        return dict(out)

    def rows(self) -> list[dict]:
        """The problems as plain dicts (for a table or json)."""
        return [asdict(p) for p in self.problems]

    def summary(self) -> str:
        """A few lines: records, errors, warnings, problems by kind."""
        n_err = sum(p.severity == ERROR for p in self.problems)
        lines = [f"{self.file}: {len(self.records)} records, {len(self.bad_indices)} with errors, "
                 f"{n_err} errors, {len(self.problems) - n_err} warnings"]
        lines += [f"  {kind:20s} {n}" for kind, n in sorted(self.counts().items())]
        return "\n".join(lines)

    def __str__(self) -> str:
        return "\n".join([self.summary()] + [str(p) for p in self.problems])

    def clean_records(self) -> list[Any]:
        """The records without errors (warnings kept), unchanged."""
        if any(p.index is None and p.severity == ERROR for p in self.problems):
            return []
        bad = self.bad_indices
        return [r for i, r in enumerate(self.records) if i not in bad]

    def write_clean(self, path: str | os.PathLike) -> Path:
        """Write the records without errors to a NEW file PATH (json or jsonl by its suffix), atomically."""
        path = Path(path)
        if path.resolve() == Path(self.file).resolve():
            raise ValueError(f"write_clean: refusing to overwrite the input {self.file}; choose a new file name")
        return save_records(path, self.clean_records())


def _has_surrogate(text: str) -> bool:
    return any("\ud800" <= ch <= "\udfff" for ch in text)


def _strings(obj: Any):
    if isinstance(obj, str):
        yield obj
    elif isinstance(obj, dict):
        for k, v in obj.items():
            yield from _strings(k)
            yield from _strings(v)
    elif isinstance(obj, list):
        for v in obj:
            yield from _strings(v)


def count_text_tokens(tokenizer: Any, text: str) -> int:
    """Tokens of TEXT with an HF tokenizer (transformers) or a `tokenizers.Tokenizer`."""
    # Lone surrogates (reported as non_utf8_text) would make a fast tokenizer raise: count them as "?".
    text = text.encode("utf-8", "replace").decode("utf-8")
    if hasattr(tokenizer, "encode") and not callable(getattr(tokenizer, "__call__", None)):
        return len(tokenizer.encode(text).ids)
    # verbose=False (transformers tokenizers): measuring a too-long text is the point; their "Token indices sequence
    # length is longer than the specified maximum" warning is not
    quiet = {"verbose": False} if hasattr(tokenizer, "model_max_length") else {}
    try:
        out = tokenizer(text, add_special_tokens=False, **quiet)
        return len(out["input_ids"])
    except TypeError:
        enc = tokenizer.encode(text)
        return len(enc.ids if hasattr(enc, "ids") else enc)


def read_records(json_path: str | os.PathLike) -> tuple[list[Any], list[Problem], str]:
    """Read a json/jsonl file without judging records: (records, file-level problems, "json" or "jsonl")."""
    path = str(json_path)
    fmt = "jsonl" if path.endswith(".jsonl") else "json"
    problems: list[Problem] = []

    def problem(kind: str, message: str, index: int | None = None) -> None:
        problems.append(Problem(path, index, None, kind, message, KINDS[kind][0], KINDS[kind][1]))

    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        problem("unreadable_file", f"cannot read it ({type(exc).__name__}: {exc})")
        return [], problems, fmt
    text = raw.decode("utf-8", errors="surrogateescape")  # bad bytes survive as surrogates, reported per record
    if fmt == "json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            problem("bad_json", f"not valid json: {exc.msg} at line {exc.lineno}, column {exc.colno}")
            return [], problems, fmt
        if not isinstance(data, list):
            problem("not_a_list", f"the top level is a {type(data).__name__}, not a list")
            return [], problems, fmt
        return data, problems, fmt
    records: list[Any] = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as exc:
            problem("bad_jsonl_line", f"line {lineno} is not valid json: {exc.msg} at column {exc.colno}", len(records))
            records.append(None)  # keep the place, so indices stay record positions
    return records, problems, fmt


def validate(json_path: str | os.PathLike, image_root: str | os.PathLike, tokenizer: Any = None,
             max_length: int | None = None, max_num: int = 6, count_tiles_fn: Callable[[int, int, int], int] | None = None,
             max_aspect: float = 12.0, check_images: bool = True, progress: bool = True,
             clean_to: str | os.PathLike | None = None, template_tokens: int = 0) -> Report:
    """Check every record of an InternVL/XTuner json or jsonl file and its images; never modifies the input.

    A sample's length = its text tokens + 256 per tile (+2 for <img></img>) per image + TEMPLATE_TOKENS, the tokens
    the chat template adds (XTuner's InternVL dataset prepends a system prompt and role markers).
    """
    path = str(json_path)
    root = Path(image_root).resolve()
    tiles_of = count_tiles_fn or count_tiles
    records, problems, fmt = read_records(path)
    report = Report(path, str(root), records, problems, fmt=fmt)
    seen_ids: dict[str, int] = {}
    image_cache: dict[Path, tuple[str | None, str, tuple[int, int] | None]] = {}

    for index, rec in enumerate(progress_bar(records, f"validating {Path(path).name}", enable=progress and len(records) > 200)):
        if rec is None:  # a jsonl line that did not parse: already reported
            continue
        rid = rec.get("id") if isinstance(rec, dict) else None
        rid_text = str(rid) if rid is not None and not isinstance(rid, (dict, list)) else None

        def add(kind: str, message: str) -> None:
            sev, fix = KINDS[kind]
            problems.append(Problem(path, index, rid_text, kind, message, sev, fix))

        if not isinstance(rec, dict):
            add("not_a_record", f"it is a {type(rec).__name__}, not an object")
            continue
        bad_text = [s for s in _strings(rec) if _has_surrogate(s)]
        if bad_text:
            sample = "".join(f"<byte 0x{ord(ch) - 0xDC00:02x}>" if "\udc80" <= ch <= "\udcff" else
                             f"<lone \\u{ord(ch):04x}>" if "\ud800" <= ch <= "\udfff" else ch for ch in bad_text[0])[:80]
            add("non_utf8_text", f"{len(bad_text)} string(s) are not valid UTF-8, e.g. {sample!r}")
        if any("\ufffd" in s for s in _strings(rec)):
            add("replacement_char", "a string holds the replacement character U+FFFD")
        # id
        if rid is None:
            add("missing_id", "the record has no 'id'")
        elif not isinstance(rid, (str, int)) or isinstance(rid, bool):
            add("non_string", f"'id' is a {type(rid).__name__}")
        elif str(rid) in seen_ids:
            add("duplicate_id", f"id {rid!r} was already used by record {seen_ids[str(rid)]}")
        else:
            seen_ids[str(rid)] = index
        # images
        images: list = []
        image = rec.get("image")
        if image is not None:
            images = image if isinstance(image, list) else [image]
            if not all(isinstance(x, str) for x in images):
                add("non_string", f"'image' must be a path or a list of paths, got {image!r:.60}")
                images = [x for x in images if isinstance(x, str)]
            if len(images) > 1:
                add("too_many_images", f"{len(images)} images in one record")
        # conversations
        convs = rec.get("conversations")
        n_tags: int | None = 0
        text_parts: list[str] = []
        if convs is None:
            n_tags = None  # nothing to count the tags in
            add("missing_key", "no 'conversations'")
        elif not isinstance(convs, list) or not all(isinstance(t, dict) for t in convs):
            n_tags = None
            add("non_string" if isinstance(convs, str) else "missing_key", "'conversations' must be a list of {'from', 'value'} objects")
        else:
            for t_i, turn in enumerate(convs):
                for key in ("from", "value"):
                    if key not in turn:
                        add("missing_key", f"turn {t_i} has no '{key}'")
                role, value = turn.get("from"), turn.get("value")
                if role is not None and not isinstance(role, str) or value is not None and not isinstance(value, str):
                    add("non_string", f"turn {t_i}: 'from' and 'value' must be strings, got {type(role).__name__}, {type(value).__name__}")
                    continue
                if role is not None and role not in ROLES:
                    add("unknown_role", f"turn {t_i} is from {role!r}")
                if value is not None:
                    if not value.strip() or value.replace("<image>", "").strip() == "" and role == "gpt":
                        add("empty_turn", f"turn {t_i} ({role}) is empty")
                    n_tags += value.count("<image>")
                    if "<image>" in value and (role != "human" or t_i != 0):
                        add("image_tag_position", f"'<image>' appears in turn {t_i} ({role}), not in the first human turn")
                    text_parts.append(value.replace("<image>", ""))
            roles = [t.get("from") for t in convs]
            if not convs:
                add("empty_turn", "'conversations' is empty")
            elif all(r in ROLES for r in roles) and (any(r != ROLES[i % 2] for i, r in enumerate(roles)) or len(roles) % 2):
                add("role_order", f"the roles are {roles}")
            if images and convs and isinstance(convs[0].get("value"), str) and convs[0]["value"].count("<image>") == 1 \
                    and not convs[0]["value"].startswith("<image>"):
                add("image_tag_position", "the first human turn does not start with '<image>'")
        if n_tags is not None and n_tags != len(images) and (images or n_tags):
            add("image_tag_count", f"{n_tags} '<image>' tag(s) for {len(images)} image(s)")
        # image files
        sizes: list[tuple[int, int]] = []
        for rel in images if check_images else []:
            full = (root / rel).resolve()
            if os.path.isabs(rel) or (full != root and root not in full.parents):
                add("path_outside_root", f"{rel!r} leads outside {root}")
                continue
            if full not in image_cache:
                image_cache[full] = _check_image(full, max_aspect)
            kind, message, size = image_cache[full]
            if kind:
                add(kind, f"{rel}: {message}")
            if size:
                sizes.append(size)
        wh = rec.get("image_wh")
        if sizes and isinstance(wh, list) and wh:
            wh0 = wh[0] if isinstance(wh[0], list) else wh
            if list(wh0) != list(sizes[0]):
                add("image_wh_mismatch", f"image_wh is {wh0}, the image is {list(sizes[0])}")
        # length in tokens
        if tokenizer is not None and text_parts is not None and convs is not None:
            n = template_tokens + sum(count_text_tokens(tokenizer, t) for t in text_parts)
            n += sum(TOKENS_PER_TILE * tiles_of(w, h, max_num) + 2 for w, h in sizes)  # +2: <img> and </img>
            report.lengths[index] = n
            if max_length is not None and n > max_length:
                add("too_long", f"{n} tokens (text + image, max_num={max_num}) > max_length {max_length}")
    if clean_to is not None:
        report.write_clean(clean_to)
    return report


def _check_image(full: Path, max_aspect: float) -> tuple[str | None, str, tuple[int, int] | None]:
    """(problem kind or None, message, (width, height) or None) for one image file."""
    from PIL import Image, UnidentifiedImageError

    if not full.is_file():
        return "image_missing", "no such file", None
    if full.stat().st_size == 0:
        return "image_empty", "the file has 0 bytes", None
    try:
        with Image.open(full) as im:
            size = im.size
            im.load()  # decodes every pixel: a cut-off file fails here
    except UnidentifiedImageError:
        return "image_unreadable", "PIL cannot identify the file as an image", None
    except (OSError, SyntaxError, ValueError) as exc:
        return "image_truncated", f"cannot be decoded ({exc})", None
    w, h = size
    if w == 0 or h == 0:
        return "image_empty", f"size {w}x{h}", None
    if max(w, h) / min(w, h) > max_aspect:
        return "image_aspect", f"size {w}x{h}, aspect ratio {max(w, h) / min(w, h):.1f} > {max_aspect}", (w, h)
    if min(w, h) < 28:
        return "image_tiny", f"size {w}x{h}", (w, h)
    return None, "", (w, h)


def _write_text_atomic(path: Path, text: str, errors: str = "strict") -> None:
    fd, tmp = tempfile.mkstemp(prefix=path.name, suffix=".tmp", dir=path.parent)
    with os.fdopen(fd, "wb") as fh:
        fh.write(text.encode("utf-8", errors=errors))
    os.replace(tmp, path)


def make_broken_copy(json_path: str | os.PathLike, image_root: str | os.PathLike, out_dir: str | os.PathLike,
                     n_good: int = 20, max_length: int = 4096) -> dict:
    """Copy N_GOOD records (and their images) to OUT_DIR, then plant one bad record of each kind; returns paths and where each problem is."""
    from PIL import Image

    from labsupport.datasets import copy_record, load_records

    out, root = Path(out_dir), Path(image_root)
    (out / "images").mkdir(parents=True, exist_ok=True)
    good = [copy_record(r) for r in load_records(json_path)[:n_good]]
    if not good or not isinstance(good[0].get("image"), str):
        raise ValueError(f"make_broken_copy: {json_path} needs records with one image each to copy from")
    for rec in good:
        dest = out / "images" / Path(rec["image"]).name
        dest.write_bytes((root / rec["image"]).read_bytes())
        rec["image"] = f"images/{dest.name}"
    base = good[0]
    full = (out / base["image"]).read_bytes()
    (out / "images" / "empty.jpg").write_bytes(b"")
    (out / "images" / "notes.jpg").write_text("this is text, not a picture\n")
    (out / "images" / "cut.jpg").write_bytes(full[: len(full) // 3])
    Image.new("RGB", (2000, 60), (90, 70, 50)).save(out / "images" / "strip.jpg")
    Image.new("RGB", (16, 16), (200, 30, 30)).save(out / "images" / "tiny.jpg")

    def bad(kind: str, change: Callable[[dict], Any]) -> tuple[str, Any]:
        rec = copy_record(base)
        rec["id"] = f"broken-{kind}"
        rec.pop("image_wh", None)  # so that only the planted problem shows
        result = change(rec)
        return kind, rec if result is None else result

    first_human = lambda r: r["conversations"][0]  # noqa: E731
    answer = lambda r: r["conversations"][1]  # noqa: E731
    planted = [
        bad("not_a_record", lambda r: "a string where a record should be"),
        bad("missing_key", lambda r: r.pop("conversations") and None),
        bad("missing_id", lambda r: r.pop("id") and None),
        bad("non_string", lambda r: answer(r).update(value=4)),
        bad("unknown_role", lambda r: answer(r).update({"from": "assistant"})),
        bad("role_order", lambda r: r["conversations"].reverse()),
        bad("empty_turn", lambda r: answer(r).update(value="")),
        bad("image_tag_count", lambda r: first_human(r).update(value=first_human(r)["value"].replace("<image>\n", ""))),
        bad("image_tag_position", lambda r: first_human(r).update(value=first_human(r)["value"].replace("<image>\n", "") + "\n<image>")),
        bad("too_many_images", lambda r: (r.update(image=[base["image"], good[1]["image"]]),
                                          first_human(r).update(value="<image>\n" + first_human(r)["value"])) and None),
        bad("duplicate_id", lambda r: r.update(id=base["id"])),
        bad("path_outside_root", lambda r: r.update(image="../" + Path(json_path).name)),
        bad("image_missing", lambda r: r.update(image="images/not-there.jpg")),
        bad("image_empty", lambda r: r.update(image="images/empty.jpg")),
        bad("image_unreadable", lambda r: r.update(image="images/notes.jpg")),
        bad("image_truncated", lambda r: r.update(image="images/cut.jpg")),
        bad("image_aspect", lambda r: r.update(image="images/strip.jpg")),
        bad("image_tiny", lambda r: r.update(image="images/tiny.jpg")),
        bad("image_wh_mismatch", lambda r: r.update(image_wh=[123, 45])),
        bad("non_utf8_text", lambda r: answer(r).update(value=answer(r)["value"] + "\udcff")),
        bad("replacement_char", lambda r: answer(r).update(value="\ufffd" + answer(r)["value"])),
        bad("too_long", lambda r: answer(r).update(value=" ".join(["very long answer"] * max_length))),
    ]
    records = list(good)
    where: dict[str, int] = {}
    for kind, rec in planted:
        where[kind] = len(records)
        records.insert(len(records), rec)
    # json: ensure_ascii escapes the lone surrogate as \udcff, which a json reader accepts but is not text
    paths = {"image_root": out, "json": out / "broken.json", "jsonl": out / "broken.jsonl", "bad_syntax": out / "broken_syntax.json"}
    _write_text_atomic(paths["json"], json.dumps(records, indent=1))
    lines = [json.dumps(r, ensure_ascii=False) for r in good[:3]]
    lines.insert(1, json.dumps(good[3], ensure_ascii=False)[:-25])  # a line cut short
    raw_bad = copy_record(good[4])
    answer(raw_bad)["value"] += "\udcff"  # written below through surrogateescape: a raw byte 0xff
    lines.append(json.dumps(raw_bad, ensure_ascii=False))  # a raw byte 0xff: not UTF-8
    _write_text_atomic(paths["jsonl"], "\n".join(lines) + "\n", errors="surrogateescape")
    _write_text_atomic(paths["bad_syntax"], json.dumps(good[:2], indent=1).replace("}\n]", "},\n]"))
    return {**paths, "planted": where, "planted_jsonl": {"bad_jsonl_line": 1, "non_utf8_text": 4}, "planted_syntax": "bad_json"}
