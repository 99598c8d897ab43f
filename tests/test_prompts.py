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
    assert prompts.xtuner_default_system(path) == (PHI3_SYSTEM if size == "4B" else INTERNLM2_SYSTEM)
    assert r.systems["xtuner"] == r.systems["chat"]  # notebook 04 trains with conversation.py's, not XTuner's
    assert r.systems["lmdeploy"] in ("", "You are a helpful assistant.")
    fixed = tmp_path / path.name
    shutil.copytree(path, fixed)
    prompts.write_chat_template(fixed)
    after = prompts.prompt_parity(fixed)
    assert after.lmdeploy == after.xtuner  # served as trained once the chat_template matches
    assert after.systems["lmdeploy"] == r.systems["chat"]  # its default system prompt is the trained one
    if size in ("2B", "8B"):
        assert after.agree and after.chat == after.xtuner  # the same layout: chat() needs nothing more


def test_training_system_is_chats_own_and_none_where_xtuner_cannot_train(embedded, monkeypatch):
    layout, path = embedded
    assert prompts.xtuner_default_system(path) == (INTERNLM2_SYSTEM if layout == "tiny" else PHI3_SYSTEM)
    assert prompts.training_system(path) == prompts.chat_system(path)

    def refuses(model_dir, *a, **k):
        raise NotImplementedError("Qwen2")

    monkeypatch.setattr(prompts, "xtuner_prompt", refuses)
    assert prompts.training_system(path) is None and prompts.xtuner_default_system(path) is None


# ---- notebook 06: the training prompt, served ---------------------------------------------------------------------
LMDEPLOY_RENDER = r"""
import json, sys
from lmdeploy import ChatTemplateConfig
model_dir, system, question = sys.argv[1:4]
template = ChatTemplateConfig(model_name="hf", model_path=model_dir).chat_template(trust_remote_code=True)
messages = [{"role": "system", "content": system}, {"role": "user", "content": "<img><IMG_CONTEXT></img>\n" + question}]
print(json.dumps(template.messages2prompt(messages)))
"""


def _lmdeploy_renders(model_dir, system, question):
    """The prompt LMDeploy 0.18's own renderer builds (deploy env), or the same Jinja rendering here when it is absent."""
    import os
    import subprocess
    from pathlib import Path

    from labsupport.core.envs import venv_python

    python = Path(os.environ.get("LABSUPPORT_DEPLOY_PYTHON", venv_python("internvl-deploy")))
    if not python.exists():
        return prompts.lmdeploy_prompt(model_dir, question, system=system)
    proc = subprocess.run([str(python), "-c", LMDEPLOY_RENDER, str(model_dir), system, question], capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def official_2b(tmp_path_factory):
    if not official.DEFAULT_SOURCE.exists():
        pytest.skip(f"no clone of github.com/{official.SOURCE_REPO} at {official.DEFAULT_SOURCE} to build InternVL2-2B from")
    return official.build_official_format("2B", tmp_path_factory.mktemp("official") / "InternVL2-2B")


def test_the_tiny_is_served_the_prompt_it_was_trained_with(embedded):
    layout, path = embedded
    system = prompts.training_system(path)
    question = "How many objects are on the plate?"
    served = prompts.served_prompts(path, question, system, _lmdeploy_renders(path, system, question))
    assert served.agree and served.xtuner == served.chat == served.lmdeploy, served.markdown()
    assert system in served.lmdeploy and "same text" in served.markdown()


def test_an_official_2b_is_served_its_training_prompt_once_the_template_is_written(official_2b, tmp_path):
    system = prompts.training_system(official_2b)
    assert prompts.xtuner_default_system(official_2b) == INTERNLM2_SYSTEM
    assert system == prompts.chat_system(official_2b) != INTERNLM2_SYSTEM  # conversation.py's InternVL prompt
    question = "What colour are the objects on the plate?"
    before = prompts.served_prompts(official_2b, question, system, _lmdeploy_renders(official_2b, system, question))
    assert before.chat == before.xtuner  # chat() needs only model.system_message
    assert not before.agree and any(d.startswith("LMDeploy differs") for d in before.differences()), before.markdown()
    fixed = tmp_path / "InternVL2-2B-finetuned"
    shutil.copytree(official_2b, fixed)
    prompts.write_chat_template(fixed)  # notebook 06's visible fix
    after = prompts.served_prompts(fixed, question, system, _lmdeploy_renders(fixed, system, question))
    assert after.agree and after.lmdeploy == after.xtuner, after.markdown()
