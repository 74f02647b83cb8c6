"""Save and load adapters in PEFT's directory format, so PEFT and lora-ft read each other's adapters.

Layout (PEFT ``save_pretrained`` for LoRA, checked against PEFT itself in tests/test_adapter_io.py):
    adapter_config.json        peft_type "LORA", r, lora_alpha, target_modules, modules_to_save, ...
    adapter_model.safetensors  base_model.model.<module>.lora_A.weight  (r, in)
                               base_model.model.<module>.lora_B.weight  (out, r)
                               base_model.model.<module>.lora_magnitude_vector  (out,), DoRA only
                               base_model.model.<head module>.<param>   (fully trained head)
We add our own records where PEFT ignores them: the safetensors header carries the scaling each
update was trained with, so an ``adapter_config.json`` edited afterwards (a different ``lora_alpha``)
is caught instead of silently changing the model; it also carries the label names and the settings
the base model was built with (a layer cut, a revision).
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn

from lora_ft.data import assets
from lora_ft.errors import LoraFtError
from lora_ft.finite import is_finite_number, is_within, require_finite
from lora_ft.fsutil import publishable_temp_dir, read_json_record
from lora_ft.lora import LoRALinear, lora_scaling
from lora_ft.lora.inject import inject_lora, lora_layers
from lora_ft.lora.targets import pattern_value, resolve_head

log = logging.getLogger("lora_ft")

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"
PREFIX = "base_model.model."
META_SCALING = "lora_ft.scaling"  # JSON {module: scaling} in the safetensors header
META_LABELS = "lora_ft.label_names"
META_MODEL = "lora_ft.model"  # JSON of the settings the base was built with (name, num_layers, revision)
# PEFT's name for DoRA's magnitude in the file (LoRALinear.lora_magnitude).
MAGNITUDE = "lora_magnitude_vector"

# Keys of adapter_config.json that lora-ft understands. Others (newer PEFT fields) are ignored, with a
# warning when they are set: PEFT writes every field of its config, and null means the feature is off.
_KNOWN_KEYS = {
    "peft_type", "task_type", "r", "lora_alpha", "lora_dropout", "target_modules", "modules_to_save",
    "base_model_name_or_path", "bias", "fan_in_fan_out", "use_rslora", "init_lora_weights", "rank_pattern",
    "alpha_pattern", "revision", "inference_mode", "use_dora", "layers_to_transform", "layers_pattern",
    "auto_mapping", "peft_version", "exclude_modules", "layer_replication", "megatron_config", "megatron_core",
    "loftq_config", "eva_config", "corda_config", "lora_bias", "target_parameters", "trainable_token_indices",
    "use_qalora", "qalora_group_size", "alora_invocation_tokens", "arrow_config", "ensure_weight_tying",
}  # fmt: skip
# Known keys that, when set, make the adapter compute something LoRALinear does not.
_UNSUPPORTED = {
    "lora_bias": "LoRA bias terms (lora_bias)",
    "fan_in_fan_out": "fan_in_fan_out layers (GPT-2 Conv1D)",
    "use_qalora": "QA-LoRA",
    "layer_replication": "layer replication",
    "target_parameters": "LoRA on parameters (target_parameters)",
    "trainable_token_indices": "trainable tokens",
    "alora_invocation_tokens": "activated LoRA (aLoRA)",
    "arrow_config": "Arrow routing",
}
# These inits rewrite the base weights: such an adapter needs the residual base PEFT saved with it.
_BASE_REWRITING_INITS = ("pissa", "olora", "corda", "loftq")


def _published_base(name: str) -> str:
    """What the adapter records as its base: a built-in's hub id, so PEFT users online get the same weights."""
    return assets.hub_id_of(name) or name


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
    init: str | None = None,
    model_settings: dict[str, Any] | None = None,
) -> Path:
    """Write ``model``'s LoRA layers and head modules to ``out_dir`` (PEFT format), atomically.

    A built-in base (``minilm-l6``) is recorded under its hub id; ``model_settings`` keep the name
    lora-ft loads it by. ``init`` (default: the layers' own) is recorded as ``init_lora_weights``. The
    files are written to a temporary sibling directory that is renamed into place, so a crash leaves
    either no adapter or a complete one.

    Raises:
        LoraFtError: the model has no LoRA layers, or ``out_dir`` already exists.
    """
    layers = lora_layers(model)
    if not layers:
        raise LoraFtError("the model has no LoRA layers to save; train with --method lora")
    out = Path(out_dir)
    if out.exists():
        raise LoraFtError(f"adapter directory {out} already exists")
    # lora.head may name modules by suffix ("pooler"); the file needs full names ("bert.pooler").
    head = resolve_head(model, head)
    tensors: dict[str, torch.Tensor] = {}
    for name, layer in layers.items():
        tensors[f"{PREFIX}{name}.lora_A.weight"] = layer.lora_A.detach().to("cpu").contiguous()
        tensors[f"{PREFIX}{name}.lora_B.weight"] = layer.lora_B.detach().to("cpu").contiguous()
        if layer.use_dora:
            tensors[f"{PREFIX}{name}.{MAGNITUDE}"] = layer.lora_magnitude.detach().to("cpu").contiguous()
    tensors.update(_head_tensors(model, head))
    require_finite(tensors, f"refusing to write the adapter {out}, its weights are not finite")

    ranks = Counter(layer.r for layer in layers.values())
    alphas = Counter(layer.alpha for layer in layers.values())
    r = ranks.most_common(1)[0][0]
    alpha = alphas.most_common(1)[0][0]
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
        "task_type": "SEQ_CLS",
        "base_model_name_or_path": _published_base(base_model_name_or_path),
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
    metadata = {"format": "pt", META_SCALING: json.dumps({n: layer.scaling for n, layer in layers.items()})}
    if label_names is not None:
        metadata[META_LABELS] = json.dumps(list(label_names))
    if model_settings is not None:
        metadata[META_MODEL] = json.dumps(model_settings)

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = publishable_temp_dir(out.parent, f".{out.name}.", ".tmp")
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
    magnitude: dict[str, torch.Tensor] = field(default_factory=dict)  # DoRA: module -> m (out,)
    scaling: dict[str, float] = field(default_factory=dict)  # from our metadata, when lora-ft wrote it
    label_names: list[str] | None = None
    model_settings: dict[str, Any] | None = None  # from our metadata, when lora-ft wrote it

    @property
    def use_dora(self) -> bool:
        return bool(self.config.get("use_dora"))

    @property
    def base_model(self) -> str | None:
        return self.config.get("base_model_name_or_path")

    @property
    def num_labels(self) -> int | None:
        """The label count: our metadata, else the output rows of the head's last projection, else None."""
        if self.label_names is not None:
            return len(self.label_names)
        # HF heads end in `classifier` (BERT, DistilBERT), `classifier.out_proj` (RoBERTa) or `score`.
        for leaf in ("out_proj", "classifier", "score"):
            for module, params in self.head.items():
                weight = params.get("weight")
                if module.rsplit(".", 1)[-1] == leaf and weight is not None and weight.ndim == 2:
                    return int(weight.shape[0])
        return None

    def rank_of(self, module: str) -> int:
        return int(self.lora[module][0].shape[0])

    def alpha_of(self, module: str) -> float:
        return float(pattern_value(self.config.get("alpha_pattern"), module, self.config["lora_alpha"]))


