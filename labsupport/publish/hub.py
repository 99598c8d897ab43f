"""Publishing a model folder: tokens kept secret, pre-flight checks, and three upload routes.

    token = find_token("huggingface")                  # env HF_TOKEN or the login cache; prints as hf_****
    stage = stage_folder(model_dir, out, card_text)    # model files + README.md + .gitattributes (LFS patterns)
    report = preflight(stage, "me/InternVL2-tiny-plates")
    print(report)                                      # one line per check, total size
    print(upload_plan(stage))                          # files, sizes, which go through LFS
    upload_huggingface(stage, repo_id, token)          # (a) huggingface_hub create_repo + upload_folder
    upload_modelscope(stage, repo_id, token)           # (b) ModelScope SDK, when installed
    git_push(stage, remote)                            # (c) git + git-lfs, as done by hand in the seed

The artifact paths of the earlier notebooks this one reads are the constants below: change them
here (only here) if notebooks 04-05 write elsewhere.
"""
from __future__ import annotations

import fnmatch
import hashlib
import os
import re
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from labsupport.core.credentials import SECRET_NAMES
from labsupport.core.credentials import Token
from labsupport.core.credentials import known_tokens
from labsupport.core.credentials import mask
from labsupport.core.credentials import redact
from labsupport.core.credentials import scan_for_secrets
from labsupport.evaluate.conversion import check_model_folder, converted_from_finished_run
from labsupport.core.checkpoints import write_text_atomic
from labsupport.core.paths import finetuned_dir, is_embedded
from labsupport.model.tinymodel import resolve_model
from labsupport.train.training_outcome import skipped_training

# ---- what notebooks 04-05 leave under artifacts/ (the one place to change at merge time) ----
# (the same names as labsupport.evaluate.compare's constants on the convert branch, H5)
# notebook 05's converted, merged fine-tune: ARTIFACTS/models/<model name>-finetuned (labsupport.core.paths.finetuned_dir)
EVAL_RESULTS_JSON = "results/before_after.json"           # notebook 05: {"before": {"accuracy", "n"}, "after": {...}}
TRAIN_WORK_DIR = "xtuner/work_dirs/04_finetune"           # notebook 04: XTuner work dir (config *.py, scalars.json)
TRAIN_SCALARS_JSON = "scalars.json"                       # inside TRAIN_WORK_DIR: [{"iter", "loss", "lr"}, ...]
PUBLISH_DIR = "publish"                                   # this notebook's outputs: staged folder, local remote, clones

REPO_KEYWORD = "InternVL"          # the camp rule: the published model's name contains this word
HUB_LFS_LIMIT = 10 * 1024 * 1024   # the Hugging Face Hub rejects plain-git files above 10 MiB

# File types that always travel through git-lfs (the Hub's default .gitattributes has the same idea).
LFS_PATTERNS = ["*.safetensors", "*.bin", "*.pt", "*.pth", "*.ckpt", "*.h5", "*.onnx", "*.msgpack",
                "*.model", "*.gguf", "*.npz", "*.zip", "*.tar.gz", "*tfevents*"]
LEFTOVER_NAMES = ["iter_*.pth", "optimizer.pt", "optimizer*.bin", "scheduler.pt", "rng_state*.pth", "training_args.bin",
                  "last_checkpoint", "global_step*", "zero_to_fp32.py", "*.log", "events.out.tfevents*",
                  "work_dirs", "scalars.json", "*.ipynb", ".ipynb_checkpoints", "__pycache__", "*.pyc"]
# Harmless bookkeeping of the course's own builders: left out of the upload, not an error.
SKIPPED_NAMES = [".labsupport-build.json", ".training_run.json", ".DS_Store", ".git", ".cache"]
REQUIRED_FILES = ["config.json", "README.md", ".gitattributes"]
HARDLINK_ABOVE = 64 * 1024 * 1024  # stage_folder hard-links files above this size instead of copying them


