"""Tests of labsupport.model.tinymodel and the project's InternVL2 remote code (course env; one check in the deploy env)."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from labsupport.core.paths import repo_root
from labsupport.model.remote_code.conversation import get_conv_template
from labsupport.model.remote_code.modeling_internvl_chat import pixel_shuffle
from labsupport.model.tinymodel import build_tiny_internlm2_chat, build_tiny_model, parameter_counts, resolve_model

GEN = dict(max_new_tokens=6, do_sample=False)
PY_FILES = ["configuration_intern_vit.py", "configuration_internlm2.py", "configuration_internvl_chat.py",
            "conversation.py", "modeling_intern_vit.py", "modeling_internlm2.py", "modeling_internvl_chat.py"]


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def plate_image() -> Image.Image:
    """A 448x448 picture in the spirit of the course task: a white plate with a red circle on grey."""
    img = Image.new("RGB", (448, 448), (200, 200, 200))
    draw = ImageDraw.Draw(img)
    draw.ellipse((40, 40, 408, 408), fill=(255, 255, 255))
    draw.ellipse((180, 180, 260, 260), fill=(220, 20, 20))
    return img


def to_pixel_values(img: Image.Image) -> torch.Tensor:
    """Resize to 448 (bicubic) and normalise with the ImageNet mean/std: [1, 3, 448, 448]."""
    arr = np.asarray(img.convert("RGB").resize((448, 448), Image.BICUBIC), dtype=np.float32) / 255.0
    arr = (arr - np.array([0.485, 0.456, 0.406], dtype=np.float32)) / np.array([0.229, 0.224, 0.225], dtype=np.float32)
    return torch.from_numpy(arr).permute(2, 0, 1).unsqueeze(0)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "internvl2-tiny", seed=0)


@pytest.fixture(scope="module")
def loaded(tiny):
    from transformers import AutoModel, AutoTokenizer

    model = AutoModel.from_pretrained(str(tiny), trust_remote_code=True, torch_dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(str(tiny), trust_remote_code=True)
    return model, tok


@pytest.fixture(scope="module")
def tiny4b(tmp_path_factory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny4b") / "internvl2-tiny-4b", seed=0, layout="tiny-4b")


def test_build_writes_official_layout(tiny):
    cfg = json.loads((tiny / "config.json").read_text())
    assert cfg["architectures"] == ["InternVLChatModel"]
    assert cfg["auto_map"]["AutoModel"] == "modeling_internvl_chat.InternVLChatModel"
    llm = cfg["llm_config"]
    assert llm["architectures"] == ["InternLM2ForCausalLM"] and llm["model_type"] == "internlm2"
    assert llm["auto_map"]["AutoConfig"] == "configuration_internlm2.InternLM2Config"
    for key in ("bias", "rope_theta", "rope_scaling", "attn_implementation", "num_key_value_heads", "rms_norm_eps"):
        assert key in llm, key  # InternLM2Config's published fields
    assert cfg["vision_config"]["model_type"] == "intern_vit_6b"
    for key, value in {"force_image_size": 448, "downsample_ratio": 0.5, "ps_version": "v2", "select_layer": -1,
                       "template": "internlm2-chat", "dynamic_image_size": True, "use_thumbnail": True,
                       "min_dynamic_patch": 1, "max_dynamic_patch": 12}.items():
        assert cfg[key] == value, key
    for name in PY_FILES + ["model.safetensors", "tokenizer.json", "tokenizer_config.json", "generation_config.json"]:
        assert (tiny / name).is_file(), name
    size = sum(f.stat().st_size for f in tiny.iterdir())
    assert size < 10 * 2**20, f"the tiny model should be a few MB, is {size / 2**20:.1f} MB"
    assert cfg["llm_config"]["vocab_size"] % 64 == 0


def test_build_is_deterministic_and_stamped(tiny, tmp_path):
    again = build_tiny_model(tmp_path / "same", seed=0)
    other = build_tiny_model(tmp_path / "other", seed=1)
    for name in ("model.safetensors", "tokenizer.json", "config.json"):
        assert sha256(again / name) == sha256(tiny / name), name
    assert sha256(other / "model.safetensors") != sha256(tiny / "model.safetensors")
    before = (again / "model.safetensors").stat().st_mtime_ns
    assert build_tiny_model(tmp_path / "same", seed=0) == tmp_path / "same"
    assert (again / "model.safetensors").stat().st_mtime_ns == before, "an up-to-date build must be skipped"
    (tmp_path / "precious").mkdir()
    (tmp_path / "precious" / "notes.txt").write_text("a learner's file")
    with pytest.raises(FileExistsError, match="refusing"):
        build_tiny_model(tmp_path / "precious")
    assert (tmp_path / "precious" / "notes.txt").read_text() == "a learner's file"


def test_resolve_model(tiny, tmp_path):
    built = resolve_model("tiny", artifacts=tiny.parent.parent)  # ARTIFACTS/models/internvl2-tiny
    assert built == tiny.parent.parent / "models" / "internvl2-tiny" and (built / "config.json").is_file()
    four = resolve_model("tiny-4b", artifacts=tmp_path / "a")
    assert four == tmp_path / "a" / "models" / "internvl2-tiny-4b"
    assert json.loads((four / "config.json").read_text())["llm_config"]["architectures"] == ["Phi3ForCausalLM"]
    (tmp_path / "real").mkdir()
    (tmp_path / "real" / "config.json").write_text("{}")
    assert resolve_model(str(tmp_path / "real")) == (tmp_path / "real").resolve()
    with pytest.raises(FileNotFoundError, match="MODEL_PATH"):
        resolve_model(str(tmp_path / "missing"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="config.json"):
        resolve_model(str(tmp_path / "empty"))


def test_resolve_model_dotted_folder(tiny, tmp_path):
    from transformers import AutoModel, dynamic_module_utils

    dotted = tmp_path / "iter_10.pth_hf"  # the kind of name a converted XTuner checkpoint gets
    shutil.copytree(tiny, dotted)
    if hasattr(dynamic_module_utils, "_sanitize_module_name"):  # newer transformers copes: it must load
        assert resolve_model(str(dotted)) == dotted.resolve()
        AutoModel.from_pretrained(str(dotted), trust_remote_code=True)
    else:  # transformers 4.48 cannot import it: resolve_model says so before the cryptic failure
        with pytest.raises(ValueError, match="Rename the folder"):
            resolve_model(str(dotted))
        with pytest.raises(ModuleNotFoundError):
            AutoModel.from_pretrained(str(dotted), trust_remote_code=True)


def test_pixel_shuffle_shape_and_layout():
    n, h, w, c = 2, 4, 6, 3
    x = torch.arange(n * h * w * c, dtype=torch.float32).reshape(n, h, w, c)
    y = pixel_shuffle(x, 0.5, "v2")
    assert y.shape == (n, h // 2, w // 2, 4 * c)
    assert torch.equal(y.flatten().sort().values, x.flatten())  # a permutation: nothing lost or duplicated
    for i in range(h // 2):  # v2: output (i, j) is the 2x2 block at rows 2i..2i+1, columns 2j..2j+1, row-major
        for j in range(w // 2):
            block = torch.cat([x[:, 2 * i, 2 * j], x[:, 2 * i, 2 * j + 1], x[:, 2 * i + 1, 2 * j], x[:, 2 * i + 1, 2 * j + 1]], -1)
            assert torch.equal(y[:, i, j], block)
    sq = torch.randn(1, 32, 32, 8)
    assert torch.equal(pixel_shuffle(sq, 0.5, "v1"), pixel_shuffle(sq, 0.5, "v2").transpose(1, 2))
    assert pixel_shuffle(sq).shape == (1, 16, 16, 32)


def test_extract_feature_and_parameter_counts(loaded):
    model, _ = loaded
    with torch.no_grad():
        feats = model.extract_feature(torch.randn(3, 3, 448, 448))
    assert feats.shape == (3, 256, 128)
    assert model.num_image_token == 256
    assert type(model.language_model).__name__ == "InternLM2ForCausalLM"
    counts = parameter_counts(model)
    assert counts["total"] == sum(p.numel() for p in model.parameters())
    assert counts["mlp1"] == (256 * 2) + (256 * 128 + 128) + (128 * 128 + 128)  # LayerNorm(4*64) -> 128 -> 128


def test_state_dict_names_follow_official_checkpoints(loaded):
    names = set(loaded[0].state_dict())
    for name in ["vision_model.embeddings.class_embedding", "vision_model.embeddings.patch_embedding.weight",
                 "vision_model.embeddings.position_embedding", "vision_model.encoder.layers.1.attn.qkv.weight",
                 "vision_model.encoder.layers.0.attn.proj.weight", "vision_model.encoder.layers.0.ls1",
                 "vision_model.encoder.layers.0.norm2.weight", "vision_model.encoder.layers.0.mlp.fc2.weight",
                 "mlp1.0.weight", "mlp1.1.weight", "mlp1.3.weight", "language_model.model.tok_embeddings.weight",
                 "language_model.model.layers.1.attention.wqkv.weight", "language_model.model.layers.0.attention.wo.weight",
                 "language_model.model.layers.0.feed_forward.w1.weight", "language_model.model.layers.0.feed_forward.w2.weight",
                 "language_model.model.layers.0.feed_forward.w3.weight", "language_model.model.layers.0.attention_norm.weight",
                 "language_model.model.layers.0.ffn_norm.weight", "language_model.model.norm.weight",
                 "language_model.output.weight"]:
        assert name in names, name
    wqkv = loaded[0].state_dict()["language_model.model.layers.0.attention.wqkv.weight"]
    assert wqkv.shape == ((4 + 2 * 2) * 32, 128)  # 4 query heads + 2 key + 2 value heads of 32


def test_wqkv_rows_are_grouped_by_kv_head():
    """Per KV head: its query heads, then its key, then its value -- the published weight layout."""
    from labsupport.model.remote_code.configuration_internlm2 import InternLM2Config
    from labsupport.model.remote_code.modeling_internlm2 import InternLM2Attention

    cfg = InternLM2Config(hidden_size=8, num_attention_heads=4, num_key_value_heads=2, bias=False,
                          attn_implementation="eager")
    attn = InternLM2Attention(cfg, 0)
    with torch.no_grad():
        attn.wqkv.weight.copy_(torch.arange(8).repeat_interleave(2)[:, None].float().expand(16, 8) / 8)
    captured = {}

    class Spy:
        def update(self, k, v, layer_idx):
            captured["k"], captured["v"] = k, v
            return k, v

    x = torch.ones(1, 1, 8)
    cos, sin = torch.ones(1, 1, 2), torch.zeros(1, 1, 2)
    attn(x, torch.zeros(1, 1, 1, 1), cos, sin, past_key_value=Spy())
    # each head of 2 rows outputs its slot number; slots 0-1: group 0's query heads, 2 its key, 3 its value; 4-7 group 1
    assert captured["k"][0, :, 0, 0].tolist() == [2.0, 6.0] and captured["v"][0, :, 0, 0].tolist() == [3.0, 7.0]


def test_internlm2_cache_gives_the_same_logits_as_a_full_pass(loaded):
    model, tok = loaded
    llm = model.language_model
    ids = tok("What colour are the objects on the plate?", return_tensors="pt").input_ids
    with torch.no_grad():
        full = llm(input_ids=ids, use_cache=False).logits
        first = llm(input_ids=ids[:, :-3], use_cache=True)
        rest = llm(input_ids=ids[:, -3:], past_key_values=first.past_key_values, use_cache=True).logits
    assert torch.allclose(full[:, -3:], rest, atol=1e-4)
    eager = type(llm.config)(**{**llm.config.to_dict(), "attn_implementation": "sdpa"})
    assert eager.attn_implementation == "sdpa"


def test_chat_template_renders_internlm2_like_conversation_py(tiny, loaded):
    _, tok = loaded
    messages = [{"role": "user", "content": "What colour is it?"}, {"role": "assistant", "content": "Red."},
                {"role": "user", "content": "盘子上有几个物体？"}]
    expected = ("<|im_start|>system\nYou are an AI assistant whose name is InternLM (书生·浦语).<|im_end|>"
                "<|im_start|>user\nWhat colour is it?<|im_end|><|im_start|>assistant\nRed.<|im_end|>"
                "<|im_start|>user\n盘子上有几个物体？<|im_end|><|im_start|>assistant\n")
    assert tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True) == expected
    conv = get_conv_template("internlm2-chat")  # chat() and the tokenizer's template must agree
    for m in messages:
        conv.append_message(conv.roles[0] if m["role"] == "user" else conv.roles[1], m["content"])
    conv.append_message(conv.roles[1], None)
    assert conv.get_prompt() == expected
    assert tok("x").input_ids[0] == tok.convert_tokens_to_ids("<s>")  # InternLM2 tokenizers put <s> in front
    gen = json.loads((tiny / "generation_config.json").read_text())
    assert tok.convert_tokens_to_ids("<|im_end|>") in gen["eos_token_id"]


def test_chat_template_renders_phi3_two_turns(tiny4b):
    from transformers import AutoTokenizer

    tiny = tiny4b
    tok = AutoTokenizer.from_pretrained(str(tiny4b))
    messages = [{"role": "user", "content": "What colour is it?"}, {"role": "assistant", "content": "Red."},
                {"role": "user", "content": "盘子上有几个物体？"}]
    expected = ("<|system|>\nYou are an AI assistant whose name is Phi-3.<|end|>\n"
                "<|user|>\nWhat colour is it?<|end|><|assistant|>\nRed.<|end|>"
                "<|user|>\n盘子上有几个物体？<|end|><|assistant|>\n")
    assert tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True) == expected
    with_system = [{"role": "system", "content": "Be brief."}] + messages[:1]
    assert tok.apply_chat_template(with_system, tokenize=False, add_generation_prompt=False) == \
        "<|system|>\nBe brief.<|end|>\n<|user|>\nWhat colour is it?<|end|>"
    conv = get_conv_template("phi3-chat")  # chat() and the tokenizer's template must agree
    for m in messages:
        conv.append_message(conv.roles[0] if m["role"] == "user" else conv.roles[1], m["content"])
    conv.append_message(conv.roles[1], None)
    assert conv.get_prompt() == expected
    gen = json.loads((tiny / "generation_config.json").read_text())
    assert tok.convert_tokens_to_ids("<|end|>") in gen["eos_token_id"]
    assert tok.convert_tokens_to_ids("</s>") in gen["eos_token_id"]


def test_tokenizer_special_tokens_are_single_ids(loaded):
    _, tok = loaded
    for t in ["<img>", "</img>", "<IMG_CONTEXT>", "<|im_start|>", "<|im_end|>", "<|action_start|>", "<box>"]:
        ids = tok(t, add_special_tokens=False).input_ids
        assert len(ids) == 1 and ids[0] != tok.unk_token_id, t
    text = "What colour are the objects on the plate? 盘子上的物体是什么颜色？"
    assert tok.decode(tok(text).input_ids, skip_special_tokens=True) == text
    assert 1000 < len(tok) <= 4096


def test_chat_and_batch_chat(loaded):
    model, tok = loaded
    px = to_pixel_values(plate_image())
    answer, history = model.chat(tok, px, "What colour are the objects on the plate?", GEN, return_history=True)
    assert isinstance(answer, str) and history[-1] == ("<image>\nWhat colour are the objects on the plate?", answer)
    assert model.img_context_token_id == tok.convert_tokens_to_ids("<IMG_CONTEXT>")
    pixels = torch.cat([px, px.flip(-1)])
    answers = model.batch_chat(tok, pixels, ["What colour are the objects on the plate?", "盘子上有几个物体？"], GEN,
                               num_patches_list=[1, 1])
    assert len(answers) == 2 and all(isinstance(a, str) for a in answers)
    assert answers[0] == answer  # left padding, masks and positions: the batch answers as the single chat does
    with pytest.raises(ValueError, match="num_patches_list"):
        model.chat(tok, pixels, "two tiles, wrong count", GEN, num_patches_list=[1])


def test_xtuner_flash_attention_request_falls_back(tiny):
    from transformers import AutoConfig, AutoModel

    config = AutoConfig.from_pretrained(str(tiny), trust_remote_code=True)
    config.llm_config.attn_implementation = "flash_attention_2"  # what xtuner/model/internvl.py does for InternLM2
    model = AutoModel.from_pretrained(str(tiny), config=config, torch_dtype=torch.bfloat16, trust_remote_code=True)
    assert model.language_model.config.attn_implementation in ("sdpa", "eager")
    assert model.config.use_return_dict is True
    model.language_model.enable_input_require_grads()
    model.language_model.gradient_checkpointing_enable()
    embeds = model.language_model.get_input_embeddings()(torch.tensor([[5, 6, 7]]))
    out = model.language_model(inputs_embeds=embeds, use_cache=False)
    assert out.logits.shape == (1, 3, config.llm_config.vocab_size)


def test_save_pretrained_carries_remote_code(loaded, tmp_path):
    from transformers import AutoModel

    model, _ = loaded
    model.save_pretrained(tmp_path / "saved")
    for name in PY_FILES:
        assert (tmp_path / "saved" / name).is_file(), name
    again = AutoModel.from_pretrained(str(tmp_path / "saved"), trust_remote_code=True, torch_dtype=torch.float32)
    assert json.loads((tmp_path / "saved" / "config.json").read_text())["llm_config"]["architectures"] == ["InternLM2ForCausalLM"]
    a, b = model.state_dict(), again.state_dict()
    assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)


DEPLOY_SCRIPT = textwrap.dedent("""
    import sys, torch, transformers
    from transformers import AutoModel, AutoTokenizer
    path = sys.argv[1]
    tok = AutoTokenizer.from_pretrained(path, trust_remote_code=True)
    model = AutoModel.from_pretrained(path, trust_remote_code=True, dtype=torch.float32).eval()
    px = torch.randn(1, 3, 448, 448)
    assert tuple(model.extract_feature(px).shape) == (1, 256, 128)
    answer = model.chat(tok, px, "What colour?", dict(max_new_tokens=4, do_sample=False))
    answers = model.batch_chat(tok, torch.cat([px, px]), ["a?", "b?"], dict(max_new_tokens=4, do_sample=False),
                               num_patches_list=[1, 1])
    assert isinstance(answer, str) and len(answers) == 2
    prompt = tok.apply_chat_template([{"role": "user", "content": "q"}], tokenize=False, add_generation_prompt=True)
    assert prompt.endswith("<|im_start|>user\\nq<|im_end|><|im_start|>assistant\\n"), prompt
    assert type(model.language_model).__mro__[1].__name__ == "InternLM2PreTrainedModel"
    print("DEPLOY-OK", transformers.__version__)