def is_adapter_dir(path: str | Path) -> bool:
    return (Path(path) / CONFIG_NAME).is_file()


def _check_config(config: Any, cfg_path: Path) -> None:
    if not isinstance(config, dict) or config.get("peft_type", "LORA") != "LORA":
        peft_type = config.get("peft_type") if isinstance(config, dict) else None
        raise LoraFtError(
            f"{cfg_path}: peft_type {peft_type!r} is not LORA; lora-ft reads LoRA adapters only"
        )
    for key in ("r", "lora_alpha"):
        if key not in config:
            raise LoraFtError(f"{cfg_path} has no {key!r}; is it a LoRA adapter config?")
    _check_values(config, cfg_path)
    for key, feature in _UNSUPPORTED.items():
        if config.get(key):
            raise LoraFtError(f"{cfg_path}: {feature} adapters are not supported by lora-ft ({key} is set)")
    if config.get("bias", "none") != "none":
        raise LoraFtError(
            f"{cfg_path}: bias={config['bias']!r} adapters also train base biases, which lora-ft does not "
            "load; only bias='none' is supported"
        )
    init = config.get("init_lora_weights")
    if isinstance(init, str) and init.lower().startswith(_BASE_REWRITING_INITS):
        raise LoraFtError(
            f"{cfg_path}: init_lora_weights={init!r} rewrites the base weights, so this adapter does not apply "
            "to the original base; convert it with PEFT (save_pretrained(path_initial_model_for_weight_conversion=...))"
        )
    unknown = sorted(k for k in set(config) - _KNOWN_KEYS if config[k] not in (None, False, {}, [], ""))
    if unknown:
        log.warning(
            "adapter config %s: ignoring keys lora-ft does not know (from a newer PEFT?): %s; if they change "
            "what the adapter computes, results will differ from PEFT's",
            cfg_path,
            ", ".join(unknown),
        )


