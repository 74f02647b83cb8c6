"""``predict``/``eval`` with ``--adapter NAME=DIR ...``: several adapters on one base, loaded once.

Registers no command of its own: ``commands/export.py`` hands its ``--adapter`` options here.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator

import typer

from lora_ft.errors import LoraFtError


def _adapter_set(
    base_name: str, specs: list[str] | None, use: str | None, base: str | None, trust_remote_code: bool
):
    from lora_ft.serving.multi import load_adapter_set, parse_adapter_specs

    if base is not None:
        raise LoraFtError(
            "--base applies to a single adapter; with --adapter, RUN_OR_MODEL is the base model itself"
        )
    if not specs:
        raise LoraFtError("--use picks one of the --adapter NAME=DIR adapters; give --adapter too")
    adapters = parse_adapter_specs(specs)
    if use is not None and use not in adapters:
        raise LoraFtError(f"--use {use}: no adapter of that name; give one of: {', '.join(adapters)}")
    aset = load_adapter_set(base_name, adapters, trust_remote_code=trust_remote_code)
    return aset, [use] if use is not None else aset.adapters


def predict_adapters(
    base_name: str,
    specs: list[str] | None,
    use: str | None,
    base: str | None,
    batches: Iterable[list[str]],
    *,
    batch_size: int,
    device: str,
    as_json: bool,
    trust_remote_code: bool = False,
) -> Iterator[list[str]]:
    """The output lines, a list per chunk of sentences: with ``use`` exactly single-adapter ``predict``'s,
    else a header and then one column pair per adapter."""
    from lora_ft.cli.export import PROGRESS_MIN_SENTENCES, prediction_line
    from lora_ft.data.textlines import shorten
    from lora_ft.serving.multi import predict_each

    aset, names = _adapter_set(base_name, specs, use, base, trust_remote_code)
    if use is None and not as_json:
        yield ["\t".join([*(f"{n}.{col}" for n in names for col in ("label", "probability")), "sentence"])]
    for sentences in batches:
        progress = len(sentences) >= PROGRESS_MIN_SENTENCES
        results = predict_each(
            aset, sentences, names, batch_size=batch_size, device=device, progress=progress
        )
        if use is not None:
            yield [prediction_line(p, as_json) for p in results[use]]
            continue
        rows = list(zip(*results.values(), strict=True))  # per sentence: one Prediction per adapter
        if as_json:
            yield [
                json.dumps(
                    {
                        "text": row[0].text,
                        "adapters": {
                            n: {
                                "label": p.label,
                                "probability": p.probability,
                                "probabilities": p.probabilities,
                            }
                            for n, p in zip(names, row, strict=True)
                        },
                    },
                    ensure_ascii=False,
                )
                for row in rows
            ]
        else:
            yield [
                "\t".join([*(f"{p.label}\t{p.probability:.4f}" for p in row), shorten(row[0].text)])
                for row in rows
            ]


def eval_adapters(
    base_name: str,
    specs: list[str] | None,
    use: str | None,
    base: str | None,
    data_config,
    *,
    split: str,
    batch_size: int,
    device: str,
    as_json: bool,
    trust_remote_code: bool = False,
) -> None:
    """Every adapter's (or ``use``'s) metrics on one split: a table, or JSON keyed by adapter name.

    ``data_config(known)`` turns the adapters' common training data (or None) into the data to use.
    """
    from rich.console import Console
    from rich.table import Table

    from lora_ft.serving.multi import common_data, evaluate_each

    aset, names = _adapter_set(base_name, specs, use, base, trust_remote_code)
    known = common_data(aset, names)
    cfg = data_config(known) or known
    metrics = evaluate_each(aset, cfg, split, names, batch_size=batch_size, device=device, progress=True)
    if as_json:
        typer.echo(json.dumps(metrics[use] if use is not None else metrics))
        return
    first = next(iter(metrics.values()))
    table = Table(title=f"adapters on {aset.base_name}: {first['split']} split of {first['data']}")
    for column in ("adapter", "samples", "accuracy", "F1", "loss"):
        table.add_column(column, justify="left" if column == "adapter" else "right")
    for name, m in metrics.items():
        table.add_row(name, str(m["samples"]), f"{m['accuracy']:.4f}", f"{m['f1']:.4f}", f"{m['loss']:.4f}")
    Console(soft_wrap=True).print(table)
