"""Build the embedded miniature InternVL2 checkpoints ("tiny", "tiny-4b") and resolve the MODEL_PATH parameter.

"tiny" (the default) has the structure of the real InternVL2-2B (InternViT -> pixel shuffle -> MLP
projector -> InternLM2, the LLM from the course's own remote code with the published parameter
names), "tiny-4b" that of InternVL2-4B (the same towers with Phi-3, built into transformers); both
in the official remote-code format, with hidden sizes of tens and two layers per tower, so it loads with AutoModel(trust_remote_code=True), trains with XTuner and runs on a
CPU. Its ViT is pre-trained, as the real InternViT is (the shipped weights of labsupport.model.vit_pretrain: it tells
colours, shapes and counts of plates apart); the projector and the LLM are random (deterministic for a seed),
so it answers gibberish until fine-tuned. They are drawn at the scale that suits a narrow network (std
1/sqrt(fan_in), see init_std), so that the image's signal reaches the answer at once and fine-tuning on a CPU
takes minutes, not hours.

    from labsupport.model.tinymodel import resolve_model
    model_dir = resolve_model(MODEL_PATH)      # "tiny" -> artifacts/models/internvl2-tiny/
                                               # "tiny-4b" -> artifacts/models/internvl2-tiny-4b/
    build_tiny_internlm2_chat(out_dir)         # a text-only tiny internlm2-chat LLM (the self-cognition track)
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
import zlib
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

from labsupport.model.folder_check import config_problems, weight_problems
from labsupport.core.checkpoints import write_json_atomic
from labsupport.core.paths import EMBEDDED_MODELS, artifacts_dir
from labsupport.model.remote_code import REMOTE_CODE_DIR, REMOTE_CODE_FILES
from labsupport.model import towers
from labsupport.model.remote_code.configuration_internlm2 import InternLM2Config
from labsupport.model.remote_code.configuration_internvl_chat import InternVLChatConfig
from labsupport.model.remote_code.modeling_internlm2 import InternLM2ForCausalLM
from labsupport.model.remote_code.modeling_internvl_chat import InternVLChatModel

if TYPE_CHECKING:
    import torch
    from tokenizers import Tokenizer

from typing import Any


CORPUS = Path(__file__).resolve().parent.parent / "data" / "tokenizer_corpus.txt"
STAMP_FILE = ".labsupport-build.json"
BUILDER_VERSION = 4  # bump when the builder writes something different (2: fan-in scaled weights; 3: InternLM2 default;
                     # 4: the pre-trained ViT)

INTERNVL_TOKENS = ["<img>", "</img>", "<IMG_CONTEXT>", "<quad>", "</quad>", "<ref>", "</ref>", "<box>", "</box>"]
# InternLM2's own special tokens first (<unk>=0, <s>=1, </s>=2, as in the published tokenizer), then InternVL's.
INTERNLM2_SPECIAL_TOKENS = ["<unk>", "<s>", "</s>", "<|im_start|>", "<|im_end|>", "<|action_start|>",
                            "<|action_end|>", "<|interpreter|>", "<|plugin|>"] + INTERNVL_TOKENS
PHI3_SPECIAL_TOKENS = ["<unk>", "<s>", "</s>", "<|endoftext|>",
                       "<|system|>", "<|user|>", "<|assistant|>", "<|end|>"] + INTERNVL_TOKENS
SPECIAL_TOKENS = PHI3_SPECIAL_TOKENS  # the Phi-3 layout's list (kept for callers of the earlier builder)
# The system prompts XTuner 0.2.0's InternVL dataset trains with (xtuner/dataset/internvl_dataset.py); the tiny
# models' conversation.py and chat_template use the same ones, so training, chat() and serving see one prompt.
INTERNLM2_SYSTEM = "You are an AI assistant whose name is InternLM (书生·浦语)."
DEFAULT_SYSTEM = PHI3_SYSTEM = "You are an AI assistant whose name is Phi-3."

# The sizes of the miniature model (the real InternVL2-2B in brackets; tiny-4b keeps the same sizes).
TINY_SETTINGS = {
    "vision": {"hidden_size": 64, "num_attention_heads": 2, "num_hidden_layers": 2,  # [1024, 16, 24]
               "intermediate_size": 128, "image_size": 448, "patch_size": 14},       # [4096, 448, 14]
    "llm": {"hidden_size": 128, "num_attention_heads": 4, "num_key_value_heads": 2,  # [2048, 16, 8]
            "num_hidden_layers": 2, "intermediate_size": 256,                         # [24, 8192]
            "max_position_embeddings": 4096},                                         # [32768]
    "tokenizer_vocab_size": 3000,  # [92553]
    "init_std": 0.02,  # config.json's initializer_range (what transformers uses for weights it creates)
}


_TEXT_MACRO = (
    "{%- macro text(content) -%}"
    "{%- if content is string -%}{{ content }}"
    "{%- else -%}{%- for part in content -%}{%- if part['type'] == 'text' -%}{{ part['text'] }}"
    "{%- endif -%}{%- endfor -%}{%- endif -%}"
    "{%- endmacro -%}"
)


def _chat_template(default_system: str, system: str, user: str, assistant: str, end: str, generation: str) -> str:
    """A jinja chat_template: SYSTEM/USER/ASSISTANT wrap a message ('{}' = its text) and END closes it;
    DEFAULT_SYSTEM is used when the messages bring none; GENERATION opens the assistant's turn."""
    def part(wrap: str, expr: str) -> str:
        before, after = wrap.split("{}")
        return "{{ " + repr(before) + " + " + expr + " + " + repr(after + end) + " }}"
    return (
        _TEXT_MACRO
        + "{%- if messages and messages[0]['role'] == 'system' -%}"
        "{%- set system = text(messages[0]['content']) -%}{%- set turns = messages[1:] -%}"
        "{%- else -%}{%- set system = " + repr(default_system) + " -%}{%- set turns = messages -%}{%- endif -%}"
        "{%- if system -%}" + part(system, "system") + "{%- endif -%}"
        "{%- for message in turns -%}"
        "{%- if message['role'] == 'user' -%}" + part(user, "text(message['content'])")
        + "{%- elif message['role'] == 'assistant' -%}" + part(assistant, "text(message['content'])")
        + "{%- endif -%}"
        "{%- endfor -%}"
        "{%- if add_generation_prompt -%}{{ " + repr(generation) + " }}{%- endif -%}"
    )


