"""labsupport.sidetracks.msswift: building ms-swift commands, running them, and reading what ms-swift and XTuner wrote."""
import json
import sys
import textwrap
from pathlib import Path

import pytest

from labsupport.sidetracks import msswift
from labsupport.train import training_outcome


def test_command_turns_flags_into_swift_arguments():
    cmd = msswift.command("sft", model=Path("/m"), lora_rank=8, stream=False, dataset=["a.jsonl", "b.jsonl"], system=None)
    assert cmd == ["swift", "sft", "--model", "/m", "--lora_rank", "8", "--stream", "false", "--dataset", "a.jsonl", "b.jsonl"]


def test_show_puts_one_flag_per_line_and_quotes():
    text = msswift.show(["swift", "sft", "--system", "You are X.", "--max_steps", "3"], {"MAX_NUM": 1})
    assert text.splitlines() == ["MAX_NUM=1 swift sft \\", "    --system 'You are X.' \\", "    --max_steps 3"]


def test_python_command_replaces_the_console_script_and_refuses_others():
    assert msswift.python_command(["swift", "infer", "--x", "1"], "/py") == ["/py", "-m", "swift.cli.main", "infer", "--x", "1"]
    with pytest.raises(ValueError, match="not a swift command"):
        msswift.python_command(["xtuner", "train"])


def test_clean_drops_ansi_and_progress_redraws():
    assert msswift.clean("\x1b[32mTrain:  10%\rTrain: 100%|done\x1b[0m\n") == "Train: 100%|done"


def test_loss_row_reads_a_trainer_line_only():
    row = msswift.loss_row("Train: 5/10 {'loss': 1.5, 'token_acc': 0.25, 'global_step/max_steps': '5/10'}")
    assert row == {"loss": 1.5, "token_acc": 0.25, "global_step/max_steps": "5/10"}
    assert msswift.loss_row("[INFO:swift] done") is None


def _fake_swift(tmp_path, body):
    pkg = tmp_path / "fake" / "swift" / "cli"
    pkg.mkdir(parents=True)
    (pkg.parent / "__init__.py").write_text("")
    (pkg / "__init__.py").write_text("")
    (pkg / "main.py").write_text(textwrap.dedent(body))
    return {"PYTHONPATH": str(tmp_path / "fake")}


def test_run_logs_everything_shows_loss_lines_and_returns(tmp_path, capsys):
    env = _fake_swift(tmp_path, """
        import sys
        print("\\x1b[1mTrain: 0%\\rTrain: 50%\\r{'loss': 2.0, 'epoch': 0.5}")
        print("args", sys.argv[1:])
    """)
    run = msswift.run(["swift", "sft", "--a", "1"], tmp_path / "logs" / "sft.log", env=env, python=sys.executable)
    assert run.shown == ["{'loss': 2.0, 'epoch': 0.5}"]
    assert "args ['sft', '--a', '1']" in run.log.read_text()
    assert "{'loss': 2.0" in capsys.readouterr().out and run.seconds >= 0


def test_run_raises_with_the_end_of_the_log_when_swift_fails(tmp_path):
    env = _fake_swift(tmp_path, """
        import sys
        print("ValueError: remaining_argv: ['--sft_type', 'lora']")
        sys.exit(3)
    """)
    with pytest.raises(msswift.SwiftFailed, match=r"(?s)exited with status 3.*remaining_argv"):
        msswift.run(["swift", "sft", "--sft_type", "lora"], tmp_path / "sft.log", env=env, python=sys.executable, echo=False)


def _course_records(tmp_path, n=2):
    (tmp_path / "images").mkdir()
    recs = []
    for i in range(n):
        (tmp_path / "images" / f"{i}.jpg").write_bytes(b"jpg")
        recs.append({"id": f"r{i}", "image": f"images/{i}.jpg", "meta": {"answer": "red"},
                     "conversations": [{"from": "human", "value": "<image>\nWhat colour?"}, {"from": "gpt", "value": "red"}]})
    (tmp_path / "train.json").write_text(json.dumps(recs))
    return recs


