"""The measured GPU presets: each entry's numbers are those of the docs/gpu row it names."""
import json

import pytest

from labsupport.evaluate import measured
from labsupport.train import gpu_presets


def test_every_entry_matches_its_measured_row():
    data = json.loads(gpu_presets.DATA.read_text())
    for model, modes in ((k, v) for k, v in data.items() if not k.startswith("_")):
        for mode, entries in modes.items():
            for e in entries:
                m = e["measured"]
                runs = json.loads((measured.measured_dir() / m["file"]).read_text())["runs"]
                run = next(r for r in runs if r.get("row") == m["row"])
                assert run["mode"] == mode and "error" not in run
                assert run["batch_per_gpu"] == e["settings"]["batch_size"]
                assert run["checkpointing"] == e["settings"]["gradient_checkpointing"]
                assert run["num_workers"] == e["settings"]["num_workers"]
                assert run["group_by_length"] == e["settings"]["group_by_length"]
                assert run.get("fused_rmsnorm", False) == e["settings"].get("fused_rmsnorm", False)
                assert m["tokens_per_s_per_gpu"] == pytest.approx(run["tokens_per_s_per_gpu"], abs=0.1)
                assert m["mfu"] == pytest.approx(run["mfu"], abs=1e-4)
                assert m["peak_memory_gib"] == pytest.approx(run["peak_memory_gib"], abs=0.01)


def test_best_is_the_fastest_that_fits_with_headroom():
    nockpt = next(e for e in gpu_presets.entries("InternVL2-2B", "lora") if not e["settings"]["gradient_checkpointing"])
    peak = nockpt["measured"]["peak_memory_gib"]
    assert peak < gpu_presets.H200_GIB < gpu_presets.needs_gib(nockpt)  # measured under 141 GB, but without 15 % to spare
    assert gpu_presets.best("InternVL2-2B", "lora")["gradient_checkpointing"] is True
    assert gpu_presets.best("InternVL2-2B", "lora", gpu_memory_gib=peak * 1.2)["gradient_checkpointing"] is False
    assert gpu_presets.best("InternVL2-2B", "lora", gpu_memory_gib=80)["gradient_checkpointing"] is True
    assert gpu_presets.best("InternVL2-2B", "full")["batch_size"] == 16
    assert gpu_presets.best("InternVL2-2B", "full")["fused_rmsnorm"] is True  # full-b16-w8-rmsnorm, the fastest full row
    with pytest.raises(ValueError, match="fits"):
        gpu_presets.best("InternVL2-2B", "full", gpu_memory_gib=24)
    with pytest.raises(KeyError, match="InternVL2-8B"):
        gpu_presets.best("InternVL2-8B", "full")


# ---- the GPU presets of labsupport.train.xtuner use the measured entries ---------------------------------------------------
from labsupport.train import xtuner_presets, xtuner_render  # noqa: E402
from labsupport.train import xtuner_config as XC  # noqa: E402

H200, A100_80 = gpu_presets.H200_GIB, 80.0
BIG = 160.0  # a card whose memory leaves the no-checkpointing LoRA entry its headroom
RECIPE_GLOBAL_BATCH = {"full": 128, "lora": 16, "qlora": 16}  # the official recipes' (internvl2.0/2nd_finetune, XTuner)


@pytest.mark.parametrize("mode", ["full", "lora"])
@pytest.mark.parametrize("gib", [BIG, H200, A100_80])
def test_2b_gpu_presets_carry_the_measured_values(mode, gib):
    s = xtuner_presets.preset(f"InternVL2-2B-{mode}", gpu_memory_gib=gib)
    e = gpu_presets.entry("InternVL2-2B", mode, gib)
    assert (s.batch_size, s.num_workers, s.gradient_checkpointing, s.fused_rmsnorm) == \
        (e["settings"]["batch_size"], e["settings"]["num_workers"], e["settings"]["gradient_checkpointing"],
         e["settings"].get("fused_rmsnorm", False))
    assert s.measured["row"] == e["measured"]["row"] and s.measured["file"] in s.preset_note
    assert s.batch_size != 4  # the unmeasured default per-GPU batch of 2B
    assert s.lr == 4e-5


@pytest.mark.parametrize("size", ["1B", "2B", "4B", "8B"])
@pytest.mark.parametrize("mode", ["full", "lora", "qlora"])
@pytest.mark.parametrize("gib", [H200, A100_80, 24.0])
def test_every_gpu_preset_keeps_the_recipes_global_batch(size, mode, gib):
    s = xtuner_presets.preset(f"InternVL2-{size}-{mode}", gpu_memory_gib=gib)
    assert s.batch_size * s.nproc * s.accumulative_counts == RECIPE_GLOBAL_BATCH[mode], s
    assert s.preset_note


