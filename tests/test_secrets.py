"""A token planted in a staged folder and in a parameter reaches no file, no git object, no executed notebook."""
from __future__ import annotations

import json
import os
import struct
import subprocess
from pathlib import Path

import nbformat
import pytest

from labsupport.core import credentials
from labsupport.course import runner
from labsupport.publish import hub

needs_lfs = pytest.mark.skipif(hub.git_lfs_version() is None, reason="git-lfs is not installed (apt-get install git-lfs)")
TOKEN = "hf_" + "Zq7" * 12  # shaped like a Hugging Face token (never a real one)
ODD_TOKEN = "ms-7f3a9c1e-secret-value"  # a ModelScope-style token: only found because it is named



def random_safetensors(nbytes: int) -> bytes:
    """A valid .safetensors file of NBYTES in all, one random uint8 tensor: the folder check reads its header."""
    n = nbytes
    for _ in range(3):  # the header's length depends on the digits of the data size
        header = json.dumps({"w": {"dtype": "U8", "shape": [n], "data_offsets": [0, n]}}).encode()
        header += b" " * (-len(header) % 8)
        n = nbytes - 8 - len(header)
    return struct.pack("<Q", len(header)) + header + os.urandom(nbytes - 8 - len(header))

def everything_holding(root: Path, secret: str, skip: Path | None = None) -> list[str]:
    """Every file under ROOT and every git object (decompressed) of every repository under ROOT holding SECRET."""
    hits = []
    for p in root.rglob("*"):
        if p.is_file() and not p.is_symlink() and (skip is None or skip not in p.parents):
            if secret.encode() in p.read_bytes():
                hits.append(str(p))
    for head in root.rglob("HEAD"):
        git_dir = head.parent
        if (git_dir / "objects").is_dir():
            out = subprocess.run(["git", "--git-dir", str(git_dir), "cat-file", "--batch-all-objects", "--batch"],
                                 capture_output=True).stdout
            if secret.encode() in out:
                hits.append(f"git objects of {git_dir}")
    return hits


def model_folder(folder: Path) -> Path:
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"auto_map": {"AutoModel": "modeling_tiny.TinyModel"}}))
    (folder / "modeling_tiny.py").write_text("class TinyModel: pass\n")
    (folder / "tokenizer_config.json").write_text(json.dumps({"chat_template": "{{ messages }}"}))
    (folder / "generation_config.json").write_text("{}")
    (folder / "tokenizer.json").write_text("{}")
    (folder / "model.safetensors").write_bytes(random_safetensors(200_000))
    return folder


@needs_lfs
@pytest.mark.parametrize("plant", [
    {".env": f"HF_TOKEN={TOKEN}\n"},                         # the leak: a secret by its name
    {"notes.txt": f"my token is {TOKEN}\n"},                 # by its content, under an innocent name
    {"sub/settings.json": json.dumps({"key": ODD_TOKEN})},   # not hf_-shaped: found because it is the token in use
])
def test_every_publish_route_refuses_a_folder_holding_a_token(tmp_path, plant, monkeypatch):
    secret = TOKEN if TOKEN in next(iter(plant.values())) else ODD_TOKEN
    token = credentials.Token(secret, "test")
    if secret == ODD_TOKEN:  # the learner's token is in the environment (where find_token reads it)
        monkeypatch.setenv("MODELSCOPE_API_TOKEN", ODD_TOKEN)
    stage = hub.stage_folder(model_folder(tmp_path / "model"), tmp_path / "stage", "# InternVL2-test\n")
    for rel, text in plant.items():
        (stage / rel).parent.mkdir(parents=True, exist_ok=True)
        (stage / rel).write_text(text)
    report = hub.preflight(stage, "me/InternVL2-test", tokens=[token], load=False)
    assert not report.ok
    remote = hub.make_local_remote(tmp_path / "remote.git")
    # (c) git: with the failed report, with no report, and with a token for the remote: all refused before a commit
    for kwargs in ({"report": report}, {}, {"token": token, "user": "me"}):
        with pytest.raises(hub.PublishRefused):
            hub.git_push(stage, remote, tmp_path / "work", **kwargs)
        assert not (tmp_path / "work").exists()
    # (a) and (b): refused before any network call
    monkeypatch.setattr("huggingface_hub.HfApi.create_repo", lambda *a, **k: pytest.fail("reached the Hub"))
    for upload in (hub.upload_huggingface, hub.upload_modelscope):
        for kwargs in ({"report": report}, {}):
            with pytest.raises(hub.PublishRefused):
                upload(stage, "me/InternVL2-test", token, **kwargs)
    assert everything_holding(tmp_path, secret, skip=stage) == []
    assert credentials.scan_for_secrets(remote, [token]) == []