def test_write_swift_jsonl_uses_the_course_converter_with_absolute_images(tmp_path):
    _course_records(tmp_path)
    out = msswift.write_swift_jsonl(tmp_path / "train.json", tmp_path / "out" / "train.jsonl")
    rows = msswift.read_jsonl(out)
    assert rows[0] == {"query": "What colour?", "response": "red", "images": [str((tmp_path / "images" / "0.jpg").resolve())]}
    assert len(rows) == 2 and not (tmp_path / "out" / "train.jsonl.tmp").exists()


def test_write_swift_jsonl_names_the_record_with_a_missing_image(tmp_path):
    recs = _course_records(tmp_path)
    (tmp_path / "images" / "1.jpg").unlink()
    with pytest.raises(FileNotFoundError, match="record 1"):
        msswift.write_swift_jsonl(recs, tmp_path / "x.jsonl", image_folder=tmp_path)
    with pytest.raises(ValueError, match="image_folder"):
        msswift.write_swift_jsonl(recs, tmp_path / "x.jsonl")


def test_read_jsonl_names_the_bad_line(tmp_path):
    f = tmp_path / "r.jsonl"
    f.write_text('{"response": "a"}\n\nnot json\n')
    with pytest.raises(ValueError, match=r"r.jsonl:3"):
        msswift.read_jsonl(f)
    f.write_text('{"response": "a"}\n{"response": "b"}\n')
    assert msswift.responses(f) == ["a", "b"]


def test_last_checkpoint_takes_the_highest_step(tmp_path):
    for n in (5, 40, 100):
        (tmp_path / f"checkpoint-{n}").mkdir()
    assert msswift.last_checkpoint(tmp_path).name == "checkpoint-100"
    with pytest.raises(FileNotFoundError, match="checkpoint-N"):
        msswift.last_checkpoint(tmp_path / "checkpoint-5")


def test_model_parameter_info_reads_logging_jsonl(tmp_path):
    (tmp_path / "logging.jsonl").write_text(json.dumps({"loss": 1}) + "\n" + json.dumps(
        {"model_parameter_info": "PeftModelForCausalLM: 1.3537M Params (0.0676M Trainable [4.9927%]), 0.0000M Buffers."}) + "\n")
    info = msswift.model_parameter_info(tmp_path)
    assert (info["total_m"], info["trainable_m"]) == (1.3537, 0.0676)
    (tmp_path / "logging.jsonl").write_text(json.dumps({"loss": 1}) + "\n")
    with pytest.raises(ValueError, match="model_parameter_info"):
        msswift.model_parameter_info(tmp_path)


def test_logged_example_and_folding(tmp_path):
    log = tmp_path / "sft.log"
    log.write_text("[INFO:swift] [INPUT_IDS] [1, 2]\n[INFO:swift] [INPUT] <|user|>\n<img>[10 * 256]</img>\nQ?<|end|>\n"
                   "<|assistant|>\nred<|end|>\n[INFO:swift] [LABELS_IDS] [-100]\n")
    assert msswift.logged_example(log) == "<|user|>\n<img><IMG_CONTEXT>*256</img>\nQ?<|end|>\n<|assistant|>\nred<|end|>"
    assert msswift.fold_image_tokens("<img>" + "<IMG_CONTEXT>" * 3 + "</img>") == "<img><IMG_CONTEXT>*3</img>"
    log.write_text("nothing here\n")
    with pytest.raises(ValueError, match="INPUT"):
        msswift.logged_example(log)


