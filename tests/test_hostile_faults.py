"""Faults around the edges: the demo's body limit, a killed conversion's leftovers, a full disk (#31)."""
from __future__ import annotations

import asyncio
import errno
import json
import os
import subprocess
import sys

import pytest

from labsupport.core import checkpoints as CP
from labsupport.serve import demo_app


def call(middleware_app, path="/gradio_api/queue/join", length: int | None = 10, method="POST"):
    sent, reached = [], []

    async def app(scope, receive, send):
        reached.append(scope["path"])
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    async def receive():
        return {"type": "http.request", "body": b"x" * 10, "more_body": False}

    async def send(message):
        sent.append(message)

    headers = [] if length is None else [(b"content-length", str(length).encode())]
    scope = {"type": "http", "path": path, "method": method, "headers": headers}
    asyncio.run(demo_app.BodyLimit(app)(scope, receive, send))
    return sent[0]["status"], reached, b"".join(m.get("body", b"") for m in sent[1:])


def test_the_demo_refuses_a_50_mb_queue_body_before_gradio_reads_it():
    status, reached, body = call(demo_app.BodyLimit, length=50 * 2**20)
    assert status == 413 and reached == [] and b"takes up to" in body
    assert call(demo_app.BodyLimit, length=None)[0] == 411
    assert call(demo_app.BodyLimit, length=1000)[:2] == (200, ["/gradio_api/queue/join"])
    assert call(demo_app.BodyLimit, path="/gradio_api/upload", length=50 * 2**20)[0] == 200  # max_file_size's job


def test_a_full_disk_is_named_with_the_folder_and_the_fix(tmp_path, monkeypatch):
    def no_space(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", no_space)
    with pytest.raises(OSError) as err:
        CP.write_text_atomic(tmp_path / "out" / "report.json", "{}")
    assert err.value.errno == errno.ENOSPC and str(tmp_path / "out") in str(err.value)
    assert "free some" in str(err.value) and "ARTIFACTS" in str(err.value)
    assert list((tmp_path / "out").iterdir()) == [], "the temporary file must go"


xtuner = pytest.importorskip("xtuner")  # the conversion's launcher lives in the course env

FAKE_CONVERT = r'''
import sys, os
from pathlib import Path
out = Path(sys.argv[3]); out.mkdir(parents=True)
(out / "config.json").write_text("{}")
(out / "model.safetensors").write_bytes(b"w")
if os.environ.get("FAKE_ENOSPC"):
    print("OSError: [Errno 28] No space left on device", file=sys.stderr); sys.exit(1)
'''


@pytest.fixture()
def conversion(tmp_path, monkeypatch):
    from labsupport.train import xtuner as X

    script = tmp_path / "fake_convert.py"
    script.write_text(FAKE_CONVERT)
    monkeypatch.setattr(X, "xtuner_tool", lambda name: script)
    (tmp_path / "cfg.py").write_text("x = 1\n")
    (tmp_path / "iter_2.pth").write_bytes(b"ckpt")
    (tmp_path / "base").mkdir()
    return X, tmp_path


def test_a_killed_conversions_leftover_is_cleaned_with_a_message(conversion, capsys):
    X, tmp = conversion
    stale = tmp / "out.converting"
    stale.mkdir()
    (stale / "half.safetensors").write_bytes(b"cut")
    out = X.convert_to_official(tmp / "cfg.py", tmp / "iter_2.pth", tmp / "out", model_path=tmp / "base")
    assert (out / "config.json").exists() and not stale.exists()
    assert "left by a conversion that was killed" in capsys.readouterr().out


def test_a_live_conversion_is_not_disturbed(conversion):
    X, tmp = conversion
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        (tmp / "out.converting.pid").write_text(json.dumps({"pid": other.pid}))
        with pytest.raises(RuntimeError, match=f"another conversion \\(pid {other.pid}\\)"):
            X.convert_to_official(tmp / "cfg.py", tmp / "iter_2.pth", tmp / "out", model_path=tmp / "base")
    finally:
        other.kill()
        other.wait()


def test_a_conversion_on_a_full_disk_says_so_and_leaves_nothing_half(conversion, monkeypatch):
    X, tmp = conversion
    monkeypatch.setenv("FAKE_ENOSPC", "1")
    with pytest.raises(RuntimeError, match="no space left on the disk that holds"):
        X.convert_to_official(tmp / "cfg.py", tmp / "iter_2.pth", tmp / "out", model_path=tmp / "base")
    assert not (tmp / "out.converting").exists() and not (tmp / "out").exists()
