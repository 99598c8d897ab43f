"""The model-folder check reads what loading needs: safetensors headers, llm_config, the template (#31)."""
from __future__ import annotations

import json
import shutil
import struct

import pytest

from labsupport.model import folder_check as F
from labsupport.model.tinymodel import ModelFolderInvalid, build_tiny_model, resolve_model


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return build_tiny_model(tmp_path_factory.mktemp("m") / "internvl2-tiny")


@pytest.fixture()
def copy(tiny, tmp_path):
    out = tmp_path / "InternVL2-mine"
    shutil.copytree(tiny, out)
    return out


def edit_config(folder, **changes):
    cfg = json.loads((folder / "config.json").read_text())
    for k, v in changes.items():
        if v is None:
            cfg.pop(k, None)
        else:
            cfg[k] = v
    (folder / "config.json").write_text(json.dumps(cfg))


def test_the_built_model_passes(tiny):
    assert F.weight_problems(tiny) == [] and F.config_problems(tiny) == []
    assert resolve_model(str(tiny)) == tiny.resolve()


def test_a_git_lfs_pointer_says_git_lfs_pull(copy):
    (copy / "model.safetensors").write_text("version https://git-lfs.github.com/spec/v1\noid sha256:" + "a" * 64 +
                                            "\nsize 4411234567\n")
    with pytest.raises(ModelFolderInvalid, match=r"model.safetensors is a git-lfs pointer .*git lfs pull"):
        resolve_model(str(copy))


@pytest.mark.parametrize("cut, message", [(4, "not even a safetensors header"), (0.5, "truncated"),
                                          ("garbage", "header claims"), ("notjson", "header is not JSON")])
def test_truncated_or_corrupt_weights_are_named(copy, cut, message):
    path = copy / "model.safetensors"
    data = path.read_bytes()
    if cut == "garbage":
        data = b"\xff" * 64
    elif cut == "notjson":
        data = struct.pack("<Q", 10) + b"{not json!" + b"\0" * 100
    else:
        data = data[: int(cut if cut > 1 else len(data) * cut)]
    path.write_bytes(data)
    problems = F.weight_problems(copy)
    assert len(problems) == 1 and str(path) in problems[0] and message in problems[0] and "download" in problems[0]
    from labsupport.evaluate import conversion

    assert any(message in p for p in conversion.check_model_folder(copy))


def test_a_config_without_llm_config_is_refused_before_a_21_gb_default_is_built(copy):
    edit_config(copy, llm_config=None)
    with pytest.raises(ModelFolderInvalid, match="has no llm_config.*21 GB"):
        resolve_model(str(copy))


def test_an_implausible_or_foreign_llm_config_is_named(copy):
    cfg = json.loads((copy / "config.json").read_text())
    llm = dict(cfg["llm_config"], hidden_size=-3)
    edit_config(copy, llm_config=llm)
    assert any("llm_config.hidden_size is -3" in p for p in F.config_problems(copy))
    llm = dict(cfg["llm_config"], vocab_size=cfg["llm_config"]["vocab_size"] * 2)  # another checkpoint's config
    edit_config(copy, llm_config=llm)
    assert any("belongs to another checkpoint" in p for p in F.config_problems(copy))


def test_unknown_or_mismatched_templates_are_named(copy):
    edit_config(copy, template="no-such-template")
    problems = F.config_problems(copy)
    assert len(problems) == 1 and "'no-such-template' is not one of the templates its conversation.py" in problems[0]
    assert "set it to 'internlm2-chat'" in problems[0]
    edit_config(copy, template="phi3-chat")  # registered, but the LLM is InternLM2: a silently wrong prompt
    assert any("does not match the LLM InternLM2ForCausalLM" in p for p in F.config_problems(copy))
    edit_config(copy, template=None)
    assert any("names no conversation template" in p for p in F.config_problems(copy))


def test_a_config_that_is_not_json_is_named(copy):
    (copy / "config.json").write_text('{"model_type": "internvl_chat",')
    from labsupport.evaluate import conversion

    problems = conversion.check_model_folder(copy)
    assert len(problems) == 1 and "config.json is not valid JSON" in problems[0]