""")


@pytest.mark.deploy
@pytest.mark.parametrize("layout", ["tiny", "tiny-4b"])
def test_loads_and_chats_in_deploy_env(tiny, tiny4b, layout):
    python = Path(os.environ.get("LABSUPPORT_DEPLOY_PYTHON", repo_root() / ".venvs/internvl-deploy/bin/python"))
    if not python.exists():
        pytest.skip(f"deploy env python {python} not found (set LABSUPPORT_DEPLOY_PYTHON)")
    env = dict(os.environ, PYTHONPATH=str(repo_root()))
    script = DEPLOY_SCRIPT if layout == "tiny" else DEPLOY_SCRIPT.replace(
        "<|im_start|>user\\nq<|im_end|><|im_start|>assistant\\n", "<|user|>\\nq<|end|><|assistant|>\\n").replace(
        "InternLM2PreTrainedModel", "Phi3PreTrainedModel")
    assert (script != DEPLOY_SCRIPT) == (layout == "tiny-4b")
    proc = subprocess.run([str(python), "-c", script, str(tiny if layout == "tiny" else tiny4b)], capture_output=True, text=True,
                          timeout=300, env=env)
    assert proc.returncode == 0 and "DEPLOY-OK" in proc.stdout, proc.stdout[-2000:] + proc.stderr[-4000:]


def test_weights_are_drawn_at_the_scale_of_a_narrow_network(tmp_path):
    """std 1/sqrt(fan_in) for projections (not the real model's 0.02), so signals keep their size layer to layer
    (the ViT as it starts before its pre-training: the shipped tiny carries the pre-trained one)."""
    from safetensors.torch import load_file

    cold = build_tiny_model(tmp_path / "cold", pretrained_vision=False)
    weights = {k: v.float() for k, v in load_file(str(cold / "model.safetensors")).items()}
    q = weights["language_model.model.layers.0.attention.wqkv.weight"]
    assert q.std().item() == pytest.approx(q.shape[1] ** -0.5, rel=0.05)
    patch = weights["vision_model.embeddings.patch_embedding.weight"]
    assert patch.std().item() == pytest.approx((3 * 14 * 14) ** -0.5, rel=0.05)
    assert weights["language_model.model.tok_embeddings.weight"].std().item() == pytest.approx(1.0, rel=0.05)
    head = weights["language_model.output.weight"]
    assert head.std().item() == pytest.approx(head.shape[1] ** -0.5, rel=0.05)
    assert weights["vision_model.embeddings.position_embedding"].std().item() == pytest.approx(0.02, rel=0.05)
    assert bool((weights["language_model.model.norm.weight"] == 1).all())


def test_tiny_4b_keeps_the_phi3_layout(tiny4b):
    from transformers import AutoModel, AutoTokenizer

    cfg = json.loads((tiny4b / "config.json").read_text())
    assert cfg["llm_config"]["architectures"] == ["Phi3ForCausalLM"] and cfg["template"] == "phi3-chat"
    model = AutoModel.from_pretrained(str(tiny4b), trust_remote_code=True, torch_dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(str(tiny4b), trust_remote_code=True)
    assert "language_model.model.layers.1.self_attn.qkv_proj.weight" in model.state_dict()
    assert isinstance(model.chat(tok, to_pixel_values(plate_image()), "What colour?", GEN), str)


def test_text_only_internlm2_chat_llm(tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = build_tiny_internlm2_chat(tmp_path / "internlm2-chat-tiny")
    again = build_tiny_internlm2_chat(tmp_path / "again")
    assert sha256(out / "model.safetensors") == sha256(again / "model.safetensors")
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["architectures"] == ["InternLM2ForCausalLM"]
    assert cfg["auto_map"]["AutoModelForCausalLM"] == "modeling_internlm2.InternLM2ForCausalLM"
    model = AutoModelForCausalLM.from_pretrained(str(out), trust_remote_code=True, torch_dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(str(out))
    assert "output.weight" in model.state_dict() and "model.tok_embeddings.weight" in model.state_dict()
    prompt = tok.apply_chat_template([{"role": "system", "content": "S"}, {"role": "user", "content": "hi"}],
                                     tokenize=False, add_generation_prompt=True)
    assert prompt == "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    enc = tok(prompt, return_tensors="pt")
    new = model.generate(**enc, max_new_tokens=4, do_sample=False, pad_token_id=tok.pad_token_id)
    assert new.shape[1] == enc.input_ids.shape[1] + 4


@pytest.mark.parametrize("max_positions", [4096, 16])  # 16 < 40 tokens: dynamic NTK rope scaling takes over
def test_internlm2_matches_the_published_implementation(tiny, max_positions):
    """Same weights, same logits as OpenGVLab/InternVL's published modeling_internlm2.py (names, wqkv layout, rope)."""
    from safetensors.torch import load_file
    from transformers.dynamic_module_utils import get_class_from_dynamic_module

    from labsupport.model import official
    from labsupport.model.remote_code.configuration_internlm2 import InternLM2Config
    from labsupport.model.remote_code.modeling_internlm2 import InternLM2ForCausalLM

    folder = official.available().get("2B")
    if folder is None:
        pytest.skip(f"no official-format InternVL2-2B under {official.official_dir('2B').parent} to compare with "
                    "(build it with `python -m labsupport.model.official 2B`)")
    kw = {k: v for k, v in json.loads((tiny / "config.json").read_text())["llm_config"].items()
          if k not in ("architectures", "auto_map", "model_type")}
    kw["max_position_embeddings"] = max_positions
    weights = {k.removeprefix("language_model."): v.float() for k, v in load_file(str(tiny / "model.safetensors")).items()
               if k.startswith("language_model.")}
    ours = InternLM2ForCausalLM(InternLM2Config(**kw)).eval()
    ours.load_state_dict(weights)
    theirs_cls = get_class_from_dynamic_module("modeling_internlm2.InternLM2ForCausalLM", str(folder))
    theirs_cfg = get_class_from_dynamic_module("configuration_internlm2.InternLM2Config", str(folder))
    theirs = theirs_cls(theirs_cfg(**kw)).eval()
    theirs.load_state_dict(weights)  # strict: every name and shape the same
    ids = torch.randint(20, 2000, (2, 40), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.allclose(ours(input_ids=ids).logits, theirs(input_ids=ids).logits, atol=1e-4)
