"""Label names read back from files (``labels.json``, a saved adapter's header, a run's metrics, a
model's ``id2label``): one check, so a broken or ambiguous list is one clear error wherever it comes from."""

from __future__ import annotations

from typing import Any

from lora_ft.errors import LoraFtError


def check_label_names(value: Any, where: str) -> list[str]:
    """``value`` as label names (index = label id): a non-empty list of distinct strings.

    Raises:
        LoraFtError: naming ``where``: not a list of strings, empty, or a name given to two ids.
    """
    if not isinstance(value, list) or not value or not all(isinstance(n, str) for n in value):
        shown = repr(value)
        shown = shown if len(shown) <= 60 else shown[:57] + "..."
        raise LoraFtError(f"{where} must be a non-empty list of label names (index = label id), got {shown}")
    seen: dict[str, int] = {}
    for i, name in enumerate(value):
        if name in seen:
            raise LoraFtError(
                f"{where} names label ids {seen[name]} and {i} both {name!r}; give each label its own name"
            )
        seen[name] = i
    return list(value)
