"""PNG plots of ``lora-ft inspect``: singular-value spectra and energy curves of the learned updates.

Small multiples, one panel per transformer layer, one colour per module kind (query, value, ...);
LoRA solid, full fine-tuning dashed. Built with matplotlib's object API on an Agg canvas.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from lora_ft.analysis import THRESHOLDS, ModuleUpdate
from lora_ft.plots import _save

_FLOOR = 1e-6  # singular values below this fraction of the largest are not drawn (log axis)


def _by_layer(updates: list[ModuleUpdate]) -> dict[int | None, list[ModuleUpdate]]:
    groups: dict[int | None, list[ModuleUpdate]] = {}
    for u in updates:
        groups.setdefault(u.layer, []).append(u)
    return groups


def _colors(updates: list[ModuleUpdate]) -> dict[str, object]:
    from matplotlib import colormaps

    kinds = list(dict.fromkeys(u.kind for u in updates))
    palette = colormaps["tab10"]
    return {kind: palette(i % 10) for i, kind in enumerate(kinds)}


def _grid(n: int, title: str, xlabel: str, ylabel: str):
    """A figure with ``n`` panels sharing both axes; unused cells are hidden."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    ncols = min(n, 3 if n <= 9 else 4 if n <= 16 else 6)
    nrows = math.ceil(n / ncols)
    fig = Figure(figsize=(3.4 * ncols + 0.6, 2.7 * nrows + 1.0), dpi=110, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False, sharex=True, sharey=True).ravel()
    for ax in axes[n:]:
        ax.set_visible(False)
    fig.suptitle(title)
    fig.supxlabel(xlabel)
    fig.supylabel(ylabel)
    return fig, axes[:n]


def _finish(fig, axes, path: Path) -> Path:
    handles, labels = [], []
    for ax in axes:
        ax.grid(alpha=0.3, which="major")
        for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
            if label not in labels:
                handles.append(handle)
                labels.append(label)
    fig.legend(handles, labels, loc="outside right center", fontsize="small")
    for ax in axes:
        for axis in (ax.xaxis, ax.yaxis):
            if axis.get_scale() == "log":
                _plain_log_ticks(axis)
    return _save(fig, path)


def _plain_log_ticks(axis) -> None:
    """Label a log axis 1, 2, 4 ... (indices, ranks) or 1, 0.1, 0.01 (ratios) instead of 2×10⁰."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter, NullLocator

    plain = FuncFormatter(lambda v, _: f"{v:g}")
    low, high = sorted(axis.axes.get_xlim() if axis.axis_name == "x" else axis.axes.get_ylim())
    if axis.axis_name == "x" or low >= 1:  # counts: powers of two
        axis.set_major_locator(LogLocator(base=2))
        axis.set_minor_locator(NullLocator())
    elif high / max(low, 1e-300) < 30:  # less than ~1.5 decades: label the minor ticks too
        axis.set_minor_formatter(plain)
    else:
        axis.set_minor_formatter(NullFormatter())
    axis.set_major_formatter(plain)


def _panel_title(layer: int | None) -> str:
    return f"layer {layer}" if layer is not None else "other modules"


def _positive(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(1-based index, value) of the values above the drawing floor, for a log axis."""
    idx = np.arange(1, len(values) + 1)
    keep = values > _FLOOR * values.max() if len(values) and values.max() > 0 else np.zeros(len(values), bool)
    return idx[keep], values[keep]