# Phi-3 chat layout as XTuner 0.2.0 trains InternVL2-Phi3 (and as conversation.py's "phi3-chat"
# renders it): "<|system|>\n{system}<|end|>\n<|user|>\n{q}<|end|><|assistant|>\n{a}<|end|>".
CHAT_TEMPLATE = PHI3_CHAT_TEMPLATE = (
    _TEXT_MACRO
    + "{%- if messages and messages[0]['role'] == 'system' -%}"
    "{%- set system = text(messages[0]['content']) -%}{%- set turns = messages[1:] -%}"
    "{%- else -%}{%- set system = '" + PHI3_SYSTEM + "' -%}{%- set turns = messages -%}{%- endif -%}"
    "{%- if system -%}{{ '<|system|>\\n' + system + '<|end|>\\n' }}{%- endif -%}"
    "{%- for message in turns -%}"
    "{%- if message['role'] == 'user' -%}{{ '<|user|>\\n' + text(message['content']) + '<|end|>' }}"
    "{%- elif message['role'] == 'assistant' -%}{{ '<|assistant|>\\n' + text(message['content']) + '<|end|>' }}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|assistant|>\\n' }}{%- endif -%}"
)
# InternVL2-2B's layout as XTuner 0.2.0's InternVL dataset trains it and InternVL's conversation.py
# "internlm2-chat" renders it (no newline after <|im_end|>); the tokenizer adds <s> in front:
# "<|im_start|>system\n{system}<|im_end|><|im_start|>user\n{q}<|im_end|><|im_start|>assistant\n{a}<|im_end|>".
INTERNLM2_VL_CHAT_TEMPLATE = _chat_template(
    INTERNLM2_SYSTEM, "<|im_start|>system\n{}", "<|im_start|>user\n{}", "<|im_start|>assistant\n{}", "<|im_end|>",
    "<|im_start|>assistant\n")
