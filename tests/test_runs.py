"""Tests of labsupport.train.runs: intact checkpoints, the last good run kept, data refused before XTuner starts."""
from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
import torch

from labsupport.train import runs


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def fake_checkpoints(wd: Path, iters=(2, 4, 6), finished: bool = True) -> None:
    wd.mkdir(parents=True, exist_ok=True)
    for i in iters:
        torch.save({"meta": {"iter": i}, "state_dict": {"w": torch.ones(64) * i}}, wd / f"iter_{i}.pth")
    (wd / "last_checkpoint").write_text(str(wd / f"iter_{iters[-1]}.pth"))
    if finished:
        runs.mark_finished(wd, wd / f"iter_{iters[-1]}.pth")


def test_a_checkpoint_cut_short_is_skipped_for_the_one_before(tmp_path, capsys):
    wd = tmp_path / "wd"
    fake_checkpoints(wd)
    assert runs.latest_intact_checkpoint(wd) == wd / "iter_6.pth"
    data = (wd / "iter_6.pth").read_bytes()
    (wd / "iter_6.pth").write_bytes(data[: len(data) * 2 // 3])  # a kill during the save
    assert not runs.checkpoint_intact(wd / "iter_6.pth") and runs.checkpoint_intact(wd / "iter_4.pth")
    assert runs.latest_intact_checkpoint(wd) == wd / "iter_4.pth"
    assert "iter_6.pth is incomplete" in capsys.readouterr().out
    (wd / "iter_4.pth").write_bytes(b"")
    (wd / "iter_2.pth").write_bytes(b"PK\x03\x04 not really")
    assert runs.latest_intact_checkpoint(wd, say=None) is None


def test_the_marker_wins_over_a_higher_number_and_folders_count(tmp_path):
    wd = tmp_path / "wd"
    fake_checkpoints(wd, (2, 4))
    (wd / "last_checkpoint").write_text("iter_2.pth")  # relative, as some versions write it
    assert runs.latest_intact_checkpoint(wd) == wd / "iter_2.pth"
    ds = tmp_path / "ds" / "iter_8.pth"  # a DeepSpeed checkpoint is a folder of *.pt files
    ds.mkdir(parents=True)
    torch.save({"x": 1}, ds / "mp_rank_00_model_states.pt")
    assert runs.checkpoint_intact(ds)
    (ds / "bf16_zero_pp_rank_0_mp_rank_00_optim_states.pt").write_bytes(b"cut")
    assert not runs.checkpoint_intact(ds)


def test_keep_last_good_run_restores_it_when_the_new_run_fails(tmp_path):
    wd = tmp_path / "wd"
    fake_checkpoints(wd)
    before = sha(wd / "iter_6.pth")
    with pytest.raises(RuntimeError, match="boom"):
        with runs.keep_last_good_run(wd, say=None) as fresh:
            assert fresh == wd and not any(wd.iterdir()), "the new run must start empty"
            (wd / "train.log").write_text("half a run")
            raise RuntimeError("boom")
    assert sha(wd / "iter_6.pth") == before and not (wd / "train.log").exists()
    assert (tmp_path / ".wd.failed" / "train.log").read_text() == "half a run"
    assert not (tmp_path / ".wd.previous").exists()
    with runs.keep_last_good_run(wd, say=None):
        torch.save({"new": 1}, wd / "iter_1.pth")  # no completion marker: this run does not count
    assert sha(wd / "iter_6.pth") == before and sorted(p.name for p in (tmp_path / ".wd.failed").iterdir()) == ["iter_1.pth"]
    with runs.keep_last_good_run(wd, say=None):
        torch.save({"new": 1}, wd / "iter_1.pth")
        runs.mark_finished(wd, wd / "iter_1.pth")
    assert sorted(p.name for p in wd.iterdir()) == ["iter_1.pth", runs.FINISHED]
    assert not (tmp_path / ".wd.previous").exists()


def test_an_unfinished_run_in_the_work_dir_never_replaces_the_kept_finished_one(tmp_path):
    wd = tmp_path / "wd"
    fake_checkpoints(tmp_path / ".wd.previous")  # the finished run, set aside when the killed attempt started
    kept = sha(tmp_path / ".wd.previous" / "iter_6.pth")
    fake_checkpoints(wd, (2,), finished=False)   # the killed attempt
    with pytest.raises(RuntimeError):
        with runs.keep_last_good_run(wd, say=None):
            raise RuntimeError("the re-run fails too")
    assert sha(wd / "iter_6.pth") == kept and runs.run_finished(wd)
    assert not (tmp_path / ".wd.previous").exists()


def test_a_config_inside_the_work_dir_travels_into_the_new_run(tmp_path):
    wd = tmp_path / "wd"
    fake_checkpoints(wd)
    (wd / "config.py").write_text("max_iters = 6\n")  # benchmarks writes its config there
    with runs.keep_last_good_run(wd, say=None, carry=(wd / "config.py", tmp_path / "elsewhere.py")):
        assert sorted(p.name for p in wd.iterdir()) == ["config.py"]
        assert (wd / "config.py").read_text() == "max_iters = 6\n"


def test_an_interrupted_set_aside_is_recovered_on_the_next_run(tmp_path):
    wd = tmp_path / "wd"
    fake_checkpoints(tmp_path / ".wd.previous")  # the process died after moving the good run aside
    wd.mkdir()
    with pytest.raises(KeyboardInterrupt):
        with runs.keep_last_good_run(wd, say=None):
            raise KeyboardInterrupt
    assert runs.latest_intact_checkpoint(wd) == wd / "iter_6.pth"


# ------------------------------------------------------------------------- with XTuner and the tiny model
xtuner = pytest.importorskip("xtuner")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    from labsupport.model.tinymodel import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("models") / "internvl2-tiny")


@pytest.fixture(scope="module")
def plates(tmp_path_factory) -> dict:
    from labsupport.datasets.plates import build_course_task

    return build_course_task(tmp_path_factory.mktemp("data") / "plates", n_train=16, n_heldout=4,
                             kinds=("colour",), progress=False)


def config_for(tiny, data_json, images, tmp_path, name="cfg.py", **kw):
    from labsupport.train import xtuner_presets, xtuner_render

    s = xtuner_presets.preset("tiny-cpu", model_path=str(tiny), mode="full", max_iters=6, save_steps=2, save_total_limit=2,
                 log_interval=1, batch_size=2, warmup_ratio=0.0, max_epochs=1,
                 data=[xtuner_presets.DataSpec(str(data_json), str(images))])
    from dataclasses import replace

    return xtuner_render.write_config(replace(s, **kw), tmp_path / name)


def test_data_with_errors_is_refused_before_xtuner_starts(tiny, plates, tmp_path):
    from labsupport.train import xtuner as X

    recs = json.loads(Path(plates["train"]).read_text())
    recs[1] = None                                    # a null record
    recs[2]["image"] = "images/gone.jpg"              # XTuner would silently train on another sample instead
    recs[3]["conversations"][1]["value"] = None       # XTuner crashes on it
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(recs))
    before = sha(bad)
    cfg = config_for(tiny, bad, plates["root"], tmp_path)
    with pytest.raises(runs.DataInvalid) as err:
        X.launch(cfg, tmp_path / "wd", live=False, show="none")
    text = str(err.value)
    for needle in ("bad.json", "record 1", "not_a_record", "record 2", "image_missing", "record 3", "non_string", "write_clean"):
        assert needle in text, text
    assert sha(bad) == before and not (tmp_path / "wd").exists(), "nothing may be written or trained"


