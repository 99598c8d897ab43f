"""Tests of labsupport.train.xtuner: generated configs, the launcher's honesty, resume, conversion (course env).

The training tests run XTuner's own train.py on the tiny model for a handful of iterations; they
take about a minute each on a 2-core CPU.
"""
from __future__ import annotations

import json
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from labsupport.train import xtuner as X, xtuner_presets, xtuner_render

pytest.importorskip("xtuner")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    from labsupport.model.tinymodel import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("models") / "internvl2-tiny")


@pytest.fixture(scope="module")
def plates(tmp_path_factory) -> dict:
    from labsupport.datasets.plates import build_course_task

    return build_course_task(tmp_path_factory.mktemp("data") / "plates", n_train=24, n_heldout=8,
                             kinds=("colour",), progress=False)


def fake_settings(name: str, tmp_path: Path) -> xtuner_presets.TrainSettings:
    s = xtuner_presets.preset(name, data=[xtuner_presets.DataSpec(str(tmp_path / "train.json"), str(tmp_path / "images"), 2)])
    return replace(s, model_path=str(tmp_path / "model")) if name == "tiny-cpu" else s


@pytest.mark.parametrize("name", list(xtuner_presets.PRESETS))
def test_every_preset_writes_a_config_that_mmengine_loads(name, tmp_path):
    s = fake_settings(name, tmp_path)
    path = tmp_path / f"{name}.py"
    path.write_text(xtuner_render.render_config(s))
    cfg = xtuner_render.load_config(path)
    assert cfg.train_dataloader.batch_size == s.batch_size
    assert cfg.optim_wrapper.accumulative_counts == s.accumulative_counts
    assert cfg.optim_wrapper.optimizer.lr == s.lr
    assert cfg.llava_dataset.repeat_times == [2]
    assert cfg.model.freeze_llm == (s.mode != "full")
    assert (cfg.model.get("llm_lora") is not None) == (s.mode in ("lora", "qlora"))
    assert cfg.model.get("quantization_llm", False) == (s.mode == "qlora")


def test_cpu_config_makes_the_cpu_choices(tmp_path):
    path = tmp_path / "cpu.py"
    path.write_text(xtuner_render.render_config(replace(fake_settings("tiny-cpu", tmp_path), max_iters=50)))
    cfg = xtuner_render.load_config(path)
    assert cfg.model.type.__name__ == "CPUInternVL" and cfg.model.dtype == "float32"
    assert cfg.optim_wrapper.type.__name__ == "OptimWrapper"
    assert cfg.env_cfg.dist_cfg.backend == "gloo"
    assert cfg.llava_dataset.max_dynamic_patch == 1
    assert cfg.warmup_iters >= 2
    assert cfg.train_cfg.max_iters == cfg.max_iters


def test_gpu_only_choices_are_refused_on_cpu_and_dropped_with_reasons(tmp_path):
    s = replace(fake_settings("InternVL2-2B-qlora", tmp_path), device="cpu")
    with pytest.raises(ValueError, match="cpu_compatible"):
        xtuner_render.render_config(s)
    fixed, reasons = xtuner_presets.cpu_compatible(fake_settings("InternVL2-8B-qlora", tmp_path))
    assert (fixed.mode, fixed.deepspeed, fixed.nproc, fixed.device) == ("lora", 0, 1, "cpu")
    assert any("QLoRA" in r for r in reasons) and any("DeepSpeed" in r for r in reasons)


@pytest.mark.parametrize("max_iters,ratio", [(10, 0.0), (20, 0.05), (200, 0.1)])
def test_generated_schedule_reaches_the_full_learning_rate(max_iters, ratio, tmp_path):
    """Build the config's schedulers with mmengine on a dummy optimizer: after warmup the lr must be the configured one."""
    from mmengine.optim import OptimWrapper
    from mmengine.registry import PARAM_SCHEDULERS

    s = replace(fake_settings("tiny-cpu", tmp_path), max_iters=max_iters, warmup_ratio=ratio, lr=1e-3)
    path = tmp_path / "sched.py"
    path.write_text(xtuner_render.render_config(s))
    cfg = xtuner_render.load_config(path)
    opt = OptimWrapper(torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=cfg.lr))
    scheds = [PARAM_SCHEDULERS.build(dict(c, optimizer=opt)) for c in cfg.param_scheduler]
    lrs = []
    for _ in range(max_iters):
        lrs.append(opt.optimizer.param_groups[0]["lr"])
        for sch in scheds:
            sch.step()
    assert lrs[0] < 1e-6
    assert max(lrs) == pytest.approx(1e-3, rel=1e-3)