def test_xtuner_example_reads_the_dataset_info_hook_lines(tmp_path):
    log = tmp_path / "train.log"
    log.write_text("2026/12/01 21:14:52 - mmengine - INFO - train example:\n"
                   "2026/12/01 21:14:53 - mmengine - INFO - <|system|>\nSYS<|end|>\n<|user|>\n<img>" + "<IMG_CONTEXT>" * 4
                   + "</img>\nQ<|end|><|assistant|>\nred<|end|>\n12/01 21:14:54 - mmengine - INFO - Checkpoints will be saved\n")
    assert msswift.xtuner_example(log) == "<|system|>\nSYS<|end|>\n<|user|>\n<img><IMG_CONTEXT>*4</img>\nQ<|end|><|assistant|>\nred<|end|>"
    log.write_text("12/01 21:14:54 - mmengine - INFO - no example\n")
    with pytest.raises(ValueError, match="train example"):
        msswift.xtuner_example(log)


def _model_dir(tmp_path, arch="Phi3ForCausalLM", template="phi3-chat"):
    d = tmp_path / "model"
    d.mkdir()
    (d / "config.json").write_text(json.dumps({"template": template, "force_image_size": 448, "downsample_ratio": 0.5,
                                               "vision_config": {"image_size": 448, "patch_size": 14},
                                               "llm_config": {"architectures": [arch]}}))
    (d / "conversation.py").write_text(textwrap.dedent('''
        from dataclasses import dataclass, field
        @dataclass
        class Conv:
            system_message: str = "You are Phi-3."
            roles: tuple = ("<|user|>\\n", "<|assistant|>\\n")
            messages: list = field(default_factory=list)
            def append_message(self, role, text):
                self.messages.append((role, text))
            def get_prompt(self):
                out = "<|system|>\\n" + self.system_message + "<|end|>\\n"
                for role, text in self.messages:
                    out += role + (text + "<|end|>" if text is not None else "")
                return out
        def get_conv_template(name):
            assert name == "phi3-chat"
            return Conv()
        conv_templates = {"phi3-chat": Conv()}
    '''))
    return d


def test_chat_side_system_message_prompt_and_template(tmp_path):
    d = _model_dir(tmp_path)
    assert msswift.chat_system_message(d) == "You are Phi-3."
    assert msswift.chat_prompt(d, "Q?") == "<|system|>\nYou are Phi-3.<|end|>\n<|user|>\n<img><IMG_CONTEXT>*256</img>\nQ?<|end|><|assistant|>\n"
    assert msswift.swift_template(d) == "internvl2_phi3"
    cfg = json.loads((d / "config.json").read_text())
    cfg["llm_config"]["architectures"] = ["InternLM2ForCausalLM"]
    (d / "config.json").write_text(json.dumps(cfg))
    assert msswift.swift_template(d) == "internvl2"
    cfg["llm_config"]["architectures"] = ["Qwen2ForCausalLM"]  # InternVL2-1B: ms-swift lists it under internvl2
    (d / "config.json").write_text(json.dumps(cfg))
    assert msswift.swift_template(d) == "internvl2"
    cfg["llm_config"]["architectures"] = ["LlamaForCausalLM"]
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="--template"):
        msswift.swift_template(d)
    with pytest.raises(FileNotFoundError, match="conversation.py"):
        msswift.chat_system_message(tmp_path)


def test_layout_differences_find_the_extra_newline_only():
    trained = "<|system|>\nS<|end|>\n<|user|>\nWhat?<|end|>\n<|assistant|>\nred<|end|>"
    asked = "<|system|>\nS<|end|>\n<|user|>\nWhat?<|end|><|assistant|>\n"
    diffs = msswift.layout_differences(trained, asked, "What?", "red")
    assert len(diffs) == 1 and diffs[0].startswith("delete")
    assert msswift.layout_differences(asked + "red<|end|>", asked, "What?", "red") == []
    assert msswift.layout_differences("<s>" + asked + "red<|end|>", asked, "What?", "red") == []


