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
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

from labsupport.core.checkpoints import write_text_atomic
from labsupport.datasets.formats import TOKENS_PER_TILE, count_tiles, jsonl_lines, progress_bar, save_records
from labsupport.datasets.safe_read import MAX_DATA_BYTES, MAX_IMAGE_BYTES, encoding_problem, path_problem, stat_problem

ERROR, WARNING = "error", "warning"
ROLES = ("human", "gpt")
SUFFIXES = (".json", ".jsonl")  # XTuner 0.2.0's load_json_or_jsonl reads these two and refuses any other
IMG_CONTEXT, IMG_START, IMG_END = "<IMG_CONTEXT>", "<img>", "</img>"  # XTuner's image markers (special tokens)
# Chat-template markers of the LLMs InternVL2 uses: typed into data they become control tokens.
TEMPLATE_MARKERS = ("<|im_start|>", "<|im_end|>", "<|user|>", "<|assistant|>", "<|end|>", "<|system|>",
                    "<|endoftext|>", "</s>")
HIGH_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")  # PIL modes convert("RGB") clips to white/black
MAX_IMAGE_PIXELS = 89_478_485  # PIL's own decompression-bomb limit: above it XTuner's loader fails or warns

# kind -> (severity, what to do about it). Every problem the validator can report is listed here.
KINDS: dict[str, tuple[str, str]] = {
    "unreadable_file": (ERROR, "check the path; the file must exist and be readable"),
    "unsupported_suffix": (ERROR, "name the file *.json (a list of records) or *.jsonl (one record per line): XTuner reads only those"),
    "empty_file": (ERROR, "the file has no content: write the records into it (a .json file holds [ {...}, ... ])"),
    "empty_dataset": (ERROR, "the file holds no records: XTuner needs at least one to train on"),
    "utf16_file": (ERROR, "the file is UTF-16/32 text: save it as UTF-8, e.g. `iconv -f UTF-16 -t UTF-8 in.json > out.json`"),
    "compressed_file": (ERROR, "decompress or extract the json/jsonl file first, and validate that"),
    "nul_bytes": (ERROR, "delete the NUL bytes (`tr -d '\\000' < in > out`) and check the records near them"),
    "gbk_file": (ERROR, "convert the file to UTF-8: `iconv -f GB18030 -t UTF-8 in.json > out.json`"),
    "file_too_large": (ERROR, "split the file, or check that the path names the dataset (not a disk image or a device)"),
    "number_too_long": (ERROR, "a number has more than 4300 digits, more than Python reads: write it as a string or delete it"),
    "check_failed": (ERROR, "this record made the validator itself fail (please report it): fix or drop the record"),
    "image_unopenable": (ERROR, "rename the image (no control characters, names under 255 bytes) or fix the symlink, and "
                                "write the new path into the record"),
    "utf8_bom": (ERROR, "save the file as UTF-8 without a byte-order mark (XTuner's json reader stops at the BOM); write_clean() does it"),
    "bad_json": (ERROR, "fix the json syntax at the line and column given (a missing comma or bracket, or a trailing comma)"),
    "jsonl_in_json": (ERROR, "the file holds one record per line: rename it to .jsonl, or wrap the records in [ ... ] with commas"),
    "json_in_jsonl": (ERROR, "the file holds a json list: rename it to .json (jsonl wants one complete record per line)"),
    "too_deep": (ERROR, "the json is nested deeper than a json reader allows: records are flat objects with a list of turns"),
    "bad_jsonl_line": (ERROR, "make this line one complete json object (jsonl = one record per line)"),
    "blank_jsonl_line": (ERROR, "delete the empty line: XTuner's jsonl reader fails on it (write_clean() leaves it out)"),
    "not_a_list": (ERROR, "a .json file must hold a list of records: [ {...}, {...} ]"),
    "not_a_record": (ERROR, "each record must be a json object with 'id', 'image' and 'conversations'"),
    "non_utf8_text": (ERROR, "save the file as UTF-8 (the bytes or \\ud800-style escapes given are not valid text)"),
    "replacement_char": (WARNING, "the text holds '\ufffd', the mark of an earlier bad decoding: re-export the source as UTF-8"),
    "missing_key": (ERROR, "add the missing key"),
    "missing_id": (WARNING, "give every record a unique 'id' so problems and results can be traced back"),
    "non_string": (ERROR, "ids, image paths, 'from' and 'value' must be json strings (not null, numbers or lists)"),
    "bad_length": (ERROR, "'length' must be the sample's token count as an integer (XTuner groups batches by it), or delete the key"),
    "bad_image_wh": (ERROR, "'image_wh' must be [width, height] in pixels (positive numbers), or delete the key"),
    "unknown_role": (ERROR, "'from' must be 'human' or 'gpt' (convert 'user'/'assistant' with labsupport.datasets)"),
    "role_order": (ERROR, "turns must alternate human, gpt, human, gpt ... and end with gpt"),
    "empty_turn": (ERROR, "write the turn's text, or drop the record"),
    "image_tag_count": (ERROR, "put exactly one '<image>' per image in the human turns (none for a text-only record)"),
    "image_tag_in_answer": (ERROR, "move '<image>' from the gpt turn to the start of the first human turn: XTuner only "
                                   "replaces it in human turns, so the model would never see the image"),
    "image_tag_position": (WARNING, "start the first human turn with '<image>\\n', as InternVL's data does"),
    "reserved_token": (ERROR, "remove '<IMG_CONTEXT>' from the text: it is the image placeholder token, and a stray one "
                              "makes the image-token count disagree with the image (training stops)"),
    "template_marker": (WARNING, "remove chat-template markers such as '<|im_end|>' or '<img>' from the text: the tokenizer "
                                 "turns them into control tokens"),
    "too_many_images": (ERROR, "XTuner 0.2.0's InternVL dataset takes one image per record: split the record"),
    "no_images": (ERROR, "'image' is an empty list: give one path, or delete the key for a text-only record"),
    "duplicate_id": (ERROR, "ids must be unique: renumber the duplicates"),
    "path_outside_root": (ERROR, "image paths must be relative and stay inside image_root (no '..', no absolute paths)"),
    "image_missing": (ERROR, "copy the image into image_root, or fix the path (it is relative to image_root)"),
    "image_empty": (ERROR, "the image file has zero bytes or a zero side: re-export it"),
    "image_unreadable": (ERROR, "the file is not an image PIL can open: re-export it as JPEG or PNG"),
    "image_truncated": (ERROR, "the image file is cut short (an interrupted download or copy): copy it again"),
    "image_too_large": (ERROR, "the image has more pixels than PIL will safely decode (a decompression bomb or a huge scan): "
                               "downscale it, e.g. to at most 4096 pixels on the long side"),
    "image_high_bit_depth": (ERROR, "the image has 16/32-bit samples, which XTuner's convert('RGB') clips to white: save an "
                                    "8-bit copy, e.g. Image.fromarray((np.asarray(im) >> 8).astype('uint8'))"),
    "image_transparent": (ERROR, "every pixel is fully transparent (XTuner drops the alpha channel and shows the hidden "
                                 "colours): flatten it onto a background and save it as RGB"),
    "image_alpha": (WARNING, "part of the image is transparent; XTuner drops the alpha channel, so those parts show their "
                             "hidden colour (often black): flatten it onto a background"),
    "image_animated": (WARNING, "an animated image: XTuner uses its first frame only; save the frame you mean as PNG/JPEG"),
    "image_exif_rotated": (WARNING, "the camera's EXIF orientation says to rotate the image, which XTuner ignores (the model "
                                    "sees it sideways): save it upright, e.g. ImageOps.exif_transpose(im).save(...)"),
    "image_aspect": (ERROR, "the image is a thin strip: crop or pad it to a sensible aspect ratio"),
    "image_tiny": (WARNING, "the image is smaller than one 14-pixel patch grid would resolve: use a larger one"),
    "image_wh_mismatch": (WARNING, "'image_wh' disagrees with the real size: fix or delete it (XTuner uses it to group lengths)"),
    "xtuner_error": (ERROR, "XTuner's own dataset code failed on this record (the message says where): fix or drop it"),
    "too_long": (ERROR, "shorten the text, lower max_num (fewer tiles) or raise max_length; XTuner would cut it off"),
}
# Problems of the file as a whole (Problem.index is None); every other kind belongs to one record.
FILE_KINDS = ("unreadable_file", "unsupported_suffix", "empty_file", "empty_dataset", "utf16_file", "utf8_bom", "bad_json",
              "jsonl_in_json", "json_in_jsonl", "too_deep", "blank_jsonl_line", "not_a_list")
