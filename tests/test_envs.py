import os
import shutil
import sys
from pathlib import Path

import pytest

from labsupport.core import envs


def test_course_deploy_and_swift_files_parse(repo):
    specs = {s.name: s for s in envs.load_specs(repo)}
    course, deploy, swift = specs["internvl-course"], specs["internvl-deploy"], specs["internvl-swift"]
    assert course.python == deploy.python == swift.python == "3.11"
    for pin in ("torch==2.14.1", "torchvision==0.29.1", "transformers==4.48.0", "mmengine==0.10.6",
                "bitsandbytes==0.45.5", "deepspeed==0.16.2", "papermill"):
        assert pin in course.pip, pin
    assert course.pip_no_deps == ["xtuner==0.2.0"]
    assert "lmdeploy==0.18.0" in deploy.pip
    assert (course.kernel, deploy.kernel, swift.kernel) == ("internvl-course", "internvl-deploy", "internvl-swift")
    for pin in ("torch==2.14.1", "torchvision==0.29.1", "ms-swift==4.6.0", "transformers==4.48.0", "peft==0.14.0",
                "datasets==4.8.4", "timm==1.0.31", "ipykernel", "-e ."):
        assert pin in swift.pip, pin
    assert swift.pip[:2] == ["torch==2.14.1", "torchvision==0.29.1"]  # installed first, from the machine's disk


def test_every_environment_file_is_built_and_has_a_key(repo):
    on_disk = sorted(p.name for p in repo.glob("environment*.yml"))
    assert sorted(envs.ENV_FILES) == on_disk, "a new environment file must be listed in envs.ENV_FILES"
    names = [s.name for s in envs.load_specs(repo)]
    assert [next(n for n in names if n.endswith(key)) for key in envs.ENV_KEYS] == names


def test_only_and_python_accept_every_key(capsys):
    for key in envs.ENV_KEYS:
        assert envs.main(["--list", "--only", key]) == 0
    assert '"name": "internvl-swift"' in capsys.readouterr().out
    with pytest.raises(SystemExit):
        envs.main(["--only", "nosuch"])


def test_every_pin_is_written_once_per_file(repo):
    for spec in envs.load_specs(repo):
        names = [p.split("=")[0].split(">")[0].split("<")[0].lower() for p in spec.pip + spec.pip_no_deps]
        assert len(names) == len(set(names)), spec.file


def test_parser_reads_comments_sections_and_no_deps(tmp_path):
    f = tmp_path / "env.yml"
    f.write_text("# a comment\nname: demo  # trailing\ndependencies:\n  - python=3.11\n  - pip\n  - pip:\n"
                 "      - torch==2.14.1   # why\n      - -e .\nx-pip-no-deps:\n  - xtuner==0.2.0\n"
                 "x-jupyter-kernel: demo-kernel\n")
    spec = envs.parse_env_file(f)
    assert spec.name == "demo" and spec.python == "3.11"
    assert spec.pip == ["torch==2.14.1", "-e ."]
    assert spec.pip_no_deps == ["xtuner==0.2.0"] and spec.kernel == "demo-kernel"


def test_parser_names_the_file_and_line_of_a_bad_line(tmp_path):
    f = tmp_path / "env.yml"
    f.write_text("name: demo\ndependencies:\n  python=3.11\n")
    with pytest.raises(ValueError, match=r"env.yml:3"):
        envs.parse_env_file(f)


def test_a_file_without_a_name_is_refused(tmp_path):
    f = tmp_path / "env.yml"
    f.write_text("dependencies:\n  - pip\n")
    with pytest.raises(ValueError, match="name"):
        envs.parse_env_file(f)


def test_digest_changes_with_the_file(tmp_path):
    f = tmp_path / "env.yml"
    f.write_text("name: demo\n")
    before = envs.parse_env_file(f).digest()
    f.write_text("name: demo\ndependencies:\n  - pip\n")
    assert envs.parse_env_file(f).digest() != before


def test_built_environments_are_stamped_with_their_spec(repo):
    for spec in envs.load_specs(repo):
        python = envs.env_python(spec)
        if python is None:
            pytest.skip(f"{spec.name} not built")
        stamp = envs._read_stamp(Path(python).parent.parent)
        if stamp.get("route") != "conda" and stamp:
            assert stamp["digest"] == spec.digest(), f"{spec.name} is older than {spec.file.name}: run make env"


