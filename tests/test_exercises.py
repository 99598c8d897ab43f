"""labsupport.datasets.exercises: the planted problem is exactly one, where it says, and the validator finds it."""
from labsupport.datasets import exercises, formats, plates
from labsupport.datasets import validate as vd


def test_mystery_copy_has_one_role_order_error(tmp_path):
    paths = plates.build_course_task(tmp_path / "plates", n_train=24, n_heldout=12, progress=False)
    out = exercises.mystery_copy(paths["train"], tmp_path / "mystery.json", n=6, bad_index=4)
    report = vd.validate(out, paths["image_folder"], progress=False)
    errors = {(p.index, p.kind) for p in report.problems if p.severity == "error"}
    assert errors == {(4, "role_order")}
    assert formats.load_records(paths["train"])[4]["conversations"][0]["from"] == "human"  # the input is untouched
