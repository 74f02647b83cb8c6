"""Put LoRALinear into any ``nn.Module`` and take it out again: wrap the target Linears (which ones is
``targets``' job), freeze the rest, merge, unmerge, switch off, unload, and move LoRA tensors in and out.

Injection fails loudly (``targets.match_targets``): zero matches, a match that is not ``nn.Linear``, or
a layer wrapped twice is a ``LoraFtError``.

``inject_lora``'s ``targets``: exact module names or dotted suffixes (``"query"``, ``"attn.Wq"``), a
regex (full match on the module name), a list of them, ``"all-linear"`` (every Linear outside the
head), or None for the model type's default (BERT query/value, ...). Each match becomes a
``LoRALinear`` (``use_dora``: ``DoRALinear``) of rank ``r`` scaled by ``alpha / r``; ``head`` names
modules that train fully (the classifier). Example::

    report = inject_lora(model, ["Wq", "Wv"], r=8, alpha=16, head=["classifier"])
    report.wrapped  # [WrappedInfo("blocks.0.attn.Wq", 64, 64, 8, 1024), ...]
    lora_layers(model)  # {"blocks.0.attn.Wq": LoRALinear(...), ...}
    merge_and_unload(model)  # plain nn.Linear again, the updates folded in
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import torch
from torch import nn

from lora_ft.errors import LoraFtError
from lora_ft.lora.dora import DoRALinear
from lora_ft.lora.layer import LoRALinear
from lora_ft.lora.targets import (
    check_patterns,
    head_params,
    is_under,
    match_targets,
    pattern_value,
    resolve_head,
)


@dataclass
class WrappedInfo:
    name: str
    in_features: int
    out_features: int
    r: int
    params: int  # r * (in_features + out_features), + out_features for DoRA's magnitude


@dataclass
class InjectionReport:
    """What ``inject_lora`` did; parameter counts are over the whole model after injection."""

    wrapped: list[WrappedInfo] = field(default_factory=list)
    head: list[str] = field(default_factory=list)
    lora_params: int = 0
    head_params: int = 0
    trainable_params: int = 0
    total_params: int = 0

    @property
    def trainable_fraction(self) -> float:
        return self.trainable_params / self.total_params if self.total_params else 0.0


def _set_module(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent), child, module)


def inject_lora(
    model: nn.Module,
    targets: str | list[str] | None,
    *,
    r: int,
    alpha: float,
    dropout: float = 0.0,
    init: str = "kaiming",
    init_std: float | None = None,
    rslora: bool = False,
    use_dora: bool = False,
    rank_pattern: dict[str, int] | None = None,
    alpha_pattern: dict[str, float] | None = None,
    head: Iterable[str] = (),
    exclude_head: bool = True,
) -> InjectionReport:
    """Wrap the target Linears in place, freeze everything, then unfreeze every LoRA layer and ``head``.

    E.g. ``inject_lora(model, ["Wq", "Wv"], r=8, alpha=16, head=["classifier"])``; ``targets``: the module's
    docstring; ``init``/``init_std``/``dropout``: ``LoRALinear``. With ``exclude_head`` the spec never selects
    Linears inside the head. ``rank_pattern``/``alpha_pattern`` give some modules another ``r``/``alpha`` (PEFT).

    Raises:
        LoraFtError: see ``match_targets``; an unknown head name; a target inside a trained head; a
            pattern key that is not a regex or matches no wrapped module.
    """
    head_names = resolve_head(model, head)
    names = match_targets(model, targets, exclude=head_names if exclude_head else ())
    overlap = [n for n in names if any(is_under(n, h) for h in head_names)]
    if overlap:
        # The head's base weights would train alongside their own LoRA update: two updates to one weight.
        raise LoraFtError(f"targets {', '.join(overlap)} lie inside head modules {', '.join(head_names)}")
    check_patterns(names, {"rank_pattern": rank_pattern, "alpha_pattern": alpha_pattern})
    report = InjectionReport(head=head_names)
    wrapper = DoRALinear if use_dora else LoRALinear
    for name in names:
        layer = wrapper(
            model.get_submodule(name),
            r=pattern_value(rank_pattern, name, r),
            alpha=pattern_value(alpha_pattern, name, alpha),
            dropout=dropout,
            init=init,
            init_std=init_std,
            rslora=rslora,
        )
        _set_module(model, name, layer)
        params = sum(p.numel() for p in _lora_params(layer))
        report.wrapped.append(WrappedInfo(name, layer.in_features, layer.out_features, layer.r, params))
    for p in model.parameters():
        p.requires_grad_(False)
    for layer in lora_layers(model).values():
        for p in _lora_params(layer):
            p.requires_grad_(True)
    trained_head = head_params(model, head_names)
    for p in trained_head:
        p.requires_grad_(True)
    report.lora_params = sum(w.params for w in report.wrapped)
    report.head_params = sum(p.numel() for p in trained_head)
    report.trainable_params, report.total_params = count_parameters(model)
    return report


def freeze_for_method(model: nn.Module, method: str, head: list[str]) -> None:
    """``full``: every parameter trains; ``head``: only the ``head`` modules train."""
    if method == "full":
        for p in model.parameters():
            p.requires_grad_(True)
    elif method == "head":
        if not head:
            raise LoraFtError(
                "method 'head' trains only the head modules, and none were named; set lora.head"
            )
        trained_head = head_params(model, resolve_head(model, head))
        for p in model.parameters():
            p.requires_grad_(False)
        for p in trained_head:
            p.requires_grad_(True)
    elif method == "lora":
        raise LoraFtError("method 'lora' is built by inject_lora, not freeze_for_method")
    else:
        raise LoraFtError(f"unknown training method {method!r}; use lora, full or head")


def _lora_params(layer: LoRALinear) -> list[nn.Parameter]:
    """What trains in a LoRA layer: A and B, and DoRA's magnitude."""
    return [layer.lora_A, layer.lora_B, *([layer.lora_magnitude] if layer.use_dora else [])]