def test_parse_log_line_reads_mmengine_lines():
    line = ("11/21 23:27:26 - mmengine - INFO - Iter(train) [ 5/20]  lr: 9.3974e-04  eta: 0:00:33  "
            "time: 2.2251  data_time: 0.2013  grad_norm: 9.3404  loss: 7.2782")
    row = X.parse_log_line(line)
    assert row["iter"] == 5 and row["max_iters"] == 20
    assert row["lr"] == pytest.approx(9.3974e-4) and row["loss"] == pytest.approx(7.2782)
    assert X.parse_log_line("11/21 23:27:15 - mmengine - INFO - Checkpoints will be saved to /x.") is None


def test_latest_checkpoint_prefers_mmengines_marker(tmp_path):
    assert X.latest_checkpoint(tmp_path) is None
    for n in (2, 10, 4):
        torch.save({"meta": {"iter": n}}, tmp_path / f"iter_{n}.pth")  # only complete checkpoints count
    assert X.latest_checkpoint(tmp_path).name == "iter_10.pth"
    (tmp_path / "last_checkpoint").write_text(str(tmp_path / "iter_4.pth"))
    assert X.latest_checkpoint(tmp_path).name == "iter_4.pth"


def test_train_command_uses_this_python_and_torchrun_for_several_processes(tmp_path):
    one = X.train_command(tmp_path / "c.py", tmp_path / "wd")
    assert one[0] == sys.executable and one[1].endswith("xtuner/tools/train.py") and "--launcher" not in one
    many = X.train_command(tmp_path / "c.py", tmp_path / "wd", nproc=8, deepspeed=2, resume_from=tmp_path / "iter_4.pth")
    assert many[:3] == [sys.executable, "-m", "torch.distributed.run"] and "--nproc_per_node=8" in many
    assert many[many.index("--deepspeed") + 1] == "deepspeed_zero2" and "--resume" in many
    assert X.multi_gpu_command("c.py", gpus=8, zero=3).startswith("NPROC_PER_NODE=8 xtuner train c.py")


def test_launch_fails_loudly_on_a_broken_config(tmp_path):
    bad = tmp_path / "broken.py"
    bad.write_text("model = dict(type=\n")  # a syntax error
    with pytest.raises(X.TrainingFailed, match="SyntaxError|invalid syntax|was never closed"):
        X.launch(bad, tmp_path / "wd", live=False, show="none")


def test_launch_fails_loudly_on_a_missing_dataset(tiny, tmp_path):
    s = xtuner_presets.preset("tiny-cpu", model_path=str(tiny), max_iters=2,
                 data=[xtuner_presets.DataSpec(str(tmp_path / "nowhere" / "train.json"), str(tmp_path))])
    cfg = xtuner_render.write_config(s, tmp_path / "cfg.py")
    from labsupport.train.runs import DataInvalid

    with pytest.raises(DataInvalid) as err:  # refused by the data check, before XTuner starts
        X.launch(cfg, tmp_path / "wd", live=False, show="none")
    assert "nowhere/train.json" in str(err.value) and "no such file" in str(err.value)
    assert X.latest_checkpoint(tmp_path / "wd") is None