# A text-only internlm2-chat LLM as XTuner's internlm2_chat template trains it (ChatML, a newline after each
# <|im_end|>); no default system prompt, like the published internlm2-chat tokenizers.
INTERNLM2_TEXT_CHAT_TEMPLATE = _chat_template(
    "", "<|im_start|>system\n{}", "<|im_start|>user\n{}", "<|im_start|>assistant\n{}", "<|im_end|>\n",
    "<|im_start|>assistant\n")


class Layout(NamedTuple):
    """One embedded model: the folder it is built in, its LLM class, conversation template, tokens and chat_template."""

    name: str
    llm_arch: str
    template: str
    special_tokens: list
    chat_template: str
    system: str


LAYOUTS = {
    "tiny": Layout(EMBEDDED_MODELS["tiny"], "InternLM2ForCausalLM", "internlm2-chat", INTERNLM2_SPECIAL_TOKENS,
                   INTERNLM2_VL_CHAT_TEMPLATE, INTERNLM2_SYSTEM),
    "tiny-4b": Layout(EMBEDDED_MODELS["tiny-4b"], "Phi3ForCausalLM", "phi3-chat", PHI3_SPECIAL_TOKENS,
                      PHI3_CHAT_TEMPLATE, PHI3_SYSTEM),
}
TINY_NAME = LAYOUTS["tiny"].name


def layout_of(llm_arch: str) -> Layout:
    """The embedded layout whose LLM class is LLM_ARCH (InternLM2ForCausalLM -> "tiny", Phi3ForCausalLM -> "tiny-4b")."""
    for layout in LAYOUTS.values():
        if layout.llm_arch == llm_arch:
            return layout
    raise ValueError(f"no embedded layout has the LLM {llm_arch!r}; known: "
                     f"{sorted(l.llm_arch for l in LAYOUTS.values())}")


def _stamp(seed: int, layout: str = "tiny") -> str:
    """Hash of everything the build depends on: remote code, corpus, settings, layout, seed, builder version."""
    h = hashlib.sha256()
    for name in REMOTE_CODE_FILES:
        h.update(name.encode() + b"\0" + (REMOTE_CODE_DIR / name).read_bytes())
    h.update(CORPUS.read_bytes())
    h.update(Path(__file__).read_bytes())
    h.update(json.dumps({"settings": TINY_SETTINGS, "seed": seed, "v": BUILDER_VERSION, "layout": layout}, sort_keys=True).encode())
    return h.hexdigest()


