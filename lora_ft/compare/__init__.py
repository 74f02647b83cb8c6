"""``lora-ft compare``: the runner (``runner``), one worker process per run (``worker``), the results table
and report (``report``) and its plots (``plots``)."""