# ------------------------------------------------------------------------------------- the folder
def human_size(n: int) -> str:
    """Bytes as a short human-readable size (1.9 MiB)."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


def list_files(folder: str | os.PathLike) -> dict[str, int]:
    """Every file under FOLDER (relative POSIX path -> size in bytes), .git excluded, sorted by path."""
    folder = Path(folder)
    out = {}
    for p in sorted(folder.rglob("*")):
        rel = p.relative_to(folder)
        if rel.parts[0] == ".git" or not p.is_file():
            continue
        out[rel.as_posix()] = p.stat().st_size
    return out


def _matches(rel: str, patterns: list[str]) -> str | None:
    """The first pattern matching REL or one of its folders (gitattributes-style: a pattern without / matches names), else None."""
    parts = rel.split("/")
    for pat in patterns:
        if "/" in pat.strip("/"):
            if fnmatch.fnmatchcase(rel, pat.strip("/")):
                return pat
        elif any(fnmatch.fnmatchcase(part, pat) for part in parts):
            return pat
    return None


def lfs_patterns(folder: str | os.PathLike) -> list[str]:
    """The patterns FOLDER's .gitattributes sends through git-lfs (filter=lfs), in file order."""
    attrs = Path(folder) / ".gitattributes"
    if not attrs.exists():
        return []
    pats = []
    for line in attrs.read_text(encoding="utf-8").splitlines():
        fields = line.split()
        if fields and not fields[0].startswith("#") and "filter=lfs" in fields[1:]:
            pats.append(fields[0])
    return pats


def write_gitattributes(folder: str | os.PathLike, extra_large: int | None = None) -> list[str]:
    """Write FOLDER/.gitattributes sending weight files (and any file over EXTRA_LARGE bytes) through git-lfs; return the patterns."""
    folder = Path(folder)
    pats = list(LFS_PATTERNS)
    if extra_large is not None:
        for rel, size in list_files(folder).items():
            if size > extra_large and rel != ".gitattributes" and not _matches(rel, pats):
                pats.append(rel)
    lines = ["# written by labsupport.publish.hub: these files are stored with git-lfs (git lfs track PATTERN)"]
    lines += [f"{p} filter=lfs diff=lfs merge=lfs -text" for p in pats]
    _write_text(folder / ".gitattributes", "\n".join(lines) + "\n")
    return pats


def _write_text(path: Path, text: str) -> None:
    """Write TEXT to PATH atomically (temporary file + os.replace), with ordinary permissions."""

    write_text_atomic(path, text)


def stray_files(folder: str | os.PathLike) -> dict[str, list[str]]:
    """Files in FOLDER that must not be published: {"secret": [...], "leftover": [...]} by name pattern."""
    out: dict[str, list[str]] = {"secret": [], "leftover": []}
    for rel in list_files(folder):
        if _matches(rel, SKIPPED_NAMES):
            continue
        if _matches(rel, SECRET_NAMES):
            out["secret"].append(rel)
        elif _matches(rel, LEFTOVER_NAMES):
            out["leftover"].append(rel)
    return out


def stage_folder(model_dir: str | os.PathLike, out_dir: str | os.PathLike, card_text: str,
                 lfs_threshold: int = HUB_LFS_LIMIT) -> Path:
    """Fill OUT_DIR (emptied first) with MODEL_DIR's files minus course bookkeeping, README.md = CARD_TEXT, and .gitattributes.

    Files over HARDLINK_ABOVE are hard links to the originals (no extra disk); smaller ones are copies.
    """
    model_dir, out_dir = Path(model_dir), Path(out_dir)
    if not (model_dir / "config.json").exists():
        raise FileNotFoundError(f"{model_dir} holds no config.json: is it a model folder? (notebook 05 writes the fine-tuned one)")
    if out_dir.exists():
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True)
    for rel in list_files(model_dir):
        if _matches(rel, SKIPPED_NAMES) or rel in ("README.md", ".gitattributes"):
            continue
        dst = out_dir / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        if (model_dir / rel).stat().st_size > HARDLINK_ABOVE:
            try:  # real weights are GBs: a hard link costs no disk (never edit a staged weight file in place)
                os.link(model_dir / rel, dst)
                continue
            except OSError:
                pass
        shutil.copy2(model_dir / rel, dst)
    _write_text(out_dir / "README.md", card_text)
    write_gitattributes(out_dir, extra_large=lfs_threshold)
    return out_dir


