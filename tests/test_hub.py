"""labsupport.publish.hub: tokens never shown, pre-flight checks, and a real git + git-lfs round trip to a local remote."""
import hashlib
import json
import os
import secrets
import string
import struct
import subprocess

import pytest

from labsupport.core import credentials
from labsupport.evaluate import conversion
from labsupport.publish import hub

needs_lfs = pytest.mark.skipif(hub.git_lfs_version() is None, reason="git-lfs is not installed (apt-get install git-lfs)")



def random_safetensors(nbytes: int) -> bytes:
    """A valid .safetensors file of NBYTES in all, one random uint8 tensor: the folder check reads its header."""
    n = nbytes
    for _ in range(3):  # the header's length depends on the digits of the data size
        header = json.dumps({"w": {"dtype": "U8", "shape": [n], "data_offsets": [0, n]}}).encode()
        header += b" " * (-len(header) % 8)
        n = nbytes - 8 - len(header)
    return struct.pack("<Q", len(header)) + header + os.urandom(nbytes - 8 - len(header))

def fake_token() -> str:
    alphabet = string.ascii_letters + string.digits
    return "hf_" + "".join(secrets.choice(alphabet) for _ in range(34))


def write_model(folder, weights_bytes=1_500_000):
    """A small stand-in model folder: config with auto_map, remote code, tokenizer files, random weights."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps({"auto_map": {"AutoModel": "modeling_tiny.TinyModel"}}))
    (folder / "modeling_tiny.py").write_text("class TinyModel: pass\n")
    (folder / "tokenizer_config.json").write_text(json.dumps({"chat_template": "{{ messages }}"}))
    (folder / "generation_config.json").write_text("{}")
    (folder / "tokenizer.json").write_text("{}")
    (folder / "model.safetensors").write_bytes(random_safetensors(weights_bytes))
    (folder / ".labsupport-build.json").write_text("{}")  # builder bookkeeping: must be left out, not flagged
    return folder


@pytest.fixture
def model_dir(tmp_path):
    return write_model(tmp_path / "model")


@pytest.fixture
def staged(model_dir, tmp_path):
    return hub.stage_folder(model_dir, tmp_path / "stage", "---\nlicense: mit\n---\n# InternVL2-test\n")


# ---------------------------------------------------------------------------------------- tokens
def test_token_never_prints_its_value():
    value = fake_token()
    tok = credentials.Token(value, "test")
    for shown in (str(tok), repr(tok), f"{tok}", f"{tok!r}", credentials.mask(value)):
        assert value not in shown and value[3:] not in shown
    assert "hf_****" in str(tok)
    assert tok.reveal() == value


def test_redact_masks_given_tokens_and_hf_shaped_strings():
    value, other = fake_token(), "ms-" + secrets.token_hex(16)
    text = f"Authorization: Bearer {value}; cookie={other}; leaked {fake_token()}"
    clean = credentials.redact(text, [credentials.Token(other, "env")])
    assert value not in clean and other not in clean
    assert clean.count("hf_****") == 2 and "****" in clean.split("cookie=")[1]


def test_find_token_reads_environment_then_login_cache(monkeypatch, tmp_path):
    import huggingface_hub.constants as constants

    for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "MODELSCOPE_API_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "token"))
    assert credentials.find_token("huggingface") is None
    assert credentials.find_token("modelscope") is None

    cached = fake_token()
    (tmp_path / "token").write_text(cached)
    tok = credentials.find_token("huggingface")
    assert tok.reveal() == cached and "login cache" in tok.source

    env_value = fake_token()
    monkeypatch.setenv("HF_TOKEN", env_value)
    tok = credentials.find_token("huggingface")
    assert tok.reveal() == env_value and tok.source == "environment variable HF_TOKEN"
    monkeypatch.setenv("MODELSCOPE_API_TOKEN", "abc-123")
    assert credentials.find_token("modelscope").reveal() == "abc-123"
    with pytest.raises(ValueError, match="unknown hub"):
        credentials.find_token("github")


# ------------------------------------------------------------------------------------- pre-flight
@pytest.mark.parametrize("repo_id, ok", [
    ("alice/InternVL2-2B-food", True),
    ("alice/internvl2-2b-food", False),        # the camp rule is about the word InternVL
    ("InternVL2-2B-food", False),              # no namespace
    ("alice/InternVL2 food", False),           # space: not a valid repo id
    ("alice/bob/InternVL2", False),
    ("alice/InternVL2--x", False),             # '--' is forbidden in repo ids
])
def test_check_repo_id(repo_id, ok):
    problem = hub.check_repo_id(repo_id)
    assert (problem == "") is ok, problem


def test_lfs_matching_agrees_with_git_check_attr(tmp_path):
    folder = tmp_path / "repo"
    files = ["model.safetensors", "sub/model-00001.safetensors", "pytorch_model.bin", "config.json", "tokenizer.model",
             "notes/big.dat", "big.dat", "events.out.tfevents.123", "README.md"]
    for rel in files:
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        (folder / rel).write_text("x")
    subprocess.run(["git", "init", "-q", str(folder)], check=True)
    (folder / ".gitattributes").write_text("*.safetensors filter=lfs diff=lfs merge=lfs -text\n"
                                           "*.bin filter=lfs diff=lfs merge=lfs -text\n*.model filter=lfs -text\n"
                                           "notes/big.dat filter=lfs diff=lfs merge=lfs -text\n"
                                           "*tfevents* filter=lfs diff=lfs merge=lfs -text\n# a comment\n")
    out = subprocess.run(["git", "check-attr", "filter", "--"] + files, cwd=folder, capture_output=True, text=True,
                         check=True).stdout
    by_git = {line.split(": ")[0]: line.endswith(": lfs") for line in out.splitlines()}
    pats = hub.lfs_patterns(folder)
    assert {rel: hub._matches(rel, pats) is not None for rel in files} == by_git


def test_stage_folder_leaves_out_bookkeeping_and_adds_card_and_gitattributes(staged, model_dir):
    files = hub.list_files(staged)
    assert ".labsupport-build.json" not in files
    assert set(files) == (set(hub.list_files(model_dir)) - {".labsupport-build.json"}) | {"README.md", ".gitattributes"}
    assert "*.safetensors" in hub.lfs_patterns(staged)
    assert (staged / "README.md").read_text().startswith("---\nlicense: mit")
    assert (model_dir / "model.safetensors").read_bytes() == (staged / "model.safetensors").read_bytes()


def test_stage_folder_sends_unusual_large_files_through_lfs(model_dir, tmp_path):
    (model_dir / "extra.dat").write_bytes(os.urandom(3000))
    staged = hub.stage_folder(model_dir, tmp_path / "s", "# card\n", lfs_threshold=2000)
    assert "extra.dat" in hub.lfs_patterns(staged)


def test_preflight_passes_on_a_clean_staged_folder(staged):
    report = hub.preflight(staged, "alice/InternVL2-test", load=False)
    assert report.ok, str(report)
    assert report.total_bytes == sum(p.stat().st_size for p in staged.rglob("*") if p.is_file())
    assert "files" in str(report) and "MiB" in str(report)


@pytest.mark.parametrize("plant, expect", [
    (lambda d: (d / ".env").write_text("HF_TOKEN=x\n"), ".env"),
    (lambda d: (d / "optimizer.pt").write_bytes(b"0"), "optimizer.pt"),
    (lambda d: (d / "iter_500.pth").write_bytes(b"0"), "iter_500.pth"),
    (lambda d: (d / "notes.txt").write_text("my token is " + fake_token()), "notes.txt"),
])
def test_preflight_names_secrets_and_leftovers(staged, plant, expect):
    plant(staged)
    report = hub.preflight(staged, "alice/InternVL2-test", load=False)
    failed = [c for c in report.checks if not c[1]]
    assert [c[0] for c in failed] == ["no secrets or training leftovers"]
    assert expect in failed[0][2]


def test_preflight_finds_large_files_outside_lfs_and_bad_names(staged):
    (staged / ".gitattributes").write_text("*.bin filter=lfs diff=lfs merge=lfs -text\n")
    report = hub.preflight(staged, "alice/my-model", lfs_threshold=1_000_000, load=False)
    failed = {c[0]: c[2] for c in report.checks if not c[1]}
    assert set(failed) == {"repository name", "files over 976.6 KiB go through LFS"}
    assert "model.safetensors" in failed["files over 976.6 KiB go through LFS"]
    assert "InternVL" in failed["repository name"]


def test_verify_model_folder_names_missing_pieces(model_dir):
    assert hub.verify_model_folder(model_dir, load=False)["ok"]
    (model_dir / "modeling_tiny.py").unlink()
    (model_dir / "tokenizer.json").unlink()
    problems = " ".join(hub.verify_model_folder(model_dir, load=False)["problems"])
    assert "modeling_tiny.py" in problems and "tokenizer" in problems


def test_upload_plan_lists_every_file_with_its_route(staged):
    plan = hub.upload_plan(staged)
    lines = {line.split()[0]: line for line in plan.splitlines()[1:-1]}
    assert set(lines) == set(hub.list_files(staged))
    assert lines["model.safetensors"].endswith("git-lfs") and lines["config.json"].endswith("git")
    assert "1 through git-lfs" in plan.splitlines()[-1]


# ------------------------------------------------------------------------------ git + git-lfs route
@needs_lfs
def test_git_lfs_round_trip_to_a_local_remote(staged, tmp_path):
    remote = hub.make_local_remote(tmp_path / "remote.git", size_limit=1_000_000)

    # the seed's first attempt: plain git, and the remote refuses the large file
    with pytest.raises(hub.GitPushRejected, match="file too large") as err:
        hub.git_push(staged, remote, tmp_path / "work0", use_lfs=False)
    assert "model.safetensors" in str(err.value)

    # with git lfs track, the push goes through and only a pointer lives in git
    token = credentials.Token(fake_token(), "test")  # exercises the credential path; must not land anywhere
    pushed = hub.git_push(staged, remote, tmp_path / "work", use_lfs=True, token=token)
    assert pushed["lfs_files"] == ["model.safetensors"]
    pointer = subprocess.run(["git", "cat-file", "-p", "main:model.safetensors"], cwd=remote, capture_output=True,
                             text=True, check=True).stdout
    want = hashlib.sha256((staged / "model.safetensors").read_bytes()).hexdigest()
    assert pointer.startswith("version https://git-lfs") and f"oid sha256:{want}" in pointer
    assert (remote / "lfs" / "objects" / want[:2] / want[2:4] / want).stat().st_size == 1_500_000

    back = hub.clone_and_compare(remote, tmp_path / "clone", staged)
    assert back["identical"] and back["lfs_files"] == ["model.safetensors"], back
    assert hashlib.sha256((tmp_path / "clone" / "model.safetensors").read_bytes()).hexdigest() == want
    assert credentials.scan_for_secrets(tmp_path, [token]) == []


@needs_lfs
def test_clone_and_compare_reports_a_difference(staged, tmp_path):
    remote = hub.make_local_remote(tmp_path / "remote.git")
    hub.git_push(staged, remote, tmp_path / "work")
    (staged / "config.json").write_text('{"changed": true}')
    back = hub.clone_and_compare(remote, tmp_path / "clone", staged)
    assert not back["identical"] and back["differ"] == ["config.json"]


def converted(folder):
    """A fine-tune as notebook 05's conversion leaves it: the finished run it came from recorded."""
    write_model(folder)
    (folder / conversion.PROVENANCE).write_text(json.dumps({"run": "04_finetune", "checkpoint": "iter_6.pth",
                                                            "finished": True}))
    return folder


