"""What every command shares: the options that mean the same everywhere (``ConfigArg``, ``SetOpt``,
``TrustOpt``, ``ForceOpt``, the serving options of ``eval``/``predict``), ``flag`` for on/off options and
the command classes that show ``--help`` as one, ``guarded`` (any error as one line and an exit code),
the ``--debug`` switch it reads, and the rich console the output goes to."""

from __future__ import annotations

import functools
import logging
import traceback
from pathlib import Path
from typing import Annotated

import typer
from typer.core import TyperCommand, TyperGroup

from lora_ft.errors import LoraFtError, first_line

log = logging.getLogger("lora_ft")

STATE = {"debug": False}  # set by the app's root callback before any command runs
# Below this many sentences a progress bar would only flicker.
PROGRESS_MIN_SENTENCES = 1000
# The width of stdout when it is a file or a pipe: more than any table we print, so that none is cut to
# rich's 80-column default ("5.0e-…"). Tables take their natural width; nothing pads to this.
PIPED_WIDTH = 1000


def flag(*names: str, help: str, **options):
    """An on/off option: given or not, no value. Typer's help would show such an option's type, ``<bool>``,
    as if it took one; an empty metavar leaves the type column blank. ``options`` go to ``typer.Option``."""
    return typer.Option(*names, help=help, metavar="", **options)


class _HelpIsAFlag:
    """``--help`` shown as the flag it is, like ``flag``'s options (Typer's own shows ``<bool>``)."""

    def get_help_option(self, ctx):
        option = super().get_help_option(ctx)
        if option is not None:
            option.metavar = ""
        return option


class Command(_HelpIsAFlag, TyperCommand):
    """Each lora-ft command (``app.command(cls=Command)``)."""


class Group(_HelpIsAFlag, TyperGroup):
    """The lora-ft app (``typer.Typer(cls=Group)``)."""


ConfigArg = Annotated[
    Path | None,
    typer.Argument(
        help="YAML run config, or the name of one lora-ft ships (lora-ft configs lists them); omit for the "
        "built-in defaults, the recipe of configs/default.yaml."
    ),
]
SetOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--set",
        "-s",
        help="Override a config key, typed: `--set lora.r=16 --set lora.targets=[query,value]`.",
    ),
]
TrustOpt = Annotated[
    bool,
    flag(
        "--trust-remote-code",
        help="Run the Python a model directory ships (auto_map in its config.json). Only this command line "
        "grants it: a config file, a saved run or an adapter never does.",
    ),
]
ForceOpt = Annotated[bool, flag("--force", help="Replace --out if it exists and is an output lora-ft wrote.")]
SourceArg = Annotated[
    str,
    typer.Argument(
        help="A run directory, an adapter directory (ours or PEFT's) or a model directory (e.g. a merged export)."
    ),
]
BaseOpt = Annotated[
    str | None,
    typer.Option(
        "--base", help="For adapters: the base model to use instead of the one the adapter records."
    ),
]
BatchOpt = Annotated[int, typer.Option("--batch-size", "-b", help="Sentences per forward pass.")]
AdapterOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--adapter",
        "-a",
        help="NAME=DIR: an adapter (or run) directory to serve on the base model RUN_OR_MODEL names; "
        "repeat for several. The base loads once and every adapter sees the same sentences.",
    ),
]
UseOpt = Annotated[str | None, typer.Option("--use", help="With --adapter: only this adapter.")]
DeviceOpt = Annotated[str, typer.Option("--device", help="auto (CUDA when available) | cpu | cuda.")]
ThresholdOpt = Annotated[
    float,
    typer.Option("--threshold", help="Multi-label: print the labels with probability >= this, in (0, 1)."),
]


def console(stderr: bool = False):
    """The rich console commands print to (stdout, or stderr for logs), soft-wrapped so that piped
    output keeps its lines whole; stdout that is not a terminal is ``PIPED_WIDTH`` wide, so tables keep
    every number whole. Logs keep rich's width: their handler pads each line to it."""
    from rich.console import Console  # rich's console is only needed once a command runs, not for --help

    out = Console(stderr=stderr, soft_wrap=True)
    if not stderr and not out.is_terminal:
        out.width = PIPED_WIDTH
    return out


def guarded(fn):
    """Turn a LoraFtError into ``error: <one line>`` and its exit code; other errors likewise, unless --debug."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except LoraFtError as exc:
            if STATE["debug"]:
                raise
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(exc.exit_code) from None
        except KeyboardInterrupt:
            typer.echo("error: interrupted", err=True)
            raise typer.Exit(130) from None
        except (typer.Exit, typer.Abort, SystemExit):
            raise
        except Exception as exc:  # a bug or an unexpected library error: one line, the trace on request
            if STATE["debug"]:
                raise
            typer.echo(
                f"error: {type(exc).__name__}: {first_line(exc)} (rerun with --debug for the traceback)",
                err=True,
            )
            log.debug("%s", traceback.format_exc())
            raise typer.Exit(1) from None

    return wrapper
