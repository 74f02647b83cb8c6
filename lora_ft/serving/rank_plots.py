"""PNG plots of ``lora-ft inspect``: singular-value spectra and energy curves of the learned updates.

Small multiples, one panel per transformer layer, one colour per module kind (query, value, ...);
LoRA solid, full fine-tuning dashed. Figures come from the one figure helper (``lora_ft.figures``).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from matplotlib import colormaps
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter, NullLocator

from lora_ft.figures import new_figure, save_png
from lora_ft.lora.analysis import THRESHOLDS, ModuleUpdate

_FLOOR = 1e-6  # singular values below this fraction of the largest are not drawn (log axis)
_SPECTRUM_BOTTOM = 1e-3  # σ_i / σ_1 below this is the tail of a full-rank spectrum, not its shape


def _by_layer(updates: list[ModuleUpdate]) -> dict[int | None, list[ModuleUpdate]]:
    groups: dict[int | None, list[ModuleUpdate]] = {}
    for u in updates:
        groups.setdefault(u.layer, []).append(u)
    return groups


def _colors(updates: list[ModuleUpdate]) -> dict[str, object]:
    kinds = list(dict.fromkeys(u.kind for u in updates))
    palette = colormaps["tab10"]
    return {kind: palette(i % 10) for i, kind in enumerate(kinds)}


def _grid(n: int, title: str, xlabel: str, ylabel: str):
    """A figure with ``n`` panels sharing both axes; unused cells are hidden."""
    ncols = min(n, 3 if n <= 9 else 4 if n <= 16 else 6)
    nrows = math.ceil(n / ncols)
    fig = new_figure(3.4 * ncols + 0.6, 2.7 * nrows + 1.0)
    axes = fig.subplots(nrows, ncols, squeeze=False, sharex=True, sharey=True).ravel()
    for i in range(n, len(axes)):
        axes[i].set_visible(False)
        if i - ncols < n:  # the panel above an empty cell is the bottom of its column: label its x axis
            axes[i - ncols].xaxis.set_tick_params(labelbottom=True)
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
    return save_png(fig, path)


def _plain_log_ticks(axis) -> None:
    """Label a log axis 1, 2, 4 ... (indices, ranks) or 1, 0.1, 0.01 (ratios) instead of 2×10⁰."""
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
        ax.set(xscale="log", yscale="log", ylim=(_SPECTRUM_BOTTOM, 1.5))
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


def _positions(updates: list[ModuleUpdate]) -> tuple[dict[str, float], list[float], list[str]]:
    """x of each module: its layer; modules outside the layers (a pooler) after the last one."""
    layers = sorted({u.layer for u in updates if u.layer is not None})
    extra = [u for u in updates if u.layer is None]
    x = {u.module: float(u.layer) for u in updates if u.layer is not None}
    last = layers[-1] if layers else -1
    x.update({u.module: float(last + 1 + i) for i, u in enumerate(extra)})
    ticks = [float(layer) for layer in layers] + [x[u.module] for u in extra]
    return x, ticks, [str(layer) for layer in layers] + [u.kind for u in extra]


def plot_rank_summary(updates: list[ModuleUpdate], path: Path) -> Path:
    """Against the layer, per module kind: full fine-tuning's effective ranks next to r, and how much of
    full fine-tuning's update lies in LoRA's output directions."""
    fig = new_figure(10, 9.5)
    rank_ax, overlap_ax, share_ax = fig.subplots(3, 1, sharex=True)
    colors = _colors(updates)
    pos, ticks, labels = _positions(updates)
    kinds = list(dict.fromkeys(u.kind for u in updates))

    def line(ax, kind, value, style, label=None, **kwargs):
        mods = [u for u in updates if u.kind == kind]
        ax.plot([pos[u.module] for u in mods], [value(u) for u in mods], style, color=colors[kind], ms=5,
                label=label, **kwargs)  # fmt: skip

    for kind in kinds:
        line(rank_ax, kind, lambda u: u.full.effective_rank(0.9), "-o", kind)
        line(rank_ax, kind, lambda u: u.full.effective_rank(0.99), "--s", mfc="none")
        line(overlap_ax, kind, lambda u: u.overlap, "-o")
        line(share_ax, kind, lambda u: u.captured, "-o")
        line(share_ax, kind, lambda u: u.full.energy()[u.r - 1], ":v")
    for r in sorted({u.r for u in updates}):
        rank_ax.axhline(r, color="black", lw=1.5, label=f"LoRA rank r = {r}")
    for out in sorted({u.shape[0] for u in updates}):
        k = max(u.overlap_k or 0 for u in updates if u.shape[0] == out)
        overlap_ax.axhline(k / out, color="gray", ls="--", lw=1, label=f"chance, out = {out} (k/out)")
    rank_ax.set(yscale="log", ylabel="effective rank of full's ΔW",
                title="Full fine-tuning's ΔW: effective rank at 90% (solid) and 99% (dashed) of its energy")  # fmt: skip
    _plain_log_ticks(rank_ax.yaxis)
    overlap_ax.set(ylim=(0, 1), ylabel="‖U_LoRA,kᵀ U_full,k‖²_F / k",
                   title="Overlap of the top-k output directions (k: LoRA's rank)")  # fmt: skip
    share_ax.set(ylim=(0, 1.02), ylabel="share of full's ‖ΔW‖²_F",
                 title="Share of full's ΔW energy in LoRA's output directions (solid), in its own top r (dotted)")  # fmt: skip
    share_ax.set_xticks(ticks, labels)
    share_ax.set_xlabel("layer")
    for ax in (rank_ax, overlap_ax, share_ax):
        ax.grid(alpha=0.3)
    for ax in (rank_ax, overlap_ax):  # the colours are the module kinds, as in every plot
        ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1))
    return save_png(fig, path)


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