def test_model_to_publish_prefers_the_fine_tuned_model(tmp_path):
    converted(tmp_path / "models" / "internvl2-tiny-finetuned")
    folder, fine_tuned, why = hub.model_to_publish(tmp_path)
    assert folder == tmp_path / "models" / "internvl2-tiny-finetuned" and fine_tuned and "notebook 05" in why
    real = tmp_path / "weights" / "InternVL2-2B"  # a real checkpoint: its fine-tune is found by its own name
    write_model(real)
    assert hub.model_to_publish(tmp_path, str(real))[:2] == (real, False)
    converted(tmp_path / "models" / "InternVL2-2B-finetuned")
    assert hub.model_to_publish(tmp_path, str(real))[:2] == (tmp_path / "models" / "InternVL2-2B-finetuned", True)


def test_stage_folder_links_only_large_files(model_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(hub, "HARDLINK_ABOVE", 1_000_000)
    staged = hub.stage_folder(model_dir, tmp_path / "s", "# card\n")
    assert (staged / "model.safetensors").stat().st_ino == (model_dir / "model.safetensors").stat().st_ino
    assert (staged / "config.json").stat().st_ino != (model_dir / "config.json").stat().st_ino
    (staged / "config.json").write_text("edited")
    assert "auto_map" in (model_dir / "config.json").read_text()  # the input is never modified


def test_hub_errors_come_back_masked_and_unchained(monkeypatch, staged):
    import huggingface_hub

    value = fake_token()

    def leaky(self, *args, **kwargs):
        raise ValueError(f"401 for token {value} (Bearer {value})")

    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", leaky)
    monkeypatch.setattr(huggingface_hub.HfApi, "whoami", leaky)
    token = credentials.Token(value, "test")
    for call in (lambda: hub.upload_huggingface(staged, "alice/InternVL2-test", token), lambda: hub.hub_user(token)):
        with pytest.raises(RuntimeError) as err:
            call()
        assert value not in str(err.value) and "hf_****" in str(err.value)
        assert err.value.__cause__ is None and err.value.__suppress_context__  # the original message is not chained


@pytest.mark.skipif(hub.modelscope_available(), reason="the ModelScope SDK is installed here")
def test_modelscope_route_says_how_to_install_it(staged):
    with pytest.raises(RuntimeError, match="pip install modelscope"):
        hub.upload_modelscope(staged, "alice/InternVL2-test", credentials.Token("ms-secret", "test"))
