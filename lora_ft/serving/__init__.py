"""Serving a finished run: what a path is and loading it (``artifacts``), predict and eval (``predict``), several
adapters on one base (``multi``), merge + verify + export (``export``), and ``inspect`` with its rank plots."""
