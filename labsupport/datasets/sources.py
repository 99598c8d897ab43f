"""The real datasets the seeds fine-tune on, end to end: where they live, how to download them, converters.

FoodieQA (lyan62/FoodieQA) is a *gated* dataset on the Hugging Face Hub; CLoT's Oogiri-GO
(zhongshsh/CLoT-Oogiri-GO, mirrored on ModelScope as shan233/CLoT-Oogiri-GO) is open. The course ships a
few records written in each file's shape under data/ (SAMPLES), so that the converters run here on exactly
what a download gives; `gated_error_demo()` shows the error a download of a gated repository raises before
access is granted, raised by huggingface_hub's own code against a local stand-in for the Hub.
"""
from __future__ import annotations

import http.server
import os
import tempfile
import threading
from pathlib import Path
from typing import Any, Sequence

from labsupport.core.paths import repo_root
from labsupport.datasets.formats import ConversionError, jsonl_lines
from labsupport.datasets.safe_read import DataFileError, data_text, parse_json

SAMPLES = {"foodieqa": "data/foodieqa_sample", "clot": "data/clot_sample"}
CLOT_PROMPT = "请你根据这张图片，讲一个脑洞大开的梗"  # the seeds' CLoT_cn_2000 question for every image

DATASETS: dict[str, dict[str, Any]] = {
    "foodieqa": {
        "hf": "lyan62/FoodieQA", "gated": True, "modelscope": None,
        "files": ["sivqa_tidy.json", "mivqa_tidy.json", "textqa_tidy.json", "images/"],
        "licence": "CC BY-NC-ND 4.0, research only; its terms allow evaluation, not training",
    },
    "clot": {
        "hf": "zhongshsh/CLoT-Oogiri-GO", "gated": False, "modelscope": "shan233/CLoT-Oogiri-GO",
        "files": ["cn.jsonl", "en.jsonl", "jp.jsonl", "images.zip (1.4 GB)"],
        "licence": "MIT (the dataset card); the jokes come from public platforms",
    },
}


def sample_dir(name: str) -> Path:
    """The folder of the course's small sample of dataset NAME ("foodieqa" or "clot")."""
    return repo_root() / SAMPLES[name]


def download_commands(name: str, local_dir: str = "data") -> list[str]:
    """The shell commands that download dataset NAME into LOCAL_DIR/<name>: Hub CLI first, then ModelScope."""
    info = DATASETS[name]
    target = f"{local_dir}/{info['hf'].split('/')[-1]}"
    cmds = []
    if info["gated"]:
        cmds += [f"# 1. ask for access on https://huggingface.co/datasets/{info['hf']} (accept the terms; wait for approval)",
                 "# 2. log in once with a token that can read gated repositories:",
                 "hf auth login            # older huggingface_hub: huggingface-cli login"]
    if name == "clot":
        cmds += [f"hf download {info['hf']} cn.jsonl images.zip --repo-type dataset --local-dir {target}",
                 f"unzip -q {target}/images.zip -d {target}",
                 f"# or from ModelScope (no Hugging Face access needed):",
                 f"modelscope download --dataset {info['modelscope']} --local_dir {target}"]
    else:
        cmds += [f"hf download {info['hf']} --repo-type dataset --local-dir {target}"]
    return cmds


class _GatedHub(http.server.BaseHTTPRequestHandler):
    """Answers every request as the Hub answers an anonymous download from a gated repository."""

    repo_id = ""

    def _deny(self) -> None:
        self.send_response(401)
        self.send_header("X-Error-Code", "GatedRepo")
        self.send_header("X-Error-Message", f"Access to dataset {self.repo_id} is restricted. You must have access "
                                            "to it and be authenticated to access it. Please log in.")
        self.send_header("Content-Length", "0")
        self.end_headers()

    do_GET = do_HEAD = _deny

    def log_message(self, *args: Any) -> None:
        """Silence the per-request log lines."""


