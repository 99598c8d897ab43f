"""labsupport/train/xtuner_start/sitecustomize.py: the `xtuner` entry point gets a tool's file name without importing
the tool; every other process, and every other attribute, imports for real (course env)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from labsupport.train import xtuner as X

pytest.importorskip("xtuner")

PROBE = """
import sys
from xtuner.tools import chat
print("FILE", chat.__file__)
print("HEAVY", "transformers" in sys.modules or "peft" in sys.modules)
print("TORCH", "torch" in sys.modules)
"""


def run_probe(tmp_path: Path, script_name: str, extra: str = "", **env: str) -> dict:
    """Run PROBE (+ EXTRA) as a script named SCRIPT_NAME with the start-up folder on PYTHONPATH; its printed values."""
    script = tmp_path / script_name
    script.write_text(PROBE + extra, encoding="utf-8")
    environ = {**os.environ, "PYTHONPATH": os.pathsep.join([str(X.ENTRY_START), str(Path(X.__file__).parents[2])]), **env}
    if "XTUNER_FULL_IMPORTS" not in env:
        environ.pop("XTUNER_FULL_IMPORTS", None)   # a learner's shell may have switched the hook off
    run = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=environ, timeout=300)
    assert run.returncode == 0, f"{script_name} failed:\n{run.stderr[-3000:]}"
    return dict(line.split(" ", 1) for line in run.stdout.splitlines() if line.split(" ", 1)[0].isupper())


def test_the_folder_holds_the_start_up_hook():
    assert (X.ENTRY_START / "sitecustomize.py").is_file(), f"{X.ENTRY_START} has no sitecustomize.py"


def test_the_entry_point_gets_the_tool_file_without_its_imports(tmp_path):
    import importlib.util

    out = run_probe(tmp_path, "xtuner")
    assert out["FILE"] == importlib.util.find_spec("xtuner.tools.chat").origin, out
    assert out["HEAVY"] == "False", "the `xtuner` process imported transformers/peft: the start-up hook did not act"
    assert out["TORCH"] == "False", "the `xtuner` process imported torch: mmengine's __init__ was not deferred"


def test_mmengine_runs_its_real_init_when_anything_else_of_it_is_read(tmp_path):
    extra = 'import mmengine\nprint("VERSION", mmengine.__version__)\nprint("REGISTRY", hasattr(mmengine, "Registry"))\n'
    out = run_probe(tmp_path, "xtuner", extra=extra)
    import mmengine
    assert out["VERSION"] == mmengine.__version__ and out["REGISTRY"] == "True", out


def test_any_other_attribute_runs_the_real_module(tmp_path):
    out = run_probe(tmp_path, "xtuner", extra='print("DTYPES", sorted(chat.TORCH_DTYPE_MAP))\n')
    assert out["DTYPES"] == "['auto', 'bf16', 'fp16', 'fp32']", out


@pytest.mark.parametrize("name, env", [("chat_tool.py", {}), ("xtuner", {"XTUNER_FULL_IMPORTS": "1"})],
                         ids=["another-process", "switched-off"])
def test_other_processes_import_for_real(tmp_path, name, env):
    out = run_probe(tmp_path, name, **env)
    assert out["HEAVY"] == "True", f"{name} {env}: the tool was not really imported, but only `xtuner` may skip it"


def test_xtuner_copy_cfg_writes_the_same_file_with_and_without_the_hook(tmp_path):
    env = {**os.environ, "PATH": str(Path(sys.executable).parent) + os.pathsep + os.environ["PATH"]}
    outputs = []
    for label, pythonpath in (("hook", str(X.ENTRY_START)), ("plain", "")):
        dest = tmp_path / label
        dest.mkdir()
        run = subprocess.run(["xtuner", "copy-cfg", "internlm2_chat_1_8b_qlora_alpaca_e3", str(dest)], capture_output=True,
                             text=True, env={**env, "PYTHONPATH": pythonpath}, timeout=300)
        copies = list(dest.glob("*.py"))
        assert run.returncode == 0 and len(copies) == 1, f"{label}: {run.stdout[-1000:]}{run.stderr[-2000:]}"
        outputs.append(copies[0].read_text(encoding="utf-8"))
    assert outputs[0] == outputs[1], "xtuner copy-cfg wrote a different file with the start-up hook"


def test_a_sitecustomize_it_hides_still_runs(tmp_path):
    other = tmp_path / "site_b"
    other.mkdir()
    (other / "sitecustomize.py").write_text("import os\nos.environ['SHADOWED_RAN'] = 'yes'\n", encoding="utf-8")
    run = subprocess.run([sys.executable, "-c", "import os; print(os.environ.get('SHADOWED_RAN'))"], capture_output=True,
                         text=True, env={**os.environ, "PYTHONPATH": os.pathsep.join([str(X.ENTRY_START), str(other)])},
                         timeout=60)
    assert run.stdout.strip() == "yes", f"the sitecustomize behind {X.ENTRY_START} did not run: {run.stderr[-2000:]}"