# File-level errors that write_clean() repairs by writing the records anew (the records themselves are fine).
FIXED_BY_CLEAN = ("utf8_bom", "blank_jsonl_line")


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
    def errors(self) -> list[Problem]:
        """The problems that are errors."""
        return [p for p in self.problems if p.severity == ERROR]

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
        n_rec = sum(r is not _UNPARSED for r in self.records)
        lines = [f"{self.file}: {n_rec} records, {len(self.bad_indices)} with errors, "
                 f"{n_err} errors, {len(self.problems) - n_err} warnings"]
        lines += [f"  {kind:20s} {n}" for kind, n in sorted(self.counts().items())]
        return "\n".join(lines)

    def __str__(self) -> str:
        return "\n".join([self.summary()] + [str(p) for p in self.problems])

    def clean_records(self) -> list[Any]:
        """The records without errors (warnings kept), unchanged."""
        if any(p.index is None and p.severity == ERROR and p.kind not in FIXED_BY_CLEAN for p in self.problems):
            return []
        bad = self.bad_indices
        return [r for i, r in enumerate(self.records) if i not in bad and r is not _UNPARSED]

    def write_clean(self, path: str | os.PathLike) -> Path:
        """Write the records without errors to a NEW file PATH (json or jsonl by its suffix), atomically."""
        path = Path(path)
        if path.resolve() == Path(self.file).resolve():
            raise ValueError(f"write_clean: refusing to overwrite the input {self.file}; choose a new file name")
        clean = self.clean_records()
        if not clean:
            raise ValueError(f"write_clean: no record of {self.file} is free of errors, so {path} was not written; "
                             f"fix the problems listed by print(report) first")
        return save_records(path, clean)


