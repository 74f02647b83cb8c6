"""``lora-ft merge``: fold a LoRA adapter into its base model and write a plain Hugging Face checkpoint,
verified before anything is written.

torch, transformers and the serving layer are imported inside the command, so that ``lora-ft --help``
stays fast.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from lora_ft.cli.options import BaseOpt, ForceOpt, SourceArg, TrustOpt, console, guarded


@guarded
def merge(
    run_or_adapter: SourceArg,
    out: Annotated[Path, typer.Option("--out", "-o", help="Directory for the merged checkpoint.")],
    dtype: Annotated[
        str,
        typer.Option("--dtype", help="Saved precision: float32 | float16 | bfloat16 (drift is measured)."),
    ] = "float32",
    base: BaseOpt = None,
    probe: Annotated[int, typer.Option("--probe", help="Sentences in the verification batch.")] = 64,
    force: ForceOpt = False,
    trust_remote_code: TrustOpt = False,
) -> None:
    """Fold a LoRA adapter into its base model, verify, and write a plain Hugging Face checkpoint.

    The merge is verified before anything is written: on a probe batch of the run's validation
    sentences (or built-in ones) the merged model must match the adapter model to max |Δlogit| ≤ 1e-4
    with identical predictions. The result loads with `AutoModelForSequenceClassification.from_pretrained`.

    Examples:

        lora-ft merge runs/smoke --out runs/smoke-merged

        lora-ft merge runs/smoke/adapter --out merged-bf16 --dtype bfloat16

        lora-ft merge ./peft-adapter --base ./my-base-model --out merged --force
    """
    from lora_ft.serving.export import TOLERANCE, export_merged

    report = export_merged(
        run_or_adapter,
        out,
        base=base,
        dtype=dtype,
        force=force,
        probe_size=probe,
        trust_remote_code=trust_remote_code,
    )
    output = console()
    output.print(f"probe: {report.probe_source}")
    accuracy = f", probe accuracy {report.accuracy:.4f}" if report.accuracy is not None else ""
    output.print(
        f"float32 merge vs adapter: max |Δlogit| {report.max_abs_logit_diff:.2e} (limit {TOLERANCE:g}), "
        f"predictions identical{accuracy}"
    )
    if report.drift is not None:
        d = report.drift
        accuracy = f", probe accuracy {d['accuracy']:.4f}" if d["accuracy"] is not None else ""
        output.print(
            f"{report.dtype} vs float32: max |Δlogit| {d['max_abs_logit_diff']:.2e}, predictions agree on "
            f"{d['agreement']:.1%}{accuracy}"
        )
    output.print(f"wrote {report.out}")