# ------------------------------------------------------------------------------------- pre-flight
def check_repo_id(repo_id: str, keyword: str = REPO_KEYWORD) -> str:
    """'' when REPO_ID is a valid "namespace/name" Hub id whose name contains KEYWORD, else what is wrong."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    if repo_id.count("/") != 1:
        return f"{repo_id!r} should be 'namespace/name' (your user or organisation, a slash, the model name)"
    try:
        validate_repo_id(repo_id)
    except HFValidationError as exc:
        return f"{repo_id!r} is not a valid repository id: {exc}"
    if keyword not in repo_id.split("/")[1]:
        return f"the model name {repo_id.split('/')[1]!r} must contain {keyword!r} (camp rule), e.g. '{keyword}2-tiny-plates'"
    return ""


def verify_model_folder(path: str | os.PathLike, load: bool = True) -> dict:
    """Check PATH holds a complete InternVL model (config, weights, remote code, tokenizer) and, with LOAD, that it loads.

    One function on purpose: the file checks are notebook 05's (labsupport.evaluate.conversion.check_model_folder) when
    that module is present, else the short list below.
    """

    path = Path(path)
    cfg_file = path / "config.json"
    if not cfg_file.exists():
        return {"ok": False, "problems": [f"{path} has no config.json"], "parameters": 0}
    problems = list(check_model_folder(path))
    params = 0
    if load and not problems:
        try:
            from transformers import AutoModel, AutoTokenizer

            AutoTokenizer.from_pretrained(str(path), trust_remote_code=True)
            model = AutoModel.from_pretrained(str(path), trust_remote_code=True, low_cpu_mem_usage=True)
            params = sum(p.numel() for p in model.parameters())
            del model
        except Exception as exc:  # reported to the learner as a failed pre-flight check, with the reason
            problems.append(f"transformers could not load it: {type(exc).__name__}: {exc}")
    return {"ok": not problems, "problems": problems, "parameters": params}


@dataclass
class Preflight:
    """The result of preflight(): one (name, ok, message) per check, and the folder's files."""
    checks: list[tuple[str, bool, str]] = field(default_factory=list)
    files: dict[str, int] = field(default_factory=dict)
    folder: str = ""          # the folder checked
    fingerprint: str = ""     # its files, sizes and times then: a later change makes the report stale

    @property
    def ok(self) -> bool:
        """True when every check passed."""
        return all(ok for _, ok, _ in self.checks)

    @property
    def total_bytes(self) -> int:
        """Total size of the files to upload."""
        return sum(self.files.values())

    def __str__(self) -> str:
        lines = [f"{'✅' if ok else '❌'} {name}" + (f": {msg}" if msg else "") for name, ok, msg in self.checks]
        lines.append(f"{len(self.files)} files, {human_size(self.total_bytes)} in total")
        return "\n".join(lines)


def folder_fingerprint(folder: str | os.PathLike) -> str:
    """A hash of FOLDER's file names, sizes and modification times (.git excluded)."""
    h = hashlib.sha256()
    folder = Path(folder)
    for rel, size in list_files(folder).items():
        h.update(f"{rel}\0{size}\0{(folder / rel).stat().st_mtime_ns}\n".encode())
    return h.hexdigest()


def preflight(folder: str | os.PathLike, repo_id: str | None, lfs_threshold: int = HUB_LFS_LIMIT, tokens: list | tuple = (),
              load: bool = True) -> Preflight:
    """Check FOLDER is ready to publish as REPO_ID: name, completeness and loading, LFS coverage, no secrets or leftovers.

    REPO_ID None skips the name check (a push to a git remote names no hub repository)."""
    folder = Path(folder)
    files = list_files(folder)
    rep = Preflight(files=files, folder=str(folder.resolve()), fingerprint=folder_fingerprint(folder))
    if repo_id is not None:
        problem = check_repo_id(repo_id)
        rep.checks.append(("repository name", not problem, problem or f"{repo_id} (contains {REPO_KEYWORD!r})"))
    missing = [f for f in REQUIRED_FILES if f not in files]
    rep.checks.append(("card and .gitattributes present", not missing,
                       f"missing {missing}: build the folder with stage_folder()" if missing else ""))
    verdict = verify_model_folder(folder, load=load)
    rep.checks.append(("model folder complete and loads", verdict["ok"],
                       "; ".join(verdict["problems"]) or (f"{verdict['parameters']:,} parameters" if load else "files only")))
    pats = lfs_patterns(folder)
    uncovered = [f"{rel} ({human_size(size)})" for rel, size in files.items() if size > lfs_threshold and not _matches(rel, pats)]
    rep.checks.append((f"files over {human_size(lfs_threshold)} go through LFS", not uncovered,
                       f"not covered by .gitattributes: {uncovered}; run `git lfs track <file>` or write_gitattributes()"
                       if uncovered else ""))
    strays = stray_files(folder)
    leaks = scan_for_secrets(folder, tokens)
    bad = strays["secret"] + strays["leftover"] + [str(Path(h).relative_to(folder)) for h in leaks]
    rep.checks.append(("no secrets or training leftovers", not bad,
                       f"remove {sorted(set(bad))} from {folder} (tokens, .env, optimizer states and work dirs must not be published)"
                       if bad else ""))
    return rep


