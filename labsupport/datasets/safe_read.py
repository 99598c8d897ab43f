"""Reading a learner's data file or image without blocking, exhausting memory or raising a bare library error: the
file is judged by stat() before it is opened, its bytes are named (gzip, UTF-16, stray NUL, GBK) before they are
decoded, and a json parse error names the file, the line and the likely cause.

    read_data_file(path)          # bytes, or DataFileError(kind, message) naming the file and the fix
    data_text(path)               # UTF-8 text of a json/jsonl file (BOM dropped), or DataFileError
    parse_json(text, path)        # json.loads, or DataFileError naming the line, column and cause
"""
from __future__ import annotations

import codecs
import errno
import json
import os
import re
import stat
from pathlib import Path
from typing import Any

MAX_DATA_BYTES = 2 * 1024**3    # a data file above 2 GiB is not a course dataset: read nothing, say so
MAX_IMAGE_BYTES = 256 * 1024**2  # an image file above 256 MiB is not a training image (PIL's pixel limit comes later)
NAME_MAX = 255                   # bytes in one path component on Linux/macOS file systems
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class DataFileError(ValueError):
    """A data file that cannot be read as json/jsonl text; KIND names the problem class, the message the fix."""

    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind


def path_problem(path: str | os.PathLike) -> str | None:
    """Why the OS cannot open PATH whatever the disk holds (a NUL or control character, a component over 255 bytes), or None."""
    text = os.fspath(path)
    m = _CONTROL.search(text)
    if m:
        return (f"the path holds the control character U+{ord(m.group()):04X} at position {m.start()}: rename the file "
                "without it and write the new name into the record")
    longest = max((len(part.encode("utf-8", "surrogateescape")) for part in Path(text).parts), default=0)
    if longest > NAME_MAX:
        return f"a file name of {longest} bytes, longer than the {NAME_MAX} a file system allows: shorten it"
    return None


def stat_problem(path: str | os.PathLike, limit: int) -> tuple[str, str] | None:
    """(kind, message) when PATH cannot be read safely as a regular file of at most LIMIT bytes, else None; never opens it.
    Kinds: missing, unopenable, not_a_file, too_large."""
    bad = path_problem(path)
    if bad:
        return "unopenable", bad
    try:
        st = os.stat(path)
    except OSError as exc:
        if exc.errno in (errno.ENOENT, errno.ENOTDIR):
            return "missing", "no such file"
        if exc.errno == errno.ELOOP:
            return "unopenable", "a symlink loop (the link leads, through others, back to itself): fix or delete the link"
        if exc.errno == errno.ENAMETOOLONG:
            return "unopenable", "the path is longer than the system allows: shorten the folder or file names"
        if exc.errno == errno.EACCES:
            return "unopenable", "permission denied: make it readable (chmod a+r) or copy it somewhere readable"
        return "unopenable", f"cannot be opened ({exc.strerror or exc})"
    if stat.S_ISDIR(st.st_mode):
        return "missing", "a folder, not a file"
    if not stat.S_ISREG(st.st_mode):
        what = ("a FIFO (named pipe)" if stat.S_ISFIFO(st.st_mode) else "a character device" if stat.S_ISCHR(st.st_mode)
                else "a block device" if stat.S_ISBLK(st.st_mode) else "a socket" if stat.S_ISSOCK(st.st_mode) else "not a file")
        return "not_a_file", f"{what}, not a regular file: reading it could block or never end; give the file itself"
    if st.st_size > limit:
        return "too_large", f"{st.st_size / 1024**2:,.0f} MiB, above the {limit / 1024**2:,.0f} MiB this reader accepts"
    return None


def read_data_file(path: str | os.PathLike, limit: int = MAX_DATA_BYTES) -> bytes:
    """PATH's bytes after stat() says it is a regular file of at most LIMIT bytes; raises DataFileError naming the file."""
    found = stat_problem(path, limit)
    if found:
        raise DataFileError(found[0], f"{os.fspath(path)!r}: {found[1]}")
    try:
        with open(path, "rb") as f:
            return f.read(limit + 1)[:limit]
    except OSError as exc:
        raise DataFileError("unopenable", f"{os.fspath(path)!r}: cannot be read ({exc.strerror or exc})") from None