def test_too_long_is_measured_with_xtuners_own_template(tiny, plates, tmp_path):
    cfg = config_for(tiny, plates["train"], plates["root"], tmp_path, max_length=300)
    with pytest.raises(runs.DataInvalid, match="too_long"):
        runs.check_training_data(cfg, say=None)
    from labsupport.train import xtuner_render

    dataset = runs.xtuner_dataset(xtuner_render.load_config(cfg), tmp_path)
    rec = json.loads(Path(plates["train"]).read_text())[0]
    n = runs.xtuner_length(dataset)(rec, tuple(rec["image_wh"]))
    image = dataset.patch_token  # max_dynamic_patch=1: one tile, no thumbnail
    assert image < n < image + 80
    roomy = runs.check_training_data(config_for(tiny, plates["train"], plates["root"], tmp_path, "roomy.py"), say=None)
    longest = max(roomy[0].lengths.values())
    assert roomy[0].lengths[0] == n and longest > 300
    exact = config_for(tiny, plates["train"], plates["root"], tmp_path, "exact.py", max_length=longest)
    assert runs.check_training_data(exact, say=None)[0].ok  # the limit itself fits: XTuner cuts only above it
    with pytest.raises(runs.DataInvalid, match="too_long"):
        runs.check_training_data(config_for(tiny, plates["train"], plates["root"], tmp_path, "tight.py",
                                            max_length=longest - 1), say=None)