def test_matching_row_finds_the_logged_sample():
    rows = [{"query": "What?", "response": "blue"}, {"query": "What colour?", "response": "red"}]
    assert msswift.matching_row("<|user|>\nWhat colour?<|end|>\nred", rows)["response"] == "red"
    with pytest.raises(ValueError):
        msswift.matching_row("nothing", rows)


def test_adapter_shapes_and_parameters(tmp_path):
    import torch
    from safetensors.torch import save_file

    save_file({"a.lora_A.weight": torch.zeros(4, 16), "a.lora_B.weight": torch.zeros(32, 4)},
              str(tmp_path / "adapter_model.safetensors"))
    assert msswift.adapter_shapes(tmp_path) == {"a.lora_A.weight": (4, 16), "a.lora_B.weight": (32, 4)}
    assert msswift.adapter_parameters(tmp_path) == 4 * 16 + 32 * 4
    with pytest.raises(FileNotFoundError, match="adapter_model.safetensors"):
        msswift.adapter_parameters(tmp_path / "none")


def test_xtuner_trained_tensors_loads_without_the_classes_it_pickled(tmp_path):
    import torch

    mod = tmp_path / "gone_module.py"
    mod.write_text("class MessageHub:\n    def __init__(self):\n        self.x = 1\n"
                   "class HistoryBuffer:\n    def min(self):\n        return 0\n")
    sys.path.insert(0, str(tmp_path))
    try:
        import gone_module
        # mmengine's message hub stores statistics methods; pickle protocol 2 writes getattr(HistoryBuffer, "min")
        torch.save({"meta": {"hub": gone_module.MessageHub(), "stat": gone_module.HistoryBuffer.min},
                    "state_dict": {"module.mlp1.0.weight": torch.ones(2, 3)}},
                   tmp_path / "iter_5.pth")
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("gone_module", None)
    mod.unlink()
    state = msswift.xtuner_trained_tensors(tmp_path / "iter_5.pth")
    assert list(state) == ["mlp1.0.weight"] and state["mlp1.0.weight"].shape == (2, 3)


def test_xtuner_side_reports_what_is_missing_and_reads_a_run(tmp_path):
    import torch

    assert "notebook 04" in msswift.xtuner_side(tmp_path)["missing"]
    wd = tmp_path / "xtuner" / "work_dirs" / "04_finetune"
    wd.mkdir(parents=True)
    torch.save({"state_dict": {"language_model.w": torch.ones(3, 4), "mlp1.b": torch.ones(2)}}, wd / "iter_20.pth")
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "before_after.json").write_text(json.dumps({"after": {"accuracy": 0.95}}))
    assert "seconds" not in msswift.xtuner_side(tmp_path) and "run notebook 04" in msswift.xtuner_side(tmp_path)["seconds_from"]
    # training time: the wall seconds of 04's `xtuner train` process, from 04's record (one definition, course-wide)
    training_outcome.write_outcome(tmp_path, "tiny", trained=True, train_seconds=10.04)
    side = msswift.xtuner_side(tmp_path)
    assert (side["iterations"], side["seconds"], side["trainable"], side["mode"], side["accuracy"]) == (20, 10.0, 14, "full", 0.95)
    table = msswift.side_by_side(side, {"accuracy": 0.9, "seconds": 30, "steps": 10, "trainable": 7, "mode": "lora"})
    assert "| seconds per step | 0.50 | 3.00 |" in table and "| trainable parameters | 14 | 7 |" in table


def test_adapter_reference_applies_lora_without_merging(tmp_path, artifacts):
    pytest.importorskip("peft")
    import torch
    from peft import LoraConfig, get_peft_model

    from labsupport.evaluate import compare
    from labsupport.model import tinymodel

    base_dir = tinymodel.resolve_model("tiny", artifacts=artifacts)
    model = compare.load_model(base_dir)
    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["mlp1.1"], init_lora_weights=False))
    peft_model.save_pretrained(str(tmp_path / "ckpt"))
    ref, tok = msswift.adapter_reference(base_dir, tmp_path / "ckpt")
    assert any("lora_A" in n for n, _ in ref.named_parameters())
    base = compare.load_model(base_dir)
    inputs = compare.fixed_inputs(base, tok)
    moved = (compare.logits_of(ref, inputs, tok) - compare.logits_of(base, inputs, tok)).abs().max()
    assert float(moved) > 1e-4
    merged = peft_model.merge_and_unload()
    assert torch.allclose(compare.logits_of(merged, inputs, tok), compare.logits_of(ref, inputs, tok), atol=1e-4)


