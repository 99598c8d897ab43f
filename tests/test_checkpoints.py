import json

import pytest

from labsupport.core.checkpoints import Checkpoints, CheckpointsFailed, load_results, write_json_atomic


def test_pass_fail_skip_are_recorded_and_printed(tmp_path, capsys):
    book = Checkpoints("99_demo", tmp_path)
    assert book.check("two plus two", 2 + 2 == 4, hint="arithmetic")
    assert not book.check("wrong", False, hint="look again")
    assert not book.skip("gpu part", reason="no CUDA GPU")
    out = capsys.readouterr().out
    assert "PASS  two plus two" in out and "FAIL  wrong" in out and "hint: look again" in out
    assert "no CUDA GPU" in out
    saved = load_results("99_demo", tmp_path)
    assert [c["status"] for c in saved["checkpoints"]] == ["pass", "fail", "skipped"]
    assert saved["checkpoints"][1]["hint"] == "look again" and saved["finished"] is False


def test_a_check_that_raises_is_a_failure_with_the_error(tmp_path):
    book = Checkpoints("99_demo", tmp_path, quiet=True)
    assert not book.check("learner code", lambda: 1 / 0, hint="no division by zero")
    assert "ZeroDivisionError" in book.results[0]["detail"]


def test_finish_raises_naming_the_failed_checkpoint(tmp_path):
    book = Checkpoints("99_demo", tmp_path, quiet=True)
    book.check("fine", True, hint="")
    book.check("tiles of a panorama", False, hint="count the grid")
    with pytest.raises(CheckpointsFailed, match="tiles of a panorama.*count the grid"):
        book.finish()
    assert load_results("99_demo", tmp_path)["finished"] is True


def test_finish_passes_when_all_passed_or_skipped(tmp_path):
    book = Checkpoints("99_demo", tmp_path, quiet=True)
    book.check("fine", True, hint="")
    book.skip("gpu", reason="cpu")
    book.finish()


def test_rerunning_a_check_replaces_its_result(tmp_path):
    book = Checkpoints("99_demo", tmp_path, quiet=True)
    book.check("answer", False, hint="try again")
    book.check("answer", True, hint="try again")
    assert [c["status"] for c in book.results] == ["pass"]


def test_write_json_atomic_leaves_no_temp_file(tmp_path):
    write_json_atomic(tmp_path / "a" / "b.json", {"x": 1})
    assert json.loads((tmp_path / "a" / "b.json").read_text()) == {"x": 1}
    assert [p.name for p in (tmp_path / "a").iterdir()] == ["b.json"]


def test_atomic_writes_get_ordinary_permissions_and_leave_no_temp_file_on_failure(tmp_path):
    import os
    import stat

    from labsupport.core.checkpoints import write_bytes_atomic, write_json_atomic, write_text_atomic

    old = os.umask(0o022)
    try:
        write_text_atomic(tmp_path / "shared.txt", "hello")
        write_json_atomic(tmp_path / "shared.json", {"a": 1})
    finally:
        os.umask(old)
    for name in ("shared.txt", "shared.json"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o644, "outputs meant to be shared must not be 0600"
    write_bytes_atomic(tmp_path / "private.bin", b"x", mode=0o600)
    assert stat.S_IMODE((tmp_path / "private.bin").stat().st_mode) == 0o600

    (tmp_path / "keep.json").write_text('{"old": true}')
    loop: dict = {}
    loop["self"] = loop
    with pytest.raises(ValueError, match="Circular"):
        write_json_atomic(tmp_path / "keep.json", loop)
    with pytest.raises(UnicodeEncodeError):
        write_text_atomic(tmp_path / "keep.json", "lone \ud800 surrogate")
    assert (tmp_path / "keep.json").read_text() == '{"old": true}', "a failed write must leave the old file"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.json", "private.bin", "shared.json", "shared.txt"]