class _Unparsed:
    """Stands in for a jsonl line that did not parse (already reported), so indices stay record positions."""

    def __repr__(self) -> str:
        return "<unparsed line>"


_UNPARSED = _Unparsed()


def _has_surrogate(text: str) -> bool:
    return any("\ud800" <= ch <= "\udfff" for ch in text)


def _strings(obj: Any):
    """Every string in OBJ (keys too), walked without recursion (records may be nested deeply)."""
    stack = [obj]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            yield item
        elif isinstance(item, dict):
            for k, v in item.items():
                stack.append(v)
                stack.append(k)
        elif isinstance(item, list):
            stack.extend(reversed(item))


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


def _parse(text: str) -> tuple[Any, str | None, str | None]:
    """(value, problem kind, message) of one json text; never raises."""
    try:
        return json.loads(text), None, None
    except json.JSONDecodeError as exc:
        return None, "bad_json", f"{exc.msg} at line {exc.lineno}, column {exc.colno}"
    except RecursionError:
        return None, "too_deep", "brackets nested too deeply for a json reader (Python's stops near 1000 levels)"
    except ValueError as exc:  # Python's limit on int literals (4300 digits) raises a plain ValueError
        return None, "number_too_long", str(exc)[:120]


def read_records(json_path: str | os.PathLike, max_bytes: int = MAX_DATA_BYTES) -> tuple[list[Any], list[Problem], str]:
    """Read a json/jsonl file (at most MAX_BYTES) without judging records: (records, file-level problems, "json"/"jsonl")."""
    path = str(json_path)
    fmt = "jsonl" if path.endswith(".jsonl") else "json"
    problems: list[Problem] = []

    def problem(kind: str, message: str, index: int | None = None) -> None:
        problems.append(Problem(path, index, None, kind, message, KINDS[kind][0], KINDS[kind][1]))

    if not path.endswith(SUFFIXES):
        problem("unsupported_suffix", f"the name ends in {Path(path).suffix or '(no suffix)'!r}")
    found = stat_problem(path, max_bytes)  # judged before opening: a FIFO blocks, /dev/zero never ends
    if found:
        problem("file_too_large" if found[0] == "too_large" else "unreadable_file", found[1])
        return [], problems, fmt
    try:
        raw = Path(path).read_bytes()
    except (OSError, ValueError) as exc:
        problem("unreadable_file", f"cannot read it ({type(exc).__name__}: {exc})")
        return [], problems, fmt
    if not raw.strip():
        problem("empty_file", f"{len(raw)} bytes, no text")
        return [], problems, fmt
    found = encoding_problem(raw)
    if found:
        problem(*found)
        return [], problems, fmt
    if raw.startswith(b"\xef\xbb\xbf"):
        problem("utf8_bom", "the file starts with a UTF-8 byte-order mark (bytes EF BB BF)")
        raw = raw[3:]
    text = raw.decode("utf-8", errors="surrogateescape")  # bad bytes survive as surrogates, reported per record
    if fmt == "json":
        data, kind, message = _parse(text)
        if kind == "bad_json" and message.startswith("Extra data"):
            first = _parse(text.split("\n", 1)[0])[0]
            if isinstance(first, dict):
                kind, message = "jsonl_in_json", f"the first line is a whole record, then more follow ({message})"
        if kind:
            problem(kind, f"not valid json: {message}")
            return [], problems, fmt
        if not isinstance(data, list):
            problem("not_a_list", f"the top level is a {type(data).__name__}, not a list")
            return [], problems, fmt
        if not data:
            problem("empty_dataset", "the list is empty: []")
        return data, problems, fmt
    records: list[Any] = []
    lines = jsonl_lines(text)
    if len(lines) > 1 and lines[0].strip() == "[":
        whole = _parse(text)[0]
        if isinstance(whole, list):
            problem("json_in_jsonl", f"the whole file is a json list of {len(whole)} items")
            return [], problems, fmt
    for lineno, line in enumerate(lines, start=1):
        if not line.strip():
            problem("blank_jsonl_line", f"line {lineno} is empty")
            continue
        rec, kind, message = _parse(line)
        if kind:
            problem("bad_jsonl_line" if kind == "bad_json" else kind,
                    f"line {lineno} is not valid json: {message}", len(records))
            records.append(_UNPARSED)
        else:
            records.append(rec)
    if not records:
        problem("empty_dataset", "no line holds a record")
    return records, problems, fmt