def test_a_crash_at_shutdown_after_main_ended_is_told_apart_from_a_failure():
    ended = "[INFO:swift] The inference results have been saved\n[INFO:swift] End time of running main: 2026\n"
    assert msswift.finished_before_exit(ended + "terminate called without an active exception\n")
    assert not msswift.finished_before_exit("Traceback (most recent call last):\nValueError: bad\n")
    assert not msswift.finished_before_exit(ended + "Traceback (most recent call last):\nRuntimeError: late\n")


def test_run_writes_a_fresh_result_file_and_keeps_the_old_one_until_then(tmp_path):
    fake = tmp_path / "python"  # stands in for the swift env's python: appends one reply to --result_path, as swift does
    fake.write_text("#!/usr/bin/env python3\nimport sys\nargs = sys.argv[1:]\n"
                    "path = args[args.index('--result_path') + 1]\n"
                    "if 'fail' in args: sys.exit(3)\n"
                    "open(path, 'a').write('{\"response\": \"red\"}\\n')\n")
    fake.chmod(0o755)
    result = tmp_path / "infer.jsonl"
    result.write_text('{"response": "old"}\n')
    cmd = ["swift", "infer", "--result_path", str(result)]
    with pytest.raises(msswift.SwiftFailed):
        msswift.run(cmd + ["--x", "fail"], tmp_path / "a.log", python=str(fake), echo=False)
    assert msswift.responses(result) == ["old"]  # a failed run leaves the last good result
    for _ in range(2):
        run = msswift.run(cmd, tmp_path / "b.log", python=str(fake), echo=False)
    assert msswift.responses(result) == ["red"] and str(result) in run.command


def test_a_process_that_hangs_after_main_ended_is_stopped(tmp_path, monkeypatch):
    fake = tmp_path / "python"
    fake.write_text("#!/usr/bin/env python3\nimport time\nprint('[INFO:swift] End time of running main: now', flush=True)\n"
                    "time.sleep(600)\n")
    fake.chmod(0o755)
    monkeypatch.setattr(msswift, "SHUTDOWN_GRACE_S", 1)
    run = msswift.run(["swift", "infer"], tmp_path / "a.log", python=str(fake), echo=False)
    assert run.seconds < 60 and "still running" in (tmp_path / "a.log").read_text()


def _own_data(tmp_path, answers_of):
    """A learner's jsonl (images in a separate folder, as IMAGE_FOLDER allows) with one answer per record."""
    from PIL import Image

    images = tmp_path / "pictures"
    images.mkdir()
    records = []
    for i, answer in enumerate(answers_of):
        Image.new("RGB", (32, 32), (i * 20 % 255, 0, 0)).save(images / f"p{i}.png")
        records.append({"id": f"own-{i}", "image": f"p{i}.png", "conversations": [
            {"from": "human", "value": "<image>\nWhat digit is written here? Answer with the digit."},
            {"from": "gpt", "value": answer}]})
    data = tmp_path / "data" / "mine.jsonl"
    data.parent.mkdir()
    data.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return data, images


