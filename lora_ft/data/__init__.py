"""Data: the built-in assets (registry, fetch, sha256 verify, extract: ``assets``, ``manifest``), data specs
to a tokenized ``DatasetDict`` (``loading``), label names (``labels``), text-line inputs (``textlines``) and
the evaluation metrics (``metrics``)."""
