"""Tests of labsupport.train.xtuner_config (XTuner's own config, edited with reasons) and of preset choice by model size."""
from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
from mmengine.dataset import DefaultSampler

from labsupport.model import params
from labsupport.train import xtuner as X, xtuner_presets, xtuner_render
from labsupport.train import xtuner_config as XC

pytest.importorskip("xtuner")


def _checkpoint(tmp_path: Path, cfg: dict, name: str) -> Path:
    """A folder with just the config.json of CFG (what choosing a preset reads)."""
    out = tmp_path / name
    out.mkdir()
    (out / "config.json").write_text(json.dumps(cfg))
    return out


def _miniature(cfg: dict) -> dict:
    """CFG with the sizes shrunk to a toy (same layout, same field names)."""
    small = copy.deepcopy(cfg)
    small["vision_config"].update(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2)
    small["llm_config"].update(hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=2,
                               num_key_value_heads=2, vocab_size=3000)
    return small


@pytest.mark.parametrize("name", ["InternVL2-1B", "InternVL2-2B", "InternVL2-4B", "InternVL2-8B"])
def test_a_real_size_checkpoint_never_gets_the_cpu_preset(name, tmp_path):
    folder = _checkpoint(tmp_path, params.family()[name], "tiny")  # a misleading folder name on purpose
    choice = xtuner_presets.choose_preset(folder, device="cpu")
    assert not choice.miniature and choice.name != "tiny-cpu"
    assert choice.name.startswith(name + "-"), choice
    assert xtuner_presets.preset(choice.name).device == "cuda"
    assert xtuner_presets.training_skip_reason(choice, "cpu", folder, 1200) is not None
    assert xtuner_presets.training_skip_reason(choice, "cuda", folder, 1200) is None


@pytest.mark.parametrize("name", ["InternVL2-1B", "InternVL2-2B", "InternVL2-4B", "InternVL2-8B"])
def test_a_miniature_official_format_checkpoint_gets_the_cpu_preset(name, tmp_path):
    folder = _checkpoint(tmp_path, _miniature(params.family()[name]), "InternVL2-8B")  # name says 8B, sizes say toy
    choice = xtuner_presets.choose_preset(folder, device="cpu")
    assert choice.miniature and choice.name == "tiny-cpu"
    assert xtuner_presets.training_skip_reason(choice, "cpu", folder, 1200) is None
    assert xtuner_presets.preset(choice.name).mode == "lora"


def test_every_preset_value_can_be_overridden_and_nproc_1_beats_a_two_gpu_preset():
    assert xtuner_presets.preset("InternVL2-4B-lora").nproc == 2  # no measured 4B entry: the recipe's 2 GPUs
    s, rows = xtuner_presets.effective_settings("InternVL2-4B-lora", {"nproc": 1, "lr": None, "batch_size": 1})
    assert s.nproc == 1 and s.batch_size == 1 and s.lr == xtuner_presets.preset("InternVL2-4B-lora").lr
    assert {r[0] for r in rows} == {"nproc", "batch_size", "accumulative_counts"}  # the global batch 16 is kept
    assert s.accumulative_counts == 16 and "*" in xtuner_presets.settings_table(s, "InternVL2-4B-lora")
    one, _ = xtuner_presets.effective_settings("InternVL2-2B-full", {"nproc": 1})
    assert (one.batch_size, one.accumulative_counts) == (xtuner_presets.preset("InternVL2-2B-full").batch_size, 8)
    mine, _ = xtuner_presets.effective_settings("InternVL2-2B-full", {"nproc": 1, "accumulative_counts": 2})
    assert mine.accumulative_counts == 2  # an explicit value wins
    cpu, _ = xtuner_presets.effective_settings("tiny-cpu", {"batch_size": 2})
    assert cpu.accumulative_counts == xtuner_presets.preset("tiny-cpu").accumulative_counts  # the CPU preset is left alone