def train_tokenizer(corpus: Path = CORPUS, vocab_size: int = TINY_SETTINGS["tokenizer_vocab_size"],
                    special_tokens: "list[str] | None" = None) -> "Tokenizer":
    """Train the byte-level BPE tokenizer (a tokenizers.Tokenizer) on the course corpus; deterministic.
    SPECIAL_TOKENS (default: InternLM2's and InternVL's) get the first ids, in order."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    special_tokens = list(special_tokens or INTERNLM2_SPECIAL_TOKENS)

    lines = [ln for ln in corpus.read_text(encoding="utf-8").splitlines() if ln and not ln.startswith("#")]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([  # one Chinese character (or CJK punctuation) per word
        pre_tokenizers.Split(Regex("[\u3000-\u303f\u4e00-\u9fff\uff00-\uffef]"), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=1, show_progress=False,
                                  special_tokens=special_tokens,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(lines, trainer=trainer)
    if special_tokens[:4] == INTERNLM2_SPECIAL_TOKENS[:4]:  # InternLM2's tokenizer puts <s> in front of every text
        tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B:1",
                                                           special_tokens=[("<s>", 1)])
    return tok


def _write_tokenizer(tok: "Tokenizer", out: Path, special_tokens: "list[str]", chat_template: str) -> int:
    """Write tokenizer.json and tokenizer_config.json (a PreTrainedTokenizerFast); return the vocab size."""
    (out / "tokenizer.json").write_text(tok.to_str(pretty=True), encoding="utf-8")
    internlm2 = special_tokens[:4] == INTERNLM2_SPECIAL_TOKENS[:4]
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>",
        "pad_token": "</s>" if internlm2 else "<|endoftext|>",  # InternLM2 pads with </s>
        "additional_special_tokens": special_tokens[3 if internlm2 else 4:],
        "model_max_length": TINY_SETTINGS["llm"]["max_position_embeddings"],
        "padding_side": "right",
        "model_input_names": ["input_ids", "attention_mask"],  # no token_type_ids: generate() would refuse them
        "clean_up_tokenization_spaces": False,
        "chat_template": chat_template,
    }
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    special_map = {k: config[k] for k in ("bos_token", "eos_token", "unk_token", "pad_token", "additional_special_tokens")}
    (out / "special_tokens_map.json").write_text(json.dumps(special_map, indent=2) + "\n", encoding="utf-8")
    return tok.get_vocab_size()


def internlm2_llm_config(llm: dict, vocab_size: int, init_std: float = TINY_SETTINGS["init_std"]) -> dict:
    """llm_config of an InternLM2 LLM with the published fields (InternVL2-2B's values) and LLM's sizes."""
    ids = {t: i for i, t in enumerate(INTERNLM2_SPECIAL_TOKENS)}
    return {
        "architectures": ["InternLM2ForCausalLM"], "model_type": "internlm2",
        "auto_map": {"AutoConfig": "configuration_internlm2.InternLM2Config",
                     "AutoModel": "modeling_internlm2.InternLM2ForCausalLM",
                     "AutoModelForCausalLM": "modeling_internlm2.InternLM2ForCausalLM"},
        "vocab_size": vocab_size, "hidden_size": llm["hidden_size"], "intermediate_size": llm["intermediate_size"],
        "num_hidden_layers": llm["num_hidden_layers"], "num_attention_heads": llm["num_attention_heads"],
        "num_key_value_heads": llm["num_key_value_heads"], "hidden_act": "silu",
        "max_position_embeddings": llm["max_position_embeddings"], "initializer_range": init_std,
        "rms_norm_eps": 1e-5, "rope_theta": 1000000, "rope_scaling": {"type": "dynamic", "factor": 2.0},
        "bias": False, "attn_implementation": "eager", "use_cache": True, "tie_word_embeddings": False,
        "bos_token_id": ids["<s>"], "eos_token_id": ids["</s>"], "pad_token_id": ids["</s>"],
        "torch_dtype": "bfloat16",
    }


def internvl_config(vision: dict, llm: dict, vocab_size: int, init_std: float = TINY_SETTINGS["init_std"],
                    llm_arch: str = "Phi3ForCausalLM") -> dict:
    """config.json of an InternVL2 model (official layout, InternViT + the LLM_ARCH LLM: Phi3ForCausalLM as in
    InternVL2-4B or InternLM2ForCausalLM as in InternVL2-2B) of any shape: VISION and LLM hold the keys of
    TINY_SETTINGS["vision"] / ["llm"]; VOCAB_SIZE is the LLM's embedding rows."""
    ids = {t: i for i, t in enumerate(PHI3_SPECIAL_TOKENS)}
    v, l = vision, llm
    vision_config = {
        "architectures": ["InternVisionModel"], "model_type": "intern_vit_6b",
        "num_channels": 3, "patch_size": v["patch_size"], "image_size": v["image_size"],
        "hidden_size": v["hidden_size"], "num_attention_heads": v["num_attention_heads"],
        "intermediate_size": v["intermediate_size"], "num_hidden_layers": v["num_hidden_layers"],
        "qkv_bias": True, "qk_normalization": False, "use_flash_attn": False, "hidden_act": "gelu",
        "norm_type": "layer_norm", "layer_norm_eps": 1e-6, "dropout": 0.0, "drop_path_rate": 0.0,
        "attention_dropout": 0.0, "initializer_range": init_std, "initializer_factor": 1.0,
        "torch_dtype": "bfloat16",
    }
    llm_config = {
        "architectures": ["Phi3ForCausalLM"], "model_type": "phi3",
        "vocab_size": vocab_size, "hidden_size": l["hidden_size"], "intermediate_size": l["intermediate_size"],
        "num_hidden_layers": l["num_hidden_layers"], "num_attention_heads": l["num_attention_heads"],
        "num_key_value_heads": l["num_key_value_heads"], "hidden_act": "silu",
        "max_position_embeddings": l["max_position_embeddings"],
        "original_max_position_embeddings": l["max_position_embeddings"],
        "initializer_range": init_std, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
        "rope_scaling": None, "sliding_window": None, "use_cache": True, "tie_word_embeddings": False,
        "attention_dropout": 0.0, "embd_pdrop": 0.0, "resid_pdrop": 0.0,
        "bos_token_id": ids["<s>"], "eos_token_id": ids["</s>"], "pad_token_id": ids["<|endoftext|>"],
        "torch_dtype": "bfloat16",
    }
    if llm_arch == "InternLM2ForCausalLM":
        llm_config = internlm2_llm_config(l, vocab_size, init_std)
    elif llm_arch != "Phi3ForCausalLM":
        raise ValueError(f"llm_arch must be InternLM2ForCausalLM or Phi3ForCausalLM, got {llm_arch!r}")
    return {
        "architectures": ["InternVLChatModel"],
        "auto_map": {
            "AutoConfig": "configuration_internvl_chat.InternVLChatConfig",
            "AutoModel": "modeling_internvl_chat.InternVLChatModel",
            "AutoModelForCausalLM": "modeling_internvl_chat.InternVLChatModel",
        },
        "model_type": "internvl_chat",
        "torch_dtype": "bfloat16",
        "force_image_size": v["image_size"],
        "downsample_ratio": 0.5,
        "ps_version": "v2",
        "select_layer": -1,
        "template": layout_of(llm_arch).template,
        "dynamic_image_size": True,
        "use_thumbnail": True,
        "min_dynamic_patch": 1,
        "max_dynamic_patch": 12,
        "use_backbone_lora": 0,
        "use_llm_lora": 0,
        "tie_word_embeddings": False,
        "vision_config": vision_config,
        "llm_config": llm_config,
    }


def tiny_config(vocab_size: int, layout: str = "tiny") -> dict:
    """The config.json of the embedded model LAYOUT ("tiny" or "tiny-4b") for a tokenizer of VOCAB_SIZE tokens."""
    padded_vocab = (vocab_size + 63) // 64 * 64
    return internvl_config(TINY_SETTINGS["vision"], TINY_SETTINGS["llm"], padded_vocab,
                           llm_arch=_layout(layout).llm_arch)


def _layout(layout: str) -> Layout:
    """LAYOUTS[LAYOUT], with a message naming the choices."""
    try:
        return LAYOUTS[layout]
    except KeyError:
        raise ValueError(f"unknown embedded model {layout!r}; choose one of {sorted(LAYOUTS)}") from None


def init_kind(name: str, shape) -> str:
    """How parameter NAME starts: "zeros" for biases, "ones" for norms and layer scales, else "normal"."""
    leaf = name.rsplit(".", 1)[-1]
    if leaf == "bias":
        return "zeros"
    if len(shape) == 1 and ("norm" in name or name.startswith("mlp1.0.") or leaf in ("ls1", "ls2")):
        return "ones"
    return "normal"


def init_std(name: str, shape) -> float:
    """Standard deviation of a "normal" parameter: 1/sqrt(fan_in) for weights, 1 for token embeddings, 0.02 for ViT position/class embeddings.

    Why not the real model's initializer_range of 0.02 everywhere: 0.02 is about 1/sqrt(fan_in) for a
    width of 3,072. In a width-128 LLM it shrinks every projection's output about 4x, so what the answer
    token reads from the image tokens arrives ~20x too weak after attention's value and output
    projections; the measured effect: the model answered from the question alone for ~600 iterations
    before it looked at the image. At 1/sqrt(fan_in) (LeCun) signals keep their size through each layer.
    """
    if "embed_tokens" in name or "tok_embeddings" in name:
        return 1.0  # a lookup, not a projection: unit-size rows, as the RMSNorm after it expects
    if len(shape) < 2 or "position_embedding" in name or "class_embedding" in name:
        return 0.02  # added to the patch features: small, like the real model's
    fan_in = 1
    for n in shape[1:]:
        fan_in *= int(n)
    return fan_in ** -0.5


def _init_value(name: str, shape, generator):
    """Deterministic initial value of parameter NAME: zeros for biases, ones for norms and layer scales, else N(0, init_std)."""
    import torch

    kind = init_kind(name, shape)
    if kind == "zeros":
        return torch.zeros(shape)
    if kind == "ones":
        return torch.ones(shape)
    return torch.randn(shape, generator=generator) * init_std(name, shape)


def parameter_shapes(config: dict) -> dict[str, tuple]:
    """Name -> shape of every tensor of the InternVLChatModel CONFIG describes (built on the meta device: no memory)."""
    import torch


    cfg = InternVLChatConfig(**{k: v for k, v in config.items() if k not in ("architectures", "auto_map", "model_type")})
    with torch.device("meta"):
        model = InternVLChatModel(cfg)
    return {name: tuple(t.shape) for name, t in model.state_dict().items()}


def _write_weights(config: dict, out: Path, seed: int, shapes: "dict[str, tuple] | None" = None,
                   replace: "dict[str, torch.Tensor] | None" = None) -> None:
    """Write seeded bf16 weights of SHAPES (default: CONFIG's InternVLChatModel, built on the meta device);
    tensors named in REPLACE (same shapes) are written instead of their random values."""
    import torch
    from safetensors.torch import save_file

    shapes = parameter_shapes(config) if shapes is None else shapes
    tensors = {}
    for name in sorted(shapes):  # one generator per tensor: adding a tensor never changes the others
        gen = torch.Generator().manual_seed(seed * 1_000_003 + zlib.crc32(name.encode()))
        tensors[name] = _init_value(name, shapes[name], gen).to(torch.bfloat16).contiguous()
    for name, value in (replace or {}).items():
        if name not in shapes or tuple(value.shape) != tuple(shapes[name]):
            raise ValueError(f"cannot put {name} {tuple(value.shape)} into this model: it expects "
                             f"{shapes.get(name, 'no such tensor')}; the pre-trained weights and TINY_SETTINGS disagree")
        tensors[name] = value.to(torch.bfloat16).contiguous()
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})


