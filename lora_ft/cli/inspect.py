"""``lora-ft inspect``: the rank of what LoRA (and full fine-tuning) learned, module by module.

The serving layer (and through it torch) is imported inside the command, so that ``lora-ft --help``
stays fast.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from lora_ft.cli.options import ForceOpt, TrustOpt, console, guarded
from lora_ft.outputs import check_output_dir


def _table(inspection):
    from rich.table import Table

    updates = inspection.updates
    against = inspection.context.get("against")
    ranks = sorted({u.r for u in updates})
    title = f"ΔW of {inspection.context['adapter']}" + (f" (r={ranks[0]})" if len(ranks) == 1 else "")
    title += f" vs full fine-tuning {against}" if against else ""
    caption = "90/99: effective rank, the fewest singular directions holding 90% / 99% of ‖ΔW‖²_F"
    if against:
        caption += (
            "; overlap: ‖U_LoRAᵀ U_full‖²/k of the top-k output directions, k = LoRA's rank (chance: k/out); "
            "full in LoRA's U: share of full's ‖ΔW‖² inside LoRA's output directions"
        )
    table = Table(title=title, caption=caption)
    table.add_column("module", overflow="fold", min_width=12)
    if len(ranks) > 1:
        table.add_column("r", justify="right")
    table.add_column("LoRA\n90/99", justify="right")
    table.add_column("LoRA\n‖ΔW‖/‖W‖", justify="right")
    if against:
        table.add_column("full\n90/99", justify="right")
        table.add_column("full\n‖ΔW‖/‖W‖", justify="right")
        table.add_column("overlap", justify="right")
        table.add_column("full in\nLoRA's U", justify="right")
    for u in updates:
        row = [u.short_name, *([str(u.r)] if len(ranks) > 1 else [])]
        row += [f"{u.lora.effective_rank(0.9)}/{u.lora.effective_rank(0.99)}", f"{u.lora.rel_norm:.4f}"]
        if against:
            overlap = "—" if u.overlap is None else f"{u.overlap:.2f}"
            row += [
                f"{u.full.effective_rank(0.9)}/{u.full.effective_rank(0.99)}",
                f"{u.full.rel_norm:.4f}",
                overlap,
                "—" if u.captured is None else f"{u.captured:.0%}",
            ]
        table.add_row(*row)
    return table


@guarded
def inspect(
    run: Annotated[
        Path, typer.Argument(help="A LoRA run directory or an adapter directory (ours or PEFT's).")
    ],
    against: Annotated[
        Path | None,
        typer.Option(
            "--against", help="A train.method=full run of the same base: compare its ΔW = W_ft - W_0."
        ),
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option("--out", "-o", help="Directory for inspect.json and the plots (default RUN/inspect)."),
    ] = None,
    base: Annotated[
        str | None,
        typer.Option("--base", help="For adapters: the base model to use instead of the recorded one."),
    ] = None,
    force: ForceOpt = False,
    trust_remote_code: TrustOpt = False,
) -> None:
    """Rank analysis of the learned updates: singular values of each ΔW, effective rank, energy plots.

    For every module LoRA wrapped: ΔW = B·A·scaling, its singular values, its effective rank at 90% and
    99% of the energy (Σσ²), and ‖ΔW‖_F / ‖W‖_F. With --against, the same for full fine-tuning's
    ΔW = W_ft - W_0, and the overlap of the two updates' top-k output subspaces (1: the same directions;
    k/out: chance). Writes inspect.json and PNG plots.

    Examples:

        lora-ft inspect runs/demo

        lora-ft inspect runs/demo --against runs/full --out docs/inspect-demo

        lora-ft inspect ./peft-adapter --base ./my-base-model --force
    """
    from lora_ft.serving.inspect import default_out, write_inspection
    from lora_ft.serving.inspect import inspect as run_inspect

    out_dir = out or default_out(run)
    # Before the models load: a taken --out fails at once, and a report never replaces what it reads.
    check_output_dir(out_dir, force, [p for p in (run, against) if p is not None])
    inspection = run_inspect(run, against, base=base, trust_remote_code=trust_remote_code)
    paths = write_inspection(inspection, out_dir, force=force)
    output = console()
    output.print(_table(inspection))
    output.print(f"wrote {', '.join(str(p) for p in paths)}")