def _positive_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0 and v == v and v != float("inf")


def _image_wh_ok(wh: Any) -> bool:
    """Whether IMAGE_WH has a shape XTuner reads: [w, h] or [[w, h], ...] with positive numbers."""
    if isinstance(wh, list) and wh and isinstance(wh[0], list):
        wh = wh[0]
    return isinstance(wh, list) and len(wh) == 2 and all(_positive_number(v) for v in wh)


def check_record(rec: Any, add: Callable[[str, str], None], seen_ids: dict[str, int], index: int
                 ) -> tuple[list[str], list[str], bool]:
    """The rules one record must follow (those of XTuner 0.2.0's InternVL dataset, or stricter).

    Calls ADD(kind, message) per problem; returns (image paths, the texts of the turns, conversations usable).
    """
    if not isinstance(rec, dict):
        add("not_a_record", "it is null" if rec is None else f"it is a {type(rec).__name__}, not an object")
        return [], [], False
    bad_text = [s for s in _strings(rec) if _has_surrogate(s)]
    if bad_text:
        sample = "".join(f"<byte 0x{ord(ch) - 0xDC00:02x}>" if "\udc80" <= ch <= "\udcff" else
                         f"<lone \\u{ord(ch):04x}>" if "\ud800" <= ch <= "\udfff" else ch for ch in bad_text[0])[:80]
        add("non_utf8_text", f"{len(bad_text)} string(s) are not valid UTF-8, e.g. {sample!r}")
        usable = False  # a tokenizer cannot encode it
    else:
        usable = True
    if any("\ufffd" in s for s in _strings(rec)):
        add("replacement_char", "a string holds the replacement character U+FFFD")
    # id
    rid = rec.get("id")
    if rid is None:
        add("missing_id", "the record has no 'id'")
    elif not isinstance(rid, (str, int)) or isinstance(rid, bool):
        add("non_string", f"'id' is a {type(rid).__name__}")
    elif str(rid) in seen_ids:
        add("duplicate_id", f"id {rid!r} was already used by record {seen_ids[str(rid)]}")
    else:
        seen_ids[str(rid)] = index
    # keys XTuner reads besides image and conversations
    if "length" in rec and (not isinstance(rec["length"], int) or isinstance(rec["length"], bool)):
        add("bad_length", f"'length' is {rec['length']!r:.40}")
    if rec.get("image_wh") is not None and not _image_wh_ok(rec["image_wh"]):
        add("bad_image_wh", f"'image_wh' is {rec['image_wh']!r:.60}")
    # images
    images: list[str] = []
    image = rec.get("image")
    if image is not None:
        listed = image if isinstance(image, list) else [image]
        images = [x for x in listed if isinstance(x, str)]
        if len(images) != len(listed):
            add("non_string", f"'image' must be a path or a list of paths, got {image!r:.60}")
        if isinstance(image, list) and not image:
            add("no_images", "'image' is []")
        elif len(listed) > 1:
            add("too_many_images", f"{len(listed)} images in one record")
        elif image == "" or listed == [""]:
            add("image_missing", "the image path is an empty string")
            images = []
    n_images = 0 if image is None else max(1, len(image) if isinstance(image, list) else 1)
    # conversations
    convs = rec.get("conversations")
    texts: list[str] = []
    if convs is None:
        add("missing_key" if "conversations" not in rec else "non_string", "no 'conversations'" if "conversations" not in rec
            else "'conversations' is null")
        return images, texts, False
    if not isinstance(convs, list) or not all(isinstance(t, dict) for t in convs):
        add("non_string" if isinstance(convs, str) else "missing_key", "'conversations' must be a list of {'from', 'value'} objects")
        return images, texts, False
    if not convs:
        add("empty_turn", "'conversations' is empty")
        return images, texts, False
    turns_ok = True
    tags_in: list[int] = []  # human turns holding <image>
    n_tags = 0
    for t_i, turn in enumerate(convs):
        missing = [k for k in ("from", "value") if k not in turn]
        for key in missing:
            add("missing_key", f"turn {t_i} has no '{key}'")
        role, value = turn.get("from"), turn.get("value")
        if missing:
            turns_ok = False
            continue
        if not isinstance(role, str) or not isinstance(value, str):
            add("non_string", f"turn {t_i}: 'from' and 'value' must be strings, got "
                              f"{'null' if role is None else type(role).__name__}, {'null' if value is None else type(value).__name__}")
            turns_ok = False
            continue
        if role not in ROLES:
            add("unknown_role", f"turn {t_i} is from {role!r}")
            turns_ok = False
        if not value.strip() or value.replace("<image>", "").strip() == "" and role == "gpt":
            add("empty_turn", f"turn {t_i} ({role}) is empty")
        n = value.count("<image>")
        n_tags += n
        if n and role == "gpt":
            add("image_tag_in_answer", f"turn {t_i} (gpt) holds '<image>'")
        elif n and role == "human":
            tags_in.append(t_i)
            if t_i != 0:
                add("image_tag_position", f"'<image>' appears in turn {t_i}, not in the first human turn")
        if IMG_CONTEXT in value:
            add("reserved_token", f"turn {t_i} holds {IMG_CONTEXT!r}")
        markers = [m for m in TEMPLATE_MARKERS + (IMG_START, IMG_END) if m in value]
        if markers:
            add("template_marker", f"turn {t_i} holds {', '.join(markers)}")
        texts.append(value.replace("<image>", ""))
    roles = [t.get("from") for t in convs]
    if turns_ok and (any(r != ROLES[i % 2] for i, r in enumerate(roles)) or len(roles) % 2):
        add("role_order", f"the roles are {roles}")
    if n_tags != n_images:  # XTuner puts the image's tokens at every human '<image>': one image, one tag
        add("image_tag_count", f"{n_tags} '<image>' tag(s) for {n_images} image(s)")
    if n_images and tags_in == [0] and isinstance(convs[0].get("value"), str) and not convs[0]["value"].startswith("<image>"):
        add("image_tag_position", "the first human turn does not start with '<image>'")
    return images, texts, usable and turns_ok


