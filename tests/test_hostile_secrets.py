"""Credentials in parameters: a token inside a URL, short and ModelScope tokens, names that say secret (#31)."""
from __future__ import annotations

from pathlib import Path

import nbformat
import pytest

from labsupport.core import credentials as C
from labsupport.course import runner

GH = "ghp_" + "Q7x" * 8
MS = "ms-5f1c2d3e-aaaa-bbbb-cccc-0123456789ab"


@pytest.mark.parametrize("name, secret", [("HF_TOKEN", True), ("MODELSCOPE_API_TOKEN", True), ("API_KEY", True),
                                          ("HFTOKEN", True), ("DB_PASSWORD", True), ("client_secret", True),
                                          ("MAX_NEW_TOKENS", False), ("REPO_NAME", False), ("GIT_REMOTE", False)])
def test_names_that_say_secret(name, secret):
    assert C.secret_name(name) is secret


@pytest.mark.parametrize("value", ["hf_abc123", MS, "5f1c2d3e-aaaa-bbbb-cccc-0123456789ab", GH, "sk-proj-abcdefghijk",
                                   "glpat-abcdefghij12"])
def test_known_token_shapes_short_ones_too(value):
    assert C.is_token(value) and runner.is_secret("ANYTHING", value)


def test_a_token_inside_a_url_is_found_and_masked():
    url = f"https://oauth2:{GH}@gitlab.example.com/alice/model.git"
    assert C.credentials_in(url) == [GH]
    assert C.credentials_in("https://user:s3cr3t@host/x") == ["s3cr3t"]
    assert C.credentials_in(f"https://{GH}@github.com/a/b") == [GH]
    assert C.credentials_in("git@github.com:alice/model.git") == [] and C.credentials_in("https://git@host/x") == []
    masked = C.redact(f"push to {url} and https://u:pw@h/y")
    assert GH not in masked and ":pw@" not in masked and "https://oauth2:****@gitlab.example.com" in masked


@pytest.fixture
def need_kernel():
    if "internvl-course" not in runner.known_kernels():
        pytest.skip("kernel internvl-course is not registered (run make env)")


def test_a_url_token_never_reaches_the_executed_notebook_or_its_metadata(tmp_path, need_kernel):
    code = nbformat.v4.new_code_cell
    nb = nbformat.v4.new_notebook(cells=[
        code('ARTIFACTS = ""\nGIT_REMOTE = ""  # where 07 pushes'),
        code("print('remote:', GIT_REMOTE)\nraise SystemExit(f'push failed: {GIT_REMOTE}') if 'fail' in ARTIFACTS else None"),
    ])
    nb.cells[0].metadata["tags"] = ["parameters"]
    nb.metadata["kernelspec"] = {"name": "internvl-course", "display_name": "x", "language": "python"}
    path = tmp_path / "nb" / "97_remote.ipynb"
    path.parent.mkdir()
    nbformat.write(nb, path)
    url = f"https://oauth2:{GH}@gitlab.example.com/alice/model.git"
    for art in (tmp_path / "art", tmp_path / "fail"):
        result = runner.run_notebook(path, art, {"GIT_REMOTE": url}, progress=False)
        runner.write_reports([result], art)
        executed = (art / "executed" / "97_remote.ipynb").read_text()
        assert "https://oauth2:****@gitlab.example.com" in executed, "the cell still gets the URL; the copy masks it"
        assert GH not in result.error
        held = [str(p) for p in Path(tmp_path).rglob("*") if p.is_file() and GH.encode() in p.read_bytes()]
        assert held == [], held
    assert result.status == "fail"