def test_lora_trains_through_xtuner_and_the_converted_model_chats(tiny, plates, tmp_path):
    from labsupport.evaluate.scoring import load_model, simple_load_image

    s = xtuner_presets.preset("tiny-cpu", model_path=str(tiny), mode="lora", max_iters=10, save_steps=10, log_interval=1,
                 batch_size=2, data=[xtuner_presets.DataSpec(str(plates["train"]), str(plates["root"]))])
    cfg = xtuner_render.write_config(s, tmp_path / "lora.py")
    run = X.launch(cfg, tmp_path / "wd", live=False, show="none")
    assert run.checkpoint.name == "iter_10.pth"
    assert [r["iter"] for r in run.scalars] == list(range(1, 11))
    saved = json.loads((tmp_path / "wd" / "scalars.json").read_text())
    assert saved[-1]["iter"] == 10 and "loss" in saved[-1]
    state = torch.load(run.checkpoint, map_location="cpu", weights_only=False)["state_dict"]
    assert any("lora_A" in k for k in state) and any("mlp1" in k for k in state)
    out = X.convert_to_official(cfg, run.checkpoint, tmp_path / "hf")
    assert (out / "modeling_internvl_chat.py").exists() and (out / "config.json").exists()
    model, tok = load_model(out)
    assert not any("lora" in n for n, _ in model.named_parameters())
    reply = model.chat(tok, simple_load_image(plates["images"] / sorted(p.name for p in plates["images"].iterdir())[0]),
                       "<image>\nWhat colour are the objects on the plate?", dict(max_new_tokens=4, do_sample=False))
    assert isinstance(reply, str)


def test_killed_run_resumes_from_its_checkpoint_and_completes(tiny, plates, tmp_path):
    s = xtuner_presets.preset("tiny-cpu", model_path=str(tiny), max_iters=8, save_steps=3, log_interval=1, batch_size=2,
                 data=[xtuner_presets.DataSpec(str(plates["train"]), str(plates["root"]))])
    cfg = xtuner_render.write_config(s, tmp_path / "full.py")
    wd = tmp_path / "wd"
    wd.mkdir()
    proc = subprocess.Popen(X.train_command(cfg, wd), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env=X._env(1), cwd=str(wd))
    try:
        deadline = time.time() + 300
        while X.latest_checkpoint(wd) is None and proc.poll() is None and time.time() < deadline:
            time.sleep(0.5)
    finally:
        proc.kill()
        proc.wait()
    first = X.latest_checkpoint(wd)
    assert first is not None, "the first run saved no checkpoint before it was killed"
    done = int(first.stem.split("_")[1])
    assert done < 8, "the run finished before it could be killed"
    run = X.launch(cfg, wd, resume=True, live=False, show="none")
    resumed_iters = [r["iter"] for r in run.scalars if r["iter"] > done]
    assert resumed_iters[0] == done + 1 and resumed_iters[-1] == 8
    assert run.checkpoint.name == "iter_8.pth"
    meta = torch.load(run.checkpoint, map_location="cpu", weights_only=False)["meta"]
    assert meta["iter"] == 8


def test_mmengine_colour_codes_are_stripped_and_the_line_still_parses():
    line = ("12/01 21:15:21 - mmengine - \x1b[4m\x1b[97mINFO\x1b[0m - Iter(train) [ 10/500]  lr: 1.0000e-03  "
            "eta: 0:22:53  time: 2.8023  data_time: 0.3510  grad_norm: 9.6174  loss: 7.0063\n")
    clean = X.ANSI_ESCAPE.sub("", line)
    assert "\x1b" not in clean and "- INFO - Iter(train)" in clean
    assert X.parse_log_line(clean)["loss"] == 7.0063


def test_ansi_colour_codes_are_stripped_from_mmengine_lines():
    coloured = "12/01 22:28:40 - mmengine - \x1b[4m\x1b[97mINFO\x1b[0m - Num train samples 96\n"
    assert X.ANSI_ESCAPE.sub("", coloured) == "12/01 22:28:40 - mmengine - INFO - Num train samples 96\n"


def test_a_run_without_launcher_gets_its_own_process_group(monkeypatch):
    """XTuner's train.py sets LOCAL_RANK=0 even without a launcher (the AMP lever row then had no process group)."""
    from labsupport.train import xtuner_shims

    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.setenv("LOCAL_RANK", "0")
    assert not xtuner_shims.launched()
    monkeypatch.setenv("WORLD_SIZE", "1")  # torchrun, even with one process
    assert xtuner_shims.launched() and xtuner_shims.ensure_process_group() is False