def write_model_files(out: Path, config: dict, tokenizer: "Tokenizer | None" = None) -> int:
    """Write everything of a checkpoint but its weights into OUT: tokenizer, config.json, generation_config.json,
    the remote code; return the tokenizer's vocabulary size (token ids below it are valid for CONFIG's LLM).
    TOKENIZER: the course tokenizer (train_tokenizer()) with the special tokens of CONFIG's LLM, trained here when
    not given."""
    layout = layout_of(config["llm_config"]["architectures"][0])
    tok = tokenizer or train_tokenizer(special_tokens=layout.special_tokens)
    vocab_size = _write_tokenizer(tok, out, layout.special_tokens, layout.chat_template)
    if config["llm_config"]["vocab_size"] < vocab_size:
        raise ValueError(f"llm_config.vocab_size = {config['llm_config']['vocab_size']} is smaller than the tokenizer's "
                         f"{vocab_size} tokens: the embedding must have a row for every token id")
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    ids = {t: i for i, t in enumerate(layout.special_tokens)}
    end = "<|im_end|>" if "<|im_end|>" in ids else "<|end|>"
    generation = {"bos_token_id": ids["<s>"], "eos_token_id": [ids["</s>"], ids[end]],
                  "pad_token_id": config["llm_config"]["pad_token_id"], "do_sample": False, "max_new_tokens": 64}
    (out / "generation_config.json").write_text(json.dumps(generation, indent=2) + "\n", encoding="utf-8")
    for name in REMOTE_CODE_FILES:
        shutil.copyfile(REMOTE_CODE_DIR / name, out / name)
    return vocab_size


