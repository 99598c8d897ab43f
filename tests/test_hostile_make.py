"""`make lab` works for root and the browser tests have an emoji font (#31)."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="no make on this machine")


def make_lab(tmp_path, uid: int) -> str:
    """`make lab` with the environments taken as built (-o env) and JupyterLab replaced by echo, as user UID."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    (bin_dir / "id").write_text(f"#!/bin/sh\n[ \"$1\" = -u ] && echo {uid} || exec /usr/bin/id \"$@\"\n")
    (bin_dir / "id").chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    proc = subprocess.run(["make", "-s", "-o", "env", "lab", "COURSE_PY=echo"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_root_gets_allow_root_and_is_told(tmp_path):
    out = make_lab(tmp_path, 0)
    assert "-m jupyter lab --allow-root notebooks/" in out and "running as root" in out


def test_other_users_get_plain_jupyter_lab(tmp_path):
    out = make_lab(tmp_path, 1000)
    assert "-m jupyter lab notebooks/" in out and "--allow-root" not in out


def test_the_emoji_font_is_a_system_package():
    packages = re.search(r"^SYSTEM_PACKAGES\s*=\s*(.+)$", (ROOT / "Makefile").read_text(), re.M).group(1).split()
    assert "fonts-noto-color-emoji" in packages and "fonts-noto-cjk" in packages
