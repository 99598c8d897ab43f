"""Hub tokens: find, ask, mask and redact them, and scan folders and git objects for any that leaked."""
from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

TOKEN_ENV = {"huggingface": ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"), "modelscope": ("MODELSCOPE_API_TOKEN",)}
# Files that must never be published: secrets, and training leftovers that are not the model.
SECRET_NAMES = [".env", "*.env", ".netrc", ".git-credentials", "token", "*_token", "*.token", "hf_token*",
                "credentials*", "*.pem", "*.key", "id_rsa*", "id_ed25519*"]
TOKEN_PATTERN = re.compile(r"hf_[A-Za-z0-9]{20,}")  # safe to mask anywhere in a text: long enough to be no identifier
# A parameter VALUE of one of these shapes is a token, however short: Hugging Face, ModelScope (ms-<uuid> or a bare
# uuid), GitHub, GitLab, OpenAI-style keys. Only whole values are judged this way (a notebook's cell ids are uuids too).
TOKEN_SHAPES = re.compile(r"(?:hf_[A-Za-z0-9]{6,}|ms-[A-Za-z0-9-]{8,}|[0-9a-fA-F]{8}-(?:[0-9a-fA-F]{4}-){3}[0-9a-fA-F]{12}"
                          r"|gh[pousr]_[A-Za-z0-9]{10,}|github_pat_\w{10,}|glpat-[\w-]{10,}|sk-[A-Za-z0-9_-]{10,})")
# user-info in a URL: scheme://user:password@host (the password, or a token given as the user, is a credential)
URL_USERINFO = re.compile(r"(?P<head>\b[A-Za-z][A-Za-z0-9+.-]*://)(?P<user>[^:@/\s]*)(?::(?P<pw>[^@/\s]*))?@")
SECRET_WORDS = ("TOKEN", "KEY", "SECRET", "SECRETS", "PASSWORD", "PASSWD", "PWD", "CREDENTIAL", "CREDENTIALS", "APIKEY")


def secret_name(name: str) -> bool:
    """Whether a parameter NAME says it holds a secret: a word of it is or ends with TOKEN/KEY/SECRET/PASSWORD/...
    (HF_TOKEN, API_KEY, HFTOKEN), while MAX_NEW_TOKENS (a count) is not."""
    return any(word.endswith(SECRET_WORDS) for word in re.split(r"[^A-Za-z0-9]+", str(name).upper()) if word)


def is_token(value: object) -> bool:
    """Whether VALUE as a whole has a known token shape (hf_..., a ModelScope token, ghp_..., sk-...)."""
    return bool(TOKEN_SHAPES.fullmatch(str(value).strip()))


def credentials_in(value: object) -> list[str]:
    """The credentials inside VALUE (a parameter value): URL passwords, a token given as a URL's user, token-shaped words."""
    text = str(value)
    found = []
    for m in URL_USERINFO.finditer(text):
        if m.group("pw"):
            found.append(m.group("pw"))
        elif m.group("user") and (is_token(m.group("user")) or len(m.group("user")) >= 20):
            found.append(m.group("user"))  # https://<token>@github.com
    found += [m.group(0) for m in TOKEN_SHAPES.finditer(text) if is_token(m.group(0))]
    if is_token(text):
        found.append(text.strip())
    return sorted(set(found), key=len, reverse=True)


# ------------------------------------------------------------------------------------------ tokens
class Token:
    """A secret that prints masked (hf_****): call reveal() only where a library needs the value."""

    def __init__(self, value: str, source: str):
        self._value = value
        self.source = source

    def reveal(self) -> str:
        """The secret itself, for handing to a library call; never print it."""
        return self._value

    def __repr__(self) -> str:
        return f"Token({mask(self._value)} from {self.source})"

    __str__ = __repr__


def mask(token: str | None) -> str:
    """How a token is shown: its prefix (hf_) and ****, never any of its secret characters."""
    if not token:
        return "(none)"
    return "hf_****" if token.startswith("hf_") else "****"


def redact(text: str, tokens: list | tuple = ()) -> str:
    """TEXT with every given token (str or Token; also as JSON escapes it), any URL password and anything shaped like a
    Hugging Face token masked."""
    for t in sorted((t.reveal() if isinstance(t, Token) else t for t in tokens if t), key=len, reverse=True):
        if t:
            text = text.replace(t, mask(t)).replace(json.dumps(t)[1:-1], mask(t))
    text = URL_USERINFO.sub(lambda m: m.group("head") + m.group("user") + ":****@" if m.group("pw") else m.group(0), text)
    return TOKEN_PATTERN.sub("hf_****", text)


def find_token(hub: str = "huggingface") -> Token | None:
    """The token for HUB ("huggingface" or "modelscope") from the environment or the huggingface_hub login cache, or None."""
    if hub not in TOKEN_ENV:
        raise ValueError(f"unknown hub {hub!r}: choose one of {sorted(TOKEN_ENV)}")
    for name in TOKEN_ENV[hub]:
        if os.environ.get(name, "").strip():
            return Token(os.environ[name].strip(), f"environment variable {name}")
    if hub == "huggingface":
        from huggingface_hub import constants, get_token

        cached = get_token()
        if cached:
            return Token(cached, f"huggingface_hub login cache ({constants.HF_TOKEN_PATH})")
    return None


def ask_token(hub: str = "huggingface") -> Token | None:
    """Ask for HUB's token at a hidden prompt (Jupyter's password box; the answer is never recorded), or None when
    nobody can answer (a headless run) or the answer is empty."""
    import getpass

    try:
        value = getpass.getpass(f"{hub} token (hidden; press Enter to skip): ").strip()
    except Exception:  # papermill and other headless kernels allow no input: no token, the plan is printed instead
        return None
    return Token(value, "typed at a hidden prompt") if value else None


def _secret_patterns(tokens: list | tuple) -> tuple[list[bytes], re.Pattern]:
    values = [(t.reveal() if isinstance(t, Token) else t).encode() for t in tokens if t]
    return values, re.compile(rb"hf_[A-Za-z0-9]{20,}")


def _git_dirs(root: Path) -> list[Path]:
    """Git repositories under ROOT: every .git folder and every bare repository (HEAD + objects/)."""
    found = []
    for head in sorted(root.rglob("HEAD")):
        d = head.parent
        if (d / "objects").is_dir() and (d / "refs").exists():
            found.append(d)
    return found


def scan_git_objects(git_dir: str | os.PathLike, tokens: list | tuple = ()) -> list[str]:
    """Objects of the repository GIT_DIR (a .git folder or a bare repo) that hold a token, read decompressed
    (`git cat-file --batch-all-objects --batch`: loose and packed, reachable or not)."""
    values, pattern = _secret_patterns(tokens)
    proc = subprocess.run(["git", "--git-dir", str(git_dir), "cat-file", "--batch-all-objects", "--batch"],
                          capture_output=True)
    if proc.returncode != 0:
        return []
    hits, data, pos = [], proc.stdout, 0
    while pos < len(data):  # "<sha> <type> <size>\n<content>\n" per object
        end = data.index(b"\n", pos)
        header = data[pos:end].split()
        size = int(header[2]) if len(header) == 3 else 0
        body = data[end + 1:end + 1 + size]
        if any(v in body for v in values) or pattern.search(body):
            hits.append(f"{git_dir} (git {header[1].decode()} {header[0].decode()[:12]})")
        pos = end + 1 + size + 1
    return hits


def scan_for_secrets(root: str | os.PathLike, tokens: list | tuple = (), max_bytes: int = 50 * 1024 * 1024) -> list[str]:
    """Files under ROOT (any file, .git included, up to MAX_BYTES each) and git objects (decompressed) holding one of
    TOKENS or a Hugging Face-shaped token."""
    values, pattern = _secret_patterns(tokens)
    root = Path(root)
    hits = []
    for p in sorted(root.rglob("*")) if root.is_dir() else [root]:
        if not p.is_file() or p.is_symlink() or p.stat().st_size > max_bytes:
            continue
        data = p.read_bytes()
        if any(v in data for v in values) or pattern.search(data):
            hits.append(str(p))
    if root.is_dir():
        for git_dir in _git_dirs(root):
            hits += scan_git_objects(git_dir, tokens)
    return hits


def known_tokens() -> list[Token]:
    """Every token this machine holds for the hubs (environment variables, huggingface_hub's login cache)."""
    found = []
    for hub in TOKEN_ENV:
        try:
            t = find_token(hub)
        except Exception:  # a broken login cache must not stop the search for the other tokens
            t = None
        if t is not None:
            found.append(t)
    return found
