"""``lora-ft merge``, ``eval`` and ``predict``: use what ``train`` made, or any classifier directory."""

from __future__ import annotations

import dataclasses
import itertools
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated

import typer

from lora_ft.cli.app import TrustOpt, app, guarded
from lora_ft.errors import LoraFtError

# Below this many sentences a progress bar would only flicker.
PROGRESS_MIN_SENTENCES = 1000
# predict reads, classifies and prints this many sentences at a time (at least one --batch-size).
STREAM_SENTENCES = 4096

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


def _console():
    from rich.console import Console

    return Console(soft_wrap=True)


@app.command()
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
    force: Annotated[
        bool, typer.Option("--force", help="Replace --out if it exists and is an output lora-ft wrote.")
    ] = False,
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
    console = _console()
    console.print(f"probe: {report.probe_source}")
    accuracy = f", probe accuracy {report.accuracy:.4f}" if report.accuracy is not None else ""
    console.print(
        f"float32 merge vs adapter: max |Δlogit| {report.max_abs_logit_diff:.2e} (limit {TOLERANCE:g}), "
        f"predictions identical{accuracy}"
    )
    if report.drift is not None:
        d = report.drift
        accuracy = f", probe accuracy {d['accuracy']:.4f}" if d["accuracy"] is not None else ""
        console.print(
            f"{report.dtype} vs float32: max |Δlogit| {d['max_abs_logit_diff']:.2e}, predictions agree on "
            f"{d['agreement']:.1%}{accuracy}"
        )
    console.print(f"wrote {report.out}")


@app.command("eval")
@guarded
def eval_(
    run_or_model: SourceArg,
    data: Annotated[
        str | None,
        typer.Option(
            "--data", "-d", help="Data to evaluate on (as data.name); default: the run's, else rt-sentences."
        ),
    ] = None,
    split: Annotated[str, typer.Option("--split", help="train | validation | test.")] = "test",
    text_column: Annotated[
        str | None, typer.Option("--text-column", help="Sentence column of --data.")
    ] = None,
    label_column: Annotated[
        str | None, typer.Option("--label-column", help="Label column of --data.")
    ] = None,
    base: BaseOpt = None,
    adapter: AdapterOpt = None,
    use: UseOpt = None,
    batch_size: BatchOpt = 64,
    device: DeviceOpt = "auto",
    as_json: Annotated[bool, typer.Option("--json", help="Print the metrics as one JSON object.")] = False,
    trust_remote_code: TrustOpt = False,
) -> None:
    """Accuracy, F1 and loss of a run, adapter or model directory on one data split.

    With `--adapter NAME=DIR` (repeated), RUN_OR_MODEL is the base model and the table has one row
    per adapter, all on the same split (`--json`: one object keyed by adapter name).

    Examples:

        lora-ft eval runs/smoke                          # the run's own test split

        lora-ft eval runs/smoke-merged --split validation

        lora-ft eval ./my-model --data reviews.csv --text-column review --label-column stars

        lora-ft eval minilm-l6 --adapter r4=runs/r4 --adapter r16=runs/r16
    """
    from lora_ft.failures import inference_memory_hint
    from lora_ft.serving.artifacts import load_artifact
    from lora_ft.serving.predict import evaluate

    if split not in ("train", "validation", "test"):
        raise LoraFtError(f"--split must be train, validation or test, got {split!r}")
    if adapter or use is not None:
        from lora_ft.cli.adapters import eval_adapters

        def data_config(known):
            return _data_config(data, text_column, label_column, known)

        options = dict(split=split, batch_size=batch_size, device=device, as_json=as_json)
        with inference_memory_hint(batch_size):
            eval_adapters(
                run_or_model, adapter, use, base, data_config, trust_remote_code=trust_remote_code, **options
            )
        return
    artifact = load_artifact(run_or_model, base=base, trust_remote_code=trust_remote_code)
    cfg = _data_config(data, text_column, label_column, artifact.data)
    with inference_memory_hint(batch_size):
        metrics = evaluate(artifact, cfg, split, batch_size=batch_size, device=device, progress=True)
    if as_json:
        typer.echo(json.dumps(metrics))
        return
    from rich.table import Table

    table = Table(title=f"{artifact.describe()}: {metrics['split']} split of {metrics['data']}")
    for column in ("samples", "accuracy", "F1", "loss"):
        table.add_column(column, justify="right")
    table.add_row(
        str(metrics["samples"]),
        f"{metrics['accuracy']:.4f}",
        f"{metrics['f1']:.4f}",
        f"{metrics['loss']:.4f}",
    )
    _console().print(table)


def _data_config(data: str | None, text_column: str | None, label_column: str | None, known):
    """``--data`` and its columns, else the known data with the columns overridden, else None."""
    from lora_ft.config import DataConfig

    if data is not None:
        return DataConfig(
            name=data, text_column=text_column or "sentence", label_column=label_column or "label"
        )
    if text_column or label_column:
        known = known or DataConfig()
        return dataclasses.replace(
            known,
            text_column=text_column or known.text_column,
            label_column=label_column or known.label_column,
        )
    return None


