"""Assemble local checkpoints in the official InternVL2 format (published remote code, tiny random weights) for tests.

A learner with real weights points MODEL_PATH at a folder like OpenGVLab/InternVL2-2B: config.json, the
published remote code (configuration_*.py, modeling_*.py, conversation.py, tokenization_internlm2*.py)
and the tokenizer files. No machine here can download those repositories, so this module builds
look-alikes under artifacts/official/<name>/ (git-ignored, never committed) to run the course against:

- the remote code is OpenGVLab/InternVL's published training code, read from a local clone of
  https://github.com/OpenGVLab/InternVL at commit 2410d1dbf208f0e799459aff9376e5747dbf41a2
  (internvl_chat/internvl/model/{internvl_chat,internlm2,phi3}/*.py and internvl_chat/internvl/conversation.py),
  the same classes the Hugging Face repositories ship; its absolute `internvl.*` imports are rewritten to the
  relative imports of a Hugging Face folder, nothing else is changed;
- config.json has the published fields and values of each repository (labsupport/data/internvl2_family.json
  for the shapes), shrunk to a few layers of width 64/128 so that a CPU runs it in seconds;
- the tokenizer has the published class and special tokens (InternLM2Tokenizer for 2B/8B, LlamaTokenizer for
  4B's Phi-3, Qwen2Tokenizer for 1B) and the published chat_template, but its vocabulary is trained on the
  course corpus (the real tokenizer.model files are not on GitHub): the code path is the official one,
  the token ids are not;
- weights are random (std 1/sqrt(fan_in), as labsupport.model.tinymodel draws them).

    python -m labsupport.model.official --source /path/to/InternVL-clone 2B     # -> artifacts/official/InternVL2-2B
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from labsupport.core.paths import artifacts_dir
from labsupport.core.checkpoints import write_json_atomic
from labsupport.model.params import load_family_file
from labsupport.model.tinymodel import CORPUS, _write_weights, train_tokenizer
from labsupport.model.towers import PREFIX, pretrained_weights

SOURCE_REPO = "OpenGVLab/InternVL"
SOURCE_COMMIT = "2410d1dbf208f0e799459aff9376e5747dbf41a2"
DEFAULT_SOURCE = Path("/work/.mirror/OpenGVLab+InternVL/repo")  # where the fetch tool put the clone here
SIZES = ("1B", "2B", "4B", "8B")
INTERNVL_TOKENS = ["<img>", "</img>", "<IMG_CONTEXT>", "<quad>", "</quad>", "<ref>", "</ref>", "<box>", "</box>"]
_PKG = "internvl_chat/internvl"
_CODE = {  # file in the folder -> file in the clone
    "configuration_intern_vit.py": f"{_PKG}/model/internvl_chat/configuration_intern_vit.py",
    "configuration_internvl_chat.py": f"{_PKG}/model/internvl_chat/configuration_internvl_chat.py",
    "modeling_intern_vit.py": f"{_PKG}/model/internvl_chat/modeling_intern_vit.py",
    "modeling_internvl_chat.py": f"{_PKG}/model/internvl_chat/modeling_internvl_chat.py",
    "conversation.py": f"{_PKG}/conversation.py",
    "configuration_internlm2.py": f"{_PKG}/model/internlm2/configuration_internlm2.py",
    "modeling_internlm2.py": f"{_PKG}/model/internlm2/modeling_internlm2.py",
    "tokenization_internlm2.py": f"{_PKG}/model/internlm2/tokenization_internlm2.py",
    "tokenization_internlm2_fast.py": f"{_PKG}/model/internlm2/tokenization_internlm2_fast.py",
    "configuration_phi3.py": f"{_PKG}/model/phi3/configuration_phi3.py",
    "modeling_phi3.py": f"{_PKG}/model/phi3/modeling_phi3.py",
}
# The published chat_template of each repository's tokenizer_config.json (the LLM's own; InternVL kept it).
CHATML_NO_SYSTEM = ("{{ bos_token }}{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + "
                    "message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}"
                    "{{ '<|im_start|>assistant\n' }}{% endif %}")
QWEN2_TEMPLATE = ("{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
                  "{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}{% endif %}"
                  "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
                  "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
PHI3_TEMPLATE = ("{{ bos_token }}{% for message in messages %}{% if (message['role'] == 'system') %}"
                 "{{'<|system|>' + '\n' + message['content'] + '<|end|>' + '\n'}}{% elif (message['role'] == 'user') %}"
                 "{{'<|user|>' + '\n' + message['content'] + '<|end|>' + '\n' + '<|assistant|>' + '\n'}}"
                 "{% elif message['role'] == 'assistant' %}{{message['content'] + '<|end|>' + '\n'}}{% endif %}"
                 "{% endfor %}")
# Per size: the LLM, conversation template, remote code files, tokenizer and the LLM fields of the published config.
LAYOUTS = {
    "1B": {"llm": "Qwen2ForCausalLM", "template": "Hermes-2", "code": [], "tokenizer": "qwen2",
           "chat_template": QWEN2_TEMPLATE,
           "llm_config": {"model_type": "qwen2", "hidden_act": "silu", "rms_norm_eps": 1e-6, "rope_theta": 1000000.0,
                          "max_position_embeddings": 32768, "use_sliding_window": False, "sliding_window": 32768,
                          "max_window_layers": 21, "tie_word_embeddings": False, "attention_dropout": 0.0,
                          "bos_token_id": None, "eos_token_id": None, "use_cache": True, "torch_dtype": "bfloat16"}},
    "2B": {"llm": "InternLM2ForCausalLM", "template": "internlm2-chat", "tokenizer": "internlm2",
           "code": ["configuration_internlm2.py", "modeling_internlm2.py", "tokenization_internlm2.py",
                    "tokenization_internlm2_fast.py"],
           "chat_template": CHATML_NO_SYSTEM,
           "llm_config": {"model_type": "internlm2", "hidden_act": "silu", "rms_norm_eps": 1e-5, "rope_theta": 1000000,
                          "rope_scaling": {"type": "dynamic", "factor": 2.0}, "max_position_embeddings": 32768,
                          "bias": False, "attn_implementation": "eager", "tie_word_embeddings": False,
                          "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 2, "use_cache": True,
                          "torch_dtype": "bfloat16",
                          "auto_map": {"AutoConfig": "configuration_internlm2.InternLM2Config",
                                       "AutoModel": "modeling_internlm2.InternLM2ForCausalLM",
                                       "AutoModelForCausalLM": "modeling_internlm2.InternLM2ForCausalLM"}}},
    "4B": {"llm": "Phi3ForCausalLM", "template": "phi3-chat", "tokenizer": "phi3",
           "code": ["configuration_phi3.py", "modeling_phi3.py"], "chat_template": PHI3_TEMPLATE,
           "llm_config": {"model_type": "phi3", "hidden_act": "silu", "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
                          "max_position_embeddings": 4096, "original_max_position_embeddings": 4096,
                          "rope_scaling": None, "sliding_window": 2047, "tie_word_embeddings": False,
                          "attention_dropout": 0.0, "embd_pdrop": 0.0, "resid_pdrop": 0.0, "bos_token_id": 1,
                          "eos_token_id": 32000, "pad_token_id": 32000, "use_cache": True, "torch_dtype": "bfloat16",
                          "auto_map": {"AutoConfig": "configuration_phi3.Phi3Config",
                                       "AutoModelForCausalLM": "modeling_phi3.Phi3ForCausalLM"}}},
}
LAYOUTS["8B"] = {**LAYOUTS["2B"]}
TINY_SHAPES = {"vision": {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 2},
               "llm": {"hidden_size": 128, "intermediate_size": 256, "num_hidden_layers": 2,
                       "num_attention_heads": 4, "num_key_value_heads": 2}}


def official_dir(size: str, artifacts: str | os.PathLike | None = None) -> Path:
    """Where the official-format checkpoint of InternVL2-SIZE is built: ARTIFACTS/official/InternVL2-<SIZE>."""
    return artifacts_dir(artifacts) / "official" / f"InternVL2-{size}"


def available(artifacts: str | os.PathLike | None = None) -> dict[str, Path]:
    """The official-format checkpoints built here so far (size -> folder); empty on a fresh clone or in CI."""
    return {s: official_dir(s, artifacts) for s in SIZES if (official_dir(s, artifacts) / "config.json").is_file()}


def _read_source(source: Path, rel: str) -> str:
    """The text of REL in the InternVL clone SOURCE (a work tree or a bare git directory), at SOURCE_COMMIT when bare."""
    if (source / rel).is_file():
        return (source / rel).read_text(encoding="utf-8")
    done = subprocess.run(["git", "--git-dir", str(source if (source / "HEAD").exists() else source / ".git"), "show",
                           f"{SOURCE_COMMIT}:{rel}"], capture_output=True, text=True)
    if done.returncode:
        raise FileNotFoundError(f"{rel} is not in {source} at {SOURCE_COMMIT[:10]} ({done.stderr.strip()}): clone "
                                f"https://github.com/{SOURCE_REPO} and pass its folder as SOURCE")
    return done.stdout


def flatten_imports(text: str) -> str:
    """Rewrite `from internvl.<...>.<module> import X` to `from .<module> import X`, as in a Hugging Face folder."""
    return re.sub(r"^(\s*)from internvl(?:\.\w+)*\.(\w+) import", r"\1from .\2 import", text, flags=re.M)


def _config(size: str, vocab_size: int) -> dict:
    """config.json of InternVL2-SIZE with the published fields and the tiny shapes."""

    fam = load_family_file()
    lay = LAYOUTS[size]
    vision = {k: v for k, v in fam["vision"].items() if not k.startswith("_")}
    vision.update(TINY_SHAPES["vision"], model_type="intern_vit_6b", use_flash_attn=False, drop_path_rate=0.0,
                  hidden_act="gelu", layer_norm_eps=1e-6, dropout=0.0, attention_dropout=0.0,
                  initializer_range=0.02, initializer_factor=1.0, torch_dtype="bfloat16")
    llm = dict(lay["llm_config"], architectures=[lay["llm"]], vocab_size=vocab_size, initializer_range=0.02,
               **TINY_SHAPES["llm"])
    return {
        "architectures": ["InternVLChatModel"],
        "auto_map": {"AutoConfig": "configuration_internvl_chat.InternVLChatConfig",
                     "AutoModel": "modeling_internvl_chat.InternVLChatModel",
                     "AutoModelForCausalLM": "modeling_internvl_chat.InternVLChatModel"},
        "model_type": "internvl_chat", "torch_dtype": "bfloat16", "template": lay["template"],
        "downsample_ratio": 0.5, "dynamic_image_size": True, "force_image_size": 448, "max_dynamic_patch": 12,
        "min_dynamic_patch": 1, "ps_version": "v2", "select_layer": -1, "use_thumbnail": True,
        "use_backbone_lora": 0, "use_llm_lora": 0, "vision_config": vision, "llm_config": llm,
    }


def _sentencepiece(out: Path, special: list[str], vocab_size: int = 1200) -> None:
    """Train a small sentencepiece BPE model on the course corpus into OUT/tokenizer.model (<unk>=0, <s>=1, </s>=2)."""
    import io

    import sentencepiece as spm


    lines = [ln for ln in CORPUS.read_text(encoding="utf-8").splitlines() if ln and not ln.startswith("#")]
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(lines), model_writer=model, vocab_size=vocab_size,
                                   model_type="bpe", unk_id=0, bos_id=1, eos_id=2, pad_id=-1, byte_fallback=True,
                                   user_defined_symbols=special, character_coverage=1.0, num_threads=1,
                                   minloglevel=2)
    (out / "tokenizer.model").write_bytes(model.getvalue())


def _write_tokenizer(size: str, out: Path) -> int:
    """Write the tokenizer files of InternVL2-SIZE (published class, special tokens, chat_template); return its length."""
    from transformers import AutoTokenizer

    lay = LAYOUTS[size]
    kind = lay["tokenizer"]
    common = {"chat_template": lay["chat_template"], "model_max_length": 8192, "clean_up_tokenization_spaces": False}
    if kind == "internlm2":
        chat = ["<|im_start|>", "<|im_end|>", "<|action_start|>", "<|action_end|>", "<|interpreter|>", "<|plugin|>"]
        _sentencepiece(out, chat)
        cfg = {"tokenizer_class": "InternLM2Tokenizer", "add_bos_token": True, "add_eos_token": False,
               "auto_map": {"AutoTokenizer": ["tokenization_internlm2.InternLM2Tokenizer",
                                              "tokenization_internlm2_fast.InternLM2TokenizerFast"]},
               "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": "</s>",
               "additional_special_tokens": chat + INTERNVL_TOKENS, **common}
    elif kind == "phi3":
        chat = ["<|endoftext|>", "<|assistant|>", "<|placeholder1|>", "<|placeholder2|>", "<|placeholder3|>",
                "<|placeholder4|>", "<|system|>", "<|end|>", "<|placeholder5|>", "<|placeholder6|>", "<|user|>"]
        _sentencepiece(out, [])
        cfg = {"tokenizer_class": "LlamaTokenizer", "add_bos_token": True, "add_eos_token": False, "legacy": False,
               "bos_token": "<s>", "eos_token": "<|endoftext|>", "unk_token": "<unk>", "pad_token": "<|endoftext|>",
               "additional_special_tokens": chat + INTERNVL_TOKENS, **common}
    else:  # qwen2: byte-level BPE files vocab.json + merges.txt

        chat = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
        tok = train_tokenizer(special_tokens=["<|endoftext|>"])
        tok.model.save(str(out))
        cfg = {"tokenizer_class": "Qwen2Tokenizer", "bos_token": None, "eos_token": "<|im_end|>",
               "unk_token": None, "pad_token": "<|endoftext|>", "errors": "replace", "split_special_tokens": False,
               "additional_special_tokens": chat[1:] + INTERNVL_TOKENS, **common}
    (out / "tokenizer_config.json").write_text(json.dumps(cfg, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return len(AutoTokenizer.from_pretrained(str(out), trust_remote_code=True, use_fast=False))


def _pretrained_vit(shapes: dict[str, tuple]) -> dict:
    """The course's pre-trained tiny ViT (labsupport.model.vit_pretrain) when it fits SHAPES tensor for tensor, else {}."""

    vit = pretrained_weights()
    ours = {n for n in shapes if n.startswith(PREFIX)}
    if set(vit) != ours or any(tuple(v.shape) != tuple(shapes[n]) for n, v in vit.items()):
        return {}
    return vit