def validate(json_path: str | os.PathLike, image_root: str | os.PathLike, tokenizer: Any = None,
             max_length: int | None = None, max_num: int = 6, count_tiles_fn: Callable[[int, int, int], int] | None = None,
             max_aspect: float = 12.0, check_images: bool = True, progress: bool = True,
             clean_to: str | os.PathLike | None = None, template_tokens: int = 0, turn_tokens: int = 0,
             length_fn: Callable[[dict, tuple[int, int] | None], int] | None = None,
             max_file_bytes: int = MAX_DATA_BYTES) -> Report:
    """Check every record of an InternVL/XTuner json or jsonl file and its images; never modifies the input.

    A sample's length = its text tokens + 256 per tile (+2 for <img></img>) per image + TEMPLATE_TOKENS, the tokens
    the chat template adds once (system prompt), + TURN_TOKENS per human/gpt pair (role markers, end-of-turn suffix).
    LENGTH_FN(record, (width, height) or None), when given, measures it instead: labsupport.train.runs.xtuner_length
    counts with XTuner's own template code, so too_long means exactly "XTuner would cut it". A data file above
    MAX_FILE_BYTES, a FIFO or a device is refused before it is opened.
    """
    path = str(json_path)
    try:
        root = Path(image_root).resolve()
    except (RuntimeError, OSError, ValueError):  # a looping or unopenable root: every image below reports it
        root = Path(os.path.abspath(image_root))
    tiles_of = count_tiles_fn or count_tiles
    records, problems, fmt = read_records(path, max_file_bytes)
    report = Report(path, str(root), records, problems, fmt=fmt)
    seen_ids: dict[str, int] = {}
    image_cache: dict[Path, tuple[list[tuple[str, str]], tuple[int, int] | None]] = {}

    for index, rec in enumerate(progress_bar(records, f"validating {Path(path).name}", enable=progress and len(records) > 200)):
        if rec is _UNPARSED:  # a jsonl line that did not parse: already reported
            continue
        rid = rec.get("id") if isinstance(rec, dict) else None
        rid_text = str(rid)[:80] if rid is not None and not isinstance(rid, (dict, list)) else None

        def add(kind: str, message: str) -> None:
            sev, fix = KINDS[kind]
            problems.append(Problem(path, index, rid_text, kind, message, sev, fix))

        try:
            _check_one(rec, index, add, seen_ids, image_cache, report, root, check_images, max_aspect, length_fn,
                       tokenizer, max_length, template_tokens, turn_tokens, tiles_of, max_num)
        except Exception as exc:  # noqa: BLE001 - one odd record must not cost the report of all the others
            add("check_failed", f"{type(exc).__name__}: {str(exc)[:160]}")
    if clean_to is not None:
        report.write_clean(clean_to)
    return report


