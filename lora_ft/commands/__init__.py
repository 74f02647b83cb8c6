"""Command groups beyond train/targets/fetch: each module here registers its commands on ``cli.app``.

A module does ``from lora_ft.cli import app, guarded`` and decorates its functions; ``cli`` imports
every module in this package once the app exists. Heavy imports stay inside the command functions so
``lora-ft --help`` is fast.
"""
