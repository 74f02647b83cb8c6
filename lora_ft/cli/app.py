"""The ``lora-ft`` command line: the Typer app, its root options, and every command registered here,
explicitly, from the module that defines it. Parsing and printing only; the work is in the package.

No command module imports this one: the shared options and ``guarded`` live in ``cli.options``.
"""

from __future__ import annotations

import logging
import platform
import sys
from importlib import metadata
from typing import Annotated

import typer

from lora_ft import __version__
from lora_ft.cli import compare, configs, export, inspect, predict, train
from lora_ft.cli.options import STATE, Command, Group, console, flag

app = typer.Typer(
    cls=Group,
    name="lora-ft",
    help="Fine-tune Hugging Face classifiers with LoRA, compare against full fine-tuning, export merged models.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    rich_markup_mode="markdown",
)

# In the order --help lists them.
app.command(cls=Command)(train.train)
app.command(cls=Command)(train.targets)
app.command(cls=Command)(train.fetch)
app.command(cls=Command)(compare.compare)
app.command(cls=Command)(export.merge)
app.command("eval", cls=Command)(predict.eval_)
app.command(cls=Command)(predict.predict)
app.command(cls=Command)(inspect.inspect)


# What --version reports besides lora-ft: the libraries that decide a run, and peft where installed.
VERSION_OF = ("torch", "transformers", "datasets", "accelerate")
OPTIONAL_VERSION_OF = ("peft",)


def version_line() -> str:
    """``lora-ft 0.1.0 (Python 3.11.7; torch 2.13.0+cpu, transformers 5.24.0, ...)``: the line for a bug
    report, read from the installed distributions' metadata, so no library is imported."""
    found = []
    for name in (*VERSION_OF, *OPTIONAL_VERSION_OF):
        try:
            found.append(f"{name} {metadata.version(name)}")
        except metadata.PackageNotFoundError:
            if name not in OPTIONAL_VERSION_OF:
                found.append(f"{name} not installed")
    return f"lora-ft {__version__} (Python {platform.python_version()}; {', '.join(found)})"


def _print_version(value: bool) -> None:
    if value:
        typer.echo(version_line())
        raise typer.Exit()


# `lora-ft configs` lists (its callback, run when no subcommand is given); `show` and `cp` act on one.
configs_app = typer.Typer(cls=Group, rich_markup_mode=app.rich_markup_mode)
configs_app.callback(invoke_without_command=True)(configs.list_)
configs_app.command(cls=Command)(configs.show)
configs_app.command(cls=Command)(configs.cp)
app.add_typer(configs_app, name="configs")


@app.callback()
def _root(
    debug: Annotated[bool, flag("--debug", help="Show full tracebacks on errors.")] = False,
    verbose: Annotated[bool, flag("--verbose", "-v", help="More log output.")] = False,
    version: Annotated[
        bool,
        flag(
            "--version",
            help="Print the versions of lora-ft, Python and the libraries it runs on, and exit.",
            callback=_print_version,
            is_eager=True,
        ),
    ] = False,
) -> None:
    STATE["debug"] = debug
    from rich.logging import RichHandler  # only once a command runs, not for --help

    logging.basicConfig(
        level=logging.DEBUG if debug else logging.INFO if verbose else logging.WARNING,
        format="%(message)s",
        handlers=[RichHandler(console=console(stderr=True), show_path=False, show_time=False)],
        force=True,
    )


def main() -> None:
    """Console-script entry point."""
    try:
        app(prog_name="lora-ft")
    finally:
        # Under torchrun/accelerate: leave the process group before the interpreter exits. A command that
        # never loaded torch.distributed (--help, fetch) joined none, and importing torch to say so costs seconds.
        if "torch.distributed" in sys.modules:
            from lora_ft.training.distributed import shutdown

            shutdown()


if __name__ == "__main__":
    main()
