"""``lora-ft compare``: LoRA vs full fine-tuning vs head-only under one budget, one report.

The compare layer (and through it torch) is imported inside the command, so that ``lora-ft --help``
stays fast.
"""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Annotated

import typer

from lora_ft.cli.options import ConfigArg, SetOpt, TrustOpt, console, flag, guarded
from lora_ft.errors import LoraFtError


@guarded
def compare(
    config: ConfigArg = None,
    methods: Annotated[
        str,
        typer.Option(
            "--methods",
            "-m",
            help="Comma-separated methods to train: lora, full, head, and the LoRA variants dora, rslora, "
            "gaussian, lora-all (LoRA with lora.use_dora / lora.rslora / lora.init=gaussian / "
            "lora.targets=all-linear, at LoRA's learning rate).",
        ),
    ] = "lora,full,head",
    seeds: Annotated[
        int, typer.Option("--seeds", help="Seeds per method (train.seed, +1, ...); N > 1 gives mean ± std.")
    ] = 1,
    data: Annotated[
        str | None,
        typer.Option(
            "--data",
            "-d",
            help="Compare on several tasks: comma-separated data names or paths (rt-sentences,rt-ratings,"
            "glue/cola); each task's comparison goes to DIR/TASK/ and one table of their primary metrics "
            "to DIR/report.md. Default: data.name (which may list several the same way).",
        ),
    ] = None,
    ranks: Annotated[
        str | None,
        typer.Option("--ranks", help="Sweep the LoRA rank, e.g. 1,2,4,8,16 (alpha/r kept as in the config)."),
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option(
            "--out",
            "-o",
            help="Comparison directory (default runs/compare-CONFIG, CONFIG the config file name).",
        ),
    ] = None,
    set_: SetOpt = None,
    force: Annotated[
        bool,
        flag("--force", help="Retrain runs that already finished in --out instead of reusing them."),
    ] = False,
    trust_remote_code: TrustOpt = False,
) -> None:
    # Over 60 lines: its Annotated options and the --help text with examples; the work is in compare.runner.
    """Train each method on the same data, seeds and budget, each in its own process; report side by side.

    Every method uses its own learning rate from `train.learning_rates`. The report (terminal, DIR/report.md,
    DIR/results.json, PNG plots) gives accuracy, F1 and loss, trainable parameters, train time, samples/s,
    peak and training memory, optimizer-state size and the size of what must be shipped, each next to full
    fine-tuning's. Finished runs in DIR are reused, so an interrupted comparison resumes where it stopped.

    Examples:

        lora-ft compare configs/compare.yaml --out runs/compare

        lora-ft compare configs/compare.yaml --methods lora,full --seeds 3

        lora-ft compare configs/compare.yaml --methods lora,dora,rslora

        lora-ft compare configs/smoke.yaml --ranks 1,2,4,8,16 --set train.epochs=2 --force

        lora-ft compare configs/compare.yaml --data rt-sentences,rt-ratings,disaster-response-genre
    """
    from lora_ft.compare.display import compare_progress, print_comparison, print_tasks_comparison
    from lora_ft.compare.runner import compare as run_compare
    from lora_ft.compare.runner import parse_methods, parse_ranks
    from lora_ft.compare.tasks import compare_tasks, parse_tasks
    from lora_ft.config import load_config

    cfg = load_config(config, list(set_ or []), trust_remote_code=trust_remote_code)
    method_list = parse_methods(methods)
    rank_list = parse_ranks(ranks) if ranks else None
    tasks = parse_tasks(data or cfg.data.name)
    if data is not None and len(tasks) == 1:
        cfg.data.name = tasks[0]
    out_dir = out or Path("runs") / f"compare-{Path(config).stem if config else 'default'}"
    command = _command_line(config, method_list, seeds, rank_list, out_dir, set_, trust_remote_code, data)
    options = {"methods": method_list, "seeds": seeds, "ranks": rank_list, "force": force}
    output = console()
    with compare_progress(output) as progress:
        if len(tasks) > 1:
            result = compare_tasks(cfg, out_dir, tasks, progress=progress, command=command, **options)
        else:
            result = run_compare(cfg, out_dir, progress=progress, command=command, **options)
    if len(tasks) > 1:
        print_tasks_comparison(result, output)
        failed, total = [f"{t} {r.spec.name}" for t, r in result.failed], result.total_runs
    else:
        print_comparison(result, output)
        failed, total = [r.spec.name for r in result.failed], len(result.results)
    if failed:
        raise LoraFtError(
            f"{len(failed)} of {total} runs failed ({', '.join(failed)}); "
            f"{result.out / 'report.md'} says why, and a rerun retries only them"
        )


def _command_line(
    config: Path | None,
    methods: list[str],
    seeds: int,
    ranks: list[int] | None,
    out: Path,
    set_: list[str] | None,
    trust_remote_code: bool,
    data: str | None = None,
) -> str:
    """The command that reproduces the comparison, for its report: spelled out whatever the user abbreviated."""
    words = ["lora-ft", "compare", *([str(config)] if config else []), *(["--data", data] if data else [])]
    words += ["--methods", ",".join(methods)]
    words += ["--seeds", str(seeds), *(["--ranks", ",".join(map(str, ranks))] if ranks else [])]
    words += ["--out", str(out), *(w for s in set_ or [] for w in ("--set", s))]
    words += ["--trust-remote-code"] if trust_remote_code else []
    return shlex.join(words)
