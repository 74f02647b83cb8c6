"""The command line (Typer). ``app`` makes the app and registers every command explicitly; ``options``
holds what the commands share (options, ``guarded``, the console); one module per command group
(``train``: train/targets/fetch, ``compare``, ``export``: merge, ``predict``: predict/eval, ``inspect``),
``adapters`` for predict/eval over several adapters, and ``tables`` for what they print. Thin: parsing
and printing; the work is in the layers below."""