def gated_error_demo(repo_id: str = DATASETS["foodieqa"]["hf"], filename: str = "sivqa_tidy.json") -> Exception:
    """Run huggingface_hub's real hf_hub_download against a local gated-repo stand-in; return the exception it raises."""
    from huggingface_hub import hf_hub_download

    handler = type("GatedHub", (_GatedHub,), {"repo_id": repo_id})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        with tempfile.TemporaryDirectory() as cache:
            hf_hub_download(repo_id, filename, repo_type="dataset", cache_dir=cache, token=False,
                            endpoint=f"http://127.0.0.1:{server.server_port}")
    except Exception as exc:  # the point of the demo: hand the learner the exception the library raised
        return exc
    finally:
        server.shutdown()
        server.server_close()
    raise RuntimeError("the gated stand-in let the download through: expected GatedRepoError")


def explain_hub_error(exc: Exception, repo_id: str) -> str:
    """What a download error from the Hub means and what to do about it."""
    from huggingface_hub.errors import GatedRepoError, LocalEntryNotFoundError, RepositoryNotFoundError

    page = f"https://huggingface.co/datasets/{repo_id}"
    if isinstance(exc, GatedRepoError):
        return (f"{repo_id} is gated: open {page}, accept its terms and wait until the authors grant access; then "
                "log in (`hf auth login`, or set HF_TOKEN) with a token of the account that was granted access, and "
                "run the download again. A token without access gets the same error with 403 instead of 401.")
    if isinstance(exc, RepositoryNotFoundError):
        return f"no repository {repo_id} (or it is private): check the name and --repo-type dataset"
    if isinstance(exc, LocalEntryNotFoundError):
        return "no network and no cached copy: connect, or point HF_ENDPOINT at a mirror (e.g. https://hf-mirror.com)"
    return f"unexpected {type(exc).__name__}: read its message"


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    """The records of a jsonl file; a bad line raises ValueError naming the file and line."""
    out = []
    # split at \n only (formats.jsonl_lines): str.splitlines() would cut a record at a U+2028 inside a string
    for n, line in enumerate(jsonl_lines(data_text(path)), 1):
        if line.strip():
            try:
                out.append(parse_json(line, path, line_offset=n - 1))
            except DataFileError as exc:
                raise DataFileError(exc.kind, f"{exc}; fix or delete the line") from None
    return out


def from_oogiri(source: str | os.PathLike | Sequence[dict], types: Sequence[str] = ("I2T", "IT2T"), min_star: int = 0,
                image_prefix: str = "images/", prompt: str = CLOT_PROMPT, dedupe: bool = True) -> list[dict]:
    """Oogiri-GO records (cn.jsonl lines: type, question, image, text, star) -> InternVL records for TYPES.

    I2T (image only) asks PROMPT about the image, IT2T asks its own question about the image, T2T is text only.
    Records below MIN_STAR likes and exact duplicates (same image, question and answer) are dropped.
    """
    records = read_jsonl(source) if isinstance(source, (str, os.PathLike)) else list(source)
    where = str(source) if isinstance(source, (str, os.PathLike)) else "the records"
    out, seen = [], set()
    for n, r in enumerate(records, 1):
        if not isinstance(r, dict):
            raise ConversionError(f"{where}, record {n}: a {type(r).__name__}, not a json object")
        missing = [k for k in ("type", "text") if k not in r]
        if missing:
            raise ValueError(f"{where}, record {n}: no {missing}; Oogiri-GO lines carry type, question, image, text, "
                             "star — print the first line of your file (`head -n 1 cn.jsonl`) and map its keys")
        try:
            star = int(r.get("star") or 0)
        except (TypeError, ValueError):
            raise ConversionError(f"{where}, record {n}: star is {r.get('star')!r}, not a number of likes") from None
        if not all(isinstance(r.get(k) or "", str) for k in ("type", "text", "question", "image")) or not r.get("image") \
                and r["type"] != "T2T":
            raise ConversionError(f"{where}, record {n}: type, text, question and image must be strings (image "
                                  "is needed unless type is T2T)")
        if r["type"] not in types or star < min_star:
            continue
        key = (r.get("image"), r.get("question"), r["text"])
        if dedupe and key in seen:
            continue
        seen.add(key)
        question = prompt if r["type"] == "I2T" else (r.get("question") or "").strip()
        rec = {"id": f"oogiri-{n}", "conversations": [
            {"from": "human", "value": ("<image>\n" if r["type"] != "T2T" else "") + question},
            {"from": "gpt", "value": r["text"].strip()}]}
        if r["type"] != "T2T":
            rec["image"] = image_prefix + r["image"]
        out.append(rec)
    return out
