"""The command line (Typer): the app and its core commands (``app``), one module per command group, and
terminal tables (``tables``). Thin: parsing and printing; the work is in the layers below."""
