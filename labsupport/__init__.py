"""labsupport: the small helper package behind the InternVL2 course notebooks.

Flat modules, each named after what it does:
  paths        where the repo, artifacts and models are
  checkpoints  homework checkpoints and the report card
  envs         build the two environments (standard library only)
  homework     learner editions of the notebooks
  course       run every notebook headless and write the course report
  doctor       check an environment against its pins
  tiling       InternVL's dynamic high-resolution tiling
  tinymodel    build the embedded miniature InternVL2 checkpoint
  params       analytic parameter counts of the InternVL2 family
  vision       pixel shuffle explained: merge map, shape arithmetic, stage-by-stage shapes
  plots        the architecture figures (tiling grids, pixel-shuffle merge, budgets)
  xtuner       XTuner configs from readable settings, the training launcher, resume, convert_to_official
  xtuner_shims what XTuner 0.2.0 needs on a CPU, imported by the generated configs
  validate     check a training json/jsonl and its images against what XTuner's dataset accepts
  runs         safe training runs: data checked first, the last good run kept, resume from an intact checkpoint
  memory       GPU memory estimator for fine-tuning (weights, gradients, optimizer, activations)
  evaluate     held-out accuracy of a model on the course task through its chat API
  sources      FoodieQA and CLoT: download commands, the gated-repo error, the Oogiri-GO converter
  exercises    planted problems for the notebooks' find-the-bug exercises
  progress     progress display that suits where it runs (live bar, or one line in a saved notebook)
  hygiene      count the noise in executed notebooks (missing glyphs, ANSI codes, frozen bars, stderr)
"""
__version__ = "0.1.0"
