"""What loading a checkpoint folder needs, read from its files before anything loads: the safetensors headers (a git-lfs
pointer, a truncated or corrupt file), config.json's `llm_config` and its `template`; one line per problem with the fix.

    weight_problems(folder)    # git-lfs pointers, truncated files, headers that are not JSON
    config_problems(folder)    # llm_config present and plausible (and matching the weights), template known and matching
"""
from __future__ import annotations

import json
import os
import re
import struct
from pathlib import Path

LFS_POINTER = b"version https://git-lfs.github.com/spec/"
MAX_HEADER = 100 * 1024 * 1024  # safetensors' own limit on the JSON header
# the conversation template (config.json "template") each LLM of the InternVL2 family is published with
TEMPLATES_FOR_LLM = {
    "InternLM2ForCausalLM": ("internlm2-chat",),
    "Phi3ForCausalLM": ("phi3-chat",),
    "Qwen2ForCausalLM": ("Hermes-2", "internvl2_5"),
    "LlamaForCausalLM": ("Hermes-2", "internvl2_5", "llama3-chat"),
}
EMBEDDING_NAMES = ("tok_embeddings.weight", "embed_tokens.weight")  # InternLM2, and Phi-3/Qwen2/Llama
_CONV_NAME = re.compile(r"""name\s*=\s*['"]([^'"]+)['"]""")


def _lfs_fix(path: Path) -> str:
    return (f"{path} is a git-lfs pointer ({path.stat().st_size} bytes), not the weights: the clone skipped the large "
            f"files. Run `git lfs install && git lfs pull` in {path.parent} (or download again with "
            "`huggingface-cli download ... --local-dir`)")


