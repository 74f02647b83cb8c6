"""Data: the built-in assets (``assets/``: registry, download and sha256 verify, safe extraction,
preparation, the cache; ``manifest`` checks a prepared directory), a data spec read into splits
(``sources``) and validated into a ``DatasetDict`` (``loading``), tokenization with its cache
(``tokenization``), label names (``labels``), text-line inputs (``textlines``) and the evaluation
metrics (``metrics``)."""