def _build_folder(out: Path, stamp: str, seed: int, write, what: str, force: bool = False) -> Path:
    """Write a checkpoint with WRITE(tmp) -> vocab size into a temporary folder, stamp it, then move it to OUT;
    skip when OUT carries STAMP already (unless FORCE); never overwrite a folder this builder did not write."""
    try:
        if not force and json.loads((out / STAMP_FILE).read_text())["stamp"] == stamp:
            return out
    except (FileNotFoundError, KeyError, ValueError):
        pass  # no stamp or an unreadable one: build
    if out.is_dir() and any(out.iterdir()) and not (out / STAMP_FILE).exists():
        raise FileExistsError(f"{out} exists and was not written by {what} (no {STAMP_FILE}); "
                              "refusing to overwrite it. Choose another out_dir or delete that folder yourself.")
    started = time.time()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        vocab_size = write(tmp)
        write_json_atomic(tmp / STAMP_FILE, {"stamp": stamp, "seed": seed, "vocab_size": vocab_size,
                                             "build_seconds": round(time.time() - started, 2)})
        for f in tmp.iterdir():  # mkdtemp and safetensors create private files; a model folder is for everyone
            f.chmod(0o644)
        tmp.chmod(0o755)
        if out.exists():
            shutil.rmtree(out)
        try:
            os.replace(tmp, out)
        except OSError:  # another process finished the same build first: keep its copy if it is current
            if json.loads((out / STAMP_FILE).read_text()).get("stamp") != stamp:
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out