def safetensors_header(path: str | os.PathLike) -> dict:
    """The JSON header of a .safetensors file (tensor name -> dtype, shape, data_offsets); raises ValueError naming the
    file and the fix when it is a git-lfs pointer, truncated or corrupt."""
    path = Path(path)
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if head.startswith(LFS_POINTER[:8]) and (head + f.read(len(LFS_POINTER))).startswith(LFS_POINTER):
            raise ValueError(_lfs_fix(path))
        again = f"download {path.name} again (its size or checksum differs from the published file)"
        if len(head) < 8:
            raise ValueError(f"{path} is truncated ({size} bytes, not even a safetensors header): {again}")
        (n,) = struct.unpack("<Q", head)
        if n > MAX_HEADER or n > size - 8:
            raise ValueError(f"{path} is truncated or corrupt: its header claims {n:,} bytes but the file has {size:,}: {again}")
        try:
            header = json.loads(f.read(n).decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            raise ValueError(f"{path} is corrupt: its header is not JSON: {again}") from None
    if not isinstance(header, dict):
        raise ValueError(f"{path} is corrupt: its header is not a JSON object: {again}")
    ends = [t.get("data_offsets", [0, 0])[1] for k, t in header.items() if k != "__metadata__" and isinstance(t, dict)]
    need = 8 + n + max(ends, default=0)
    if need > size:
        raise ValueError(f"{path} is truncated: its tensors need {need:,} bytes but the file has {size:,}: {again}")
    return header


def weight_problems(folder: str | os.PathLike) -> list[str]:
    """One line per weight file in FOLDER that cannot load (git-lfs pointer, truncated, corrupt), with the fix."""
    problems = []
    for path in sorted(Path(folder).glob("*.safetensors")):
        try:
            safetensors_header(path)
        except (ValueError, OSError) as exc:
            problems.append(str(exc) if isinstance(exc, ValueError) else f"{path} cannot be read ({exc.strerror})")
    for path in sorted(Path(folder).glob("pytorch_model*.bin")):
        try:
            with open(path, "rb") as f:
                head = f.read(len(LFS_POINTER))
        except OSError as exc:
            problems.append(f"{path} cannot be read ({exc.strerror})")
            continue
        if head.startswith(LFS_POINTER):
            problems.append(_lfs_fix(path))
        elif not head.startswith((b"PK\x03\x04", b"\x80")):  # a torch zip archive or a legacy pickle
            problems.append(f"{path} is not a torch checkpoint (it starts with {head[:8]!r}): download it again")
    return problems


def _embedding_shape(folder: Path) -> list[int] | None:
    for path in sorted(folder.glob("*.safetensors")):
        try:
            header = safetensors_header(path)
        except (ValueError, OSError):
            continue  # weight_problems names it
        for name, tensor in header.items():
            if name.startswith("language_model.") and name.endswith(EMBEDDING_NAMES) and isinstance(tensor, dict):
                return list(tensor.get("shape") or [])
    return None


def is_internvl_config(cfg: dict) -> bool:
    """Whether a config.json dict claims to be an InternVL chat model (model_type, architectures or auto_map say so)."""
    names = [cfg.get("model_type") or "", *(cfg.get("architectures") or []), *(cfg.get("auto_map") or {}).values()]
    return any("internvl" in str(n).lower() for n in names)


def _known_templates(folder: Path) -> set[str]:
    """The conversation templates FOLDER's conversation.py registers (what model.chat() can look up)."""
    conv = folder / "conversation.py"
    try:
        return set(_CONV_NAME.findall(conv.read_text(encoding="utf-8")))
    except (OSError, UnicodeDecodeError):
        return set()


def _xtuner_knows(template: str) -> bool:
    try:
        from xtuner.utils import PROMPT_TEMPLATE  # only the course env has XTuner; elsewhere only the model's names count
    except ImportError:
        return False
    return template.replace("-", "_") in PROMPT_TEMPLATE


def config_problems(folder: str | os.PathLike) -> list[str]:
    """One line per problem of FOLDER/config.json that makes loading fail or build the wrong model, with the fix:
    unreadable JSON, an InternVL config without a plausible llm_config (or one the weights contradict), an unknown
    template or one that does not match the LLM."""
    folder = Path(folder)
    path = folder / "config.json"
    try:
        cfg = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        return [f"{path} is not UTF-8 text: download it again"]
    except ValueError as exc:
        return [f"{path} is not valid JSON ({exc}): download it again"]
    except OSError as exc:
        return [f"{path} cannot be read ({exc.strerror})"]
    if not isinstance(cfg, dict):
        return [f"{path} holds {type(cfg).__name__}, not a JSON object: download it again"]
    if not is_internvl_config(cfg):
        return []
    problems = []
    llm = cfg.get("llm_config")
    fix = "restore config.json from the published checkpoint (the one the weights came with)"
    if not isinstance(llm, dict) or not llm:
        return [f"{path} has no llm_config: transformers would build a full-size default LLM (~21 GB) instead of the "
                f"checkpoint's: {fix}"]
    arch = llm.get("architectures")
    if not (isinstance(arch, list) and arch and all(isinstance(a, str) for a in arch)):
        problems.append(f"{path}: llm_config.architectures is {arch!r}, not a list of class names: {fix}")
        arch = [""]
    for key in ("hidden_size", "num_hidden_layers", "num_attention_heads", "vocab_size"):
        value = llm.get(key)
        if not (isinstance(value, int) and not isinstance(value, bool) and 0 < value < 10**7):
            problems.append(f"{path}: llm_config.{key} is {value!r}, not a plausible positive integer: {fix}")
    if not isinstance(cfg.get("vision_config"), dict):
        problems.append(f"{path} has no vision_config: {fix}")
    shape = _embedding_shape(folder)
    if shape and len(shape) == 2 and not problems and shape != [llm["vocab_size"], llm["hidden_size"]]:
        problems.append(f"{path}: llm_config says vocab_size {llm['vocab_size']} x hidden_size {llm['hidden_size']} but the "
                        f"weights' embedding is {shape[0]} x {shape[1]}: config.json belongs to another checkpoint: {fix}")
    template = cfg.get("template")
    known = _known_templates(folder)
    expected = TEMPLATES_FOR_LLM.get(arch[0])
    if not isinstance(template, str) or not template:
        problems.append(f"{path} names no conversation template (\"template\"): model.chat() cannot build its prompt; "
                        f"set it to {expected[0]!r}" if expected else f"{path} names no conversation template: {fix}")
    elif known and template not in known:
        problems.append(f"{path}: template {template!r} is not one of the templates its conversation.py registers "
                        f"({', '.join(sorted(known))}): model.chat() raises KeyError; "
                        + (f"set it to {expected[0]!r}" if expected else fix))
    elif not known and not expected and not _xtuner_knows(template):
        problems.append(f"{path}: template {template!r} is unknown (no conversation.py registers it, XTuner has no such "
                        f"template): {fix}")
    elif expected and template not in expected:
        problems.append(f"{path}: template {template!r} does not match the LLM {arch[0]} (published with "
                        f"{' or '.join(map(repr, expected))}): the prompt would be silently wrong; set it to {expected[0]!r}")
    return problems