# ------------------------------------------------------------------------------- the publish gate
class PublishRefused(RuntimeError):
    """A publish route refused the folder: its pre-flight failed, is stale, or a secret was found."""


def require_cleared(folder: str | os.PathLike, report: Preflight | None = None, tokens: list | tuple = (),
                    repo_id: str | None = None) -> Preflight:
    """Raise PublishRefused unless FOLDER may be published: REPORT (from preflight) passed for this very folder and
    nothing changed since; without a REPORT a files-only pre-flight is run here. Secrets (TOKENS and every token
    known_tokens() finds) are always searched anew."""
    folder = Path(folder)
    tokens = [*tokens, *known_tokens()]
    if report is not None:
        if not report.ok:
            raise PublishRefused(f"the pre-flight of {folder} failed, so nothing was published:\n{report}")
        if report.folder and report.folder != str(folder.resolve()):
            raise PublishRefused(f"the pre-flight report is for {report.folder}, not {folder}: run preflight() on this folder")
        if report.fingerprint and report.fingerprint != folder_fingerprint(folder):
            raise PublishRefused(f"{folder} changed after its pre-flight: run preflight() again before publishing")
    else:
        report = preflight(folder, repo_id, tokens=tokens, load=False)
        if not report.ok:
            raise PublishRefused(f"the pre-flight of {folder} failed, so nothing was published:\n{redact(str(report), tokens)}")
    strays = stray_files(folder)["secret"]
    leaks = [str(Path(h).relative_to(folder)) if h.startswith(str(folder)) else h for h in scan_for_secrets(folder, tokens)]
    if strays or leaks:
        raise PublishRefused(f"{folder} holds secrets ({sorted(set(strays + leaks))}): remove them (and revoke a token "
                             "that was written to a file) before publishing")
    return report


def _refuse_secrets_in(workdir: Path, tokens: list | tuple) -> None:
    """Before a commit: refuse when the files about to be committed, or the repository's objects, hold a secret."""
    names = [rel for rel in list_files(workdir) if _matches(rel, SECRET_NAMES)]
    hits = scan_for_secrets(workdir, [*tokens, *known_tokens()])  # the work tree, .git's files, and git's objects decompressed
    if names or hits:
        raise PublishRefused(f"refusing to commit in {workdir}: secrets in {sorted(set(names + hits))}; "
                             "nothing was pushed. Remove them (and revoke a token that was written anywhere)")


def upload_plan(folder: str | os.PathLike, lfs_threshold: int = HUB_LFS_LIMIT) -> str:
    """A table of what an upload of FOLDER sends: each file, its size, and whether it goes through git-lfs."""
    files = list_files(folder)
    pats = lfs_patterns(folder)
    width = max(map(len, files), default=10)
    rows = [f"  {'file':<{width}}  {'size':>10}  route"]
    for rel, size in files.items():
        via = "git-lfs" if _matches(rel, pats) else "git"
        flag = "  ⚠ over the limit without LFS" if size > lfs_threshold and via == "git" else ""
        rows.append(f"  {rel:<{width}}  {human_size(size):>10}  {via}{flag}")
    n_lfs = sum(1 for r in files if _matches(r, pats))
    rows.append(f"  {len(files)} files, {human_size(sum(files.values()))}; {n_lfs} through git-lfs")
    return "\n".join(rows)


def sha256(path: str | os.PathLike) -> str:
    """SHA-256 of a file, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# ------------------------------------------------------------------------ route (c): git + git-lfs
class GitPushRejected(RuntimeError):
    """The remote refused the push (e.g. a file too large without git-lfs); the message holds the remote's words."""


