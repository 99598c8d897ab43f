"""labsupport.course.hygiene: each rule for executed copies can fail, and a clean notebook passes."""
import json

from labsupport.course import hygiene


def notebook(tmp_path, outputs, name="nb"):
    path = tmp_path / f"{name}.ipynb"
    cells = [{"cell_type": "code", "source": "", "metadata": {}, "outputs": outputs, "execution_count": 1}]
    path.write_text(json.dumps({"cells": cells, "metadata": {}, "nbformat": 4, "nbformat_minor": 5}))
    return path


def stream(text, name="stdout"):
    return {"output_type": "stream", "name": name, "text": text}


def test_a_clean_notebook_passes(tmp_path):
    noise = hygiene.inspect_notebook(notebook(tmp_path, [stream("hello\n"), stream("one warning\n", "stderr")]))
    assert noise.clean and noise.stderr_lines == 1 and not noise.problems()


def test_glyph_warnings_are_counted(tmp_path):
    text = "x.py:1: UserWarning: Glyph 30424 (\\N{CJK UNIFIED IDEOGRAPH-76D8}) missing from font(s) DejaVu Sans.\n"
    noise = hygiene.inspect_notebook(notebook(tmp_path, [stream(text, "stderr")]))
    assert noise.glyph_warnings == 1 and not noise.clean


def test_ansi_codes_are_counted(tmp_path):
    noise = hygiene.inspect_notebook(notebook(tmp_path, [stream("\x1b[31mred\x1b[0m\n")]))
    assert noise.ansi_outputs == 1 and not noise.clean


def test_a_bar_is_judged_by_its_last_state(tmp_path):
    finished = stream("run:   0%|   | 0/5\rrun: 100%|███| 5/5\n", "stderr")
    frozen = {"output_type": "display_data", "metadata": {},
              "data": {"text/plain": "measuring:   0%|          | 0/600 [00:00<?, ?it/s]"}}
    assert hygiene.inspect_notebook(notebook(tmp_path, [finished], "a")).frozen_bars == 0
    noise = hygiene.inspect_notebook(notebook(tmp_path, [frozen], "b"))
    assert noise.frozen_bars == 1 and not noise.clean


def test_more_than_ten_stderr_lines_fail(tmp_path):
    ok = hygiene.inspect_notebook(notebook(tmp_path, [stream("w\n" * 10, "stderr")], "a"))
    noisy = hygiene.inspect_notebook(notebook(tmp_path, [stream("w\n" * 11, "stderr")], "b"))
    assert ok.clean and not noisy.clean and noisy.stderr_lines == 11


def test_main_prints_a_table_and_fails_on_noise(tmp_path, capsys):
    clean = notebook(tmp_path, [stream("fine\n")], "clean")
    noisy = notebook(tmp_path, [stream("\x1b[1mbold\n")], "noisy")
    assert hygiene.main([str(clean)]) == 0
    assert hygiene.main([str(clean), str(noisy)]) == 1
    out = capsys.readouterr().out
    assert "| clean | 0 | 0 | 0 | 0 | 0 | yes |" in out and "| noisy | 0 | 1 |" in out


def test_library_warnings_are_counted_also_from_a_tools_own_process(tmp_path):
    transcript = ("double enter to end input >>> The attention mask is not set and cannot be inferred from input "
                  "because pad token is same as eos token.\n")
    python_warning = "/x/site-packages/torch/utils.py:12: FutureWarning: `foo` is deprecated\n"
    for name, outputs in (("chat", [stream(transcript)]), ("torch", [stream(python_warning, "stderr")])):
        noise = hygiene.inspect_notebook(notebook(tmp_path, outputs, name))
        assert noise.library_warnings == 1 and not noise.clean and "library warnings" in noise.problems()[0]
    validator = stream("[warning] train.json, record 3: missing_id: the record has no 'id'\n")
    assert hygiene.inspect_notebook(notebook(tmp_path, [validator], "validator")).clean
