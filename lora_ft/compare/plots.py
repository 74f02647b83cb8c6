"""PNG plots of a comparison: training curves, accuracy vs trainable parameters, accuracy vs LoRA rank.

Figures come from the one figure helper (``lora_ft.figures``: an Agg canvas, PNGs written atomically).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib import colormaps
from matplotlib.figure import Figure
from matplotlib.ticker import FixedLocator, NullLocator

from lora_ft import fmt
from lora_ft.figures import new_figure, save_png

METHOD_COLORS = {
    "full": "tab:red",
    "head": "tab:gray",
    "lora": "tab:blue",
    "dora": "tab:purple",
    "rslora": "tab:cyan",
    "lora-all": "tab:green",
}


def _figure(width: float, height: float, ncols: int = 1):
    fig = new_figure(width, height)
    return fig, fig.subplots(1, ncols)


def colors(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """One colour per row: fixed per method, LoRA ranks from light (small r) to dark blue."""
    ranked = sorted(r["rank"] for r in rows if r["rank"] is not None)
    blues = colormaps["Blues"]
    out = {}
    for row in rows:
        if row["rank"] is not None and len(ranked) > 1:
            out[row["label"]] = blues(0.4 + 0.6 * ranked.index(row["rank"]) / (len(ranked) - 1))
        else:
            out[row["label"]] = METHOD_COLORS[row["method"]]
    return out


def _points(lines: list[dict[str, Any]], keys: tuple[str, ...]) -> dict[int, tuple[float, float]]:
    points: dict[int, tuple[float, float]] = {}
    for line in lines:
        for key in keys:
            if key in line:
                points.setdefault(line["step"], (line["epoch"], line[key]))
    return points


def _mean_curve(
    logs: list[list[dict[str, Any]]], keys: tuple[str, ...]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(epochs, mean, std) of the first of ``keys`` each log line has, at the steps every seed logged."""
    per_seed = [_points(lines, keys) for lines in logs]
    steps = sorted(set.intersection(*(set(s) for s in per_seed))) if per_seed else []
    if not steps:
        return np.array([]), np.array([]), np.array([])
    epochs = np.array([per_seed[0][s][0] for s in steps], dtype=float)
    values = np.array([[seed[s][1] for s in steps] for seed in per_seed], dtype=float)  # (seeds, steps)
    std = values.std(axis=0, ddof=1) if len(per_seed) > 1 else np.zeros(len(steps))
    return epochs, values.mean(axis=0), std


def _metric(rows: list[dict[str, Any]]) -> str:
    """The quality figure the rows plot (``results.shown_metric``): accuracy unless a row says otherwise."""
    return next((r["metric"] for r in rows if r.get("metric")), "accuracy")


def _curve_keys(key: str) -> tuple[str, ...]:
    """The log keys of one curve; the evaluation on the validation split after training is a metric
    curve's last point."""
    return ("loss",) if key == "loss" else (f"eval_{key}", f"validation_{key}")


def plot_curves(rows: list[dict[str, Any]], logs: dict[str, list[list[dict[str, Any]]]], path: Path) -> Path:
    """Training loss and validation accuracy against epochs, every method on the same two axes.

    ``logs`` maps a row label to one parsed ``log.jsonl`` per finished seed.
    """
    fig, (loss_ax, acc_ax) = _figure(11, 4.2, ncols=2)
    palette = colors(rows)
    metric = _metric(rows)
    for row in rows:
        if not logs.get(row["label"]):
            continue
        for ax, key in ((loss_ax, "loss"), (acc_ax, metric)):
            x, mean, std = _mean_curve(logs[row["label"]], _curve_keys(key))
            if not len(x):
                continue
            ax.plot(
                x,
                mean,
                marker="o" if key != "loss" else None,
                ms=3,
                lw=1.6,
                color=palette[row["label"]],
                label=row["label"],
            )
            if std.any():
                ax.fill_between(x, mean - std, mean + std, color=palette[row["label"]], alpha=0.2, lw=0)
    seeds = max((len(v) for v in logs.values()), default=1)
    if seeds > 1:
        fig.suptitle(f"Mean over {seeds} seeds; shading: ± one standard deviation", fontsize="medium")
    loss_ax.set(title="Training loss", xlabel="epoch", ylabel="training loss (cross-entropy)")
    name = metric.replace("_", " ")
    acc_ax.set(title=f"Validation {name} during training", xlabel="epoch", ylabel=f"validation {name}")
    for ax in (loss_ax, acc_ax):
        ax.grid(alpha=0.3)
        if ax.has_data():
            ax.legend(title="method", fontsize="small")
    return save_png(fig, path)