LFS_GIT_CONFIG = {
    # the lfs filter, set per command so that no global `git lfs install` is needed
    "filter.lfs.clean": "git-lfs clean -- %f",
    "filter.lfs.smudge": "git-lfs smudge -- %f",
    "filter.lfs.process": "git-lfs filter-process",
    "filter.lfs.required": "true",
    # git-lfs talks HTTP to a hub; for a remote that is a local folder it needs its standalone file agent (git-lfs >= 2.10)
    "lfs.standalonetransferagent": "lfs-standalone-file",
    "lfs.customtransfer.lfs-standalone-file.path": "git-lfs",
    "lfs.customtransfer.lfs-standalone-file.args": "standalone-file",
}
AUTHOR = {"user.name": "InternVL course", "user.email": "course@localhost"}
# A credential helper that reads the token from the environment of the git process: it never reaches a file or argv.
CREDENTIAL_HELPER = "!f() { test \"$1\" = get && echo username=\"$HUB_GIT_USER\" && echo password=\"$HUB_GIT_TOKEN\"; }; f"

SIZE_LIMIT_HOOK = """#!/bin/sh
# pre-receive hook written by labsupport.publish.hub: the course's stand-in for the Hub's rule that files
# over {limit} bytes must be stored with git-lfs. Plain git would accept them; the Hub does not.
zero=0000000000000000000000000000000000000000
bad=0
while read old new ref; do
  [ "$new" = "$zero" ] && continue
  big=$(git rev-list --objects "$new" --not --all |
        git cat-file --batch-check='%(objecttype) %(objectsize) %(rest)' |
        awk -v lim={limit} '$1 == "blob" && $2 > lim {{ print $3 " (" $2 " bytes)" }}')
  if [ -n "$big" ]; then
    echo "-------------------------------------------------------------------------" >&2
    echo "Your push was rejected: file too large. Files over {limit} bytes must use git-lfs:" >&2
    echo "$big" | sed 's/^/    /' >&2
    echo "Run: git lfs track <file>; git add .gitattributes <file>; git commit --amend; git push" >&2
    echo "-------------------------------------------------------------------------" >&2
    bad=1
  fi
done
exit $bad
"""


