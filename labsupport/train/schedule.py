"""A schedule that fits the data: epochs, batch, LoRA rank and learning rate from the dataset's size and the checkpoint.

    settings, rules = fit_schedule(settings, n_train=len(train), miniature=choice.miniature, own_data=bool(DATA))
    for rule in rules: print(rule)          # every change with the rule behind it and where the rule comes from

Where the numbers come from:
- InternVL's own second-stage LoRA recipe for InternVL2-2B (OpenGVLab/InternVL,
  internvl_chat/shell/internvl2.0/2nd_finetune/internvl2_2b_internlm2_1_8b_dynamic_res_2nd_finetune_lora.sh):
  LoRA r=16 on the LLM, lr 4e-5, global batch 16, 1 epoch, warmup 3 %, cosine, weight decay 0.01, <= 6 tiles.
- XTuner 0.2.0's configs/internvl/v2/*_lora_finetune.py: LoRA r=128 / alpha 256, global batch 16, 1 epoch (and lr 1e-6,
  which the course does not take: with r=128 it barely moves the adapters in a few hundred steps).
Both run one epoch because they assume a large dataset (the InternVL2 fine-tuning mixtures have ~1M samples). One
epoch of a learner's 600 records at a global batch of 16 is 38 optimizer steps, too few to learn anything, so the rule
here keeps the recipes' batch and learning rate and adds epochs until the run has MIN_STEPS steps (at most
MAX_EPOCHS passes, beyond which a small set is memorised rather than learned); a very small set also gets a smaller
global batch. A set of more than LARGE_SET records keeps XTuner's rank 128; smaller sets take InternVL's rank 16.
The embedded miniature keeps its CPU preset (measured on the plates: 450 iterations at batch 4); any other
miniature on the plates trains the 600 iterations its goal was measured with. On a learner's own
images its vision tower stays frozen too: pre-trained on plates only, it still carries new images' layout (measured on
scikit-learn's digits: a linear probe on its frozen features, pooled to 8x8 cells, 0.885 held-out, the raw 8x8 pixels
0.880); what the run lacks is iterations. The loss sits at the answers' prior (ln 10 / 2 for one digit + <|im_end|>)
for about 300 iterations before the LLM's attention finds the image tokens, so 300 iterations (the old rule, with the
ViT trained) ended on the plateau, 93 of 100 replies "5". Hence TINY_OWN_ITERATIONS iterations (more epochs) over at
most CPU_MAX_TRAIN records with the ViT frozen, which also keeps an iteration at the plates' cost.
"""
from __future__ import annotations

import math
from dataclasses import replace
from typing import Collection

from labsupport.train.xtuner_presets import TrainSettings

MIN_STEPS = 200          # optimizer steps a fine-tune should get at least
MAX_EPOCHS = 10          # more passes over a small set memorise it
LARGE_SET = 20_000       # records above which XTuner's rank 128 is kept
SMALL_BATCH = 4          # the global batch for a set too small to give MIN_STEPS at 16 within MAX_EPOCHS
INTERNVL_LORA = dict(lora_r=16, lora_alpha=32, lr=4e-5, weight_decay=0.01)  # InternVL's 2B LoRA script
TINY_ITERATIONS = 450    # the embedded default's measured CPU run on the plates (xtuner_presets._tiny_cpu: 3 epochs)
MEASURED_MINIATURE_EPOCHS = 4  # other miniatures on the plates: the 600 iterations their goals were measured with
TINY_OWN_ITERATIONS = 900  # the miniature on your images: past the ~300-iteration plateau of a new image domain (digits, measured)
OWN_PLATEAU = 300        # iterations the miniature's loss stayed at the answers' prior on the digits (ViT frozen or trained)
CHOICE_PRIOR_ITERATIONS = 1000  # the miniature at the letters' prior (loss ln 2) on four shuffled options, digits (measured)
CPU_MAX_TRAIN = 600      # training records a miniature's CPU run keeps of your DATA (learner.split_own_data(max_train=))


def global_batch(s: TrainSettings) -> int:
    """Samples per optimizer step: per-GPU batch x accumulation x GPUs."""
    return s.batch_size * s.accumulative_counts * s.nproc


def steps(s: TrainSettings, n_train: int) -> int:
    """Optimizer steps S makes over N_TRAIN records."""
    return math.ceil(n_train / global_batch(s)) * s.max_epochs


def fit_schedule(s: TrainSettings, n_train: int, miniature: bool, own_data: bool,
                 keep: Collection[str] = (), embedded: str | None = None) -> tuple[TrainSettings, list[str]]:
    """S with its epochs (and for real weights its batch, rank and lr) fitted to N_TRAIN records; the rules that fired.
    KEEP names the fields the learner set in the parameters cell: the rule never changes those. EMBEDDED is the
    embedded model's layout (PresetChoice.embedded), None for any other checkpoint."""
    if n_train < 1:
        raise ValueError("no training records: the schedule needs at least one")
    fitted, rules = _fit(s, n_train, miniature, own_data, embedded)
    kept = {k: getattr(s, k) for k in keep if hasattr(s, k) and getattr(fitted, k) != getattr(s, k)}
    if kept:
        fitted = replace(fitted, **kept)
        if {"lora_r"} & set(kept) and "lora_alpha" not in keep:
            fitted = replace(fitted, lora_alpha=s.lora_alpha)
        rules.append("kept as the parameters cell set them: " + ", ".join(f"{k}={v!r}" for k, v in sorted(kept.items()))
                     + f" ({steps(fitted, n_train)} optimizer steps)")
    return fitted, rules