def build_official_format(size: str, out_dir: str | os.PathLike | None = None, source: str | os.PathLike | None = None,
                          seed: int = 0, pretrained_vit: bool = True) -> Path:
    """Build an InternVL2-SIZE ("1B", "2B", "4B", "8B") checkpoint in the official format with tiny weights (the
    course's pre-trained ViT where its tensors fit and PRETRAINED_VIT, the rest random) from the published code in
    SOURCE (a clone of OpenGVLab/InternVL); returns its folder (default official_dir)."""
    import tempfile


    if size not in LAYOUTS:
        raise ValueError(f"size must be one of {SIZES}, got {size!r}")
    source = Path(source) if source else DEFAULT_SOURCE
    out = Path(out_dir) if out_dir else official_dir(size)
    lay = LAYOUTS[size]
    out.parent.mkdir(parents=True, exist_ok=True)
    # no '.' in the name: transformers 4.48 imports remote code as a module named after the folder
    tmp = Path(tempfile.mkdtemp(prefix=f"_building_{out.name.replace('.', '_')}_", dir=out.parent))
    try:
        names = ["configuration_intern_vit.py", "configuration_internvl_chat.py", "modeling_intern_vit.py",
                 "modeling_internvl_chat.py", "conversation.py"] + lay["code"]
        # the published configuration/modeling files import all LLM families: ship their files, as the HF repos do
        for name in dict.fromkeys(names + ["configuration_internlm2.py", "modeling_internlm2.py",
                                           "configuration_phi3.py", "modeling_phi3.py"]):
            (tmp / name).write_text(flatten_imports(_read_source(source, _CODE[name])), encoding="utf-8")
        n_tokens = _write_tokenizer(size, tmp)
        config = _config(size, (n_tokens + 63) // 64 * 64)
        if lay["tokenizer"] == "phi3":  # Phi-3's ids of <|endoftext|> (32000 in the real vocabulary) in this one
            from transformers import AutoTokenizer

            end = AutoTokenizer.from_pretrained(str(tmp), use_fast=False).convert_tokens_to_ids("<|endoftext|>")
            config["llm_config"].update(eos_token_id=end, pad_token_id=end)
        (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
        (tmp / "generation_config.json").write_text(json.dumps({"do_sample": False}) + "\n", encoding="utf-8")
        from transformers import AutoConfig

        cfg = AutoConfig.from_pretrained(str(tmp), trust_remote_code=True)
        from transformers.dynamic_module_utils import get_class_from_dynamic_module

        model_cls = get_class_from_dynamic_module("modeling_internvl_chat.InternVLChatModel", str(tmp))
        # a real (tiny) instance: the published ViT calls .item() while it builds, which the meta device refuses
        shapes = {n: tuple(t.shape) for n, t in model_cls(cfg).state_dict().items()}
        vit = _pretrained_vit(shapes) if pretrained_vit else {}
        _write_weights(config, tmp, seed, shapes, replace=vit)
        write_json_atomic(tmp / "SOURCE.json", {"remote_code": f"https://github.com/{SOURCE_REPO}",
                                                "commit": SOURCE_COMMIT, "size": size, "seed": seed,
                                                "note": ("the course's pre-trained tiny ViT, " if vit else "")
                                                + "tiny random weights, tokenizer trained on the course corpus"})
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out


def main(argv: list[str] | None = None) -> int:
    """CLI: build the official-format checkpoints named on the command line (default all four)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("sizes", nargs="*", default=list(SIZES))
    parser.add_argument("--source", default=str(DEFAULT_SOURCE), help=f"a clone of github.com/{SOURCE_REPO}")
    parser.add_argument("--artifacts", default=None)
    parser.add_argument("--random-vit", action="store_true", help="random ViT weights too (as a checkpoint of unknown make)")
    a = parser.parse_args(argv)
    for size in a.sizes:
        out = official_dir(size, a.artifacts)
        out = out.with_name(out.name + "-random-vit") if a.random_vit else out
        print(build_official_format(size, out, a.source, pretrained_vit=not a.random_vit))
    return 0


if __name__ == "__main__":
    sys.exit(main())
