"""Write a model's LoRA layers and head as a PEFT adapter directory (the format: ``io``), atomically.

``adapter_config.json`` says what PEFT needs to rebuild the adapter: the most common rank and alpha
with ``rank_pattern``/``alpha_pattern`` for the others, and target and head names short enough for
PEFT's suffix rules to select exactly the modules we wrapped, and a layer cut (``CUT_KEY``). The
safetensors header adds our records (``io.META_*``): the scaling each update was trained with, the label
names, the task, the base's settings. Beside them, what PEFT users expect: a model card and the tokenizer.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import nn

from lora_ft.errors import LoraFtError
from lora_ft.finite import require_finite
from lora_ft.fsutil import give_default_modes, move_into_place, staging_dir
from lora_ft.lora.card import adapter_card
from lora_ft.lora.inject import lora_layers
from lora_ft.lora.io import (
    CARD_NAME,
    CONFIG_NAME,
    MAGNITUDE,
    META_LABELS,
    META_MODEL,
    META_SCALING,
    META_TASK,
    PREFIX,
    WEIGHTS_NAME,
)
from lora_ft.lora.layer import LoRALinear
from lora_ft.lora.peft_config import CUT_KEY
from lora_ft.lora.targets import resolve_head


def save_adapter(
    model: nn.Module,
    out_dir: str | Path,
    *,
    head: list[str],
    base_model_name_or_path: str,
    label_names: list[str] | None = None,
    init: str | None = None,
    model_settings: dict[str, Any] | None = None,
    tokenizer: Any = None,
    metrics: dict[str, Any] | None = None,
    local_base: str | None = None,
    task: dict[str, Any] | None = None,
) -> Path:
    """Write ``model``'s LoRA layers and head modules to ``out_dir`` (PEFT format), atomically.

    ``base_model_name_or_path`` is recorded as given: for a built-in base (``minilm-l6``) pass its hub
    id, so PEFT users online get the same weights; ``model_settings`` keep the name lora-ft loads it
    by, and their ``num_layers`` (a layer cut) is also written to ``adapter_config.json``. ``init``
    (default: the layers' own) is recorded as ``init_lora_weights``, ``task`` (``Task.to_dict()``) in the header. ``README.md`` is a model card
    (``card.adapter_card``: ``metrics`` and ``local_base`` go into it); ``tokenizer`` is saved beside
    it. The files are written to a temporary sibling directory that is renamed into place, so a crash
    leaves either no adapter or a complete one, with the permissions ``open`` gives.

    Raises:
        LoraFtError: the model has no LoRA layers, ``out_dir`` already exists, the weights are not
            finite, or the layers mix rsLoRA or DoRA with plain layers.
    """
    layers = lora_layers(model)
    if not layers:
        raise LoraFtError("the model has no LoRA layers to save; train with --method lora")
    out = Path(out_dir)
    if out.exists():
        raise LoraFtError(f"adapter directory {out} already exists")
    # lora.head may name modules by suffix ("pooler"); the file needs full names ("bert.pooler").
    head = resolve_head(model, head)
    tensors = _adapter_tensors(model, layers, head)
    require_finite(tensors, f"refusing to write the adapter {out}, its weights are not finite")
    cut = (model_settings or {}).get("num_layers")
    config = _adapter_config(model, layers, head, base_model_name_or_path, init, cut, task)
    card = adapter_card(
        config,
        label_names=label_names,
        num_layers=cut,
        metrics=metrics,
        local_base=local_base,
        with_tokenizer=tokenizer is not None,
    )
    metadata = _metadata(layers, label_names, model_settings, task)

    out.parent.mkdir(parents=True, exist_ok=True)
    with staging_dir(out.parent, f".{out.name}.", ".tmp") as tmp:
        save_file(tensors, str(tmp / WEIGHTS_NAME), metadata=metadata)
        (tmp / CONFIG_NAME).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        (tmp / CARD_NAME).write_text(card, encoding="utf-8")
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        give_default_modes(tmp)
        move_into_place(tmp, out)
    return out


def _metadata(
    layers: dict[str, LoRALinear],
    label_names: list[str] | None,
    model_settings: dict[str, Any] | None,
    task: dict[str, Any] | None,
) -> dict[str, str]:
    """The safetensors header's records (``io.META_*``)."""
    metadata = {"format": "pt", META_SCALING: json.dumps({n: layer.scaling for n, layer in layers.items()})}
    if label_names is not None:
        metadata[META_LABELS] = json.dumps(list(label_names))
    if model_settings is not None:
        metadata[META_MODEL] = json.dumps(model_settings)
    if task is not None:
        metadata[META_TASK] = json.dumps(task)
    return metadata


def _adapter_tensors(
    model: nn.Module, layers: dict[str, LoRALinear], head: list[str]
) -> dict[str, torch.Tensor]:
    """The file's tensors, on the CPU: every layer's ``lora_A``/``lora_B`` (DoRA: magnitude), the head's."""
    tensors: dict[str, torch.Tensor] = {}
    for name, layer in layers.items():
        tensors[f"{PREFIX}{name}.lora_A.weight"] = layer.lora_A.detach().to("cpu").contiguous()
        tensors[f"{PREFIX}{name}.lora_B.weight"] = layer.lora_B.detach().to("cpu").contiguous()
        if layer.use_dora:
            tensors[f"{PREFIX}{name}.{MAGNITUDE}"] = layer.lora_magnitude.detach().to("cpu").contiguous()
    modules = dict(model.named_modules())
    for name in head:
        for pname, p in modules[name].state_dict().items():
            tensors[f"{PREFIX}{name}.{pname}"] = p.detach().to("cpu").contiguous()
    return tensors


def _adapter_config(
    model: nn.Module,
    layers: dict[str, LoRALinear],
    head: list[str],
    base: str,
    init: str | None,
    cut: int | None,
    task: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """``adapter_config.json``: the most common rank and alpha, the others as PEFT's patterns, and the
    layer cut ``cut`` (``CUT_KEY``) when the base was cut; PEFT's ``task_type`` from ``task``'s problem
    type (``TOKEN_CLS`` for a token task: PeftModelForTokenClassification loads it)."""
    r = Counter(layer.r for layer in layers.values()).most_common(1)[0][0]
    alpha = Counter(layer.alpha for layer in layers.values()).most_common(1)[0][0]
    first = next(iter(layers.values()))
    for what, values in (
        ("rslora", {lay.rslora for lay in layers.values()}),
        ("DoRA", {lay.use_dora for lay in layers.values()}),
    ):
        if len(values) > 1:
            raise LoraFtError(
                f"the model mixes LoRA layers with and without {what}, which PEFT's config cannot express"
            )
    init = init or first.init
    config = {
        "peft_type": "LORA",
        "task_type": "TOKEN_CLS" if (task or {}).get("problem_type") == "token_classification" else "SEQ_CLS",
        "base_model_name_or_path": base,
        "r": r,
        "lora_alpha": alpha,
        "lora_dropout": first.dropout_p,
        "target_modules": _short_targets(model, list(layers)),
        "modules_to_save": _short_heads(model, head),
        "bias": "none",
        "fan_in_fan_out": False,
        "use_rslora": first.rslora,
        "init_lora_weights": True if init == "kaiming" else "gaussian",
        "rank_pattern": {n: layer.r for n, layer in layers.items() if layer.r != r},
        "alpha_pattern": {n: layer.alpha for n, layer in layers.items() if layer.alpha != alpha},
        "inference_mode": True,
        "use_dora": first.use_dora,
    }
    return config if cut is None else config | {CUT_KEY: cut}


def _short_targets(model: nn.Module, wrapped: list[str]) -> list[str]:
    """Leaf names (``query``) when they select exactly the wrapped modules under PEFT's suffix rule, else full names."""
    leaves = sorted({n.rsplit(".", 1)[-1] for n in wrapped})
    selected = {
        name
        for name, module in model.named_modules()
        if isinstance(module, (nn.Linear, LoRALinear))
        and any(name == t or name.endswith("." + t) for t in leaves)
    }
    return leaves if selected == set(wrapped) else sorted(wrapped)


def _short_heads(model: nn.Module, head: list[str]) -> list[str] | None:
    """``modules_to_save``: leaf names when they select exactly ``head`` under PEFT's rule, else full names.

    PEFT wraps every module whose name *ends with* an entry, with no dot boundary ("classifier" also
    selects "pre_classifier"), so leaf names are written only when that rule picks out the head alone.
    """
    if not head:
        return None
    leaves = sorted({h.rsplit(".", 1)[-1] for h in head})
    selected = {n for n, _ in model.named_modules() if n and any(n.endswith(leaf) for leaf in leaves)}
    return leaves if selected == set(head) else sorted(head)
