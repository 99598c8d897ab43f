"""The committed notebooks are clean, parameterised, in order and name a known kernel."""
import json
import re

import pytest

from labsupport.core import envs
from labsupport.course.runner import course_notebooks

NOTEBOOKS = course_notebooks()


def load(path):
    return json.loads(path.read_text(encoding="utf-8"))


def test_there_are_notebooks():
    assert NOTEBOOKS, "no notebooks/NN_*.ipynb found"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_committed_without_outputs_or_counts(path):
    for i, cell in enumerate(load(path)["cells"]):
        if cell["cell_type"] == "code":
            assert not cell.get("outputs"), f"{path.name} cell {i} has outputs: run `make strip`"
            assert cell.get("execution_count") is None, f"{path.name} cell {i} has an execution count: run `make strip`"


CHAT_LLM_NOTEBOOKS = {"08_self_cognition", "09_llava_xtuner"}


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_exactly_one_parameters_cell_with_the_common_knobs(path):
    tagged = [c for c in load(path)["cells"] if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(tagged) == 1, f"{path.name}: {len(tagged)} cells tagged 'parameters' (want exactly 1)"
    source = "".join(tagged[0]["source"])
    for knob in ("ARTIFACTS", "DEVICE"):
        assert re.search(rf"^{knob}\s*=", source, re.M), f"{path.name}: parameters cell lacks {knob}"
    # the course-wide MODEL_PATH is an InternVL2 checkpoint; the side tracks that fine-tune a chat LLM (08, 09) name
    # theirs CHAT_MODEL_PATH, so `course run -p MODEL_PATH <InternVL2 folder>` never reaches them
    knobs = [k for k in ("MODEL_PATH", "CHAT_MODEL_PATH") if re.search(rf"^{k}\s*=", source, re.M)]
    assert knobs == (["CHAT_MODEL_PATH"] if path.stem in CHAT_LLM_NOTEBOOKS else ["MODEL_PATH"]), (path.name, knobs)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_kernelspec_names_a_course_environment(path):
    known = {spec.kernel for spec in envs.load_specs()}
    kernel = load(path)["metadata"].get("kernelspec", {}).get("name")
    assert kernel in known, f"{path.name}: kernelspec {kernel!r} is not one of {sorted(known)}"


def test_titles_are_numbered_in_order():
    """NN_name.ipynb has the title '# NN · ...'; a chapter split in two adds a letter (03_…, then 03b_…)."""
    numbers = []
    for path in NOTEBOOKS:
        prefix = path.name.split("_")[0]
        assert re.fullmatch(r"\d\d[b-z]?", prefix), f"{path.name}: name it NN_name.ipynb (or NNb_name.ipynb)"
        first = load(path)["cells"][0]
        title = "".join(first["source"]).splitlines()[0]
        assert first["cell_type"] == "markdown" and title.startswith(f"# {prefix} · "), \
            f"{path.name}: first cell should be a '# {prefix} · Title' heading, got {title!r}"
        numbers.append((int(prefix[:2]), prefix[2:]))
    assert numbers == sorted(set(numbers))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_opens_a_checkpoint_book_and_finishes_it(path):
    code = "\n".join("".join(c["source"]) for c in load(path)["cells"] if c["cell_type"] == "code")
    assert f'Checkpoints("{path.stem}"' in code, f"{path.name}: no checkpoints.Checkpoints({path.stem!r}, …)"
    last = [c for c in load(path)["cells"] if c["cell_type"] == "code"][-1]
    assert "book.finish()" in "".join(last["source"]), f"{path.name}: the last code cell should call book.finish()"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_every_cell_has_a_unique_id(path):
    """nbformat 4.5 cells carry ids; a cell added without one makes nbformat warn now and fail later."""
    ids = [c.get("id") for c in load(path)["cells"]]
    assert all(ids), f"{path.name}: cells {[i for i, x in enumerate(ids) if not x]} have no id"
    assert len(set(ids)) == len(ids), f"{path.name}: duplicate cell ids"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_papermill_sees_every_parameter(path):
    """papermill infers the parameters from the cell's text; a '=' in a comment hides that line from it
    (it then warns 'Passed unknown parameter' for knobs that do exist)."""
    import papermill

    cell = next(c for c in load(path)["cells"] if "parameters" in c.get("metadata", {}).get("tags", []))
    names = set(re.findall(r"^(\w+)\s*=", "".join(cell["source"]), re.M))
    missed = names - set(papermill.inspect_notebook(str(path)))
    assert not missed, f"{path.name}: papermill cannot read {sorted(missed)} (no '=' in their comments)"