def git_lfs_version() -> str | None:
    """The installed git-lfs version ("3.3.0"), or None when git-lfs is missing (Debian/Ubuntu: apt-get install git-lfs)."""
    try:
        out = subprocess.run(["git", "lfs", "version"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    m = re.search(r"git-lfs/(\d+\.\d+\.\d+)", out)
    return m.group(1) if m else None


def _git(args: list[str], cwd: str | os.PathLike | None = None, token: Token | None = None, user: str = "",
         lfs: bool = True, check: bool = True) -> subprocess.CompletedProcess:
    """Run git with the course's -c settings (lfs filter, author, credentials from the environment); errors come back redacted."""
    conf = {**AUTHOR, **(LFS_GIT_CONFIG if lfs else {})}
    cmd = ["git"] + [a for k, v in conf.items() for a in ("-c", f"{k}={v}")]
    env = {**os.environ, "GIT_TERMINAL_PROMPT": "0", "GIT_LFS_SKIP_SMUDGE": "0"}
    if token is not None:
        cmd += ["-c", "credential.helper=", "-c", f"credential.helper={CREDENTIAL_HELPER}"]
        env.update(HUB_GIT_TOKEN=token.reveal(), HUB_GIT_USER=user or "user")
    proc = subprocess.run(cmd + args, cwd=cwd, env=env, capture_output=True, text=True)
    proc.stdout, proc.stderr = redact(proc.stdout, [token] if token else []), redact(proc.stderr, [token] if token else [])
    if check and proc.returncode != 0:
        raise RuntimeError(f"`git {' '.join(args)}` failed (exit {proc.returncode}) in {cwd}:\n{proc.stderr.strip()}")
    return proc


def make_local_remote(path: str | os.PathLike, size_limit: int | None = None) -> Path:
    """Create an empty bare repository at PATH (replacing one there) to push to; with SIZE_LIMIT, refuse plain-git files above it."""
    path = Path(path)
    if path.exists():
        shutil.rmtree(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _git(["init", "--quiet", "--bare", "--initial-branch=main", str(path)])
    if size_limit is not None:
        install_size_limit_hook(path, size_limit)
    return path


def install_size_limit_hook(remote: str | os.PathLike, size_limit: int) -> Path:
    """Make the bare repository REMOTE refuse plain-git files above SIZE_LIMIT bytes (the Hub's rule, as a
    pre-receive hook: the course's stand-in, the one step of the local route that is not a git command); return the hook."""
    hooks = Path(remote) / "hooks"
    if not hooks.is_dir():
        raise FileNotFoundError(f"{remote} is not a bare git repository (no hooks/ folder): create it first with "
                                f"`git init --bare {remote}`")
    hook = hooks / "pre-receive"
    hook.write_text(SIZE_LIMIT_HOOK.format(limit=int(size_limit)), encoding="utf-8")
    hook.chmod(0o755)
    return hook


def git_push(folder: str | os.PathLike, remote: str | os.PathLike, workdir: str | os.PathLike, use_lfs: bool = True,
             message: str = "Upload fine-tuned InternVL model", token: Token | None = None, user: str = "",
             branch: str = "main", report: Preflight | None = None) -> dict:
    """Clone REMOTE into WORKDIR, copy FOLDER in, commit and push (git-lfs for .gitattributes patterns when USE_LFS).

    The seed's manual steps, scripted. Without USE_LFS the .gitattributes is left out, as in the seed's first
    attempt, and a remote with a size limit answers GitPushRejected. Returns the commit and the LFS files.
    FOLDER must pass its pre-flight (REPORT, or a files-only one run here) and the copy is searched for secrets
    before the commit and in git's objects before the push: PublishRefused otherwise, and nothing is pushed.
    """
    folder, workdir = Path(folder), Path(workdir)
    tokens = [token] if token else []
    require_cleared(folder, report, tokens)
    if use_lfs and git_lfs_version() is None:
        raise RuntimeError("git-lfs is not installed: on Debian/Ubuntu `apt-get install git-lfs` (the course's Makefile does it)")
    if workdir.exists():
        shutil.rmtree(workdir)
    workdir.parent.mkdir(parents=True, exist_ok=True)
    _git(["clone", "--quiet", str(remote), str(workdir)], token=token, user=user, lfs=use_lfs)
    _git(["checkout", "--quiet", "-B", branch], cwd=workdir)
    for rel in list_files(folder):
        if rel == ".gitattributes" and not use_lfs:
            continue
        dst = workdir / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(folder / rel, dst)
    try:
        _refuse_secrets_in(workdir, tokens)
        _git(["add", "--all"], cwd=workdir, lfs=use_lfs)
        _git(["commit", "--quiet", "-m", message], cwd=workdir, lfs=use_lfs)
        _refuse_secrets_in(workdir, tokens)
    except PublishRefused:
        shutil.rmtree(workdir, ignore_errors=True)  # the clone holds the secret: it must not stay around either
        raise
    proc = _git(["push", "origin", f"HEAD:{branch}"], cwd=workdir, token=token, user=user, lfs=use_lfs, check=False)
    if proc.returncode != 0:
        raise GitPushRejected(f"the remote refused the push (exit {proc.returncode}):\n{proc.stderr.strip()}")
    commit = _git(["rev-parse", "HEAD"], cwd=workdir).stdout.strip()
    lfs_files = _git(["lfs", "ls-files", "--name-only"], cwd=workdir).stdout.split() if use_lfs else []
    return {"commit": commit, "lfs_files": sorted(lfs_files), "workdir": workdir, "output": proc.stderr.strip()}


def clone_and_compare(remote: str | os.PathLike, dest: str | os.PathLike, reference: str | os.PathLike,
                      branch: str = "main") -> dict:
    """Clone REMOTE (git-lfs downloading the weights) into DEST and compare every file of REFERENCE byte for byte."""
    dest, reference = Path(dest), Path(reference)
    if dest.exists():
        shutil.rmtree(dest)
    _git(["clone", "--quiet", "--branch", branch, str(remote), str(dest)])
    got, want = list_files(dest), list_files(reference)
    missing = sorted(set(want) - set(got))
    differ = sorted(r for r in set(want) & set(got) if sha256(dest / r) != sha256(reference / r))
    lfs_files = sorted(_git(["lfs", "ls-files", "--name-only"], cwd=dest).stdout.split())
    return {"identical": not missing and not differ, "missing": missing, "differ": differ,
            "extra": sorted(set(got) - set(want)), "lfs_files": lfs_files, "files": len(got)}


# ------------------------------------------------------------------- routes (a) and (b): the hub SDKs
def hub_user(token: Token) -> str:
    """The Hugging Face user name the token belongs to (a network call); errors come back with the token masked."""
    from huggingface_hub import HfApi

    try:
        return HfApi().whoami(token=token.reveal())["name"]
    except Exception as exc:  # re-raised, redacted and without the original chain
        raise RuntimeError(f"the Hub did not accept the token {mask(token.reveal())} from {token.source}: "
                           f"{redact(f'{type(exc).__name__}: {exc}', [token])}") from None


def upload_huggingface(folder: str | os.PathLike, repo_id: str, token: Token, private: bool = True,
                       message: str = "Upload fine-tuned InternVL model", report: Preflight | None = None) -> str:
    """Route (a): create REPO_ID on the Hugging Face Hub (if needed) and upload FOLDER; return the commit URL.

    FOLDER must pass its pre-flight (REPORT, or one run here without loading the model): PublishRefused otherwise."""
    from huggingface_hub import HfApi

    require_cleared(folder, report, [token], repo_id=repo_id)
    api = HfApi()
    try:
        api.create_repo(repo_id, token=token.reveal(), private=private, exist_ok=True)
        info = api.upload_folder(repo_id=repo_id, folder_path=str(folder), commit_message=message, token=token.reveal())
    except Exception as exc:  # re-raised, redacted and without the original chain
        raise RuntimeError(f"upload of {folder} to {repo_id} failed: {redact(f'{type(exc).__name__}: {exc}', [token])}") from None
    return str(info.commit_url)


def upload_modelscope(folder: str | os.PathLike, repo_id: str, token: Token, private: bool = True,
                      message: str = "Upload fine-tuned InternVL model", report: Preflight | None = None) -> str:
    """Route (b): create REPO_ID on ModelScope and upload FOLDER with its SDK (pip install modelscope); return the model URL.

    FOLDER must pass its pre-flight (REPORT, or one run here): PublishRefused otherwise.
    Note: ModelScope's SDK keeps its own login cookie under ~/.modelscope after login().
    """
    require_cleared(folder, report, [token], repo_id=repo_id)
    try:
        from modelscope.hub.api import HubApi
    except ImportError:
        raise RuntimeError("the ModelScope SDK is not installed: `pip install modelscope` in the course environment, "
                           "or use the Hugging Face route") from None
    api = HubApi()
    try:
        api.login(token.reveal())
        if not api.repo_exists(repo_id):
            api.create_model(repo_id, visibility=1 if private else 5)  # ModelScope: 1 private, 5 public
        api.upload_folder(repo_id=repo_id, folder_path=str(folder), commit_message=message, token=token.reveal())
    except Exception as exc:  # re-raised, redacted and without the original chain
        raise RuntimeError(f"upload of {folder} to ModelScope {repo_id} failed: "
                           f"{redact(f'{type(exc).__name__}: {exc}', [token])}") from None
    return f"https://www.modelscope.cn/models/{repo_id}"


def modelscope_available() -> bool:
    """True when the ModelScope SDK can be imported."""
    import importlib.util

    return importlib.util.find_spec("modelscope") is not None


# ------------------------------------------------------------------------ what this notebook publishes
def model_to_publish(artifacts: str | os.PathLike, model_path: str = "tiny") -> tuple[Path, bool, str]:
    """(folder, fine_tuned, why): notebook 05's fine-tuned model when it exists (and notebook 04's last run for this model
    trained), else the base MODEL_PATH, with the reason."""


    finetuned = finetuned_dir(artifacts, model_path)
    skipped = skipped_training(artifacts, model_path)  # 04's last run for this model trained nothing
    if (finetuned / "config.json").exists() and not skipped:
        unfinished = converted_from_finished_run(finetuned)
        if unfinished:  # never publish a half-trained model as the fine-tune
            raise FileNotFoundError(f"the fine-tuned model is not published: {unfinished}")
        return finetuned, True, f"the fine-tuned model written by notebook 05 ({finetuned})"
    if is_embedded(model_path):

        base = resolve_model(model_path, artifacts=artifacts)  # built under this notebook's ARTIFACTS
    else:
        base = Path(model_path).expanduser()
        if not (base / "config.json").exists():
            raise FileNotFoundError(f"MODEL_PATH={model_path!r} holds no config.json: give a model folder, or \"tiny\"")
    if skipped:
        return Path(base), False, (f"the base model {base}, not a fine-tune: notebook 04 did not train this model "
                                   f"({skipped})")
    return Path(base), False, (f"notebook 05 has not written {finetuned} yet, so the base model {base} is published "
                               "instead (run notebooks 04 and 05 first to publish your fine-tune)")
