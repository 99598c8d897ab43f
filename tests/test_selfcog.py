"""The self-cognition track (notebook 08): the seed's generator, XTuner's config edits, and the converted model.

The last test trains a few LoRA iterations through XTuner's own train.py, converts with `xtuner convert pth_to_hf`,
merges with `xtuner convert merge`, and checks that the merged folder loads with transformers and chats (also
through the real `xtuner chat` CLI, questions piped on its stdin).
"""
import json
from pathlib import Path

import pytest

from labsupport.datasets import formats as D
from labsupport.model import chatllm
from labsupport.sidetracks import selfcog
from labsupport.train import xtuner_configs, xtuner_configs as XC


def test_generator_repeats_the_seed_pair_with_the_name():
    recs = D.personal_assistant("小明", n=3)
    assert len(recs) == 4  # written once, then appended n more times, like the seed's generate_data.py
    assert all(r["messages"][0]["content"] == "请做一下自我介绍" for r in recs)
    assert all("小明的小助手" in r["messages"][1]["content"] for r in recs)
    both = D.personal_assistant("Ada", n=1, pairs=D.INTRO_PAIRS)
    assert len(both) == 4 and {"Please introduce yourself.", "请做一下自我介绍"} == D.user_questions(both)
    with pytest.raises(ValueError, match="n is how many"):
        D.personal_assistant("Ada", n=-1)
    with pytest.raises(ValueError, match="name"):
        D.personal_assistant(" ")


def test_held_out_drops_trained_phrasings():
    recs = D.personal_assistant("Ada", n=0, pairs=D.INTRO_PAIRS + (("Who are you", "Ada"),))
    probes = D.held_out(D.IDENTITY_PROBES, recs)
    assert "Who are you?" not in probes and "你是谁？" in probes  # punctuation and case do not hide a repeat
    assert not set(probes) & D.user_questions(recs)
    with pytest.raises(ValueError, match="every probe"):
        D.held_out(["Who are you?"], recs)


def test_prompt_is_xtuners_internlm2_chat_template():
    import importlib

    import xtuner.utils.templates

    # XTuner's InternVL dataset rewrites PROMPT_TEMPLATE.internlm2_chat in place when it is built in this process
    # (earlier tests do that): read the template as XTuner's file defines it
    t = importlib.reload(xtuner.utils.templates).PROMPT_TEMPLATE.internlm2_chat
    assert {k: t[k] for k in chatllm.TEMPLATE} == chatllm.TEMPLATE
    assert chatllm.prompt("hi") == t["INSTRUCTION"].format(input="hi")
    assert chatllm.prompt("hi", "sys").startswith(t["SYSTEM"].format(system="sys"))


def _official(tmp_path: Path) -> Path:
    from xtuner.configs import cfgs_name_path

    src = tmp_path / "official.py"
    src.write_text(Path(cfgs_name_path[selfcog.OFFICIAL_CONFIG]).read_text())
    return src


@pytest.mark.parametrize("qlora", [False, True])
def test_config_edits_are_explained_and_load(tmp_path, qlora):
    src = _official(tmp_path)
    s = selfcog.SelfCogSettings(model_dir="/m/tiny", data_json="/d/pa.json", max_length=256, qlora=qlora)
    edits = selfcog.config_edits(s)
    dst = XC.edit_config(src, tmp_path / "edited.py", edits)
    assert XC.unexplained(src, dst, edits) == []
    diff = XC.explained_diff(src, dst, edits)
    assert diff.count("# [") == len(edits) and "openai_map_fn" in diff and "evaluation_inputs" in diff
    cfg = XC.load(dst)
    assert cfg.pretrained_model_name_or_path == "/m/tiny" and cfg.alpaca_en_path == "/d/pa.json"
    assert cfg.alpaca_en.dataset_map_fn.__name__ == "openai_map_fn" and cfg.max_length == 256
    assert cfg.alpaca_en.dataset.data_files == {"train": "/d/pa.json"}
    assert cfg.evaluation_inputs == list(s.evaluation_inputs) and cfg.SYSTEM == ""
    assert ("quantization_config" in cfg.model.llm) == qlora
    assert cfg.optim_wrapper.type.__name__ == ("AmpOptimWrapper" if qlora else "OptimWrapper")