def test_official_config_follows_the_layout_and_refuses_qwen2_with_a_reason(tmp_path):
    fam = params.family()
    assert XC.official_config_name(_checkpoint(tmp_path, fam["InternVL2-2B"], "a"), "lora") == \
        "internvl_v2_internlm2_2b_lora_finetune"
    assert XC.official_config_name(_checkpoint(tmp_path, fam["InternVL2-4B"], "b"), "full") == "internvl_v2_phi3_4b_finetune"
    one_b = _checkpoint(tmp_path, fam["InternVL2-1B"], "c")
    name, why = XC.official_config_for(one_b, "lora")
    assert name is None and "Qwen2" in why and "What to do" in why
    assert str(one_b / "config.json") in why and "internvl_dataset.py" in why   # the file that decides, the file that refuses
    for size, arch in (("InternVL2-2B", "a"), ("InternVL2-4B", "b")):              # what XTuner trains gets a config, no reason
        assert XC.official_config_for(tmp_path / arch, "lora")[1] is None


@pytest.mark.parametrize("official,mode,device", [
    ("internvl_v2_internlm2_2b_lora_finetune", "lora", "cpu"),
    ("internvl_v2_phi3_4b_lora_finetune", "lora", "cpu"),
    ("internvl_v2_internlm2_2b_finetune", "full", "cpu"),
    ("internvl_v2_internlm2_2b_lora_finetune", "lora", "cuda"),
])
def test_the_diff_names_only_explained_lines_and_the_edited_config_loads(official, mode, device, tmp_path):
    src = XC.official_config_path(official)
    s = xtuner_presets.preset("tiny-cpu" if device == "cpu" else "InternVL2-2B-lora", model_path=str(tmp_path / "model"), mode=mode,
                 gpu_memory_gib=139.8)
    edits = XC.edits_for(s, src.read_text(), tmp_path / "plates", max_dynamic_patch=1 if device == "cpu" else None)
    out = XC.write_edited_config(src, edits, tmp_path / "trained.py")
    diff = XC.config_diff(src, out)
    explained = XC.explain_diff(diff, edits)
    assert explained and all(reason for _, reason in explained), [ln for ln, r in explained if not r]
    assert "UNEXPLAINED" not in XC.diff_table(diff, edits)
    cfg = xtuner_render.load_config(out)
    assert cfg.model.model_path == str(tmp_path / "model")
    assert cfg.llava_dataset.data_paths == str(tmp_path / "plates") + "/train.json"
    assert cfg.train_dataloader.batch_size == s.batch_size and cfg.lr == s.lr
    assert (cfg.model.get("llm_lora") is not None) == (mode == "lora")
    if device == "cpu":
        assert cfg.model.type.__name__ == "CPUInternVL" and cfg.optim_wrapper.type.__name__ == "OptimWrapper"
        assert cfg.llava_dataset.max_dynamic_patch == 1
        assert cfg.train_dataloader.sampler == {"type": DefaultSampler, "shuffle": True}  # random batches
    else:
        assert cfg.train_dataloader.sampler.type.__name__ == "LengthGroupedSampler"  # the GPU keeps XTuner's  # the H200 preset trains LoRA without checkpointing: XTuner's class subclassed (tests/test_gpu_presets.py)
        assert cfg.model.type.__name__ == ("InternVL_V1_5" if s.gradient_checkpointing else "LeverInternVL")
        assert cfg.optim_wrapper.type.__name__ == "AmpOptimWrapper"
        assert cfg.llava_dataset.type.__name__ == "InternVL_V1_5_Dataset"
    assert src.read_text() != out.read_text()


def test_an_unexplained_change_is_reported(tmp_path):
    src = XC.official_config_path("internvl_v2_internlm2_2b_lora_finetune")
    s = xtuner_presets.preset("tiny-cpu", model_path=str(tmp_path / "model"))
    edits = XC.edits_for(s, src.read_text(), tmp_path)
    out = XC.write_edited_config(src, edits, tmp_path / "trained.py")
    out.write_text(out.read_text().replace("max_norm = 1", "max_norm = 5"))
    bad = [ln for ln, r in XC.explain_diff(XC.config_diff(src, out), edits) if r is None]
    assert bad == ["-max_norm = 1  # grad clip", "+max_norm = 5  # grad clip"]


