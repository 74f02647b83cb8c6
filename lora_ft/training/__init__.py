"""Training: one run's steps (``train``), what is built before the first step (``prepare``, the model per
method in ``modeling``), the ``TrainingArguments`` mapping (``arguments``), checkpoints and exact resume
(``checkpoint``, ``callbacks``), the run directory (``rundir``, what a resume may change in ``resume_rules``,
its file names in ``layout``), what a run records (``record``), signals, precision and distributed launch."""