def encoding_problem(raw: bytes) -> tuple[str, str] | None:
    """(kind, message) when RAW is not UTF-8 json text as a whole: compressed_file, utf16_file, nul_bytes, gbk_file;
    None for UTF-8 (a few bad bytes inside records are left to the per-record check)."""
    if raw.startswith(b"\x1f\x8b"):
        return "compressed_file", "gzip-compressed data, not text: decompress it first (`gunzip -k FILE`)"
    if raw.startswith((b"PK\x03\x04", b"BZh", b"\xfd7zXZ", b"(\xb5/\xfd")):
        return "compressed_file", "an archive (zip/bz2/xz/zstd), not text: extract the json file from it first"
    if raw.startswith((codecs.BOM_UTF32_LE, codecs.BOM_UTF32_BE)):
        return "utf16_file", "a UTF-32 byte-order mark: save it as UTF-8 (`iconv -f UTF-32 -t UTF-8 in > out`)"
    if raw.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        return "utf16_file", "a UTF-16 byte-order mark: save it as UTF-8 (`iconv -f UTF-16 -t UTF-8 in > out`)"
    head = raw[:4096]
    if b"\x00" in head:
        even, odd = head[0::2].count(0), head[1::2].count(0)
        if max(even, odd) > 0.3 * (len(head) / 2) and min(even, odd) < 0.05 * (len(head) / 2):
            order = "UTF-16BE" if even > odd else "UTF-16LE"
            return "utf16_file", f"NUL bytes between the characters ({order} without a byte-order mark): save it as " \
                                 f"UTF-8 (`iconv -f {order} -t UTF-8 in > out`)"
        at = raw.index(b"\x00")
        return "nul_bytes", (f"{raw.count(0)} stray NUL byte(s), the first at byte {at} (a file cut or padded by a crash or "
                             "a copy?): delete them, e.g. `tr -d '\\000' < in > out`, then check the records there")
    try:
        raw.decode("utf-8")
        return None
    except UnicodeDecodeError as exc:
        bad_at = exc.start
    try:
        raw.decode("gb18030")
    except UnicodeDecodeError:
        return None
    if sum(b >= 0x80 for b in raw) > 8:  # many high bytes, all valid GBK pairs: a Chinese-Windows export
        return "gbk_file", (f"not UTF-8 (the first bad byte is at {bad_at}) but valid GBK/GB18030: it was saved with a "
                            "Chinese Windows encoding; convert it: `iconv -f GB18030 -t UTF-8 in > out`")
    return None


def data_text(path: str | os.PathLike, limit: int = MAX_DATA_BYTES) -> str:
    """The UTF-8 text of a json/jsonl data file (a BOM dropped); raises DataFileError naming the file and the fix."""
    raw = read_data_file(path, limit)
    found = encoding_problem(raw)
    if found:
        raise DataFileError(found[0], f"{os.fspath(path)}: {found[1]}")
    if raw.startswith(codecs.BOM_UTF8):
        raw = raw[3:]  # a byte-order mark carries no data: dropping it loses nothing
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[:exc.start].count(b"\n") + 1
        raise DataFileError("non_utf8_text", f"{os.fspath(path)}: byte {exc.start} (line {line}) is not UTF-8 "
                                             f"({raw[exc.start:exc.start + 4]!r}): save the file as UTF-8") from None


def json_error_cause(text: str, exc: json.JSONDecodeError) -> str:
    """A learner's words for a json error: a trailing comma, a missing comma, single quotes, else json's own message."""
    before = text[:exc.pos].rstrip()
    after = text[exc.pos:exc.pos + 1]
    if before.endswith(",") and after in ("]", "}"):
        return f"a trailing comma before '{after}' (json allows none): delete it"
    if exc.msg.startswith("Expecting property name") and after == "'":
        return "single quotes: json strings and keys take double quotes"
    if exc.msg.startswith("Expecting ',' delimiter"):
        return "a missing comma between two items"
    return exc.msg


def parse_json(text: str, path: str | os.PathLike, line_offset: int = 0) -> Any:
    """json.loads(TEXT), or DataFileError naming PATH, the line and column and the cause (trailing comma, > 4300 digits, depth)."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataFileError("bad_json", f"{os.fspath(path)}: not valid json at line {exc.lineno + line_offset}, column "
                                        f"{exc.colno}: {json_error_cause(text, exc)}") from None
    except RecursionError:
        raise DataFileError("too_deep", f"{os.fspath(path)}: brackets nested too deeply for a json reader") from None
    except ValueError as exc:  # Python's int-literal limit: "Exceeds the limit (4300 digits) for integer string conversion"
        raise DataFileError("number_too_long", f"{os.fspath(path)}" + (f" line {1 + line_offset}" if line_offset else "")
                            + f": a number with more digits than Python reads ({str(exc)[:80]}): write it as a string "
                            "or delete it") from None
