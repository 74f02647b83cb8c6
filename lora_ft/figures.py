"""The one figure helper of every plot lora-ft draws (``compare``'s curves, ``inspect``'s spectra).

Figures are built with matplotlib's object API on an Agg canvas: no pyplot global state, no display
and no backend to choose. A PNG is written whole or not at all, through ``fsutil.write_atomic``.
"""

from __future__ import annotations

import io
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from lora_ft.fsutil import write_atomic

DPI = 110


def new_figure(width: float, height: float) -> Figure:
    """An empty ``width`` × ``height`` inch figure on an Agg canvas, laid out by matplotlib ("constrained")."""
    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def save_png(fig: Figure, path: Path) -> Path:
    """Render ``fig`` as a PNG and replace ``path`` with it atomically; returns ``path``."""
    png = io.BytesIO()
    fig.savefig(png, format="png")
    write_atomic(path, png.getvalue())
    return path