def _check_one(rec: Any, index: int, add: Callable[[str, str], None], seen_ids: dict, image_cache: dict, report: Report,
               root: Path, check_images: bool, max_aspect: float, length_fn: Any, tokenizer: Any, max_length: int | None,
               template_tokens: int, turn_tokens: int, tiles_of: Callable, max_num: int) -> None:
    """validate()'s checks of one record: its fields, its images, its length."""
    images, texts, usable = check_record(rec, add, seen_ids, index)
    # image files
    sizes: list[tuple[int, int]] = []
    for rel in images if check_images else []:
        bad = path_problem(rel)
        if bad:
            add("image_unopenable", f"{rel!r}: {bad}")
            continue
        try:
            full = (root / rel).resolve()
        except (RuntimeError, OSError, ValueError) as exc:  # resolve() raises on a symlink loop
            add("image_unopenable", f"{rel!r}: {'a symlink loop' if 'loop' in str(exc).lower() else exc}")
            continue
        if os.path.isabs(rel) or (full != root and root not in full.parents):
            add("path_outside_root", f"{rel!r} leads outside {root}")
            continue
        if full not in image_cache:
            image_cache[full] = _check_image(full, max_aspect)
        found, size = image_cache[full]
        for kind, message in found:
            add(kind, f"{rel}: {message}")
        if size:
            sizes.append(size)
    wh = rec.get("image_wh") if isinstance(rec, dict) else None
    if sizes and _image_wh_ok(wh):
        wh0 = wh[0] if isinstance(wh[0], list) else wh
        if list(wh0) != list(sizes[0]):
            add("image_wh_mismatch", f"image_wh is {wh0}, the image is {list(sizes[0])}")
    # length in tokens
    if length_fn is not None and usable:
        try:
            n = length_fn(rec, sizes[0] if sizes else None)
        except Exception as exc:  # XTuner's own code is the judge: its failure is this record's error
            add("xtuner_error", f"{type(exc).__name__}: {str(exc)[:160]}")
            return
        report.lengths[index] = n
        if max_length is not None and n > max_length:
            add("too_long", f"{n} tokens as XTuner's template builds the sample > max_length {max_length}")
    elif tokenizer is not None and usable:
        n = template_tokens + turn_tokens * ((len(texts) + 1) // 2)
        n += sum(count_text_tokens(tokenizer, t) for t in texts)
        n += sum(TOKENS_PER_TILE * tiles_of(w, h, max_num) + 2 for w, h in sizes)  # +2: <img> and </img>
        report.lengths[index] = n
        if max_length is not None and n > max_length:
            add("too_long", f"{n} tokens (text + image, max_num={max_num}) > max_length {max_length}")


def _check_image(full: Path, max_aspect: float, max_pixels: int = MAX_IMAGE_PIXELS
                 ) -> tuple[list[tuple[str, str]], tuple[int, int] | None]:
    """([(problem kind, message), ...], (width, height) or None) for one image file; never decodes a huge image."""
    import warnings

    from PIL import Image, UnidentifiedImageError

    found = stat_problem(full, MAX_IMAGE_BYTES)  # before opening: a FIFO or a device would block or never end
    if found:
        kind = {"missing": "image_missing", "too_large": "image_too_large"}.get(found[0], "image_unopenable")
        return [(kind, found[1])], None
    if full.stat().st_size == 0:
        return [("image_empty", "the file has 0 bytes")], None
    found: list[tuple[str, str]] = []
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(full) as im:
                w, h = im.size
                if w * h > max_pixels:  # decided from the header alone: the pixels are never decoded
                    return [("image_too_large", f"{w}x{h} = {w * h / 1e6:.0f} megapixels > {max_pixels / 1e6:.0f}")], (w, h)
                if w == 0 or h == 0:
                    return [("image_empty", f"size {w}x{h}")], None
                mode = im.mode
                n_frames = getattr(im, "n_frames", 1) if getattr(im, "is_animated", False) else 1
                orientation = im.getexif().get(0x0112, 1)
                im.load()  # decodes every pixel: a cut-off file fails here
                alpha = None
                if mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in im.info):
                    alpha = im.convert("RGBA").getchannel("A")
                if alpha is not None:
                    lo, hi = alpha.getextrema()
                    if hi == 0:
                        found.append(("image_transparent", f"mode {mode}, every pixel has alpha 0"))
                    elif lo < 255:
                        share = sum(alpha.histogram()[:128]) / (w * h)
                        if share >= 0.01:
                            found.append(("image_alpha", f"mode {mode}, {share:.0%} of the pixels are mostly transparent"))
    except Image.DecompressionBombError as exc:
        return [("image_too_large", str(exc).split(" could be")[0])], None
    except UnidentifiedImageError:
        return [("image_unreadable", "PIL cannot identify the file as an image")], None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        return [("image_truncated", f"cannot be decoded ({exc})")], None
    if mode in HIGH_BIT_MODES:
        found.append(("image_high_bit_depth", f"mode {mode} (16/32-bit samples)"))
    if n_frames > 1:
        found.append(("image_animated", f"{n_frames} frames"))
    if orientation not in (None, 1) and isinstance(orientation, int) and 2 <= orientation <= 8:
        turn = {3: "180°", 6: "90° clockwise", 8: "90° counter-clockwise"}.get(orientation, "mirrored/rotated")
        found.append(("image_exif_rotated", f"EXIF orientation {orientation} ({turn})"))
    if max(w, h) / min(w, h) > max_aspect:
        found.append(("image_aspect", f"size {w}x{h}, aspect ratio {max(w, h) / min(w, h):.1f} > {max_aspect}"))
    elif min(w, h) < 28:
        found.append(("image_tiny", f"size {w}x{h}"))
    return found, (w, h)


def _write_text_atomic(path: Path, text: str, errors: str = "strict") -> None:
    write_text_atomic(path, text, errors=errors)