def test_unexplained_change_and_stale_edit_are_caught(tmp_path):
    src = _official(tmp_path)
    edits = selfcog.config_edits(selfcog.SelfCogSettings(model_dir="/m", data_json="/d.json"))
    dst = XC.edit_config(src, tmp_path / "edited.py", edits)
    dst.write_text(dst.read_text().replace("betas = (0.9, 0.999)", "betas = (0.8, 0.999)"))
    assert XC.unexplained(src, dst, edits) == ["-betas = (0.9, 0.999)", "+betas = (0.8, 0.999)"]
    with pytest.raises(ValueError, match="no edit explains"):
        XC.explained_diff(src, dst, edits)
    with pytest.raises(ValueError, match=r"official\.py: edit 1 .*not found"):
        XC.apply_edits(src.read_text(), [XC.Edit("no such line", "x", "why")], where=str(src.name))


def test_parse_chat_transcript():
    mark = xtuner_configs._PROMPT_MARK
    out = (f"Load LLM from m\n\n{mark}我是Ada的小助手<|im_end|>\nRemove the memory of history responses, since it "
           f"exceeds the length limitation 48.\n\n{mark}Log: History responses have been removed!\n\n{mark}"
           f"Paris.<|im_end|>\n\n{mark}Log: History responses have been removed!\n\n{mark}Log: Exit!\n")
    assert xtuner_configs.parse_chat_transcript(out, 2) == ["我是Ada的小助手", "Paris."]
    with pytest.raises(RuntimeError, match="answered 2 of 3"):
        xtuner_configs.parse_chat_transcript(out, 3)
    # transformers' notice lands on the first input line, before the first reply: it is not part of the reply
    notice = ("The attention mask is not set and cannot be inferred from input because pad token is same as eos token. "
              "As a consequence, you may observe unexpected behavior. Please pass your input's `attention_mask` to obtain "
              "reliable results.\n")
    noisy = out.replace(f"{mark}我是", f"{mark}{notice}我是", 1)
    assert xtuner_configs.parse_chat_transcript(noisy, 2) == ["我是Ada的小助手", "Paris."]


def test_train_convert_merge_and_chat(artifacts, tmp_path):
    base = chatllm.build_chat_llm(artifacts)
    data = D.save_records(tmp_path / "pa.json", D.personal_assistant("Ada", n=150, pairs=D.INTRO_PAIRS))
    s = selfcog.SelfCogSettings(model_dir=str(base), data_json=str(data), max_epochs=2, lr=5e-3, save_steps=1000,
                                evaluation_freq=1000, evaluation_inputs=["你是谁"])  # notebook 08's recipe
    src = _official(tmp_path)
    cfg = XC.edit_config(src, tmp_path / "self.py", selfcog.config_edits(s))
    from labsupport.train import xtuner

    run = xtuner.launch(cfg, tmp_path / "wd", live=False, show="none")
    assert run.last_iter >= 30 and run.checkpoint.exists()
    adapter = selfcog.pth_to_hf(cfg, run.checkpoint, tmp_path / "hf")
    assert json.loads((adapter / "adapter_config.json").read_text())["peft_type"] == "LORA"
    merged = selfcog.merge(base, adapter, tmp_path / "merged")
    model, tok = chatllm.load(merged)  # plain transformers, remote code shipped with the folder
    assert type(model).__name__ == "InternLM2ForCausalLM" and not any("lora" in n for n, _ in model.named_parameters())
    reply = chatllm.chat(model, tok, "请做一下自我介绍")  # a trained question: this test is about the conversion
    assert "Ada" in reply, reply
    cli = xtuner_configs.xtuner_chat(merged, ["Please introduce yourself."])
    assert "Ada" in cli[0], cli
    assert selfcog.hook_samples(run.log)  # EvaluateChatHook answered before and after training


def test_text_chat_pipeline_has_the_demo_shape(artifacts):
    from labsupport.sidetracks.selfcog_demo import TEXT_ONLY, TextChatPipeline

    pipe = TextChatPipeline(chatllm.build_chat_llm(artifacts), name="base")
    assert "InternLM2" in pipe.ask("Who are you?")
    session = pipe.session()
    assert session.ask("你是谁？") and session.history[0][0] == "你是谁？"
    assert pipe._backend.one("q", "img.png", pipe.gen) == TEXT_ONLY
