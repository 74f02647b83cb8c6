"""What the commands print: rich tables for runs, dry runs, the savings calculator and evaluations, and
the output lines of ``predict``."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from lora_ft import fmt
from lora_ft.data.task import METRIC_KEYS, SINGLE_LABEL
from lora_ft.data.textlines import shorten


def _fmt(value: float | None, spec: str = ".4f", suffix: str = "") -> str:
    return "—" if value is None else f"{value:{spec}}{suffix}"


def print_run_summary(metrics: dict[str, Any], out: Path, console: Console) -> None:
    """The final table of ``lora-ft train``: accuracy, F1 (binary or macro), loss per split (multi-label and
    regression: their metrics and loss); cost of the run."""
    from lora_ft.data.metrics import f1_average  # numpy: not for --help
    from lora_ft.fmt import f1_heading

    table = Table(title=f"{metrics['method']} on {metrics['model']} — {out}", show_header=True)
    table.add_column("metric")
    splits = [s for s in ("validation", "test") if metrics.get(s)]
    for split in splits:
        table.add_column(split, justify="right")
    average = f1_average(len(metrics["label_names"])) if metrics.get("label_names") else None
    rows = [("accuracy", "accuracy"), ("f1", f1_heading([average])), ("loss", "loss")]
    if metrics.get("task", {}).get("problem_type", SINGLE_LABEL) != SINGLE_LABEL and splits:
        rows = [(key, key) for key in metrics[splits[0]]]  # the task's metrics (data/metrics.py), then loss
    for key, name in rows:
        table.add_row(name, *[_fmt(metrics[s].get(key)) for s in splits])
    console.print(table)
    print_evaluations(metrics.get("evaluations") or [], console, evaluation_metric(metrics))
    cost = Table(show_header=False, box=None)
    cost.add_column(style="bold")
    cost.add_column(justify="right")
    cost.add_row(
        "trainable params",
        f"{fmt.count(metrics['trainable_params'])} of {fmt.count(metrics['total_params'])} "
        f"({metrics['trainable_percent']:.2f}%)",
    )
    cost.add_row("train time", f"{metrics['train_seconds']:.1f} s")
    cost.add_row("train samples/s", f"{metrics['train_samples_per_second']:.1f}")
    cost.add_row("eval samples/s", _fmt(metrics.get("inference_samples_per_second"), ".1f"))
    if metrics.get("merged_inference_samples_per_second") is not None:
        cost.add_row("eval samples/s, merged", _fmt(metrics["merged_inference_samples_per_second"], ".1f"))
    cost.add_row("peak memory (RSS)", _fmt(metrics.get("peak_memory_mb"), ".0f", " MB"))
    cost.add_row("memory added by training", _fmt(metrics.get("train_memory_mb"), ".0f", " MB"))
    if "cuda_peak_memory_mb" in metrics:
        cost.add_row("CUDA peak", _fmt(metrics["cuda_peak_memory_mb"], ".0f", " MB"))
    console.print(cost)


def evaluation_metric(metrics: dict[str, Any]) -> str:
    """The metric of metrics.json's ``evaluations`` rows: the task's primary metric (accuracy for a run
    from before tasks were recorded)."""
    return (metrics.get("task") or {}).get("primary_metric") or "accuracy"


def print_evaluations(rows: list[dict[str, Any]], console: Console, metric: str = "accuracy") -> None:
    """metrics.json's ``evaluations``: step, train loss, validation loss and ``metric`` (the task's primary
    metric) per periodic evaluation."""
    if not rows:
        return
    table = Table(title="evaluations during training", show_header=True)
    for name in ("step", "train loss", "validation loss", metric.replace("_", " ")):
        table.add_column(name, justify="right")
    for row in rows:
        table.add_row(
            str(row["step"]), _fmt(row["train_loss"]), _fmt(row["validation_loss"]), _fmt(row.get(metric))
        )
    console.print(table)


def print_targets(model, targets, r: int, console: Console, *, all_rows: bool = False) -> None:
    """The ``lora-ft targets`` dry run: each Linear, whether the spec wraps it, and the totals."""
    from lora_ft.lora.targets import default_head, default_targets, targets_table  # torch: not for --help

    spec = targets if targets is not None else default_targets(model)
    head = default_head(model)
    rows, totals = targets_table(model, spec, r, head)
    shown = rows if all_rows else [row for row in rows if row["wrapped"]]
    table = Table(title=f"{type(model).__name__}: targets {spec!r}, r={r}")
    table.add_column("module", overflow="fold")
    table.add_column("shape (out, in)", justify="right")
    table.add_column("wrapped", justify="center")
    table.add_column("LoRA params", justify="right")
    for row in shown:
        table.add_row(
            row["name"],
            f"({row['out_features']}, {row['in_features']})",
            "yes" if row["wrapped"] else "",
            f"{row['lora_params']:,}" if row["wrapped"] else "",
        )
    console.print(table)
    console.print(
        f"wrapped {totals['wrapped']} of {totals['linears']} Linear modules; head: {', '.join(head)}\n"
        f"trainable: {totals['lora_params']:,} LoRA + {totals['head_params']:,} head = "
        f"{totals['trainable_params']:,} of {totals['total_params']:,} ({totals['trainable_percent']:.3f}%)"
    )


def print_savings(savings, console: Console) -> None:
    """The ``lora-ft targets --ranks`` calculator: LoRA at each rank against full fine-tuning."""
    table = Table(title=f"{savings.model}: LoRA on {savings.wrapped} Linears vs full fine-tuning")
    for column in ("r", "LoRA", "trainable", "% model", "÷ targ.", "÷ full", "adapter"):
        table.add_column(column, justify="right")
    for row in savings.ranks:
        table.add_row(
            str(row.r),
            f"{row.lora_params:,}",
            f"{row.trainable_params:,}",
            f"{row.trainable_percent:.4f}",
            f"{savings.targeted_params / row.lora_params:,.0f}x",
            f"{savings.total_params / row.trainable_params:,.0f}x",
            fmt.size(row.adapter_bytes),
        )
    console.print(table)
    head = savings.ranks[0].head_params if savings.ranks else 0
    console.print(
        f"trainable = LoRA + {head:,} head params ({', '.join(savings.head)}, trained fully); % model: of all "
        f"params incl. LoRA (as PEFT prints it).\nFull fine-tuning trains {savings.targeted_params:,} params in "
        f"the targeted weight matrices (÷ targ. = that / LoRA) and {savings.total_params:,} in the whole model "
        f"(÷ full = that / trainable; {fmt.size(savings.full_model_bytes)} in fp32).\nadapter: "
        "adapter_model.safetensors in fp32 (LoRA A/B + head tensors + header); adapter_config.json not counted."
    )


def print_memory(rows, batch: int, seq_len: int, checkpointing: bool, console: Console) -> None:
    """The ``lora-ft targets --batch-size --seq-len`` estimate: training memory per method."""
    mode = "with" if checkpointing else "without"
    table = Table(title=f"training memory, batch {batch} x {seq_len} tokens, {mode} gradient checkpointing")
    for column in ("method", "weights", "gradients", "AdamW", "activations", "total", "added by training"):
        table.add_column(column, justify="left" if column == "method" else "right")
    names = {"full": "full (fp32)", "lora": "LoRA r={r}", "lora-bf16": "LoRA r={r}, bf16 base"}
    for row in rows:
        acts = row.activations_checkpointed if checkpointing else row.activations
        table.add_row(
            names[row.method].format(r=row.r),
            *(fmt.size(n) for n in (row.weights, row.gradients, row.optimizer, acts)),
            fmt.size(row.total(checkpointing)),
            fmt.size(row.added_by_training(checkpointing)),
        )
    console.print(table)
    other = ", ".join(
        f"{names[row.method].format(r=row.r)} {fmt.size(row.total(not checkpointing))}" for row in rows
    )
    console.print(
        f"{'without' if checkpointing else 'with'} gradient checkpointing, totals: {other}.\nGradients and AdamW "
        "(2 fp32 moments) for what trains, in fp32; activations: what autograd keeps for one batch (formula in "
        "lora_ft/lora/memory.py; bf16 base: 2 bytes a value). Not counted: the optimizer's temporaries, "
        "allocator slack, the framework's buffers."
    )


def print_eval(what: str, metrics: dict[str | None, dict[str, Any]], console: Console) -> None:
    """The ``lora-ft eval`` tables: one row per adapter (``metrics`` keyed by name), or one row for the one
    model ``what`` names (keyed by None), all on the same split of the same data; then each model's
    per-class rows and confusion matrix (single-label) or per-label rows (multi-label)."""
    from lora_ft.fmt import f1_heading

    first = next(iter(metrics.values()))
    table = Table(title=f"{what}: {first['split']} split of {first['data']}")
    named = any(name is not None for name in metrics)
    if named:
        table.add_column("adapter", justify="left")
    # The problem type's metrics (data/task.py; "f1" headed by how it was averaged), then the loss.
    keys = (*METRIC_KEYS[first.get("problem_type", SINGLE_LABEL)], "loss")
    f1 = f1_heading(m.get("f1_average") for m in metrics.values())
    for column in ("samples", *(f1 if k == "f1" else k.replace("_", " ") for k in keys)):
        table.add_column(column, justify="right")
    for name, m in metrics.items():
        cells = [str(m["samples"]), *(_fmt(m.get(key)) for key in keys)]
        table.add_row(*([name] if named else []), *cells)
    console.print(table)
    for name, m in metrics.items():
        for rows_key, title in (
            ("per_class", "per class"),
            ("per_label", "per label"),
            ("per_entity", "per entity"),
        ):
            if m.get(rows_key):
                console.print(_class_table(m[rows_key], f"{name + ': ' if named else ''}{title}"))
        if m.get("confusion_matrix"):
            labels = [row["label"] for row in m["per_class"]]
            console.print(_confusion_table(m["confusion_matrix"], labels, name if named else None))


def _class_table(rows: list[dict[str, Any]], title: str) -> Table:
    """Precision, recall, F1 and support per class (or per label)."""
    table = Table(title=title)
    table.add_column("label")
    for column in ("precision", "recall", "F1", "support"):
        table.add_column(column, justify="right")
    for row in rows:
        table.add_row(
            str(row["label"]),
            _fmt(row["precision"]),
            _fmt(row["recall"]),
            _fmt(row["f1"]),
            str(row["support"]),
        )
    return table


def _confusion_table(matrix: list[list[int]], labels: list[str], name: str | None) -> Table:
    """Counts with true labels as rows and predicted labels as columns, in label-id order."""
    table = Table(title=f"{name + ': ' if name else ''}confusion matrix (rows: true, columns: predicted)")
    table.add_column("true \\ predicted")
    for label in labels:
        table.add_column(str(label), justify="right")
    for label, row in zip(labels, matrix, strict=True):
        table.add_row(str(label), *(str(int(c)) for c in row))
    return table


def _prediction(p) -> dict[str, Any]:
    """A Prediction's JSON fields, by problem type: the label and probabilities (single-label), the labels
    at or above the threshold and every label's probability (multi-label), the score (regression)."""
    if p.entities is not None:
        return {"entities": [dataclasses.asdict(e) for e in p.entities]}
    if p.score is not None:
        return {"score": p.score}
    if p.labels is not None:
        return {"labels": p.labels, "probabilities": p.probabilities}
    return {"label": p.label, "probability": p.probability, "probabilities": p.probabilities}