def test_own_data_becomes_swift_rows_with_absolute_images_and_is_scored_with_its_scorer(tmp_path):
    from labsupport.datasets import learner
    from labsupport.evaluate import answers

    data, images = _own_data(tmp_path, [str(i % 10) for i in range(30)])
    task = learner.split_own_data(data, image_folder=images, artifacts=tmp_path / "art", progress=False)
    assert (task["n_train"], task["n_heldout"]) == (27, 3) and task["image_folder"] == images.resolve()
    out = msswift.write_swift_jsonl(task["train"], tmp_path / "swift" / "train.jsonl", task["image_folder"])
    rows = msswift.read_jsonl(out)
    train = json.loads(Path(task["train"]).read_text(encoding="utf-8"))
    assert len(rows) == 27 and rows[0]["images"] == [str(images.resolve() / train[0]["image"])]
    assert rows[0]["response"] == train[0]["conversations"][1]["value"] and "<image>" not in rows[0]["query"]

    heldout = json.loads(Path(task["heldout"]).read_text(encoding="utf-8"))
    name, why = answers.choose_scorer(heldout, "")
    assert name == "exact" and "short answers" in why
    expected = [r["conversations"][1]["value"] for r in heldout]
    right = msswift.score_replies(heldout, [f" {expected[0]}.", expected[1], "no idea"], name)
    assert (right["metric"], right["score"], right["n"]) == ("accuracy", round(2 / 3, 4), 3)
    assert [r["correct"] for r in right["rows"]] == [True, True, False]
    with pytest.raises(ValueError, match="3 records but 2 replies"):
        msswift.score_replies(heldout, expected[:2], name)


def test_open_answers_are_scored_with_chrf_as_the_headline(tmp_path):
    heldout = [{"image": "p.png", "conversations": [{"from": "human", "value": "<image>\nDescribe it."},
                                                    {"from": "gpt", "value": "a handwritten seven with a long stem"}]}]
    exact = msswift.score_replies(heldout, ["a handwritten seven with a long stem"], "text")
    wrong = msswift.score_replies(heldout, ["zzz"], "text")
    assert exact["metric"] == "chrF" and exact["score"] == 1.0 and wrong["score"] < 0.2


def test_the_xtuner_side_is_compared_only_on_the_same_data(tmp_path):
    from labsupport.datasets import learner

    wd = tmp_path / "xtuner" / "work_dirs" / "04_finetune"
    wd.mkdir(parents=True)
    # no record of 04's data (04 ran on the plates task): fine for the plates, not for the learner's DATA
    assert "missing" not in msswift.xtuner_side(tmp_path)
    assert "not on this DATA" in msswift.xtuner_side(tmp_path, data_sha256="abc")["missing"]
    task = {"name": "mine", "source": tmp_path / "mine.jsonl", "sha256": "abc", "n_train": 9, "n_heldout": 1}
    learner.write_training_data(tmp_path, task, scorer="exact", tiles=1, system="")
    assert "missing" not in msswift.xtuner_side(tmp_path, data_sha256="abc")
    assert "last trained on mine" in msswift.xtuner_side(tmp_path, data_sha256="def")["missing"]
    assert "not on the plates task" in msswift.xtuner_side(tmp_path)["missing"]
    assert "| held-out chrF (course evaluator) |" in msswift.side_by_side({}, {"accuracy": 0.5}, metric="chrF")


def test_notebook_10_takes_the_learners_data_from_the_course_runner(repo):
    from labsupport.course import runner

    path = repo / "notebooks" / "10_ms_swift.ipynb"
    given = {"DATA": "/data/mine.jsonl", "HELDOUT": "/data/test.jsonl", "IMAGE_FOLDER": "/data/img", "SCORER": "choice"}
    inject, secrets, unknown = runner.split_parameters(path, given)
    assert inject == given and not secrets and not unknown
    cell = next(c for c in json.loads(path.read_text(encoding="utf-8"))["cells"] if "parameters" in c["metadata"].get("tags", []))
    defaults = "".join(cell["source"])
    for name in given:   # the default is the plates task: every one of them empty
        assert f'{name} = ""' in defaults, f"{path.name}: {name} must default to \"\" (the plates task)"