def build_tiny_model(out_dir: str | os.PathLike | None = None, seed: int = 0, force: bool = False,
                     layout: str = "tiny", pretrained_vision: bool = True) -> Path:
    """Write the embedded InternVL2 checkpoint LAYOUT ("tiny": InternVL2-2B's layout with InternLM2; "tiny-4b":
    InternVL2-4B's with Phi-3) to OUT_DIR (default artifacts/models/<its name>/); skip when up to date.
    PRETRAINED_VISION: the ViT gets the shipped pre-trained weights (labsupport.model.vit_pretrain), else random ones."""

    spec = _layout(layout)
    out = Path(out_dir) if out_dir is not None else artifacts_dir() / "models" / spec.name
    stamp = _stamp(seed, layout) + (towers.weights_digest()[:16] if pretrained_vision else "-random-vit")

    def write(tmp: Path) -> int:
        tok = train_tokenizer(special_tokens=spec.special_tokens)
        config = tiny_config(tok.get_vocab_size(), layout)
        vocab_size = write_model_files(tmp, config, tok)
        _write_weights(config, tmp, seed, replace=towers.pretrained_weights() if pretrained_vision else None)
        return vocab_size

    return _build_folder(out, stamp, seed, write, "build_tiny_model", force)


def embedded_layout(model_dir: str | os.PathLike) -> str | None:
    """The layout ("tiny", "tiny-4b") when MODEL_DIR is a current build_tiny_model folder with the pre-trained ViT, else None."""

    try:
        record = json.loads((Path(model_dir) / STAMP_FILE).read_text())
    except (FileNotFoundError, NotADirectoryError, ValueError):
        return None
    digest = towers.weights_digest()[:16]
    return next((name for name in LAYOUTS if record.get("stamp") == _stamp(record.get("seed", 0), name) + digest), None)


INTERNLM2_TEXT_FILES = ("configuration_internlm2.py", "modeling_internlm2.py")