def test_build_commands_are_what_the_venv_builder_runs(tmp_path, monkeypatch):
    """The commands notebook 02 shows are the ones build_venv runs (its temp requirements file read back)."""
    import shlex
    from pathlib import Path

    ran = []

    def record(cmd, **kw):
        words = [str(c) for c in cmd]
        if "-r" in words:  # the builder passes the rest of the pip list through a temporary file
            req = Path(words[words.index("-r") + 1])
            words = words[:words.index("-r")] + req.read_text().split("\n")[:-1]
        ran.append(words)

    monkeypatch.setattr(envs, "_run", record)
    monkeypatch.setattr(envs, "VENVS", tmp_path / ".venvs")
    monkeypatch.setattr(envs, "ROOT", tmp_path)
    monkeypatch.setattr(envs, "register_kernel", lambda *a: None)
    monkeypatch.setattr(envs, "_write_stamp", lambda *a: None)
    monkeypatch.setattr(envs, "_check_python", lambda spec: None)
    (tmp_path / ".venvs").mkdir()
    spec = envs.load_specs()[0]
    envs.build_venv(spec, None)
    shown = envs.build_commands(spec, "venv")
    # python -m venv PREFIX, then each pip call with the same packages in the same order
    assert ran[0][1:3] == ["-m", "venv"] and shown[0].split()[1:3] == ["-m", "venv"]
    pip_ran = [[w for w in words[1:] if w not in ("--progress-bar", "off")] for words in ran[1:]]
    pip_shown = [[w for w in shlex.split(line)[1:]] for line in shown[1:-1]]
    pip_shown = [[w for w in words if w != "-e"] for words in pip_shown]
    pip_ran = [[w.removeprefix("-e ") for w in words] for words in pip_ran]
    assert pip_ran == pip_shown
    assert shown[-1].startswith(".venvs/internvl-course/bin/python -m ipykernel install")


def test_doctor_catches_a_missing_timm(tmp_path):
    """The pins table and the code-path check both flag an environment without timm."""
    import os
    import sys

    from labsupport.course import doctor
    from labsupport.core.envs import load_specs
    from labsupport.model.tinymodel import build_tiny_model

    course = next(s for s in load_specs() if s.name == "internvl-course")
    found = doctor.installed_versions()
    assert any(r["package"] == "timm" and r["ok"] for r in doctor.check_pins(course, found))
    found["packages"].pop("timm", None)
    assert any(r["package"] == "timm" and not r["ok"] and r["found"] == "missing" for r in doctor.check_pins(course, found))

    model = build_tiny_model(tmp_path / "tiny")
    rows = doctor.check_model_code(model)
    assert rows and all(r["ok"] for r in rows), rows
    assert {"config.json + configuration code", "tokenizer"} <= {r["check"] for r in rows}
    blocker = tmp_path / "block"
    blocker.mkdir()
    (blocker / "timm.py").write_text("raise ImportError('timm is not installed (blocked by the test)')\n")
    wrapper = tmp_path / "python"
    wrapper.write_text(f"#!/bin/sh\nPYTHONPATH={blocker}:{os.environ.get('PYTHONPATH', '')} exec {sys.executable} \"$@\"\n")
    wrapper.chmod(0o755)
    rows = {r["check"]: r for r in doctor.check_model_code(model, python=wrapper)}
    assert not rows["import timm"]["ok"] and "DropPath" in rows["import timm"]["detail"]
    assert rows["tokenizer"]["ok"]


@pytest.mark.skipif(shutil.which("hardlink") is None, reason="util-linux hardlink is not installed")
def test_identical_large_files_are_shared_between_environments(tmp_path, capsys):
    blob = os.urandom(300 * 1024)
    for name in ("a", "b"):
        (tmp_path / name / "lib").mkdir(parents=True)
        (tmp_path / name / "lib" / "big.so").write_bytes(blob)
        (tmp_path / name / "lib" / "small.py").write_text("x = 1\n")
    (tmp_path / "b" / "lib" / "other.so").write_bytes(os.urandom(300 * 1024))
    envs.share_identical_files(tmp_path)
    assert (tmp_path / "a/lib/big.so").stat().st_ino == (tmp_path / "b/lib/big.so").stat().st_ino
    assert (tmp_path / "a/lib/small.py").stat().st_ino != (tmp_path / "b/lib/small.py").stat().st_ino
    assert (tmp_path / "b/lib/big.so").read_bytes() == blob
    assert "saved" in capsys.readouterr().out


def test_a_failed_command_on_a_full_disk_says_so(monkeypatch):
    monkeypatch.setattr(envs, "_free_gib", lambda path: 0.2)
    with pytest.raises(SystemExit) as stop:
        envs._run([sys.executable, "-c", "raise SystemExit(1)"])
    assert "0.2 GiB free" in str(stop.value) and "make env" in str(stop.value)
