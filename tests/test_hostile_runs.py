"""Kills and failures in the middle of a launch never lose a finished run, and nothing unfinished is used as one.

A fake train.py (standard library only) stands in for XTuner's: it writes mmengine-style log lines and torch-zip-shaped
checkpoints fast, and can hang, fail or stop early, so the launcher's bookkeeping is tested without training."""
from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("mmengine")  # the launcher loads configs with mmengine (course env)

from labsupport.evaluate import conversion  # noqa: E402
from labsupport.publish import hub  # noqa: E402
from labsupport.train import runs  # noqa: E402
from labsupport.train import xtuner as X  # noqa: E402

FAKE_TRAIN = r'''
import os, shutil, sys, time, zipfile
from pathlib import Path
cfg, wd = sys.argv[1], Path(sys.argv[sys.argv.index("--work-dir") + 1])
shutil.copy(cfg, wd / Path(cfg).name)            # mmengine copies the config it ran into the work dir
total = int(os.environ.get("FAKE_ITERS", "6"))
for i in range(1, total + 1):
    print(f"Iter(train) [{i:3d}/{total}]  lr: 1.0e-04  loss: {2.0 / i:.4f}  time: 0.01", flush=True)
    if i % 2 == 0 or i == total:
        tmp = wd / f".iter_{i}.tmp"
        with zipfile.ZipFile(tmp, "w") as z:
            z.writestr("archive/data.pkl", os.environ.get("FAKE_TAG", "run") + str(i))
        os.replace(tmp, wd / f"iter_{i}.pth")
        (wd / "last_checkpoint").write_text(str(wd / f"iter_{i}.pth"))
    if i == int(os.environ.get("FAKE_HANG_AT", "0")):
        print("Saving checkpoint ... (hanging)", flush=True)
        time.sleep(600)
    if i == int(os.environ.get("FAKE_FAIL_AT", "0")):
        print("ValueError: Invalid learning rate: -1.0", flush=True)
        sys.exit(1)
    if i == int(os.environ.get("FAKE_STOP_AT", "0")):
        sys.exit(0)                                  # exit 0 before the last iteration (xtuner train's habit)
'''


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture()
def setup(tmp_path, monkeypatch):
    fake = tmp_path / "fake_train.py"
    fake.write_text(FAKE_TRAIN)
    base = tmp_path / "base"
    base.mkdir()
    (base / "config.json").write_text(json.dumps({"max_dynamic_patch": 6}))
    cfg = tmp_path / "run.py"
    cfg.write_text(f"model = dict(model_path={str(base)!r}, freeze_visual_encoder=True, llm_lora=dict(r=4))\n"
                   f"train_dataloader = dict(dataset=dict(data_paths=[{str(tmp_path / 'train.json')!r}]))\n")
    monkeypatch.setattr(X, "train_command", lambda config, work_dir, **kw: [sys.executable, str(fake), str(config),
                                                                           "--work-dir", str(work_dir)])
    art = tmp_path / "art"
    return {"fake": fake, "cfg": cfg, "art": art, "wd": art / conversion.TRAIN_WORK_DIR}


def launch(setup, monkeypatch, **env):
    for k, v in env.items():
        monkeypatch.setenv(k, str(v))
    try:
        return X.launch(setup["cfg"], setup["wd"], live=False, show="none", check_data=False, threads=1)
    finally:
        for k in env:
            monkeypatch.delenv(k)


LAUNCHER = r'''
import sys
from labsupport.train import xtuner as X
fake, cfg, wd = sys.argv[1:4]
X.train_command = lambda config, work_dir, **kw: [sys.executable, fake, str(config), "--work-dir", str(work_dir)]
X.launch(cfg, wd, live=False, show="none", check_data=False, threads=1)
'''