def lora_layers(model: nn.Module) -> dict[str, LoRALinear]:
    """``{module name: layer}`` for every ``LoRALinear`` (and ``DoRALinear``) in ``model``, in module order."""
    return {n: m for n, m in model.named_modules() if isinstance(m, LoRALinear)}


def merge_lora(model: nn.Module) -> None:
    """Fold every layer's update into its base weight (``W += B @ A * scaling``), in place; idempotent.

    Merged, a layer runs ``base(x)`` alone: the same outputs at the cost of a plain Linear. Example::

        lora_ft.merge_lora(model)  # serve fast
        lora_ft.unmerge_lora(model)  # back to trainable A and B beside the original W
    """
    for layer in lora_layers(model).values():
        layer.merge()


def unmerge_lora(model: nn.Module) -> None:
    """Take every merged update back out of its base weight (``W -= B @ A * scaling``); a no-op if unmerged."""
    for layer in lora_layers(model).values():
        layer.unmerge()


def set_lora_disabled(model: nn.Module, disabled: bool) -> None:
    """Switch every layer's update off (``True``: each computes ``base(x)``) or back on; no weight changes.

    Example: ``set_lora_disabled(model, True)`` gives the base model's outputs from the wrapped model,
    merged or not.
    """
    for layer in lora_layers(model).values():
        layer.disabled = disabled


def merge_and_unload(model: nn.Module) -> nn.Module:
    """Fold every LoRA update into its base and put the plain ``nn.Linear`` back, in place.

    The update is folded even where the ``disabled`` switch is on: unloading keeps the adapter, not the
    switch. Afterwards the state-dict keys are exactly those of the unwrapped model (no ``.base.``).
    """
    for name, layer in lora_layers(model).items():
        layer.merge()
        _set_module(model, name, layer.base)
    return model


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """``(trainable, total)``; ``parameters()`` yields a shared or tied tensor once, so it counts once."""
    params = list(model.parameters())
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)


def lora_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """``{"<name>.lora_A": (r, in), "<name>.lora_B": (out, r)}`` for every wrapped layer, and
    ``"<name>.lora_magnitude": (out,)`` for DoRA layers."""
    out: dict[str, torch.Tensor] = {}
    for name, layer in lora_layers(model).items():
        out[f"{name}.lora_A"] = layer.lora_A.detach()
        out[f"{name}.lora_B"] = layer.lora_B.detach()
        if layer.use_dora:
            out[f"{name}.lora_magnitude"] = layer.lora_magnitude.detach()
    return out


def load_lora_state_dict(
    model: nn.Module, state_dict: dict[str, torch.Tensor], strict: bool = True
) -> tuple[list[str], list[str]]:
    """Copy LoRA tensors into the wrapped layers; returns ``(missing, unexpected)`` keys.

    Raises:
        LoraFtError: a shape mismatch, or with ``strict`` any missing or unexpected key.
    """
    own = lora_state_dict(model)
    missing = sorted(set(own) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(own))
    mismatched = [
        f"{k} {tuple(state_dict[k].shape)} vs {tuple(own[k].shape)} in the model"
        for k in sorted(set(own) & set(state_dict))
        if state_dict[k].shape != own[k].shape
    ]
    problems = [f"shape mismatch: {'; '.join(mismatched)}"] if mismatched else []
    if strict and missing:
        problems.append(f"missing keys: {', '.join(missing)}")
    if strict and unexpected:
        problems.append(f"unexpected keys: {', '.join(unexpected)}")
    if problems:
        raise LoraFtError("cannot load the LoRA weights: " + "; ".join(problems))
    with torch.no_grad():
        for key in sorted(set(own) & set(state_dict)):
            own[key].copy_(state_dict[key])
    return missing, unexpected
