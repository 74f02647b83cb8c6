"""``predict``/``eval`` with ``--adapter NAME=DIR ...``: several adapters on one base, loaded once.

Registers no command of its own: ``cli/predict.py`` hands its ``--adapter`` options here. The serving
layer (torch) is imported inside each function, so that ``lora-ft --help`` stays fast.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any

from lora_ft.cli.options import PROGRESS_MIN_SENTENCES
from lora_ft.cli.tables import adapters_header, adapters_line, prediction_line
from lora_ft.data.textlines import unzip_pairs
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
    batches: Callable[[tuple[str, str] | None], Iterable[list]],
    *,
    threshold: float,
    batch_size: int,
    device: str,
    as_json: bool,
    trust_remote_code: bool = False,
) -> Iterator[list[str]]:
    """The output lines, a list per chunk of sentences: with ``use`` exactly single-adapter ``predict``'s,
    else a header and then one column pair per adapter.

    ``batches(columns)`` reads the input as the adapters take it (``serving.predict.pair_columns``).

    Raises:
        LoraFtError: some of the adapters take text pairs and others single texts.
    """
    from lora_ft.serving.multi import adapter_artifact, predict_each
    from lora_ft.serving.predict import pair_columns

    aset, names = _adapter_set(base_name, specs, use, base, trust_remote_code)
    columns = {name: pair_columns(adapter_artifact(aset, name)) for name in names}
    if len({c is None for c in columns.values()}) > 1:
        listing = ", ".join(f"{n} ({'single texts' if c is None else 'pairs'})" for n, c in columns.items())
        raise LoraFtError(f"the adapters take different inputs: {listing}; predict with each kind apart")
    chosen = columns[names[0]]
    if use is None and not as_json:
        yield [adapters_header(names, [aset.info(n)["task"] for n in names], pairs=chosen is not None)]
    for chunk in batches(chosen):
        progress = len(chunk) >= PROGRESS_MIN_SENTENCES
        sentences, text_pairs = unzip_pairs(chunk)
        results = predict_each(
            aset,
            sentences,
            names,
            text_pairs=text_pairs,
            threshold=threshold,
            batch_size=batch_size,
            device=device,
            progress=progress,
        )
        if use is not None:
            yield [prediction_line(p, as_json) for p in results[use]]
        else:  # per sentence: one Prediction per adapter
            yield [adapters_line(names, row, as_json) for row in zip(*results.values(), strict=True)]


def eval_adapters(
    base_name: str,
    specs: list[str] | None,
    use: str | None,
    base: str | None,
    data_config: Callable[[Any], Any],
    *,
    split: str,
    batch_size: int,
    device: str,
    trust_remote_code: bool = False,
) -> tuple[str, dict[str, dict[str, Any]]]:
    """What was evaluated (for the table's title) and every adapter's (or ``use``'s) metrics on one split,
    keyed by adapter name.

    ``data_config(known)`` turns training data (or None) into the data to use (None: ``known`` itself).
    It is applied to each adapter's data before they are compared, so ``--data`` settles any difference.
    """
    from lora_ft.serving.multi import common_data, evaluate_each

    aset, names = _adapter_set(base_name, specs, use, base, trust_remote_code)
    cfg = common_data(aset, names, split, choose=lambda known: data_config(known) or known)
    cfg = cfg or data_config(None)
    metrics = evaluate_each(aset, cfg, split, names, batch_size=batch_size, device=device, progress=True)
    return f"adapters on {aset.base_name}", metrics