def test_an_edit_whose_line_is_missing_fails_with_the_fix():
    with pytest.raises(ValueError, match="copy-cfg"):
        XC.apply_edits("a = 1\n", [XC.Edit("b = 2", ["b = 3"], "why")])


def test_strip_ansi_removes_mmengines_colours():
    assert X.strip_ansi("\x1b[4m\x1b[97mmmengine\x1b[0m - INFO") == "mmengine - INFO"


def test_loop_seconds_adds_up_the_logged_iteration_times(tmp_path):
    run = X.TrainRun(tmp_path, tmp_path / "iter_20.pth", tmp_path / "log", [{"iter": 10, "time": 0.5, "loss": 1.0},
                                                                          {"iter": 20, "time": 0.25, "loss": 0.5}], 60.0, [])
    assert run.loop_seconds == pytest.approx(7.5) and run.last_iter == 20


def test_iterations_after_the_last_log_window_count(tmp_path):
    # measured on an H200: 38 iterations, logged every 10; the notebook said "Trained 30 iterations"
    run = X.TrainRun(tmp_path, tmp_path / "iter_38.pth", tmp_path / "log", [{"iter": 10, "time": 1.0, "loss": 1.0},
                                                                          {"iter": 30, "time": 2.0, "loss": 0.5}], 60.0, [])
    assert run.last_iter == 38 and run.loop_seconds == pytest.approx(10 + 40 + 16)


def test_warmup_ratio_gives_at_least_two_iterations():
    assert XC.warmup_ratio_for(0.03, 80, 4) * 20 >= 2
    assert XC.warmup_ratio_for(0.03, 2400, 4) == 0.03
    assert XC.warmup_ratio_for(0.03, None, 4) == 0.03


def test_quiet_warnings_says_so_once(capsys):
    import warnings

    X.quiet_warnings()
    assert "hidden" in capsys.readouterr().out
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("default")
        X.quiet_warnings()
        warnings.warn("TypedStorage is deprecated", UserWarning)
        warnings.warn("Importing from timm.models.layers is deprecated, please import via timm.layers", FutureWarning)
        warnings.warn("a warning the course did not list", FutureWarning)
    assert [str(w.message) for w in seen] == ["a warning the course did not list"]


def test_quiet_warnings_keeps_the_official_remote_codes_log_to_errors():
    import logging

    import transformers

    before = transformers.logging.get_verbosity()
    try:
        transformers.logging.set_verbosity_warning()
        X.quiet_warnings()   # the published InternVL2 code logs flash-attn / GenerationMixin notes through this logger
        assert transformers.logging.get_verbosity() == logging.ERROR
        assert not logging.getLogger("transformers_modules.InternVL2-4B.modeling_phi3").isEnabledFor(logging.WARNING)
    finally:
        transformers.logging.set_verbosity(before)


def test_copy_official_config_runs_xtuners_cli(tmp_path):
    out = XC.copy_official_config("internvl_v2_internlm2_2b_lora_finetune", tmp_path)
    assert out.name == "internvl_v2_internlm2_2b_lora_finetune_copy.py"
    assert out.read_text() == XC.official_config_path("internvl_v2_internlm2_2b_lora_finetune").read_text()
    with pytest.raises(RuntimeError, match="copy-cfg"):
        XC.copy_official_config("no_such_config", tmp_path)


def test_resume_demo_needs_a_checkpoint_before_the_last(tmp_path):
    work = tmp_path / "run"
    work.mkdir()
    (work / "iter_20.pth").write_bytes(b"x")
    run = X.TrainRun(work, work / "iter_20.pth", work / "train.log", [], 1.0, [])
    with pytest.raises(FileNotFoundError, match="save_total_limit"):
        X.resume_demo(tmp_path / "cfg.py", run, tmp_path / "demo")


def test_the_live_plot_draws_outside_a_notebook_too():
    # IPython's display() returns no handle without a front end: launch() from a script must not crash on it
    plot = X.LivePlot("a script")
    assert plot.handle is None
    plot.update([{"iter": 10, "loss": 2.0, "lr": 1e-3}, {"iter": 20, "loss": 1.0, "lr": 1e-3}], force=True)
    assert plot.ax_loss.get_title() == "loss 1.000 at iter 20"