def _fit(s: TrainSettings, n_train: int, miniature: bool, own_data: bool,
         embedded: str | None = None) -> tuple[TrainSettings, list[str]]:
    """fit_schedule's rule, before the learner's own settings are put back."""
    rules: list[str] = []
    if miniature:
        if not own_data and embedded == "tiny":
            return s, [f"the plates task on the embedded miniature: the measured CPU preset as it is ({steps(s, n_train)} steps)"]
        if not own_data:
            s = replace(s, max_epochs=MEASURED_MINIATURE_EPOCHS)
            return s, [f"the plates task on a miniature other than the embedded default: the CPU preset with "
                       f"{MEASURED_MINIATURE_EPOCHS} epochs ({steps(s, n_train)} steps), the run its goal was measured "
                       f"with (docs/cpu/official-format-04.json)"]
        per_epoch = math.ceil(n_train / global_batch(s))
        epochs = max(1, min(MAX_EPOCHS, math.ceil(TINY_OWN_ITERATIONS / per_epoch)))
        s = replace(s, max_epochs=epochs, freeze_vit=True)
        rules.append(f"{epochs} epochs of {n_train} records at batch {global_batch(s)} = {steps(s, n_train)} steps: on new "
                     f"images the miniature's loss stays at the answers' prior for about {OWN_PLATEAU} iterations (measured "
                     f"on digits) before its LLM reads the image tokens, so about {TINY_OWN_ITERATIONS} here (at most "
                     f"{MAX_EPOCHS} epochs; a CPU run keeps at most {CPU_MAX_TRAIN} of your training records)")
        if steps(s, n_train) < 2 * OWN_PLATEAU:
            rules.append(f"warning: {steps(s, n_train)} steps ({n_train} records x {epochs} epochs at batch {global_batch(s)}) "
                         f"is little past that plateau: more records give the run room to learn")
        rules.append("vision tower frozen (freeze_visual_encoder=True), as on the plates: the embedded InternViT was "
                     "pre-trained on plates only, yet its frozen features still hold a new image's layout (a linear probe "
                     "reads digits from them at 0.885); OVERRIDES = {\"freeze_vit\": False} trains it too")
        return s, rules
    if n_train <= LARGE_SET and s.mode in ("lora", "qlora"):
        s = replace(s, **INTERNVL_LORA)
        rules.append(f"LoRA r={s.lora_r}, alpha {s.lora_alpha}, lr {s.lr:g}, weight decay {s.weight_decay}: InternVL's own "
                     f"2B LoRA recipe, for a set of {n_train} records (XTuner's r=128 is kept above {LARGE_SET:,})")
    if math.ceil(n_train / global_batch(s)) * MAX_EPOCHS < MIN_STEPS and global_batch(s) > SMALL_BATCH:
        s = replace(s, accumulative_counts=max(1, SMALL_BATCH // (s.batch_size * s.nproc)),
                    batch_size=min(s.batch_size, SMALL_BATCH))
        rules.append(f"global batch {global_batch(s)} (the recipes' 16 would give fewer than {MIN_STEPS} steps in "
                     f"{MAX_EPOCHS} epochs of {n_train} records)")
    per_epoch = math.ceil(n_train / global_batch(s))
    epochs = max(s.max_epochs, min(MAX_EPOCHS, math.ceil(MIN_STEPS / per_epoch)))
    if epochs != s.max_epochs:
        rules.append(f"{epochs} epochs instead of the recipes' {s.max_epochs}: {per_epoch} steps per epoch, at least "
                     f"{MIN_STEPS} steps wanted (at most {MAX_EPOCHS} epochs)")
    s = replace(s, max_epochs=epochs)
    rules.append(f"{n_train} records x {s.max_epochs} epochs / global batch {global_batch(s)} = "
                 f"{steps(s, n_train)} optimizer steps")
    return s, rules


def miniature_caveat(scorer: str, option_sets: int, miniature: bool, own_data: bool) -> str | None:
    """What the miniature was measured not to learn on data like the learner's (None: nothing known against it)."""
    if not (miniature and own_data and scorer == "choice" and option_sets > 1):
        return None
    return (f"your questions list {option_sets} different option sets: the answer's letter depends on where the right "
            f"option stands. On scikit-learn's digits with four shuffled options the miniature's loss stayed at the "
            f"letters' prior (ln 2 per answer) for {CHOICE_PRIOR_ITERATIONS:,} iterations and more (measured); it learns "
            f"the digits when every question lists the same options. Expect little gain here; a real checkpoint reads "
            f"options (MODEL_PATH)")