def _texts(p) -> dict[str, str]:
    """The input of a prediction as ``--json`` writes it: ``text``, and ``text_pair`` for a pair."""
    return {"text": p.text} if p.text_pair is None else {"text": p.text, "text_pair": p.text_pair}


def _echo(p) -> str:
    """The input of a prediction echoed in plain output: the sentence, or both texts tab-separated, each
    cut to ``textlines.ECHO_CHARS`` characters."""
    return shorten(p.text) if p.text_pair is None else f"{shorten(p.text)}\t{shorten(p.text_pair)}"


def _cells(p) -> list[str]:
    """A Prediction's plain columns: ``label, probability``; ``name=probability,...`` of the chosen labels
    ("-" for none); or the score; or the entities, ``type=text[start:end]:score`` (characters) joined by
    "; " ("-" for none)."""
    if p.entities is not None:
        return [
            "; ".join(f"{e.type}={e.text}[{e.char_start}:{e.char_end}]:{e.score:.4f}" for e in p.entities)
            or "-"
        ]
    if p.score is not None:
        return [f"{p.score:.4f}"]
    if p.labels is not None:
        return [",".join(f"{n}={p.probabilities[n]:.4f}" for n in p.labels) or "-"]
    return [p.label, f"{p.probability:.4f}"]