def accuracy_vs_params_figure(rows: list[dict[str, Any]]) -> Figure:
    """Validation accuracy (± std over seeds) against trainable parameters on a log axis, each point
    labelled, over the majority-class baseline: a model that learned nothing sits on that line."""
    fig, ax = _figure(6.4, 4.4)
    palette = colors(rows)
    drawn = [row for row in rows if row["status"] != "failed"]
    metric = _metric(rows)
    placed: list[tuple[float, float]] = []
    for row in drawn:
        x, acc = row["trainable_params"], row["validation"][metric]
        ax.errorbar(
            x,
            acc["mean"],
            yerr=acc["std"] or 0,
            fmt="o",
            ms=7,
            capsize=4,
            color=palette[row["label"]],
            label=f"{row['label']} ({fmt.count(x, digits=1)})",
        )
        # Labels of points that (nearly) coincide are stacked, so one never hides another.
        near = sum(abs(math.log10(x / px)) < 0.15 and abs(acc["mean"] - py) < 0.02 for px, py in placed)
        placed.append((x, acc["mean"]))
        ax.annotate(
            row["label"],
            (x, acc["mean"]),
            textcoords="offset points",
            xytext=(9, 3 - 11 * near),
            fontsize="small",
            color=palette[row["label"]],
        )
    baseline = next((r["majority_accuracy"] for r in drawn if r.get("majority_accuracy") is not None), None)
    if baseline is not None:
        ax.axhline(baseline, ls=":", lw=1.2, color="black", label=f"majority class ({baseline:.3f})")
    ax.set_xscale("log")
    ax.margins(x=0.15, y=0.2)
    name = metric.replace("_", " ")
    ax.set(
        title=f"{name[0].upper()}{name[1:]} vs trainable parameters",
        xlabel="trainable parameters (log scale)",
        ylabel=f"validation {name}",
    )
    ax.grid(alpha=0.3, which="both")
    if ax.has_data():
        ax.legend(title="method (trainable)", fontsize="small", loc="best")
    return fig


def plot_accuracy_vs_params(rows: list[dict[str, Any]], path: Path) -> Path:
    """``accuracy_vs_params_figure`` as a PNG at ``path``."""
    return save_png(accuracy_vs_params_figure(rows), path)


def plot_accuracy_vs_rank(rows: list[dict[str, Any]], path: Path) -> Path:
    """The rank sweep: LoRA validation accuracy against r, with full and head-only as reference lines."""
    fig, ax = _figure(6.4, 4.4)
    swept = sorted(
        (r for r in rows if r["rank"] is not None and r["status"] != "failed"), key=lambda r: r["rank"]
    )
    ranks = [r["rank"] for r in swept]
    metric = _metric(rows)
    means = [r["validation"][metric]["mean"] for r in swept]
    stds = [r["validation"][metric]["std"] or 0 for r in swept]
    ax.errorbar(ranks, means, yerr=stds, fmt="-o", ms=6, capsize=4, color=METHOD_COLORS["lora"], label="lora")
    for rank, mean, row in zip(ranks, means, swept, strict=True):
        ax.annotate(
            fmt.count(row["trainable_params"], digits=1),
            (rank, mean),
            textcoords="offset points",
            xytext=(0, 9),
            ha="center",
            fontsize="small",
            color="dimgray",
        )
    for row in rows:
        if row["rank"] is None and row["status"] != "failed":
            ax.axhline(
                row["validation"][metric]["mean"],
                ls="--",
                lw=1.2,
                color=METHOD_COLORS[row["method"]],
                label=f"{row['label']} ({fmt.count(row['trainable_params'], digits=1)} trainable)",
            )
    ax.set_xscale("log", base=2)
    ax.xaxis.set_major_locator(FixedLocator(ranks))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xticklabels([str(r) for r in ranks])
    ax.margins(x=0.1, y=0.25)
    ax.set(
        title="LoRA rank sweep (labels: trainable parameters)",
        xlabel="LoRA rank r (log scale)",
        ylabel=f"validation {metric.replace('_', ' ')}",
    )
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small", loc="best")
    return save_png(fig, path)
