"""Tests of labsupport.model.prompts: XTuner's, chat()'s and LMDeploy's prompts side by side, for every layout."""
from __future__ import annotations

import json
import shutil

import pytest

from labsupport.model import official, prompts
from labsupport.model.tinymodel import INTERNLM2_SYSTEM, PHI3_SYSTEM, build_tiny_model

pytest.importorskip("xtuner")


@pytest.fixture(scope="module", params=["tiny", "tiny-4b"])
def embedded(request, tmp_path_factory):
    return request.param, build_tiny_model(tmp_path_factory.mktemp(request.param) / request.param, layout=request.param)


def test_embedded_models_agree_everywhere(embedded):
    layout, path = embedded
    for history in ((), [("What colour are the objects on the plate?", "red")]):
        r = prompts.prompt_parity(path, "How many objects are on the plate?", history)
        assert r.agree and r.xtuner == r.chat == r.lmdeploy, r.markdown()
        system = INTERNLM2_SYSTEM if layout == "tiny" else PHI3_SYSTEM
        assert r.systems == {"xtuner": system, "chat": system, "lmdeploy": system}
        assert r.xtuner.count(prompts.IMAGE_PLACEHOLDER) == 1 and "How many objects" in r.markdown()


def test_a_different_system_prompt_is_found_and_named(embedded, tmp_path):
    layout, path = embedded
    copy = tmp_path / "changed"
    shutil.copytree(path, copy)
    cfg = json.loads((copy / "tokenizer_config.json").read_text())
    system = INTERNLM2_SYSTEM if layout == "tiny" else PHI3_SYSTEM
    cfg["chat_template"] = cfg["chat_template"].replace(system, "Be brief.")
    (copy / "tokenizer_config.json").write_text(json.dumps(cfg))
    r = prompts.prompt_parity(copy)
    assert not r.agree and r.systems["lmdeploy"] == "Be brief." and r.system_that_agrees == system
    assert any("meta_instruction" in n for n in r.notes)
    prompts.write_chat_template(copy)  # the fix the report names
    assert prompts.prompt_parity(copy).agree


def test_missing_pieces_name_the_file_and_a_fix_that_works(tmp_path):
    path = build_tiny_model(tmp_path / "tiny")
    bare = tmp_path / "bare"
    shutil.copytree(path, bare)
    cfg = json.loads((bare / "tokenizer_config.json").read_text())
    del cfg["chat_template"]
    (bare / "tokenizer_config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="tokenizer_config.json") as err:
        prompts.read_chat_template(bare)
    assert "write_chat_template" in str(err.value)
    prompts.write_chat_template(bare)  # the fix works although the base (the same files) had none to copy
    assert prompts.read_chat_template(bare) == prompts.read_chat_template(path)
    (bare / "conversation.py").unlink()
    with pytest.raises(FileNotFoundError, match="conversation.py"):
        prompts.model_prompt(bare, "q")
    shutil.copyfile(path / "conversation.py", bare / "conversation.py")
    conf = json.loads((bare / "config.json").read_text())
    conf["template"] = "internlm2_chat"  # XTuner's name, not conversation.py's
    (bare / "config.json").write_text(json.dumps(conf))
    with pytest.raises(ValueError, match="internlm2-chat") as err:
        prompts.model_prompt(bare, "q")
    assert "config.json" in str(err.value)


@pytest.mark.parametrize("size", official.SIZES)
def test_official_format_prompts(size, tmp_path):
    path = official.available().get(size)
    if path is None:
        pytest.skip(f"no official-format InternVL2-{size} under {official.official_dir(size).parent} "
                    f"(build it with `python -m labsupport.model.official {size}`)")
    r = prompts.prompt_parity(path)
    assert not r.agree  # the published files disagree (DESIGN.md, facts about official checkpoints)
    assert "InternVL" in r.systems["chat"]  # conversation.py: InternVL's own system prompt
    if size == "1B":
        assert r.xtuner is None and any("Qwen2ForCausalLM" in n for n in r.notes)
        return
    assert r.systems["xtuner"] == (PHI3_SYSTEM if size == "4B" else INTERNLM2_SYSTEM)
    assert r.systems["lmdeploy"] in ("", "You are a helpful assistant.")
    fixed = tmp_path / path.name
    shutil.copytree(path, fixed)
    prompts.write_chat_template(fixed)
    after = prompts.prompt_parity(fixed)
    assert after.lmdeploy == after.xtuner  # served as trained once the chat_template matches
    if size in ("2B", "8B"):
        assert after.system_that_agrees == INTERNLM2_SYSTEM  # chat() needs only model.system_message


def test_training_system_is_xtuners_and_none_where_xtuner_cannot_train(embedded, monkeypatch):
    layout, path = embedded
    assert prompts.training_system(path) == (INTERNLM2_SYSTEM if layout == "tiny" else PHI3_SYSTEM)

    def refuses(model_dir, *a, **k):
        raise NotImplementedError("Qwen2")

    monkeypatch.setattr(prompts, "xtuner_prompt", refuses)
    assert prompts.training_system(path) is None