def plot_lora_spectra(updates: list[ModuleUpdate], path: Path) -> Path:
    """LoRA's singular values σ_i of ΔW = B·A·scaling per layer (log y): how many of the r directions it uses."""
    groups = _by_layer(updates)
    colors = _colors(updates)
    fig, axes = _grid(
        len(groups), "Singular values of LoRA's update ΔW = B·A·α/r", "index i", "σ_i (log scale)"
    )
    for ax, (layer, mods) in zip(axes, groups.items(), strict=True):
        for u in mods:
            x, y = _positive(u.lora.singular_values)
            ax.plot(x, y, "-o", ms=3, color=colors[u.kind], label=f"{u.kind} (r={u.r})")
        ax.set_yscale("log")
        ax.set_title(_panel_title(layer), fontsize="medium")
    r_max = max(u.r for u in updates)
    axes[0].set_xticks(range(1, r_max + 1, max(1, r_max // 8)))
    return _finish(fig, axes, path)


def _threshold_lines(ax) -> None:
    for t in THRESHOLDS:
        ax.axhline(t, color="gray", ls=":", lw=1)


def plot_lora_energy(updates: list[ModuleUpdate], path: Path) -> Path:
    """LoRA's cumulative energy Σ_{j≤i} σ_j² / Σσ² against i, with the 90% and 99% lines."""
    groups = _by_layer(updates)
    colors = _colors(updates)
    fig, axes = _grid(
        len(groups),
        "Cumulative energy of LoRA's ΔW (dotted: 90%, 99%)",
        "number of singular directions i",
        "share of ‖ΔW‖²_F in the top i",
    )
    for ax, (layer, mods) in zip(axes, groups.items(), strict=True):
        for u in mods:
            energy = u.lora.energy()
            ax.plot(np.arange(1, len(energy) + 1), energy, "-o", ms=3, color=colors[u.kind], label=u.kind)
        _threshold_lines(ax)
        ax.set_ylim(0, 1.02)
        ax.set_title(_panel_title(layer), fontsize="medium")
    return _finish(fig, axes, path)


def plot_spectra_vs_full(updates: list[ModuleUpdate], path: Path) -> Path:
    """σ_i / σ_1 of LoRA's ΔW (solid) and full fine-tuning's ΔW (dashed), log-log, per layer."""
    groups = _by_layer(updates)
    colors = _colors(updates)
    fig, axes = _grid(
        len(groups),
        "Normalised singular values: LoRA (solid) vs full fine-tuning (dashed)",
        "index i (log scale)",
        "σ_i / σ_1 (log scale)",
    )
    for ax, (layer, mods) in zip(axes, groups.items(), strict=True):
        for u in mods:
            for spectrum, style, who in ((u.lora, "-o", "LoRA"), (u.full, "--", "full")):
                x, y = _positive(spectrum.singular_values)
                if not len(y):
                    continue
                y = y / y[0]
                ax.plot(x, y, style, ms=3, lw=1.4, color=colors[u.kind], label=f"{u.kind}, {who}")
        ax.set(xscale="log", yscale="log")
        ax.axvline(mods[0].r, color="gray", ls=":", lw=1)
        ax.set_title(_panel_title(layer), fontsize="medium")
    return _finish(fig, axes, path)


def plot_energy_vs_full(updates: list[ModuleUpdate], path: Path) -> Path:
    """Cumulative energy of LoRA's ΔW (solid) and full fine-tuning's (dashed) against i (log x), per layer."""
    groups = _by_layer(updates)
    colors = _colors(updates)
    fig, axes = _grid(
        len(groups),
        "Cumulative energy: LoRA (solid) vs full fine-tuning (dashed)\ndotted: 90% and 99% of the energy; i = r",
        "number of singular directions i (log scale)",
        "share of ‖ΔW‖²_F in the top i",
    )
    for ax, (layer, mods) in zip(axes, groups.items(), strict=True):
        for u in mods:
            for spectrum, style, who in ((u.lora, "-o", "LoRA"), (u.full, "--", "full")):
                energy = spectrum.energy()
                ax.plot(np.arange(1, len(energy) + 1), energy, style, ms=3, lw=1.4, color=colors[u.kind],
                        label=f"{u.kind}, {who}")  # fmt: skip
        _threshold_lines(ax)
        ax.axvline(mods[0].r, color="gray", ls=":", lw=1)
        ax.set(xscale="log", ylim=(0, 1.02))
        ax.set_title(_panel_title(layer), fontsize="medium")
    return _finish(fig, axes, path)


def plot_rank_summary(updates: list[ModuleUpdate], path: Path) -> Path:
    """Per module: effective ranks of both updates against r, and the subspace overlap against chance."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(max(8.0, 0.55 * len(updates) + 3), 7.2), dpi=110, layout="constrained")
    FigureCanvasAgg(fig)
    rank_ax, overlap_ax = fig.subplots(2, 1, sharex=True)
    x = np.arange(len(updates))
    for who, style, shift in (("full", "s", -0.12), ("lora", "o", 0.12)):
        for t, fill in zip(THRESHOLDS, ("none", None), strict=True):
            ranks = [getattr(u, who).effective_rank(t) for u in updates]
            label = f"{'full fine-tuning' if who == 'full' else 'LoRA'}, {int(t * 100)}% energy"
            color = "tab:red" if who == "full" else "tab:blue"
            ax_kwargs = {"mfc": "none"} if fill == "none" else {}
            rank_ax.plot(x + shift, ranks, style, ms=7, color=color, label=label, ls="none", **ax_kwargs)
    rank_ax.plot(x, [u.r for u in updates], "_", ms=18, mew=2, color="black", label="LoRA rank r", ls="none")
    rank_ax.set(yscale="log", ylabel="effective rank (log scale)", title="Effective rank of ΔW per module")
    _plain_log_ticks(rank_ax.yaxis)
    rank_ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1))
    overlap = [u.overlap if u.overlap is not None else np.nan for u in updates]
    chance = [u.overlap_random if u.overlap_random is not None else np.nan for u in updates]
    overlap_ax.bar(x, overlap, color="tab:purple", label="‖U_LoRA,kᵀ U_full,k‖²_F / k")
    overlap_ax.plot(
        x, chance, "_", ms=18, mew=2, color="black", label="random subspaces (k / out)", ls="none"
    )
    overlap_ax.set(
        ylim=(0, 1), ylabel="subspace overlap",
        title="Overlap of the top-k output directions (k: LoRA's rank)",
    )  # fmt: skip
    overlap_ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1))
    overlap_ax.set_xticks(x, [u.short_name for u in updates], rotation=60, ha="right", fontsize="small")
    overlap_ax.set_xlabel("module (layer.name)")
    for ax in (rank_ax, overlap_ax):
        ax.grid(alpha=0.3, axis="y")
    return _save(fig, path)


def write_plots(updates: list[ModuleUpdate], out: Path) -> list[Path]:
    """Every plot for ``updates`` into the directory ``out``; the comparison plots when full's updates are known."""
    paths = [
        plot_lora_spectra(updates, out / "lora_spectra.png"),
        plot_lora_energy(updates, out / "lora_energy.png"),
    ]
    if all(u.full is not None for u in updates):
        paths += [
            plot_spectra_vs_full(updates, out / "spectra_vs_full.png"),
            plot_energy_vs_full(updates, out / "energy_vs_full.png"),
            plot_rank_summary(updates, out / "rank_summary.png"),
        ]
    return paths
