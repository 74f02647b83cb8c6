"""``lora-ft configs``: the configs that ship with lora-ft, listed, shown and copied (torchtune's
``tune ls`` / ``tune cp``), so that a pip install starts from the same recipes as a checkout.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from lora_ft.cli.options import guarded

NameArg = Annotated[str, typer.Argument(help="A shipped config's name, e.g. default or smoke.")]


@guarded
def list_(ctx: typer.Context) -> None:
    """The configs that ship with lora-ft: each one's name and what it is for.

    A name works wherever a config file does (a file of yours at that path wins).

    Examples:

        lora-ft configs

        lora-ft configs show smoke

        lora-ft configs cp default my.yaml              # then edit it: lora-ft train my.yaml

        lora-ft train smoke --out runs/smoke            # the shipped configs/smoke.yaml
    """
    from lora_ft.config.shipped import describe, shipped_configs

    if ctx.invoked_subcommand is not None:
        return
    found = shipped_configs()
    width = max(map(len, found))
    for name, path in found.items():
        typer.echo(f"{name:<{width}}  {describe(path)}")


@guarded
def show(name: NameArg) -> None:
    """Print a shipped config, comments and all.

    Examples:

        lora-ft configs show default
    """
    from lora_ft.config.shipped import shipped_text

    typer.echo(shipped_text(name), nl=False)


@guarded
def cp(
    name: NameArg,
    dest: Annotated[
        Path,
        typer.Argument(help="The file to write, or a directory to write NAME.yaml into; never replaced."),
    ],
) -> None:
    """Copy a shipped config to edit; an existing file is never replaced.

    Examples:

        lora-ft configs cp default my.yaml

        lora-ft configs cp smoke experiments/
    """
    from lora_ft.config.shipped import copy_shipped

    written = copy_shipped(name, dest)
    typer.echo(f"wrote {written}; run it with: lora-ft train {written}")