def test_failed_rerun_keeps_the_last_checkpoint_and_a_cut_save_resumes_from_the_one_before(tiny, plates, tmp_path):
    """Train, re-run with a failing setting (previous checkpoint intact), then cut the newest save and resume."""
    from labsupport.train import xtuner as X

    wd = tmp_path / "wd"
    good_cfg = config_for(tiny, plates["train"], plates["root"], tmp_path)
    first = X.launch(good_cfg, wd, live=False, show="none", threads=1)
    assert first.checkpoint.name == "iter_6.pth"
    kept = {p.name: sha(p) for p in wd.glob("iter_*.pth")}
    assert set(kept) == {"iter_4.pth", "iter_6.pth"}

    failing = config_for(tiny, plates["train"], plates["root"], tmp_path, "failing.py", lr=-1.0)  # AdamW refuses it
    with pytest.raises(X.TrainingFailed, match="learning rate"):
        X.launch(failing, wd, live=False, show="none", threads=1)
    assert {p.name: sha(p) for p in wd.glob("iter_*.pth")} == kept, "the failed re-run touched the last good run"
    assert (tmp_path / ".wd.failed" / "train.log").exists()

    data = (wd / "iter_6.pth").read_bytes()
    (wd / "iter_6.pth").write_bytes(data[: len(data) // 2])  # killed in the middle of saving iter_6
    resumed = X.launch(good_cfg, wd, resume=True, live=False, show="none", threads=1)
    assert [r["iter"] for r in resumed.scalars if r["iter"] > 4] == [5, 6]
    assert resumed.checkpoint.name == "iter_6.pth" and runs.checkpoint_intact(resumed.checkpoint)
    assert torch.load(resumed.checkpoint, map_location="cpu", weights_only=False)["meta"]["iter"] == 6
    shutil.rmtree(tmp_path / ".wd.failed")


def test_an_official_configs_single_data_path_is_one_file_not_its_characters(tmp_path):
    from mmengine.config import Config

    missing = tmp_path / "train.json"
    cfg = Config(dict(train_dataloader=dict(dataset=dict(type="InternVL_V1_5_Dataset", data_paths=str(missing),
                                                         image_folders=str(tmp_path), max_length=512))))
    with pytest.raises(runs.DataInvalid) as err:
        runs.check_training_data(cfg, say=None)
    assert str(missing) in str(err.value) and "No such file or directory: 't'" not in str(err.value)


def test_a_dataset_that_is_not_internvl_json_is_left_to_xtuner(capsys):
    from mmengine.config import Config

    cfg = Config(dict(train_dataloader=dict(dataset=dict(type="process_hf_dataset", dataset=dict(path="json")))))
    assert runs.check_training_data(cfg) == []
    assert "not XTuner's InternVL dataset" in capsys.readouterr().out