def test_lever_internvl_switches_checkpointing_off_and_keeps_float32_master_weights(tiny, monkeypatch):
    import torch

    from labsupport.train.xtuner_shims import LeverInternVL

    monkeypatch.setenv("WORLD_SIZE", "1")  # as under a launcher: no process group of its own in this test process
    m = LeverInternVL(model_path=str(tiny), freeze_llm=True, freeze_visual_encoder=True, gradient_checkpointing=False,
                      dtype="float32")
    assert {p.dtype for p in m.model.parameters()} == {torch.float32}
    assert m.model.language_model.model.gradient_checkpointing is False
    xtuners = LeverInternVL(model_path=str(tiny), freeze_llm=True, freeze_visual_encoder=True)
    assert torch.bfloat16 in {p.dtype for p in xtuners.model.parameters()}  # XTuner's own dtype and checkpointing
    assert xtuners.model.language_model.model.gradient_checkpointing is True
    with pytest.raises(ValueError, match="float32"):
        LeverInternVL(model_path=str(tiny), freeze_llm=True, freeze_visual_encoder=True, dtype="float16")


def test_root_error_names_the_cause_not_the_launchers_wrapper():
    log = ("Traceback (most recent call last):\n"
           "[rank0]: torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 10.62 GiB.\n"
           "Traceback (most recent call last):\n"
           "torch.distributed.elastic.multiprocessing.errors.ChildFailedError: \n"
           "/tmp/site-xtuner/xtuner/tools/train.py FAILED\n")
    assert X.root_error(log) == "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 10.62 GiB."
    assert X.root_error("ValueError: Default process group has not been initialized\n").startswith("ValueError:")
    assert X.root_error("all fine\nIter(train) [10/20] loss: 1.0\n") is None


def test_the_rmsnorm_lever_gives_every_llm_norm_xtuners_triton_kernel(tiny, monkeypatch):
    """XTuner's own dispatch (what USE_TRITON_KERNEL=1 does for its SFT model), on the course's InternLM2: every RMSNorm."""
    pytest.importorskip("triton")
    from labsupport.train.xtuner_shims import LeverInternVL

    monkeypatch.setenv("WORLD_SIZE", "1")
    m = LeverInternVL(model_path=str(tiny), freeze_llm=True, freeze_visual_encoder=True, fused_rmsnorm=True)
    norms = [mod for mod in m.model.language_model.modules() if type(mod).__name__ == "InternLM2RMSNorm"]
    assert norms and all(mod.forward.__func__.__name__ == "rms_norm_forward" for mod in norms)
    with pytest.raises(RuntimeError, match="cpu"):  # the kernel is for CUDA tensors; it says so on a CPU
        norms[0](torch.ones(1, norms[0].weight.shape[0]))
    from labsupport.train.xtuner_shims import use_xtuner_rmsnorm_kernel

    with pytest.raises(ValueError, match="fused_rmsnorm=False"):  # an LLM without a mapped RMSNorm: say so, change nothing
        use_xtuner_rmsnorm_kernel(torch.nn.Sequential(torch.nn.LayerNorm(4)))


def test_finished_run_checks_what_xtuner_train_left(tmp_path):
    # `xtuner train` exits 0 when training fails: the check is the checkpoint and mmengine's scalars.json
    started = time.time()
    with pytest.raises(X.TrainingFailed, match="left no checkpoint"):
        X.finished_run(tmp_path, started=started)
    torch.save({"state_dict": {"w": torch.ones(2)}}, tmp_path / "iter_20.pth")
    vis = tmp_path / "20261206_120000" / "vis_data"
    vis.mkdir(parents=True)
    (vis / "scalars.json").write_text("\n".join(json.dumps(r) for r in (
        {"lr": 1e-3, "loss": 2.0, "time": 0.5, "iter": 10}, {"lr": 1e-3, "loss": 1.0, "time": 0.5, "iter": 20},
        {"accuracy": 0.5, "step": 20})))  # a validation row, not a training one
    run = X.finished_run(tmp_path, started=started - 5, seconds=12.0)
    assert run.checkpoint.name == "iter_20.pth" and run.last_iter == 20 and run.seconds == 12.0
    assert [r["loss"] for r in run.scalars] == [2.0, 1.0] and run.loop_seconds == 10.0
    with pytest.raises(X.TrainingFailed, match="older than this run"):
        X.finished_run(tmp_path, started=time.time() + 60)