@needs_lfs
def test_a_report_that_passed_goes_stale_when_the_folder_changes(tmp_path):
    stage = hub.stage_folder(model_folder(tmp_path / "model"), tmp_path / "stage", "# InternVL2-test\n")
    report = hub.preflight(stage, "me/InternVL2-test", load=False)
    assert report.ok, str(report)
    remote = hub.make_local_remote(tmp_path / "remote.git")
    pushed = hub.git_push(stage, remote, tmp_path / "work", report=report)
    assert pushed["commit"]
    (stage / "notes.txt").write_text(f"token {TOKEN}\n")  # added after the pre-flight
    with pytest.raises(hub.PublishRefused, match="changed after its pre-flight|secrets"):
        hub.git_push(stage, remote, tmp_path / "work2", report=report)
    assert everything_holding(tmp_path, TOKEN, skip=stage) == []


def test_a_token_committed_earlier_is_found_in_compressed_git_objects(tmp_path):
    repo = tmp_path / "repo"
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    (repo / "a.txt").write_text(f"{TOKEN}\n" * 50)  # compressible: the raw object file does not hold it
    subprocess.run(["git", "-C", str(repo), "add", "a.txt"], check=True)
    subprocess.run(["git", "-C", str(repo), "-c", "user.name=x", "-c", "user.email=x@x", "commit", "-qm", "x"], check=True)
    (repo / "a.txt").unlink()
    raw = [p for p in (repo / ".git" / "objects").rglob("*") if p.is_file() and TOKEN.encode() in p.read_bytes()]
    assert raw == [], "git compresses objects: a byte search of .git misses the token"
    hits = credentials.scan_for_secrets(tmp_path, [])
    assert any("(git blob" in h for h in hits), hits


@pytest.fixture
def need_kernel():
    if "internvl-course" not in runner.known_kernels():
        pytest.skip("kernel internvl-course is not registered (run make env)")


def test_a_token_given_as_a_parameter_reaches_the_kernel_but_no_written_file(tmp_path, need_kernel):
    code = nbformat.v4.new_code_cell
    nb = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_markdown_cell("# 96 · Secrets"),
        code('ARTIFACTS = ""\nHF_TOKEN = ""  # a careless notebook that declares it\nNAME = "x"'),
        code("import os\nseen = os.environ.get('HF_TOKEN', '')\nprint('token in the environment:', bool(seen))\n"
             "print('a careless print:', seen, HF_TOKEN)\nprint('name', NAME)"),
    ])
    nb.cells[1].metadata["tags"] = ["parameters"]
    nb.metadata["kernelspec"] = {"name": "internvl-course", "display_name": "x", "language": "python"}
    path = tmp_path / "nb" / "96_secrets.ipynb"
    path.parent.mkdir()
    nbformat.write(nb, path)
    art = tmp_path / "art"
    result = runner.run_notebook(path, art, {"HF_TOKEN": TOKEN, "NAME": "y", "OTHER": 1}, progress=False)
    assert result.status == "pass", result.error
    executed = nbformat.read(art / "executed" / "96_secrets.ipynb", as_version=4)
    outputs = "".join(o.get("text", "") for c in executed.cells if c.cell_type == "code" for o in c.get("outputs", []))
    assert "token in the environment: True" in outputs and "name y" in outputs
    assert executed.metadata["papermill"]["parameters"] == {"ARTIFACTS": str(art), "NAME": "y"}
    runner.write_reports([result], art)
    assert everything_holding(tmp_path, TOKEN, skip=None) == []
    assert "HF_TOKEN" not in os.environ or os.environ["HF_TOKEN"] != TOKEN, "the runner must restore its environment"


def test_split_parameters_keeps_secrets_and_unknown_names_out(tmp_path):
    path = tmp_path / "95_x.ipynb"
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell('MODEL_PATH = "tiny"\nREPO_NAME = "x"')])
    nb.cells[0].metadata["tags"] = ["parameters"]
    nb.metadata["kernelspec"] = {"name": "internvl-course", "display_name": "x", "language": "python"}
    nbformat.write(nb, path)
    inject, secrets, unknown = runner.split_parameters(path, {"MODEL_PATH": "/m", "HF_TOKEN": "abc", "REPO_NAME": TOKEN,
                                                              "MODELSCOPE_API_TOKEN": "z", "STEPS": 3})
    assert inject == {"MODEL_PATH": "/m"} and unknown == ["STEPS"]
    assert secrets == {"HF_TOKEN": "abc", "REPO_NAME": TOKEN, "MODELSCOPE_API_TOKEN": "z"}


def test_committed_gpu_results_name_no_machine_paths():
    root = Path(__file__).resolve().parent.parent
    for path in sorted((root / "docs" / "gpu").glob("*.json")):
        text = path.read_text(encoding="utf-8")
        assert '"/work/' not in text and '"/tmp/' not in text and '"/root/' not in text and '"/home/' not in text, path.name


def test_ask_token_uses_a_hidden_prompt_and_copes_without_stdin(monkeypatch):
    import getpass

    monkeypatch.setattr(getpass, "getpass", lambda prompt: f"  {TOKEN} ")
    token = credentials.ask_token()
    assert token.reveal() == TOKEN and TOKEN not in repr(token)

    def headless(prompt):
        raise RuntimeError("stdin is not allowed")

    monkeypatch.setattr(getpass, "getpass", headless)
    assert credentials.ask_token() is None
    monkeypatch.setattr(getpass, "getpass", lambda prompt: "")
    assert credentials.ask_token() is None
