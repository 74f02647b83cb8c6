"""``lora-ft predict`` and ``eval``: use what ``train`` made (a run, an adapter, a merged model), or any
classifier directory, on sentences or on a data split.

torch, transformers and the serving layer are imported inside each command, so that ``lora-ft --help``
stays fast.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import json
import sys
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from lora_ft.cli.adapters import eval_adapters, predict_adapters
from lora_ft.cli.options import (
    PROGRESS_MIN_SENTENCES,
    AdapterOpt,
    BaseOpt,
    BatchOpt,
    DeviceOpt,
    SourceArg,
    ThresholdOpt,
    TrustOpt,
    UseOpt,
    console,
    flag,
    guarded,
)
from lora_ft.cli.tables import prediction_line, print_eval
from lora_ft.data.textlines import (
    PAIR_TABLES,
    chunks,
    read_lines,
    read_pair_lines,
    read_pair_table,
    unzip_pairs,
)
from lora_ft.errors import LoraFtError

if TYPE_CHECKING:
    from lora_ft.config import DataConfig

# predict reads, classifies and prints this many sentences at a time (at least one --batch-size).
STREAM_SENTENCES = 4096


@guarded
def eval_(
    run_or_model: SourceArg,
    data: Annotated[
        str | None,
        typer.Option(
            "--data", "-d", help="Data to evaluate on (as data.name); default: the run's, else rt-sentences."
        ),
    ] = None,
    split: Annotated[
        str,
        typer.Option("--split", help="train | validation | test (no test split: validation, with a note)."),
    ] = "test",
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
    as_json: Annotated[bool, flag("--json", help="Print the metrics (and per-class rows) as JSON.")] = False,
    trust_remote_code: TrustOpt = False,
) -> None:
    """The metrics and loss of a run, adapter or model directory on one data split, by its task: with
    per-class rows and the confusion matrix (single-label) or per-label rows (multi-label).

    With `--adapter NAME=DIR` (repeated), RUN_OR_MODEL is the base model and the table has one row
    per adapter, all on the same split (`--json`: one object keyed by adapter name). `--data` applies to
    every adapter; without it, their runs' data must agree in what decides the split's rows.

    Examples:

        lora-ft eval runs/smoke                          # the run's own test split

        lora-ft eval runs/smoke-merged --split validation

        lora-ft eval ./my-model --data reviews.csv --text-column review --label-column stars

        lora-ft eval minilm-l6 --adapter r4=runs/r4 --adapter r16=runs/r16
    """
    from lora_ft.failures import inference_memory_hint

    if split not in ("train", "validation", "test"):
        raise LoraFtError(f"--split must be train, validation or test, got {split!r}")
    data_config = functools.partial(_data_config, data, text_column, label_column)
    options = dict(split=split, batch_size=batch_size, device=device, trust_remote_code=trust_remote_code)
    if adapter or use is not None:
        with inference_memory_hint(batch_size):
            what, metrics = eval_adapters(run_or_model, adapter, use, base, data_config, **options)
        shown = metrics[use] if use is not None else metrics
    else:
        what, shown = _eval_model(run_or_model, base, data_config, **options)
        metrics = {None: shown}
    if as_json:
        typer.echo(json.dumps(shown))
    else:
        print_eval(what, metrics, console())


def _eval_model(
    source: str,
    base: str | None,
    data_config: Callable[[DataConfig | None], DataConfig | None],
    *,
    split: str,
    batch_size: int,
    device: str,
    trust_remote_code: bool,
) -> tuple[str, dict[str, Any]]:
    """What was evaluated (for the table's title) and its metrics on one split: one run, adapter or model.

    ``data_config(known)`` turns the data the model was trained on (or None) into the data to use.
    """
    from lora_ft.failures import inference_memory_hint
    from lora_ft.serving.artifacts import load_artifact
    from lora_ft.serving.evaluate import evaluate

    artifact = load_artifact(source, base=base, trust_remote_code=trust_remote_code)
    with inference_memory_hint(batch_size):
        metrics = evaluate(
            artifact, data_config(artifact.data), split, batch_size=batch_size, device=device, progress=True
        )
    return artifact.describe(), metrics


def _data_config(
    data: str | None, text_column: str | None, label_column: str | None, known: DataConfig | None
) -> DataConfig | None:
    """``--data`` and its columns, else the known data with the columns overridden, else None."""
    from lora_ft.config import DataConfig  # yaml: loaded once a command runs, not for --help

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


@guarded
def predict(
    run_or_model: SourceArg,
    texts: Annotated[
        list[str] | None, typer.Argument(help='Sentences to classify; "-" reads one per line from stdin.')
    ] = None,
    file: Annotated[
        Path | None, typer.Option("--file", "-f", help="A UTF-8 text file, one sentence per line.")
    ] = None,
    pair: Annotated[
        bool,
        flag(
            "--pair",
            help="For a model of text pairs: the arguments are pairs, TEXT TEXT_PAIR [TEXT TEXT_PAIR ...].",
        ),
    ] = False,
    as_json: Annotated[
        bool,
        flag("--json", help="One JSON object per line: text and the prediction's fields (see above)."),
    ] = False,
    threshold: ThresholdOpt = 0.5,
    base: BaseOpt = None,
    adapter: AdapterOpt = None,
    use: UseOpt = None,
    batch_size: BatchOpt = 64,
    device: DeviceOpt = "auto",
    trust_remote_code: TrustOpt = False,
) -> None:
    # Over 60 lines: its Annotated options (texts, pairs, files, threshold, output); the work is in serving.
    """Classify sentences: one line per sentence, in input order, as the model's task reads its outputs.

    Plain output is tab-separated `label<TAB>probability<TAB>sentence` (single-label),
    `label=probability,...<TAB>sentence` with the labels at or above `--threshold`, most likely first
    ("-" for none; multi-label), or `score<TAB>sentence` (regression). `--json`: `text` and `label`,
    `probability`, `probabilities` (single-label); `labels`, `probabilities` (multi-label); `score`. With `--adapter NAME=DIR`
    (repeated), RUN_OR_MODEL is the base model, loaded once: `--use NAME` prints that adapter's
    predictions as above; without it a header line and then `label<TAB>probability` per adapter,
    then the sentence (`--json`: `{"text", "adapters": {NAME: {label, probability, probabilities}}}`).

    A model trained on text pairs (`data.text_pair_column`, GLUE's MRPC, MNLI, ...) takes pairs:
    `--pair TEXT TEXT_PAIR`, `TEXT<TAB>TEXT_PAIR` lines on stdin (`-`) or in `--file`, or a `--file`
    .csv/.tsv (with a header) or .jsonl holding both of the columns it was trained on; the output
    gains the second text after the first (`--json`: `text_pair`).

    Examples:

        lora-ft predict runs/smoke "a gorgeous, moving film" "tedious and flat"

        lora-ft predict runs/smoke-merged --file reviews.txt --json > predictions.jsonl

        cat reviews.txt | lora-ft predict runs/smoke -

        lora-ft predict runs/mrpc --pair "He left early." "He did not stay long."

        lora-ft predict minilm-l6 --adapter r4=runs/r4 --adapter r16=runs/r16 "tedious and flat"
    """
    from lora_ft.failures import inference_memory_hint
    from lora_ft.serving.artifacts import load_artifact
    from lora_ft.serving.predict import check_threshold, pair_columns

    check_threshold(threshold)
    texts = list(texts or [])
    _check_arguments(texts, file, pair)
    batches = functools.partial(_batches, texts, file, pair, batch_size)
    options = dict(threshold=threshold, batch_size=batch_size, device=device, as_json=as_json)
    if adapter or use is not None:
        lines = predict_adapters(
            run_or_model, adapter, use, base, batches, trust_remote_code=trust_remote_code, **options
        )
    else:
        artifact = load_artifact(run_or_model, base=base, trust_remote_code=trust_remote_code)
        lines = _predict_lines(artifact, batches(pair_columns(artifact)), **options)
    with inference_memory_hint(batch_size):
        for chunk in lines:
            typer.echo("\n".join(chunk))


def _batches(
    texts: list[str], file: Path | None, pair: bool, batch_size: int, columns: tuple[str, str] | None
) -> Iterator[list]:
    """The sentences (pairs, for a model of pairs: ``columns`` names a pair file's columns) in chunks of
    ``STREAM_SENTENCES`` (at least ``batch_size``): read, classified and printed a chunk at a time,
    memory stays bounded however long the input is.

    Raises:
        LoraFtError: there are no sentences at all, or input that does not fit the model (see ``_inputs``).
    """
    batches = chunks(_inputs(texts, file, pair, columns), max(STREAM_SENTENCES, batch_size))
    first = next(batches, None)
    if first is None:
        raise LoraFtError('no sentences to classify; give them as arguments, with --file, or "-" for stdin')
    return itertools.chain([first], batches)


def _predict_lines(
    artifact, batches: Iterable[list], *, threshold: float, batch_size: int, device: str, as_json: bool
) -> Iterator[list[str]]:
    """The output lines of one model, a list per chunk of sentences (or pairs)."""
    from lora_ft.serving.predict import predict as run_predict

    for chunk in batches:
        progress = len(chunk) >= PROGRESS_MIN_SENTENCES
        sentences, text_pairs = unzip_pairs(chunk)
        predictions = run_predict(
            artifact,
            sentences,
            text_pairs=text_pairs,
            threshold=threshold,
            batch_size=batch_size,
            device=device,
            progress=progress,
        )
        yield [prediction_line(p, as_json) for p in predictions]


def _check_arguments(texts: list[str], file: Path | None, pair: bool) -> None:
    """What can be checked before a model is loaded: one source of input, and well-formed arguments."""
    if file is not None and texts:
        raise LoraFtError('give sentences as arguments, with --file, or "-" for stdin; not several at once')
    if file is not None and not file.is_file():
        raise LoraFtError(f"--file {file} not found")
    if texts != ["-"] and "-" in texts:
        raise LoraFtError('"-" (read stdin) must be the only sentence argument')
    if pair and (file is not None or texts == ["-"]):
        raise LoraFtError(
            "--pair is for pairs given as arguments; stdin and --file of a model of pairs are read as pairs "
            "without it: drop --pair"
        )
    if pair and len(texts) % 2:
        raise LoraFtError(
            f"--pair takes the arguments two at a time (TEXT TEXT_PAIR ...), got {len(texts)}; give each "
            "pair's two texts"
        )
    if texts != ["-"]:
        for i, text in enumerate(texts, 1):
            if not text.strip():
                raise LoraFtError(f"sentence argument {i} is empty; give the text to classify")


def _inputs(
    texts: list[str], file: Path | None, pair: bool, columns: tuple[str, str] | None
) -> Iterator[str] | Iterator[tuple[str, str]]:
    """The sentences to classify, streamed: arguments, the lines of ``file``, or of stdin for ``-``; for
    a model of pairs (``columns`` not None), pairs: ``--pair`` arguments, ``text<TAB>text_pair`` lines,
    or the two ``columns`` of a csv/tsv/jsonl ``file``.

    Raises:
        LoraFtError: pairs for a model of single texts, single texts for a model of pairs, or a file
            that does not hold what the model takes (checked whole before anything is printed).
    """
    if columns is None and pair:
        raise LoraFtError("--pair gives text pairs, but this model classifies single texts; drop --pair")
    if file is not None:
        read = functools.partial(_file_inputs, file, columns)
        for _ in read():  # a file can be checked whole first: no output before an error
            pass
        return read()
    if texts == ["-"]:
        stdin = sys.stdin.buffer
        return read_lines(stdin, "stdin") if columns is None else read_pair_lines(stdin, "stdin")
    if columns is not None and not pair:
        raise LoraFtError(
            "this model classifies text pairs; give each as --pair TEXT TEXT_PAIR, or TEXT<TAB>TEXT_PAIR "
            'lines on stdin ("-") or in --file'
        )
    return iter(zip(texts[::2], texts[1::2], strict=True)) if pair else iter(texts)


def _file_inputs(path: Path, columns: tuple[str, str] | None) -> Iterator[str] | Iterator[tuple[str, str]]:
    if columns is not None and path.suffix.lower() in PAIR_TABLES:
        yield from read_pair_table(path, columns)
        return
    with path.open("rb") as f:
        yield from read_lines(f, str(path)) if columns is None else read_pair_lines(f, str(path))