def _is_rank(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def _is_alpha(value: Any) -> bool:
    return is_finite_number(value) and value > 0


def _check_regex(pattern: str, where: str) -> None:
    try:
        re.compile(pattern)
    except re.error as exc:
        raise LoraFtError(f"{where} {pattern!r} is not a valid regex ({exc})") from None


def _check_values(config: dict[str, Any], cfg_path: Path) -> None:
    """The type and range of every value lora-ft computes with; JSON allows NaN, strings and the rest."""
    if not _is_rank(config["r"]):
        raise LoraFtError(f"{cfg_path}: r must be an integer >= 1, got {config['r']!r}")
    if not _is_alpha(config["lora_alpha"]):
        raise LoraFtError(f"{cfg_path}: lora_alpha must be a finite number > 0, got {config['lora_alpha']!r}")
    dropout = config.get("lora_dropout")
    if dropout is not None and not (is_finite_number(dropout) and 0 <= dropout < 1):
        raise LoraFtError(f"{cfg_path}: lora_dropout must be a number in [0, 1), got {dropout!r}")
    for key in ("use_rslora", "use_dora"):
        if config.get(key) is not None and not isinstance(config[key], bool):
            raise LoraFtError(f"{cfg_path}: {key} must be true or false, got {config[key]!r}")
    targets = config.get("target_modules")
    if isinstance(targets, str):  # PEFT: a string is a regex over full module names
        _check_regex(targets, f"{cfg_path}: target_modules")
    elif targets is not None and not (isinstance(targets, list) and all(isinstance(t, str) for t in targets)):
        raise LoraFtError(f"{cfg_path}: target_modules must be a regex or a list of names, got {targets!r}")
    for key, valid, what in (
        ("rank_pattern", _is_rank, "an integer >= 1"),
        ("alpha_pattern", _is_alpha, "a finite number > 0"),
    ):
        pattern = config.get(key)
        if pattern is None:
            continue
        if not isinstance(pattern, dict):
            raise LoraFtError(f"{cfg_path}: {key} must map module regexes to values, got {pattern!r}")
        for name, value in pattern.items():
            _check_regex(name, f"{cfg_path}: {key} key")
            if not valid(value):
                raise LoraFtError(f"{cfg_path}: {key}[{name!r}] must be {what}, got {value!r}")


def _read_weights(weights_path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    try:
        with safe_open(str(weights_path), "pt") as f:
            metadata = f.metadata() or {}
            tensors = {key: f.get_tensor(key) for key in f.keys()}
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else "corrupt file"
        raise LoraFtError(f"cannot read {weights_path}: {first} (a corrupt or truncated file?)") from None
    return tensors, metadata


def _metadata_json(metadata: dict[str, str], key: str, weights_path: Path) -> Any:
    if key not in metadata:
        return None
    try:
        return json.loads(metadata[key])
    except json.JSONDecodeError:
        raise LoraFtError(f"{weights_path}: the {key} record in the header is not valid JSON") from None


def read_adapter(path: str | Path) -> Adapter:
    """Read and check an adapter directory (ours or PEFT's).

    Raises:
        LoraFtError: missing files, unreadable safetensors, an unsupported LoRA variant, tensors that
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
                f"adapter {p} has only pickled weights (adapter_model.bin), which can run code when loaded; "
                "re-save it with safetensors (PEFT: save_pretrained(..., safe_serialization=True))"
            )
        raise LoraFtError(f"adapter {p} is incomplete: {WEIGHTS_NAME} is missing")
    try:
        config = read_json_record(cfg_path, "adapter config")
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise LoraFtError(f"{cfg_path} is not valid JSON ({exc.__class__.__name__})") from None
    _check_config(config, cfg_path)
    tensors, metadata = _read_weights(weights_path)
    require_finite(
        tensors, f"{weights_path} holds weights that are not finite, so the adapter cannot be used"
    )

    lora: dict[str, dict[str, torch.Tensor]] = {}
    head: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in tensors.items():
        name = key[len(PREFIX) :] if key.startswith(PREFIX) else key
        module, _, param = name.rpartition(".")
        match = re.fullmatch(rf"(.+)\.(?:(lora_A|lora_B)\.weight|({MAGNITUDE}))", name)
        if match:
            lora.setdefault(match.group(1), {})[match.group(2) or match.group(3)] = tensor
        elif "lora_" in name:  # lora_embedding_A, lora_E, ...: variants we cannot apply
            raise LoraFtError(f"adapter {p}: tensor {key} belongs to a LoRA variant lora-ft does not support")
        elif not module:
            raise LoraFtError(f"adapter {p}: tensor {key} names no module")
        else:
            head.setdefault(module, {})[param] = tensor
    pairs, magnitude = {}, {}
    dora = bool(config.get("use_dora"))
    needed = {"lora_A", "lora_B", MAGNITUDE} if dora else {"lora_A", "lora_B"}
    for module, parts in lora.items():
        if set(parts) != needed:
            raise LoraFtError(
                f"adapter {p}: module {module} has {sorted(parts)} but needs {' and '.join(sorted(needed))}"
                + ("" if dora else f" ({MAGNITUDE} is DoRA's, and use_dora is not set in {CONFIG_NAME})")
            )
        a, b = parts["lora_A"], parts["lora_B"]
        if a.ndim != 2 or b.ndim != 2 or a.shape[0] != b.shape[1]:
            raise LoraFtError(
                f"adapter {p}: {module} lora_A {tuple(a.shape)} and lora_B {tuple(b.shape)} do not fit"
            )
        if dora and tuple(parts[MAGNITUDE].shape) != (b.shape[0],):
            raise LoraFtError(
                f"adapter {p}: {module} {MAGNITUDE} has shape {tuple(parts[MAGNITUDE].shape)}, "
                f"lora_B has {b.shape[0]} output features"
            )
        pairs[module] = (a, b)
        if dora:
            magnitude[module] = parts[MAGNITUDE]
    if not pairs:
        raise LoraFtError(f"adapter {p} has no lora_A/lora_B tensors")
    scaling = _metadata_json(metadata, META_SCALING, weights_path) or {}
    if not isinstance(scaling, dict):
        raise LoraFtError(
            f"{weights_path}: the {META_SCALING} record in the header must map modules to numbers"
        )
    for module, value in scaling.items():
        if not is_finite_number(value):
            raise LoraFtError(
                f"{weights_path}: the {META_SCALING} record in the header gives {module} the scaling {value!r}, "
                "not a finite number"
            )
    adapter = Adapter(
        path=p,
        config=config,
        lora=pairs,
        head=head,
        magnitude=magnitude,
        scaling={k: float(v) for k, v in scaling.items()},
        label_names=_metadata_json(metadata, META_LABELS, weights_path),
        model_settings=_metadata_json(metadata, META_MODEL, weights_path),
    )
    _check_ranks_and_scaling(adapter)
    return adapter


def _check_ranks_and_scaling(adapter: Adapter) -> None:
    cfg = adapter.config
    for module in adapter.lora:
        r = adapter.rank_of(module)
        expected = pattern_value(cfg.get("rank_pattern"), module, cfg["r"])
        if r != expected:
            raise LoraFtError(
                f"adapter {adapter.path}: {module} has rank {r} in the weights but r={expected} in {CONFIG_NAME}"
            )
        if module in adapter.scaling:
            alpha = adapter.alpha_of(module)
            scaling = lora_scaling(alpha, r, bool(cfg.get("use_rslora")))
            if not is_within(abs(scaling - adapter.scaling[module]), 1e-6 * max(1.0, abs(scaling))):
                raise LoraFtError(
                    f"adapter {adapter.path}: {module} was trained with scaling {adapter.scaling[module]:g} but "
                    f"{CONFIG_NAME} (lora_alpha={alpha:g}, r={r}) gives {scaling:g}; restore the original lora_alpha"
                )


def check_adapter(model: nn.Module, adapter: Adapter) -> None:
    """Check that ``adapter`` fits ``model`` (module names, Linear shapes, head parameters), touching nothing.

    Raises:
        LoraFtError: naming the first module that is missing or has another shape, which means the
            adapter was made for a different base model (or another number of labels).
    """
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
        module = modules.get(name)
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
    layers = lora_layers(model)
    modules = dict(model.named_modules())
    with torch.no_grad():
        for module, (a, b) in adapter.lora.items():
            layers[module].lora_A.copy_(a)
            layers[module].lora_B.copy_(b)
            if adapter.use_dora:
                layers[module].lora_magnitude.copy_(adapter.magnitude[module])
        for name, params in adapter.head.items():
            modules[name].load_state_dict(params)
    # Each inject_lora call froze everything but LoRA; the head trains too, as in the run that made it.
    for name in adapter.head:
        for param in modules[name].parameters():
            param.requires_grad_(True)
