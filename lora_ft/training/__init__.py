"""Training: building the model per method (``modeling``), the ``Trainer`` wiring (``train``), checkpoints
and exact resume (``checkpoint``, ``callbacks``), the run directory (``rundir``, its file names in ``layout``),
signals, precision and distributed launch."""
