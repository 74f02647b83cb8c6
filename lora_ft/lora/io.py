"""PEFT's adapter directory format, and reading one (ours or PEFT's) into an ``Adapter``.

Layout (PEFT ``save_pretrained`` for LoRA, checked against PEFT itself in tests/test_adapter_io.py):
    adapter_config.json        peft_type "LORA", r, lora_alpha, target_modules, modules_to_save, ...
    adapter_model.safetensors  base_model.model.<module>.lora_A.weight  (r, in)
                               base_model.model.<module>.lora_B.weight  (out, r)
                               base_model.model.<module>.lora_magnitude_vector  (out,), DoRA only
                               base_model.model.<head module>.<param>   (fully trained head)
Beside them: ``README.md`` (a model card, ``card``) and the base's tokenizer files, as PEFT users expect.
We add our own records where PEFT ignores them: the safetensors header carries the scaling each
update was trained with, so an ``adapter_config.json`` edited afterwards (a different ``lora_alpha``)
is caught instead of silently changing the model; it also carries the label names, the task (``lora_ft.task``: problem type, labels,
pairs, primary metric, as ``data/task.py`` writes it) and the settings the base model was built with
(a layer cut, a revision); a layer cut is also ``CUT_KEY`` in ``adapter_config.json``, so it is seen
without our header. ``saving`` writes this format; ``apply``
puts an ``Adapter`` into a model.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open

from lora_ft.errors import LoraFtError, first_line
from lora_ft.finite import is_finite_number, is_within, require_finite
from lora_ft.fsutil import read_json_record
from lora_ft.lora.peft_config import CUT_KEY, check_config
from lora_ft.lora.scaling import lora_scaling
from lora_ft.lora.targets import pattern_value

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"
CARD_NAME = "README.md"
PREFIX = "base_model.model."
META_SCALING = "lora_ft.scaling"  # JSON {module: scaling} in the safetensors header
META_LABELS = "lora_ft.label_names"
META_TASK = (
    "lora_ft.task"  # JSON of data/task.py's Task.to_dict(): problem type, labels, pairs, primary metric
)
META_MODEL = "lora_ft.model"  # JSON of the settings the base was built with (name, num_layers, revision)
# PEFT's name for DoRA's magnitude in the file (LoRALinear.lora_magnitude).
MAGNITUDE = "lora_magnitude_vector"
_LORA_KEY = re.compile(rf"(.+)\.(?:(lora_A|lora_B)\.weight|({MAGNITUDE}))")


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
    # From our metadata: the task's JSON record (``data.task.Task.to_dict``; the serving layer reads it
    # with ``Task.from_dict``); None for PEFT's files and adapters written before tasks.
    task: dict[str, Any] | None = None

    @property
    def use_dora(self) -> bool:
        return bool(self.config.get("use_dora"))

    @property
    def base_model(self) -> str | None:
        return self.config.get("base_model_name_or_path")

    @property
    def num_layers(self) -> int | None:
        """The layer cut the adapter was trained on (``model.num_layers``), or None for a whole base."""
        cut = self.config.get(CUT_KEY)
        return cut if cut is not None else (self.model_settings or {}).get("num_layers")

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


def read_adapter(path: str | Path) -> Adapter:
    """Read and check an adapter directory (ours or PEFT's).

    Raises:
        LoraFtError: missing files, unreadable safetensors, an unsupported LoRA variant, tensors that
            disagree with the config (rank), or a scaling that disagrees with what was trained.
    """
    p = Path(path)
    config = _read_config(p)
    weights_path = p / WEIGHTS_NAME
    tensors, metadata = _read_weights(weights_path)
    require_finite(
        tensors, f"{weights_path} holds weights that are not finite, so the adapter cannot be used"
    )
    parts, head = _split_tensors(p, tensors)
    pairs, magnitude = _lora_pairs(p, parts, dora=bool(config.get("use_dora")))
    adapter = Adapter(
        path=p,
        config=config,
        lora=pairs,
        head=head,
        magnitude=magnitude,
        scaling=_scaling_record(metadata, weights_path),
        label_names=_metadata_json(metadata, META_LABELS, weights_path),
        model_settings=_metadata_json(metadata, META_MODEL, weights_path),
        task=_task_record(metadata, weights_path),
    )
    _check_ranks_and_scaling(adapter)
    return adapter


def _read_config(p: Path) -> dict[str, Any]:
    """The checked ``adapter_config.json`` of the adapter directory ``p``, once both files are there."""
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
    check_config(config, cfg_path)
    return config


def _read_weights(weights_path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    try:
        with safe_open(str(weights_path), "pt") as f:
            metadata = f.metadata() or {}
            tensors = {key: f.get_tensor(key) for key in f.keys()}
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        first = first_line(exc, "corrupt file")
        raise LoraFtError(f"cannot read {weights_path}: {first} (a corrupt or truncated file?)") from None
    return tensors, metadata


def _split_tensors(
    p: Path, tensors: dict[str, torch.Tensor]
) -> tuple[dict[str, dict[str, torch.Tensor]], dict[str, dict[str, torch.Tensor]]]:
    """The file's tensors by module: LoRA parts (``lora_A``/``lora_B``/magnitude) and head parameters."""
    lora: dict[str, dict[str, torch.Tensor]] = {}
    head: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in tensors.items():
        name = key[len(PREFIX) :] if key.startswith(PREFIX) else key
        module, _, param = name.rpartition(".")
        match = _LORA_KEY.fullmatch(name)
        if match:
            lora.setdefault(match.group(1), {})[match.group(2) or match.group(3)] = tensor
        elif "lora_" in name:  # lora_embedding_A, lora_E, ...: variants we cannot apply
            raise LoraFtError(f"adapter {p}: tensor {key} belongs to a LoRA variant lora-ft does not support")
        elif not module:
            raise LoraFtError(f"adapter {p}: tensor {key} names no module")
        else:
            head.setdefault(module, {})[param] = tensor
    return lora, head


def _lora_pairs(
    p: Path, lora: dict[str, dict[str, torch.Tensor]], dora: bool
) -> tuple[dict[str, tuple[torch.Tensor, torch.Tensor]], dict[str, torch.Tensor]]:
    """``(A, B)`` per module, and DoRA's magnitude per module; every module's parts must fit together."""
    pairs, magnitude = {}, {}
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
    return pairs, magnitude


def _metadata_json(metadata: dict[str, str], key: str, weights_path: Path) -> Any:
    if key not in metadata:
        return None
    try:
        return json.loads(metadata[key])
    except json.JSONDecodeError:
        raise LoraFtError(f"{weights_path}: the {key} record in the header is not valid JSON") from None


def _task_record(metadata: dict[str, str], weights_path: Path) -> dict[str, Any] | None:
    """Our header's task record; None when it has none (PEFT's files, adapters written before tasks)."""
    value = _metadata_json(metadata, META_TASK, weights_path)
    if value is not None and not isinstance(value, dict):
        raise LoraFtError(f"{weights_path}: the {META_TASK} record in the header must be a JSON object")
    return value


def _scaling_record(metadata: dict[str, str], weights_path: Path) -> dict[str, float]:
    """Our header's ``{module: scaling}`` each update was trained with; empty for PEFT's files."""
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
    return {k: float(v) for k, v in scaling.items()}


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