def _inputs(texts: list[str], file: Path | None) -> Iterator[str]:
    """The sentences to classify, streamed: arguments, the lines of ``file``, or of stdin for ``-``."""
    from lora_ft.data.textlines import read_lines

    if file is not None and texts:
        raise LoraFtError('give sentences as arguments, with --file, or "-" for stdin; not several at once')
    if file is not None:
        if not file.is_file():
            raise LoraFtError(f"--file {file} not found")
        with file.open("rb") as f:
            for _ in read_lines(f, str(file)):  # a file can be checked whole first: no output before an error
                pass
        return _file_lines(file)
    if texts == ["-"]:
        return read_lines(sys.stdin.buffer, "stdin")
    if "-" in texts:
        raise LoraFtError('"-" (read stdin) must be the only sentence argument')
    for i, text in enumerate(texts, 1):
        if not text.strip():
            raise LoraFtError(f"sentence argument {i} is empty; give the text to classify")
    return iter(texts)


def _file_lines(path: Path) -> Iterator[str]:
    from lora_ft.data.textlines import read_lines

    with path.open("rb") as f:
        yield from read_lines(f, str(path))


@app.command()
@guarded
def predict(
    run_or_model: SourceArg,
    texts: Annotated[
        list[str] | None, typer.Argument(help='Sentences to classify; "-" reads one per line from stdin.')
    ] = None,
    file: Annotated[
        Path | None, typer.Option("--file", "-f", help="A UTF-8 text file, one sentence per line.")
    ] = None,
    as_json: Annotated[
        bool,
        typer.Option("--json", help="One JSON object per line: text, label, probability, probabilities."),
    ] = False,
    base: BaseOpt = None,
    adapter: AdapterOpt = None,
    use: UseOpt = None,
    batch_size: BatchOpt = 64,
    device: DeviceOpt = "auto",
    trust_remote_code: TrustOpt = False,
) -> None:
    """Classify sentences: the label and its probability, one line per sentence, in input order.

    Plain output is tab-separated `label<TAB>probability<TAB>sentence`. With `--adapter NAME=DIR`
    (repeated), RUN_OR_MODEL is the base model, loaded once: `--use NAME` prints that adapter's
    predictions as above; without it a header line and then `label<TAB>probability` per adapter,
    then the sentence (`--json`: `{"text", "adapters": {NAME: {label, probability, probabilities}}}`).

    Examples:

        lora-ft predict runs/smoke "a gorgeous, moving film" "tedious and flat"

        lora-ft predict runs/smoke-merged --file reviews.txt --json > predictions.jsonl

        cat reviews.txt | lora-ft predict runs/smoke -

        lora-ft predict minilm-l6 --adapter r4=runs/r4 --adapter r16=runs/r16 "tedious and flat"
    """
    from lora_ft.data.textlines import chunks
    from lora_ft.failures import inference_memory_hint
    from lora_ft.serving.artifacts import load_artifact
    from lora_ft.serving.predict import predict as run_predict

    # Read, classify and print a chunk at a time: memory stays bounded however long the input is.
    batches = chunks(_inputs(list(texts or []), file), max(STREAM_SENTENCES, batch_size))
    first = next(batches, None)
    if first is None:
        raise LoraFtError('no sentences to classify; give them as arguments, with --file, or "-" for stdin')
    batches = itertools.chain([first], batches)
    if adapter or use is not None:
        from lora_ft.cli.adapters import predict_adapters

        options = dict(batch_size=batch_size, device=device, as_json=as_json)
        with inference_memory_hint(batch_size):
            for lines in predict_adapters(
                run_or_model, adapter, use, base, batches, trust_remote_code=trust_remote_code, **options
            ):
                typer.echo("\n".join(lines))
        return
    artifact = load_artifact(run_or_model, base=base, trust_remote_code=trust_remote_code)
    with inference_memory_hint(batch_size):
        for chunk in batches:
            predictions = run_predict(
                artifact,
                chunk,
                batch_size=batch_size,
                device=device,
                progress=len(chunk) >= PROGRESS_MIN_SENTENCES,
            )
            typer.echo("\n".join(prediction_line(p, as_json) for p in predictions))


def prediction_line(p, as_json: bool) -> str:
    """One output line of ``predict``: JSON (the whole text), or ``label<TAB>probability<TAB>sentence``
    (the sentence cut to ``textlines.ECHO_CHARS`` characters)."""
    from lora_ft.data.textlines import shorten

    if as_json:
        return json.dumps(
            {
                "text": p.text,
                "label": p.label,
                "probability": p.probability,
                "probabilities": p.probabilities,
            },
            ensure_ascii=False,
        )
    return f"{p.label}\t{p.probability:.4f}\t{shorten(p.text)}"
