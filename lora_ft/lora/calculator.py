"""What LoRA would train and ship at several ranks, from a model's shapes alone.

Works on a meta-device skeleton (``modeling.load_model_skeleton``), so planning a 70B decoder needs
only its ``config.json``: no weights are read and no parameter memory is allocated.

Counted, per rank ``r``:
    LoRA params   r * (in + out) for every wrapped Linear (``lora_A`` is (r, in), ``lora_B`` (out, r))
    head params   every parameter of the classification head, which trains fully (PEFT: modules_to_save)
    % of model    trainable / (base params + LoRA params), PEFT's ``print_trainable_parameters`` convention
    adapter size  ``adapter_model.safetensors`` in float32: 4 bytes per LoRA and head value, plus the
                  safetensors header (8-byte length, the JSON index of tensor names, shapes and offsets,
                  lora-ft's per-module scaling record, padded to 8 bytes), computed as safetensors writes it.
                  ``adapter_config.json`` (about 1 KB) is not counted.
The full fine-tuning references are the weight matrices of the targeted Linears (no biases) and every
parameter of the model.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from torch import nn

from lora_ft.lora.inject import count_parameters
from lora_ft.lora.io import META_LABELS, META_SCALING, PREFIX
from lora_ft.lora.targets import resolve_head, targets_table

FP32_BYTES = 4
_HEADER_ALIGN = 8
# A representative trained scaling (alpha = 2r) for the size of the header's scaling record.
_SCALING_EXAMPLE = 2.0


@dataclass
class RankCost:
    """What LoRA at rank ``r`` trains and ships."""

    r: int
    lora_params: int
    head_params: int
    trainable_params: int
    trainable_percent: float  # of base + LoRA params
    adapter_bytes: int


@dataclass
class Savings:
    """LoRA at several ranks against full fine-tuning, for one model and target spec."""

    model: str
    targets: str | list[str]
    head: list[str]
    wrapped: int
    linears: int
    targeted_params: int  # weight matrices of the wrapped Linears: what full fine-tuning of them trains
    total_params: int  # every parameter of the model: what full fine-tuning trains
    ranks: list[RankCost] = field(default_factory=list)
    wrapped_names: list[str] = field(default_factory=list)  # the wrapped Linears' module names

    @property
    def full_model_bytes(self) -> int:
        return FP32_BYTES * self.total_params


def _tensor_shapes(model: nn.Module, wrapped: list[dict], head: list[str], r: int) -> dict[str, list[int]]:
    """The adapter file's tensors by name, as ``adapter_io.save_adapter`` names them."""
    shapes: dict[str, list[int]] = {}
    for row in wrapped:
        shapes[f"{PREFIX}{row['name']}.lora_A.weight"] = [r, row["in_features"]]
        shapes[f"{PREFIX}{row['name']}.lora_B.weight"] = [row["out_features"], r]
    modules = dict(model.named_modules())
    for name in head:
        for pname, tensor in modules[name].state_dict().items():
            shapes[f"{PREFIX}{name}.{pname}"] = list(tensor.shape)
    return shapes


def safetensors_bytes(shapes: dict[str, list[int]], metadata: dict[str, str]) -> int:
    """The size of a float32 safetensors file holding tensors of ``shapes``, header included."""
    header: dict[str, object] = {"__metadata__": metadata}
    offset = 0
    for name in sorted(shapes):  # safetensors orders equal-dtype tensors by name
        numel = 1
        for dim in shapes[name]:
            numel *= dim
        header[name] = {
            "dtype": "F32",
            "shape": shapes[name],
            "data_offsets": [offset, offset + FP32_BYTES * numel],
        }
        offset += FP32_BYTES * numel
    text = len(json.dumps(header, separators=(",", ":")).encode("utf-8"))
    padded = -(-text // _HEADER_ALIGN) * _HEADER_ALIGN
    return 8 + padded + offset


def savings(model: nn.Module, targets, ranks: list[int], head: list[str], *, name: str = "") -> Savings:
    """LoRA's trainable parameters and adapter size at each of ``ranks``, and the full fine-tuning references.

    The model is not touched; a meta-device skeleton is enough. Example::

        skeleton = load_model_skeleton("examples/configs/llama2-7b/config.json")
        savings(skeleton, ["q_proj", "v_proj"], [8], []).ranks[0].lora_params  # 4,194,304

    Raises:
        LoraFtError: see ``targets.match_targets``; an unknown head name.
    """
    head_names = resolve_head(model, head)
    rows, totals = targets_table(model, targets, 1, head_names)
    wrapped = [row for row in rows if row["wrapped"]]
    base_total = count_parameters(model)[1]
    num_labels = int(getattr(getattr(model, "config", None), "num_labels", 2) or 2)
    labels = json.dumps([f"LABEL_{i}" for i in range(num_labels)])
    scaling = json.dumps({row["name"]: _SCALING_EXAMPLE for row in wrapped})
    metadata = {"format": "pt", META_SCALING: scaling, META_LABELS: labels}
    out = Savings(
        model=name or type(model).__name__,
        targets=targets,
        head=head_names,
        wrapped=len(wrapped),
        linears=totals["linears"],
        targeted_params=sum(row["in_features"] * row["out_features"] for row in wrapped),
        total_params=base_total,
        wrapped_names=[row["name"] for row in wrapped],
    )
    for r in ranks:
        lora = r * sum(row["in_features"] + row["out_features"] for row in wrapped)
        trainable = lora + totals["head_params"]
        out.ranks.append(
            RankCost(
                r=r,
                lora_params=lora,
                head_params=totals["head_params"],
                trainable_params=trainable,
                trainable_percent=100.0 * trainable / (base_total + lora),
                adapter_bytes=safetensors_bytes(_tensor_shapes(model, wrapped, head_names, r), metadata),
            )
        )
    return out
