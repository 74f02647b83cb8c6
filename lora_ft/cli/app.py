"""The ``lora-ft`` command line: the Typer app, its root options, and every command registered here,
explicitly, from the module that defines it. Parsing and printing only; the work is in the package.

No command module imports this one: the shared options and ``guarded`` live in ``cli.options``.
"""

from __future__ import annotations

import logging
import sys
from typing import Annotated

import typer

from lora_ft.cli import compare, configs, export, inspect, predict, train
from lora_ft.cli.options import STATE, console

app = typer.Typer(
    name="lora-ft",
    help="Fine-tune Hugging Face classifiers with LoRA, compare against full fine-tuning, export merged models.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    rich_markup_mode="markdown",
)

# In the order --help lists them.
app.command()(train.train)
app.command()(train.targets)
app.command()(train.fetch)
app.command()(compare.compare)
app.command()(export.merge)
app.command("eval")(predict.eval_)
app.command()(predict.predict)
app.command()(inspect.inspect)

# `lora-ft configs` lists (its callback, run when no subcommand is given); `show` and `cp` act on one.
configs_app = typer.Typer(rich_markup_mode=app.rich_markup_mode)
configs_app.callback(invoke_without_command=True)(configs.list_)
configs_app.command()(configs.show)
configs_app.command()(configs.cp)
app.add_typer(configs_app, name="configs")


@app.callback()
def _root(
    debug: Annotated[bool, typer.Option("--debug", help="Show full tracebacks on errors.")] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="More log output.")] = False,
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
