"""Put an ``Adapter`` read from disk into a plain model: check that it fits, then wrap and load it.

``check_adapter`` touches nothing and names the first thing that does not fit (another layer cut,
``check_cut``; another base model; another number of labels); ``apply_adapter`` wraps the adapter's modules with ``inject_lora`` and
loads its tensors through ``inject.load_lora_state_dict``, the one path by which LoRA tensors enter
wrapped layers.
"""

from __future__ import annotations

from torch import nn

from lora_ft.errors import LoraFtError
from lora_ft.lora.inject import inject_lora, load_lora_state_dict
from lora_ft.lora.io import Adapter
from lora_ft.lora.layer import LoRALinear


def check_cut(model: nn.Module, adapter: Adapter, who: str, base: str) -> None:
    """Refuse an adapter trained on a base cut to its first N layers (``model.num_layers``) for a base
    with another layer count: its modules would all be found, and the uncut layers would silently
    change every output.

    Raises:
        LoraFtError: naming ``who`` (the adapter), the cut, ``base`` and its layer count.
    """
    cut = adapter.num_layers
    layers = getattr(getattr(model, "config", None), "num_hidden_layers", None)
    if cut is not None and layers is not None and cut != layers:
        raise LoraFtError(
            f"{who} was made on a base cut to {cut} layers, but base {base} has {layers}; load the base "
            f"with num_layers={cut} (model.num_layers, as the run that made it)"
        )


def check_adapter(model: nn.Module, adapter: Adapter) -> None:
    """Check that ``adapter`` fits ``model`` (layer count, module names, Linear shapes, head parameters),
    touching nothing.

    Raises:
        LoraFtError: a layer cut that differs from ``model``'s (``check_cut``), or the first module that
            is missing or has another shape, which means the adapter was made for a different base
            model (or another number of labels).
    """
    check_cut(model, adapter, f"adapter {adapter.path}", adapter.base_model or type(model).__name__)
    modules = dict(model.named_modules())
    where = f"adapter {adapter.path} (base {adapter.base_model or 'not recorded'})"
    for module, (a, b) in adapter.lora.items():
        target = modules.get(module)
        if target is None:
            raise LoraFtError(
                f"{where} was made for another base model: module {module} is not in {type(model).__name__}; "
                "pass the adapter's base model with --base"
            )
        if isinstance(target, LoRALinear):
            raise LoraFtError(f"{where}: {module} already has a LoRA layer; load adapters into a plain model")
        if not isinstance(target, nn.Linear):
            raise LoraFtError(f"{where}: {module} is a {type(target).__name__} here, not a Linear")
        if a.shape[1] != target.in_features or b.shape[0] != target.out_features:
            raise LoraFtError(
                f"{where} was made for another base model: {module} is "
                f"({target.out_features}, {target.in_features}) here but the adapter expects "
                f"({b.shape[0]}, {a.shape[1]})"
            )
    for name, params in adapter.head.items():
        _check_head_module(model, modules.get(name), name, params, where)


def _check_head_module(
    model: nn.Module, module: nn.Module | None, name: str, params: dict, where: str
) -> None:
    if module is None:
        raise LoraFtError(
            f"{where} was made for another base model: head module {name} is not in {type(model).__name__}"
        )
    own = module.state_dict()
    if set(own) != set(params):
        raise LoraFtError(
            f"{where}: head module {name} has parameters {sorted(params)}, the model has {sorted(own)}"
        )
    for pname, tensor in params.items():
        if own[pname].shape != tensor.shape:
            raise LoraFtError(
                f"{where}: head {name}.{pname} has shape {tuple(tensor.shape)}, the model expects "
                f"{tuple(own[pname].shape)} (a different number of labels, or another base model)"
            )


def apply_adapter(model: nn.Module, adapter: Adapter, *, dropout: float | None = None) -> None:
    """Wrap ``model``'s target Linears with LoRALinear and load the adapter's LoRA and head tensors.

    Everything is checked (``check_adapter``) before the model is touched. Afterwards the LoRA
    layers and the head train, as in a fresh ``inject_lora``.

    Raises:
        LoraFtError: see ``check_adapter``.
    """
    check_adapter(model, adapter)
    p = dropout if dropout is not None else float(adapter.config.get("lora_dropout") or 0.0)
    init = "gaussian" if adapter.config.get("init_lora_weights") == "gaussian" else "kaiming"
    # One injection per (rank, alpha): exact full names select exactly the adapter's modules.
    groups: dict[tuple[int, float], list[str]] = {}
    for module in adapter.lora:
        groups.setdefault((adapter.rank_of(module), adapter.alpha_of(module)), []).append(module)
    for (r, alpha), names in groups.items():
        inject_lora(
            model,
            names,
            r=r,
            alpha=alpha,
            dropout=p,
            init=init,
            rslora=bool(adapter.config.get("use_rslora")),
            use_dora=adapter.use_dora,
        )
    state = {}
    for module, (a, b) in adapter.lora.items():
        state[f"{module}.lora_A"], state[f"{module}.lora_B"] = a, b
        if adapter.use_dora:
            state[f"{module}.lora_magnitude"] = adapter.magnitude[module]
    # Not strict: LoRA layers the model already had elsewhere keep their own tensors.
    load_lora_state_dict(model, state, strict=False)
    modules = dict(model.named_modules())
    for name, params in adapter.head.items():
        modules[name].load_state_dict(params)
    # Each inject_lora call froze everything but LoRA; the head trains too, as in the run that made it.
    for name in adapter.head:
        for param in modules[name].parameters():
            param.requires_grad_(True)