def start_launcher(setup, **env) -> subprocess.Popen:
    """A launcher in its own process (the notebook kernel), to be killed like the OOM killer kills a kernel."""
    return subprocess.Popen([sys.executable, "-c", LAUNCHER, str(setup["fake"]), str(setup["cfg"]), str(setup["wd"])],
                            env={**os.environ, **{k: str(v) for k, v in env.items()}},
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def wait_for(predicate, seconds: float = 60.0, what: str = "") -> None:
    deadline = time.time() + seconds
    while time.time() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out after {seconds} s waiting for {what}")


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    status = Path(f"/proc/{pid}/status")
    return not (status.exists() and "\nState:\tZ" in status.read_text())


def test_a_finished_run_writes_its_marker_last_and_05_finds_it(setup, monkeypatch):
    run = launch(setup, monkeypatch)
    assert run.checkpoint.name == "iter_6.pth"
    assert runs.run_finished(setup["wd"])["checkpoint"] == "iter_6.pth"
    assert not (setup["wd"] / runs.LOCK).exists(), "the lock must go when the trainer has ended"
    assert conversion.find_training_run(setup["art"], say=None).checkpoint == setup["wd"] / "iter_6.pth"


def test_kill_then_failed_rerun_keeps_the_finished_run(setup, monkeypatch):
    """The issue's sequence: finished run, the kernel SIGKILLed mid-run, a re-run that fails: the finished run survives."""
    wd, kept = setup["wd"], setup["wd"].with_name(".04_finetune.previous")
    launch(setup, monkeypatch, FAKE_TAG="good")
    good = sha(wd / "iter_6.pth")

    kernel = start_launcher(setup, FAKE_ITERS=40, FAKE_HANG_AT=10, FAKE_TAG="killed")
    wait_for(lambda: (wd / "iter_10.pth").exists() and (wd / runs.LOCK).exists(), what="the killed run's iter_10")
    trainer = json.loads((wd / runs.LOCK).read_text())["pid"]
    kernel.send_signal(signal.SIGKILL)
    kernel.wait(timeout=10)
    wait_for(lambda: not alive(trainer), 20, "the trainer to die with its launcher (PR_SET_PDEATHSIG)")
    assert runs.run_finished(wd) is None and "iter_10.pth but no completion marker" in runs.why_unfinished(wd)
    assert sha(kept / "iter_6.pth") == good
    found = conversion.find_training_run(setup["art"], say=None)  # 05 takes the kept finished run, not iter_10
    assert found.work_dir == kept and found.checkpoint.name == "iter_6.pth"

    with pytest.raises(X.TrainingFailed, match="Invalid learning rate"):
        launch(setup, monkeypatch, FAKE_FAIL_AT=2, FAKE_TAG="failing")
    assert sha(wd / "iter_6.pth") == good and runs.run_finished(wd), "the failed re-run lost the finished run"
    assert conversion.find_training_run(setup["art"], say=None).checkpoint == wd / "iter_6.pth"

    launch(setup, monkeypatch, FAKE_ITERS=4, FAKE_TAG="new")  # a new finished run: only now the old one goes
    assert runs.run_finished(wd)["checkpoint"] == "iter_4.pth" and not kept.exists()


def test_exit_0_before_the_last_iteration_is_not_finished(setup, monkeypatch):
    launch(setup, monkeypatch)
    with pytest.raises(X.TrainingFailed, match="iteration 2 of 6: the run did not finish"):
        launch(setup, monkeypatch, FAKE_STOP_AT=2)
    assert runs.run_finished(setup["wd"])["checkpoint"] == "iter_6.pth"


def test_a_work_dir_a_live_trainer_writes_is_refused(setup, monkeypatch):
    wd = setup["wd"]
    wd.mkdir(parents=True)
    orphan = subprocess.Popen([sys.executable, str(setup["fake"]), str(setup["cfg"]), "--work-dir", str(wd)],
                              env={**os.environ, "FAKE_ITERS": "40", "FAKE_HANG_AT": "2"}, stdout=subprocess.DEVNULL)
    try:
        (wd / runs.LOCK).write_text(json.dumps({"pid": orphan.pid}))
        with pytest.raises(runs.TrainerStillRunning, match=f"pid {orphan.pid}.*kill {orphan.pid}"):
            launch(setup, monkeypatch)
        assert (wd / runs.LOCK).exists() and not wd.with_name(".04_finetune.failed").exists(), "nothing may move"
    finally:
        orphan.kill()
        orphan.wait()
    launch(setup, monkeypatch)  # the trainer is gone: its stale lock no longer blocks
    assert runs.run_finished(wd)


def test_an_unfinished_run_with_nothing_kept_is_refused_by_name(setup, monkeypatch):
    with pytest.raises(X.TrainingFailed):
        launch(setup, monkeypatch, FAKE_FAIL_AT=4)
    with pytest.raises(conversion.TrainingRunMissing, match=r"no finished training run: .*04_finetune holds checkpoints "
                                                             r"up to iter_4.pth but no completion marker"):
        conversion.find_training_run(setup["art"], say=None)


def test_a_fine_tune_converted_from_an_unfinished_run_is_not_published(tmp_path):
    folder = tmp_path / "models" / "internvl2-tiny-finetuned"
    folder.mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match="does not record the training run"):
        hub.model_to_publish(tmp_path)
    (folder / conversion.PROVENANCE).write_text(json.dumps({"run": "04_finetune", "checkpoint": "iter_10.pth",
                                                            "finished": False}))
    with pytest.raises(FileNotFoundError, match="iter_10.pth of 04_finetune, a run that had not finished"):
        hub.model_to_publish(tmp_path)
    (folder / conversion.PROVENANCE).write_text(json.dumps({"run": "04_finetune", "checkpoint": "iter_40.pth",
                                                            "finished": True}))
    assert hub.model_to_publish(tmp_path)[:2] == (folder, True)
