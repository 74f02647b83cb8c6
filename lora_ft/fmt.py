"""Number formatting shared by the terminal tables, the compare report and the plots: parameter counts
(``22.71M``, ``74.5K``), sizes in powers of two (``16.1 MiB``; the compare report spells them ``KB``,
``MB``, ``GB``) and durations (``0:00:41``), one spelling each, so the same quantity reads the same
wherever it is printed."""

from __future__ import annotations

from collections.abc import Iterable

_COUNT_UNITS = ((1e9, "B"), (1e6, "M"))
_SIZE_UNITS = ((2**30, "G"), (2**20, "M"), (2**10, "K"))


def count(n: float, digits: int = 2) -> str:
    """A parameter count in short form: ``1.23B``, ``22.71M``, ``74.5K``, ``770``.

    Args:
        n: the count.
        digits: decimals for millions and billions; thousands get one fewer.
    """
    for scale, unit in _COUNT_UNITS:
        if n >= scale:
            return f"{n / scale:.{digits}f}{unit}"
    if n >= 1e3:
        return f"{n / 1e3:.{max(digits - 1, 0)}f}K"
    return f"{n:.0f}"


def size(n_bytes: float, *, iec: bool = True) -> str:
    """``n_bytes`` in the largest power-of-two unit it reaches, one decimal: ``16.1 MiB``, ``582.0 KiB``,
    ``512 B``. ``iec=False`` spells the same units ``KB``, ``MB``, ``GB`` (the compare report, whose notes
    define them as 2^10, 2^20, 2^30 bytes)."""
    for scale, prefix in _SIZE_UNITS:
        if n_bytes >= scale:
            return f"{n_bytes / scale:.1f} {prefix}{'i' if iec else ''}B"
    return f"{n_bytes:.0f} B"


def duration(seconds: float) -> str:
    """A time span as ``H:MM:SS`` (``0:00:41``, ``12:03:09``), rounded to the second; negative spans are 0."""
    total = max(0, round(seconds))
    hours, rest = divmod(total, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}"


def f1_heading(averages: Iterable[str | None]) -> str:
    """The heading of an F1 column whose rows were averaged as ``averages`` (``f1_average``'s, None where
    a record does not say): ``F1 (binary)``, ``F1 (macro)``, or both named when the rows mix them."""
    known = sorted({a for a in averages if a is not None})
    return f"F1 ({' / '.join(known)})" if known else "F1"
