"""The measured GPU presets: each entry's numbers are those of the docs/gpu row it names."""
import json

import pytest

from labsupport import bench, gpu_presets


def test_every_entry_matches_its_measured_row():
    data = json.loads(gpu_presets.DATA.read_text())
    for model, modes in ((k, v) for k, v in data.items() if not k.startswith("_")):
        for mode, entries in modes.items():
            for e in entries:
                m = e["measured"]
                runs = json.loads((bench.measured_dir() / m["file"]).read_text())["runs"]
                run = next(r for r in runs if r.get("row") == m["row"])
                assert run["mode"] == mode and "error" not in run
                assert run["batch_per_gpu"] == e["settings"]["batch_size"]
                assert run["checkpointing"] == e["settings"]["gradient_checkpointing"]
                assert run["num_workers"] == e["settings"]["num_workers"]
                assert run["group_by_length"] == e["settings"]["group_by_length"]
                assert m["tokens_per_s_per_gpu"] == pytest.approx(run["tokens_per_s_per_gpu"], abs=0.1)
                assert m["mfu"] == pytest.approx(run["mfu"], abs=1e-4)
                assert m["peak_memory_gib"] == pytest.approx(run["peak_memory_gib"], abs=0.01)


def test_best_is_the_fastest_that_fits():
    assert gpu_presets.best("InternVL2-2B", "lora")["gradient_checkpointing"] is False  # 141 GB: 128.5 GiB fits
    assert gpu_presets.best("InternVL2-2B", "lora", gpu_memory_gib=80)["gradient_checkpointing"] is True
    assert gpu_presets.best("InternVL2-2B", "full")["batch_size"] == 16
    with pytest.raises(ValueError, match="fits"):
        gpu_presets.best("InternVL2-2B", "full", gpu_memory_gib=24)
    with pytest.raises(KeyError, match="InternVL2-8B"):
        gpu_presets.best("InternVL2-8B", "full")
