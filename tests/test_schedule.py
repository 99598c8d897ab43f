"""The schedule rule: epochs, batch, rank and lr fitted to the dataset's size and the checkpoint."""
from labsupport.train import schedule, xtuner_presets


def gpu(mode="lora"):
    return xtuner_presets.preset(f"InternVL2-2B-{mode}", gpu_memory_gib=140)


def test_a_small_set_on_real_weights_gets_enough_steps_and_internvl_rank():
    s, rules = schedule.fit_schedule(gpu(), 600, miniature=False, own_data=True)
    assert schedule.global_batch(s) == 16 and s.lora_r == 16 and s.lr == 4e-5
    assert schedule.steps(s, 600) >= schedule.MIN_STEPS and s.max_epochs <= schedule.MAX_EPOCHS
    assert any("InternVL's own" in r for r in rules) and any("optimizer steps" in r for r in rules)


def test_a_large_set_keeps_one_epoch_and_xtuners_rank():
    s, _ = schedule.fit_schedule(gpu(), 50_000, miniature=False, own_data=True)
    assert s.max_epochs == 1 and s.lora_r == 128


def test_a_tiny_set_gets_a_smaller_batch_and_at_most_max_epochs():
    s, rules = schedule.fit_schedule(gpu(), 40, miniature=False, own_data=True)
    assert schedule.global_batch(s) == schedule.SMALL_BATCH and s.max_epochs == schedule.MAX_EPOCHS
    assert any("global batch" in r for r in rules)


def test_full_fine_tuning_keeps_its_rank_fields_and_lr():
    full = gpu("full")
    s, _ = schedule.fit_schedule(full, 2000, miniature=False, own_data=True)
    assert s.lr == full.lr and s.lora_r == full.lora_r and schedule.steps(s, 2000) >= 16


def test_the_miniature_keeps_its_measured_preset_on_plates_and_runs_past_the_plateau_on_new_images():
    tiny = xtuner_presets.preset("tiny-cpu")
    same, rules = schedule.fit_schedule(tiny, 600, miniature=True, own_data=False, embedded="tiny")
    assert same == tiny and "measured CPU preset" in rules[0] and schedule.steps(same, 600) == schedule.TINY_ITERATIONS
    own, rules = schedule.fit_schedule(tiny, 600, miniature=True, own_data=True)
    assert own.freeze_vit is True and schedule.steps(own, 600) == schedule.TINY_OWN_ITERATIONS
    assert schedule.TINY_OWN_ITERATIONS >= 2 * schedule.OWN_PLATEAU
    assert any("pre-trained on plates only" in r for r in rules) and not any(r.startswith("warning") for r in rules)


def test_a_small_own_set_on_the_miniature_is_warned_before_training():
    tiny = xtuner_presets.preset("tiny-cpu")
    s, rules = schedule.fit_schedule(tiny, 40, miniature=True, own_data=True)
    assert s.max_epochs == schedule.MAX_EPOCHS and schedule.steps(s, 40) == 100
    assert any(r.startswith("warning: 100 steps") and "plateau" in r for r in rules), rules


def test_the_learners_freeze_vit_override_wins():
    tiny = xtuner_presets.preset("tiny-cpu", freeze_vit=False)
    s, rules = schedule.fit_schedule(tiny, 600, miniature=True, own_data=True, keep={"freeze_vit"})
    assert s.freeze_vit is False and "freeze_vit=False" in rules[-1]


def test_what_the_learner_set_is_kept_and_said():
    set_by_hand = xtuner_presets.preset("InternVL2-2B-lora", gpu_memory_gib=140, max_epochs=2, lr=1e-4)
    s, rules = schedule.fit_schedule(set_by_hand, 600, miniature=False, own_data=True, keep={"max_epochs", "lr"})
    assert s.max_epochs == 2 and s.lr == 1e-4 and s.lora_r == 16      # the rule's rank, the learner's epochs and lr
    assert any("kept as the parameters cell set them" in r and "max_epochs=2" in r for r in rules)
    free, _ = schedule.fit_schedule(set_by_hand, 600, miniature=False, own_data=True)
    assert free.max_epochs != 2 and free.lr == 4e-5                    # without KEEP the rule overrides both


def test_the_miniature_warns_about_shuffled_options_only():
    from labsupport.evaluate import answers

    def rec(options, a):
        q = "<image>\nWhich digit?\n" + "\n".join(f"{l}. {o}" for l, o in zip("ABCD", options))
        return {"conversations": [{"from": "human", "value": q}, {"from": "gpt", "value": a}]}
    shuffled = [rec([1, 2, 3, 4], "A"), rec([4, 3, 2, 1], "D")]
    fixed = [rec([1, 2, 3, 4], "A"), rec([1, 2, 3, 4], "B")]
    assert answers.option_sets(shuffled) == 2 and answers.option_sets(fixed) == 1
    assert "letters' prior" in schedule.miniature_caveat("choice", 2, miniature=True, own_data=True)
    assert schedule.miniature_caveat("choice", 1, miniature=True, own_data=True) is None
    assert schedule.miniature_caveat("choice", 2, miniature=False, own_data=True) is None
    assert schedule.miniature_caveat("exact", 2, miniature=True, own_data=True) is None


def test_a_miniature_other_than_the_embedded_default_trains_as_long_as_its_goal_was_measured():
    tiny = xtuner_presets.preset("tiny-cpu")
    for embedded in (None, "tiny-4b"):   # an official-format miniature, the embedded 4B layout
        s, rules = schedule.fit_schedule(tiny, 600, miniature=True, own_data=False, embedded=embedded)
        assert s.max_epochs == schedule.MEASURED_MINIATURE_EPOCHS and schedule.steps(s, 600) == 600
        assert "official-format-04.json" in rules[0]


def test_the_embedded_default_is_recognised_and_a_changed_copy_is_not(tmp_path):
    from labsupport.model.tinymodel import STAMP_FILE, build_tiny_model
    model = build_tiny_model(tmp_path / "internvl2-tiny")
    assert xtuner_presets.choose_preset(model).embedded == "tiny"
    (model / STAMP_FILE).unlink()   # no longer provably the course's build: trained as any other miniature
    choice = xtuner_presets.choose_preset(model)
    assert choice.miniature and choice.embedded is None
