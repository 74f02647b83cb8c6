"""Save and load adapters in PEFT's directory format, so PEFT and lora-ft read each other's adapters.

Layout (PEFT ``save_pretrained`` for LoRA):
    adapter_config.json        peft_type "LORA", r, lora_alpha, target_modules, modules_to_save, ...
    adapter_model.safetensors  base_model.model.<module>.lora_A.weight  (r, in)
                               base_model.model.<module>.lora_B.weight  (out, r)
                               base_model.model.<head module>.<param>   (fully trained head)
We add our own records where PEFT ignores them: the safetensors header carries the scaling each
update was trained with, so an ``adapter_config.json`` edited afterwards (a different ``lora_alpha``)
is caught instead of silently changing the model.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from lora_ft.errors import LoraFtError
from lora_ft.inject import inject_lora, lora_layers
from lora_ft.lora import LoRALinear

log = logging.getLogger("lora_ft")

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"
PREFIX = "base_model.model."
META_SCALING = "lora_ft.scaling"  # JSON {module: scaling} in the safetensors header
META_LABELS = "lora_ft.label_names"
META_MODEL = (
    "lora_ft.model"  # JSON of the model settings the base was built with (name, num_layers, revision)
)

# Keys of adapter_config.json that lora-ft understands; others (newer PEFT fields) are ignored with a warning.
_KNOWN_KEYS = {
    "peft_type", "task_type", "r", "lora_alpha", "lora_dropout", "target_modules", "modules_to_save",
    "base_model_name_or_path", "bias", "fan_in_fan_out", "use_rslora", "init_lora_weights", "rank_pattern",
    "alpha_pattern", "revision", "inference_mode", "use_dora", "layers_to_transform", "layers_pattern",
    "auto_mapping", "peft_version", "exclude_modules", "layer_replication", "megatron_config", "megatron_core",
    "loftq_config", "eva_config", "corda_config", "lora_bias", "target_parameters", "trainable_token_indices",
    "use_qalora", "qalora_group_size", "alora_invocation_tokens", "arrow_config", "ensure_weight_tying",
}  # fmt: skip


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


def _head_tensors(model: nn.Module, head: list[str]) -> dict[str, torch.Tensor]:
    modules = dict(model.named_modules())
    out = {}
    for name in head:
        for pname, p in modules[name].state_dict().items():
            out[f"{PREFIX}{name}.{pname}"] = p.detach().to("cpu").contiguous()
    return out


def save_adapter(
    model: nn.Module,
    out_dir: str | Path,
    *,
    head: list[str],
    base_model_name_or_path: str,
    label_names: list[str] | None = None,
    init: str = "kaiming",
    model_settings: dict[str, Any] | None = None,
) -> Path:
    """Write ``model``'s LoRA layers and head modules to ``out_dir`` (PEFT format), atomically.

    The tensors are written to a temporary sibling directory that is renamed into place, so a crash
    leaves either no adapter or a complete one.

    Raises:
        LoraFtError: the model has no LoRA layers, or ``out_dir`` already exists.
    """
    layers = lora_layers(model)
    if not layers:
        raise LoraFtError("the model has no LoRA layers to save; train with --method lora")
    out = Path(out_dir)
    if out.exists():
        raise LoraFtError(f"adapter directory {out} already exists")
    tensors: dict[str, torch.Tensor] = {}
    for name, layer in layers.items():
        tensors[f"{PREFIX}{name}.lora_A.weight"] = layer.lora_A.detach().to("cpu").contiguous()
        tensors[f"{PREFIX}{name}.lora_B.weight"] = layer.lora_B.detach().to("cpu").contiguous()
    tensors.update(_head_tensors(model, head))

    ranks = Counter(layer.r for layer in layers.values())
    alphas = Counter(layer.alpha for layer in layers.values())
    r = ranks.most_common(1)[0][0]
    alpha = alphas.most_common(1)[0][0]
    first = next(iter(layers.values()))
    config = {
        "peft_type": "LORA",
        "task_type": "SEQ_CLS",
        "base_model_name_or_path": base_model_name_or_path,
        "r": r,
        "lora_alpha": alpha,
        "lora_dropout": first.dropout_p,
        "target_modules": _short_targets(model, list(layers)),
        "modules_to_save": sorted({h.rsplit(".", 1)[-1] for h in head}) or None,
        "bias": "none",
        "fan_in_fan_out": False,
        "use_rslora": first.rslora,
        "init_lora_weights": True if init == "kaiming" else "gaussian",
        "rank_pattern": {n: layer.r for n, layer in layers.items() if layer.r != r},
        "alpha_pattern": {n: layer.alpha for n, layer in layers.items() if layer.alpha != alpha},
        "inference_mode": True,
        "use_dora": False,
    }
    metadata = {"format": "pt", META_SCALING: json.dumps({n: layer.scaling for n, layer in layers.items()})}
    if label_names is not None:
        metadata[META_LABELS] = json.dumps(list(label_names))
    if model_settings is not None:
        metadata[META_MODEL] = json.dumps(model_settings)

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        save_file(tensors, str(tmp / WEIGHTS_NAME), metadata=metadata)
        (tmp / CONFIG_NAME).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


@dataclass
class Adapter:
    """An adapter read from disk: its config, LoRA tensors per module, head tensors per module."""

    path: Path
    config: dict[str, Any]
    lora: dict[str, tuple[torch.Tensor, torch.Tensor]]  # module -> (A (r, in), B (out, r))
    head: dict[str, dict[str, torch.Tensor]]  # module -> {param: tensor}
    scaling: dict[str, float] = field(default_factory=dict)  # from our metadata, when lora-ft wrote it
    label_names: list[str] | None = None
    model_settings: dict[str, Any] | None = None  # from our metadata, when lora-ft wrote it

    @property
    def base_model(self) -> str | None:
        return self.config.get("base_model_name_or_path")

    def rank_of(self, module: str) -> int:
        return int(self.lora[module][0].shape[0])

    def alpha_of(self, module: str) -> float:
        pattern = self.config.get("alpha_pattern") or {}
        for key, value in pattern.items():
            if module == key or module.endswith("." + key):
                return float(value)
        return float(self.config["lora_alpha"])


def is_adapter_dir(path: str | Path) -> bool:
    return (Path(path) / CONFIG_NAME).is_file()


def read_adapter(path: str | Path) -> Adapter:
    """Read and check an adapter directory (ours or PEFT's).

    Raises:
        LoraFtError: missing files, unreadable safetensors, a non-LoRA or DoRA config, tensors that
            disagree with the config (rank), or a scaling that disagrees with what was trained.
    """
    p = Path(path)
    cfg_path, weights_path = p / CONFIG_NAME, p / WEIGHTS_NAME
    if not p.is_dir():
        raise LoraFtError(f"adapter directory not found: {p}")
    if not cfg_path.is_file():
        raise LoraFtError(f"{p} is not an adapter directory: {CONFIG_NAME} is missing")
    if not weights_path.is_file():
        if (p / "adapter_model.bin").is_file():
            raise LoraFtError(
                f"adapter {p} has only pickled weights (adapter_model.bin); re-save it with safetensors"
            )
        raise LoraFtError(f"adapter {p} is incomplete: {WEIGHTS_NAME} is missing")
    try:
        config = json.loads(cfg_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise LoraFtError(f"{cfg_path} is not valid JSON ({exc.__class__.__name__})") from None
    if not isinstance(config, dict) or config.get("peft_type", "LORA") != "LORA":
        raise LoraFtError(f"{cfg_path}: peft_type {config.get('peft_type')!r} is not LORA")
    if config.get("use_dora"):
        raise LoraFtError(f"{cfg_path}: DoRA adapters are not supported yet")
    unknown = sorted(set(config) - _KNOWN_KEYS)
    if unknown:
        log.warning(
            "adapter config %s: ignoring keys lora-ft does not know: %s", cfg_path, ", ".join(unknown)
        )
    for key in ("r", "lora_alpha"):
        if key not in config:
            raise LoraFtError(f"{cfg_path} has no {key!r}")
    try:
        tensors = load_file(str(weights_path))
        from safetensors import safe_open

        with safe_open(str(weights_path), "pt") as f:
            metadata = f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as exc:
        raise LoraFtError(
            f"cannot read {weights_path}: {str(exc).splitlines()[0] if str(exc) else 'corrupt file'}"
        ) from None

    lora: dict[str, dict[str, torch.Tensor]] = {}
    head: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in tensors.items():
        name = key[len(PREFIX) :] if key.startswith(PREFIX) else key
        for part in ("lora_A", "lora_B"):
            marker = f".{part}."
            if marker in name:
                module = name.split(marker)[0]
                lora.setdefault(module, {})[part] = tensor
                break
        else:
            module, param = name.rsplit(".", 1)
            head.setdefault(module, {})[param] = tensor
    pairs = {}
    for module, parts in lora.items():
        if set(parts) != {"lora_A", "lora_B"}:
            raise LoraFtError(f"adapter {p}: module {module} has {sorted(parts)} but needs lora_A and lora_B")
        a, b = parts["lora_A"], parts["lora_B"]
        if a.ndim != 2 or b.ndim != 2 or a.shape[0] != b.shape[1]:
            raise LoraFtError(
                f"adapter {p}: {module} lora_A {tuple(a.shape)} and lora_B {tuple(b.shape)} do not fit"
            )
        pairs[module] = (a, b)
    if not pairs:
        raise LoraFtError(f"adapter {p} has no lora_A/lora_B tensors")
    adapter = Adapter(
        path=p,
        config=config,
        lora=pairs,
        head=head,
        scaling={k: float(v) for k, v in json.loads(metadata.get(META_SCALING, "{}")).items()},
        label_names=json.loads(metadata[META_LABELS]) if META_LABELS in metadata else None,
        model_settings=json.loads(metadata[META_MODEL]) if META_MODEL in metadata else None,
    )
    _check_ranks_and_scaling(adapter)
    return adapter


def _check_ranks_and_scaling(adapter: Adapter) -> None:
    cfg = adapter.config
    rank_pattern = cfg.get("rank_pattern") or {}
    for module in adapter.lora:
        r = adapter.rank_of(module)
        expected = next(
            (v for k, v in rank_pattern.items() if module == k or module.endswith("." + k)), cfg["r"]
        )
        if r != expected:
            raise LoraFtError(
                f"adapter {adapter.path}: {module} has rank {r} in the weights but r={expected} in {CONFIG_NAME}"
            )
        if module in adapter.scaling:
            alpha = adapter.alpha_of(module)
            scaling = alpha / (r**0.5 if cfg.get("use_rslora") else r)
            if abs(scaling - adapter.scaling[module]) > 1e-6 * max(1.0, abs(scaling)):
                raise LoraFtError(
                    f"adapter {adapter.path}: {module} was trained with scaling {adapter.scaling[module]:g} but "
                    f"{CONFIG_NAME} (lora_alpha={alpha:g}, r={r}) gives {scaling:g}; restore the original lora_alpha"
                )


def apply_adapter(model: nn.Module, adapter: Adapter, *, dropout: float | None = None) -> None:
    """Wrap ``model``'s target Linears with LoRALinear and load the adapter's LoRA and head tensors.

    Raises:
        LoraFtError: a module the adapter names is missing from ``model`` or has another shape
            (the adapter was made for a different base model).
    """
    modules = dict(model.named_modules())
    for module, (a, b) in adapter.lora.items():
        target = modules.get(module)
        if target is None:
            raise LoraFtError(
                f"adapter {adapter.path} was made for another base model: module {module} is not in "
                f"{type(model).__name__} (adapter base: {adapter.base_model})"
            )
        if not isinstance(target, nn.Linear):
            raise LoraFtError(f"adapter {adapter.path}: {module} is a {type(target).__name__}, not a Linear")
        if a.shape[1] != target.in_features or b.shape[0] != target.out_features:
            raise LoraFtError(
                f"adapter {adapter.path} was made for another base model: {module} is "
                f"({target.out_features}, {target.in_features}) here but the adapter expects "
                f"({b.shape[0]}, {a.shape[1]})"
            )
    p = dropout if dropout is not None else float(adapter.config.get("lora_dropout") or 0.0)
    init = "gaussian" if adapter.config.get("init_lora_weights") == "gaussian" else "kaiming"
    for module in adapter.lora:
        inject_lora(
            model,
            [module],
            r=adapter.rank_of(module),
            alpha=adapter.alpha_of(module),
            dropout=p,
            init=init,
            rslora=bool(adapter.config.get("use_rslora")),
            head=[],
        )
    layers = lora_layers(model)
    with torch.no_grad():
        for module, (a, b) in adapter.lora.items():
            layers[module].lora_A.copy_(a)
            layers[module].lora_B.copy_(b)
    _load_head(model, adapter)
    # inject_lora froze everything but its own layer on each call; the loaded model trains like a fresh one.
    for layer in layers.values():
        layer.lora_A.requires_grad_(True)
        layer.lora_B.requires_grad_(True)
    for name in adapter.head:
        for param in modules[name].parameters():
            param.requires_grad_(True)


def _load_head(model: nn.Module, adapter: Adapter) -> None:
    modules = dict(model.named_modules())
    for name, params in adapter.head.items():
        module = modules.get(name)
        if module is None:
            raise LoraFtError(f"adapter {adapter.path}: head module {name} is not in {type(model).__name__}")
        own = module.state_dict()
        if set(own) != set(params):
            raise LoraFtError(
                f"adapter {adapter.path}: head module {name} has parameters {sorted(params)}, "
                f"the model has {sorted(own)}"
            )
        for pname, tensor in params.items():
            if own[pname].shape != tensor.shape:
                raise LoraFtError(
                    f"adapter {adapter.path}: head {name}.{pname} has shape {tuple(tensor.shape)}, the model "
                    f"expects {tuple(own[pname].shape)} (a different number of labels?)"
                )
        module.load_state_dict(params)
