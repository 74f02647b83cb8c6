"""``lora-ft compare``: the runner (``runner``), one worker process per run (``worker``, started and
watched by ``process``), the runs' results and per-method rows (``results``), the report files
(``report``) with their plots (``plots``), and the terminal display (``display``)."""