def test_lora_keeps_checkpointing_unless_the_card_leaves_headroom(tmp_path):
    big, h200, small = (xtuner_presets.preset("InternVL2-2B-lora", gpu_memory_gib=g) for g in (BIG, H200, A100_80))
    assert big.gradient_checkpointing is False and h200.gradient_checkpointing is small.gradient_checkpointing is True
    assert small.measured["peak_memory_gib"] < A100_80 < big.measured["peak_memory_gib"]
    assert "80.0 GiB" in small.preset_note and "headroom" in small.preset_note


def test_without_measurements_that_fit_the_preset_says_so():
    s = xtuner_presets.preset("InternVL2-2B-full", gpu_memory_gib=24.0)
    assert s.measured is None and s.batch_size == 4 and s.gradient_checkpointing is True
    assert "fits 24.0 GiB" in s.preset_note


@pytest.mark.parametrize("name,gib", [("InternVL2-2B-lora", BIG), ("InternVL2-2B-lora", A100_80),
                                      ("InternVL2-2B-full", H200), ("InternVL2-4B-lora", H200)])
def test_the_rendered_config_uses_lever_internvl_exactly_when_a_lever_needs_it(name, gib, tmp_path):
    s = xtuner_presets.preset(name, gpu_memory_gib=gib, model_path=str(tmp_path / "model"))
    path = xtuner_render.write_config(s, tmp_path / "config.py")
    lever = not s.gradient_checkpointing or s.fused_rmsnorm
    assert ("LeverInternVL" in path.read_text()) == lever
    cfg = xtuner_render.load_config(path)
    assert cfg.model.type.__name__ == ("LeverInternVL" if lever else "InternVL_V1_5")
    assert cfg.model.get("gradient_checkpointing", True) == s.gradient_checkpointing
    assert cfg.model.get("fused_rmsnorm", False) == s.fused_rmsnorm
    assert cfg.train_dataloader.batch_size == s.batch_size and cfg.train_dataloader.num_workers == s.num_workers


@pytest.mark.parametrize("official,mode,gib", [("internvl_v2_internlm2_2b_lora_finetune", "lora", BIG),
                                               ("internvl_v2_internlm2_2b_lora_finetune", "lora", A100_80),
                                               ("internvl_v2_internlm2_2b_finetune", "full", H200)])
def test_the_edited_official_config_cites_the_measured_row_and_loads(official, mode, gib, tmp_path):
    pytest.importorskip("xtuner")
    src = XC.official_config_path(official)
    s = xtuner_presets.preset(f"InternVL2-2B-{mode}", gpu_memory_gib=gib, model_path=str(tmp_path / "model"))
    edits = XC.edits_for(s, src.read_text(), tmp_path / "plates")
    out = XC.write_edited_config(src, edits, tmp_path / "trained.py")
    explained = XC.explain_diff(XC.config_diff(src, out), edits)
    assert explained and all(why for _, why in explained), [ln for ln, why in explained if not why]
    by_line = dict(explained)
    batch_line = next(ln for ln in by_line if ln.startswith("+batch_size"))
    assert s.measured["file"] in by_line[batch_line] and f"{s.measured['mfu']:.1%}" in by_line[batch_line]
    assert (f"+batch_size = {s.batch_size}  # per_device") == batch_line
    lever = [ln for ln in by_line if "LeverInternVL" in ln]
    assert bool(lever) == (not s.gradient_checkpointing or s.fused_rmsnorm)
    if not s.gradient_checkpointing:
        assert s.measured["row"] in by_line["+    gradient_checkpointing=False,"]
    if s.fused_rmsnorm:
        assert s.measured["row"] in by_line["+    fused_rmsnorm=True,"] and "Triton" in by_line["+    fused_rmsnorm=True,"]
    cfg = xtuner_render.load_config(out)
    assert cfg.model.type.__name__ == ("LeverInternVL" if lever else "InternVL_V1_5")
    assert cfg.model.get("fused_rmsnorm", False) == s.fused_rmsnorm
    assert cfg.batch_size * s.nproc * cfg.accumulative_counts == RECIPE_GLOBAL_BATCH[mode]
    assert cfg.dataloader_num_workers == s.num_workers and cfg.lr == 4e-5


def test_gpu_memory_comes_from_torch_when_a_gpu_is_there(monkeypatch):
    import torch

    class Props:
        name, total_memory = "NVIDIA A100-SXM4-80GB", 85_100_000_000

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda i: Props())
    gib, where = gpu_presets.gpu_memory_gib()
    assert gib == pytest.approx(79.3, abs=0.05) and "A100" in where and "torch.cuda" in where
    assert xtuner_presets.preset("InternVL2-2B-lora").gradient_checkpointing is True  # 128.5 GiB without it: does not fit
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert gpu_presets.gpu_memory_gib()[0] == H200 and "H200" in gpu_presets.gpu_memory_gib()[1]


def test_a_cpu_run_drops_the_triton_rmsnorm_and_says_why():
    s, reasons = xtuner_presets.cpu_compatible(xtuner_presets.preset("InternVL2-2B-full"))
    assert s.fused_rmsnorm is False and any("Triton" in r for r in reasons)