def build_tiny_internlm2_chat(out_dir: str | os.PathLike | None = None, seed: int = 0, force: bool = False) -> Path:
    """Write a text-only miniature internlm2-chat LLM (InternLM2ForCausalLM, the course's own remote code, InternLM2's
    special tokens, a ChatML chat_template as XTuner's internlm2_chat template trains it) to OUT_DIR (default
    artifacts/models/internlm2-chat-tiny/); skip when up to date. Loads with AutoModelForCausalLM(trust_remote_code)."""
    out = Path(out_dir) if out_dir is not None else artifacts_dir() / "models" / "internlm2-chat-tiny"
    stamp = _stamp(seed, "internlm2-chat-text")

    def write(tmp: Path) -> int:
        import torch


        tok = train_tokenizer(special_tokens=INTERNLM2_SPECIAL_TOKENS)
        vocab_size = _write_tokenizer(tok, tmp, INTERNLM2_SPECIAL_TOKENS, INTERNLM2_TEXT_CHAT_TEMPLATE)
        config = internlm2_llm_config(TINY_SETTINGS["llm"], (vocab_size + 63) // 64 * 64)
        (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
        ids = {t: i for i, t in enumerate(INTERNLM2_SPECIAL_TOKENS)}
        generation = {"bos_token_id": ids["<s>"], "eos_token_id": [ids["</s>"], ids["<|im_end|>"]],
                      "pad_token_id": ids["</s>"], "do_sample": False, "max_new_tokens": 64}
        (tmp / "generation_config.json").write_text(json.dumps(generation, indent=2) + "\n", encoding="utf-8")
        for name in INTERNLM2_TEXT_FILES:
            shutil.copyfile(REMOTE_CODE_DIR / name, tmp / name)
        cfg = InternLM2Config(**{k: v for k, v in config.items() if k not in ("architectures", "auto_map", "model_type")})
        with torch.device("meta"):
            shapes = {n: tuple(t.shape) for n, t in InternLM2ForCausalLM(cfg).state_dict().items()}
        _write_weights(config, tmp, seed, shapes)
        return vocab_size

    return _build_folder(out, stamp, seed, write, "build_tiny_internlm2_chat", force)


def resolve_model(model_path: str = "tiny", artifacts: str | os.PathLike | None = None) -> Path:
    """Resolve the MODEL_PATH parameter: "tiny" / "tiny-4b" build/return an embedded model (under ARTIFACTS), else a
    checkpoint folder."""
    key = str(model_path).strip().lower()
    if key in LAYOUTS:
        return build_tiny_model(artifacts_dir(artifacts) / "models" / LAYOUTS[key].name, layout=key)
    path = Path(model_path).expanduser()
    if not path.is_dir():
        raise FileNotFoundError(
            f"MODEL_PATH = {str(model_path)!r} is not a folder. Set MODEL_PATH to \"tiny\" (or \"tiny-4b\") for a built-in "
            "miniature model, or to the folder of a downloaded InternVL2 checkpoint (e.g. ./InternVL2-2B) "
            "that holds config.json and the weights.")
    if not (path / "config.json").is_file():
        raise FileNotFoundError(
            f"MODEL_PATH = {str(model_path)!r} has no config.json, so it is not a Hugging Face checkpoint. "
            "Point MODEL_PATH at the folder that holds config.json (e.g. the one `huggingface-cli download "
            "OpenGVLab/InternVL2-2B --local-dir ...` created), or set it to \"tiny\".")
    _check_remote_code_name(path)
    problems = weight_problems(path) + config_problems(path)  # what loading needs, read before a load fails deep inside
    if problems:
        raise ModelFolderInvalid(f"MODEL_PATH = {str(model_path)!r} cannot be loaded:\n  - " + "\n  - ".join(problems))
    return path.resolve()


class ModelFolderInvalid(ValueError):
    """MODEL_PATH's files cannot load as the checkpoint they claim to be (git-lfs pointers, cut files, a wrong config)."""


def _check_remote_code_name(path: Path) -> None:
    """transformers < 5 imports remote code as a module named after the folder: a '.' in that name breaks it."""
    if "." not in path.resolve().name:
        return
    try:
        auto_map = json.loads((path / "config.json").read_text(encoding="utf-8")).get("auto_map")
        from transformers import dynamic_module_utils
    except (ValueError, ImportError):
        return  # unreadable config or no transformers here: nothing to predict
    if auto_map and not hasattr(dynamic_module_utils, "_sanitize_module_name"):
        raise ValueError(
            f"MODEL_PATH = {str(path)!r}: this transformers version cannot load remote code from a folder whose "
            f"name contains '.' ({path.resolve().name!r}; it fails with 'No module named transformers_modules...'). "
            "Rename the folder (e.g. replace '.' with '_') and set MODEL_PATH to the new name.")


def parameter_counts(model: "torch.nn.Module") -> dict[str, int]:
    """Number of parameters of an InternVLChatModel by part: vision_model, mlp1, language_model, total."""
    parts = {name: sum(p.numel() for p in getattr(model, name).parameters())
             for name in ("vision_model", "mlp1", "language_model")}
    parts["total"] = sum(parts.values())
    return parts


def load_tokenizer(model_path: str = "tiny", artifacts: str | Path | None = None) -> Any:
    """The tokenizer of MODEL_PATH ("tiny" = the embedded model's, built if needed) for length checks."""
    from transformers import AutoTokenizer


    model_path = resolve_model(model_path, artifacts)
    return AutoTokenizer.from_pretrained(model_path, trust_remote_code=True)
