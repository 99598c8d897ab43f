"""labsupport.course.doctor: every environment file is checked, the ms-swift one included."""
from labsupport.core import envs
from labsupport.course import doctor


def test_check_pins_of_the_swift_environment(repo):
    spec = next(s for s in envs.load_specs(repo) if s.name == "internvl-swift")
    found = {"python": "3.11.7", "packages": {"ms-swift": "4.6.0", "transformers": "4.48.0", "datasets": "5.0.1"}}
    rows = {r["package"]: r for r in doctor.check_pins(spec, found)}
    assert rows["python"]["ok"] and rows["ms-swift"]["ok"] and rows["transformers"]["ok"]
    assert not rows["datasets"]["ok"] and rows["datasets"]["wanted"] == "==4.8.4"  # ms-swift 4.6 refuses datasets 5
    assert rows["timm"]["found"] == "missing" and not rows["timm"]["ok"]


def test_diagnose_covers_every_environment_file(repo, tmp_path):
    report = doctor.diagnose(tmp_path, needed_gb=0)
    assert [e["name"] for e in report["environments"]] == [s.name for s in envs.load_specs(repo)]
    assert "internvl-swift" in doctor.render_markdown(report)