def test_scored_replies_carry_the_lazy_answers_score():
    """score_replies adds what the most frequent answer of each kind would score, for the own-data goal."""
    heldout = [{"image": "p.png", "conversations": [{"from": "human", "value": "<image>\nWhich digit?"},
                                                    {"from": "gpt", "value": v}]} for v in ("3", "3", "3", "7")]
    scored = msswift.score_replies(heldout, ["3", "7", "1", "7"], "exact")
    assert scored["score"] == 0.5 and scored["lazy"] == 0.75   # "3" for every question: 3 of 4


def _choice(name="tiny-cpu", miniature=True, embedded="tiny"):
    from labsupport.train.xtuner_presets import PresetChoice
    return PresetChoice(name, "test", 1, "InternLM2ForCausalLM", miniature, embedded=embedded)


def test_swift_schedule_is_notebook_04s_schedule_in_swift_flags():
    from labsupport.train import schedule, xtuner_presets
    choice = _choice("InternVL2-2B-lora", miniature=False, embedded=None)
    plan, rules = msswift.swift_schedule(choice, 3000, own_data=True)
    s, _ = schedule.fit_schedule(xtuner_presets.preset("InternVL2-2B-lora"), 3000, False, True)
    assert plan["max_steps"] == schedule.steps(s, 3000) and plan["learning_rate"] == s.lr == 4e-5
    assert plan["lora_rank"] == 16 and plan["max_num"] == 6
    assert plan["per_device_train_batch_size"] * plan["gradient_accumulation_steps"] == schedule.global_batch(s)
    assert rules[0].startswith("preset InternVL2-2B-lora") and any("InternVL's own" in r for r in rules)


def test_swift_keeps_its_measured_steps_on_the_embedded_plates_only():
    from labsupport.train import schedule
    plan, rules = msswift.swift_schedule(_choice(), 600, own_data=False)
    assert plan["max_steps"] == msswift.SWIFT_TINY_STEPS > schedule.TINY_ITERATIONS and "ms-swift:" in rules[-1]
    own, rules = msswift.swift_schedule(_choice(), 600, own_data=True)
    assert own["max_steps"] == schedule.TINY_OWN_ITERATIONS and not any(r.startswith("ms-swift:") for r in rules)
    official, _ = msswift.swift_schedule(_choice(embedded=None), 600, own_data=False)
    assert official["max_steps"] == 600 and official["learning_rate"] == plan["learning_rate"]


@pytest.mark.notebook
def test_notebook_10_on_a_real_size_checkpoint_on_a_cpu_skips_training_with_notebook_04s_reason(tmp_path, real_size_2b):
    """A checkpoint of InternVL2-2B's size on a CPU: swift sft would take hours, so 10 prints the command and its
    reason (04's rule), skips every cell that needs the adapter with a printed reason, and each check says why."""
    from labsupport.course import runner

    if "internvl-swift" not in runner.known_kernels():
        pytest.skip("kernel internvl-swift is not registered (run make env)")
    folder = real_size_2b
    result = runner.run_notebook(Path(__file__).resolve().parents[1] / "notebooks" / "10_ms_swift.ipynb", tmp_path / "art",
                                 {"MODEL_PATH": str(folder), "DEVICE": "cpu"}, progress=False)
    assert result.status == "pass", result.error
    executed = json.loads(Path(result.executed).read_text(encoding="utf-8"))
    text = "".join("".join(o.get("text", "")) for c in executed["cells"] for o in c.get("outputs", []))
    assert "training: a real-size model" in text and "swift sft skipped: a real-size model" in text
    assert "'loss': " not in text and not (tmp_path / "art" / "swift" / "sft").exists()   # nothing trained
    record = json.loads((tmp_path / "art" / "checkpoints" / "10_ms_swift.json").read_text())
    statuses = {c["name"]: c["status"] for c in record["checkpoints"]}
    assert statuses and set(statuses.values()) == {"skipped"}, statuses