def _columns(task) -> tuple[str, ...]:
    """The plain columns ``_cells`` gives for a model of ``task``."""
    if task.is_regression:
        return ("score",)
    if task.is_multi_label:
        return ("labels",)
    if task.is_token_classification:
        return ("entities",)
    return ("label", "probability")


def prediction_line(p, as_json: bool) -> str:
    """One output line of ``predict``: JSON (the whole text), or the prediction's columns (``_cells``) then
    the input (``_echo``: the sentence, or a pair's two texts), tab-separated."""
    if as_json:
        return json.dumps({**_texts(p), **_prediction(p)}, ensure_ascii=False)
    return "\t".join([*_cells(p), _echo(p)])


def adapters_header(names: list[str], tasks: list, pairs: bool = False) -> str:
    """The header of ``predict --adapter ...`` without ``--use``: each adapter's columns (``_columns`` of
    its task: ``NAME.label``, ``NAME.probability`` for single-label), then the input's."""
    cols = [f"{n}.{col}" for n, task in zip(names, tasks, strict=True) for col in _columns(task)]
    return "\t".join([*cols, "sentence", *(["sentence2"] if pairs else [])])


def adapters_line(names: list[str], row: tuple, as_json: bool) -> str:
    """One sentence's line of ``predict --adapter ...``: ``row`` holds each adapter's Prediction of it."""
    if as_json:
        adapters = {n: _prediction(p) for n, p in zip(names, row, strict=True)}
        return json.dumps({**_texts(row[0]), "adapters": adapters}, ensure_ascii=False)
    return "\t".join([*(c for p in row for c in _cells(p)), _echo(row[0])])
