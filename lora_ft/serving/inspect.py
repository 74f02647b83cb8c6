"""``lora-ft inspect``: find the adapter, its base weights and a full fine-tuning run's weights, analyse
the updates (``analysis``), and write ``inspect.json`` and the plots (``rank_plots``) atomically."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lora_ft.config import RunConfig, config_from_dict, read_yaml
from lora_ft.data import assets
from lora_ft.errors import LoraFtError
from lora_ft.fsutil import staging_dir
from lora_ft.lora.analysis import ModuleUpdate, analyse, to_json
from lora_ft.lora.inject import lora_layers
from lora_ft.lora.io import CONFIG_NAME
from lora_ft.outputs import check_output_dir, publish_dir
from lora_ft.serving.artifacts import load_artifact
from lora_ft.serving.rank_plots import write_plots
from lora_ft.training.layout import ADAPTER, CONFIG_FILE, MODEL, RUN, classify

JSON_NAME = "inspect.json"


@dataclass
class Inspection:
    """What ``inspect`` found: the per-module analysis and where everything came from."""

    updates: list[ModuleUpdate]
    context: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        return to_json(self.updates, **self.context)


def default_out(run: Path) -> Path:
    return Path(run) / "inspect"


def _check_lora_source(run: Path) -> None:
    if not run.is_dir():
        raise LoraFtError(
            f"{run} not found or not a directory; give a lora-ft run directory or an adapter directory"
        )
    found = classify(run)
    if found.weights_kind == ADAPTER:
        return
    if found.kind == RUN:
        method = _run_config(run).train.method
        raise LoraFtError(
            f"{run} is a train.method={method} run with no adapter/; inspect takes a LoRA run or adapter "
            "directory (to compare with a full run, pass it as --against)"
        )
    raise LoraFtError(
        f"{run} is not a lora-ft run or adapter directory (no {CONFIG_FILE} with adapter/, no {CONFIG_NAME})"
    )


def _run_config(run: Path) -> RunConfig:
    try:
        return config_from_dict(read_yaml(run / CONFIG_FILE))
    except LoraFtError as exc:
        raise LoraFtError(f"run directory {run}: {CONFIG_FILE}: {exc}") from None


def _check_full_run(against: Path) -> None:
    found = classify(against)
    if found.kind != RUN:
        raise LoraFtError(
            f"--against {against} is not a run directory (no {CONFIG_FILE}); give the directory of a "
            "train.method=full run (lora-ft train --method full)"
        )
    method = _run_config(against).train.method
    if method != "full":
        raise LoraFtError(
            f"--against {against} is a train.method={method} run; give a run trained with train.method=full"
        )
    if found.weights_kind != MODEL:
        raise LoraFtError(f"--against {against} has no model/; was the run interrupted? Train it again")


def _same_base(settings: dict[str, Any]) -> tuple:
    """What identifies a base model: the built-in name or the resolved path, the layer cut, the revision."""
    name = str(settings.get("name"))
    name = assets.builtin_for_hub_id(name) or name
    if Path(name).expanduser().exists():
        name = str(Path(name).expanduser().resolve())
    return name, settings.get("num_layers"), settings.get("revision")


def _linear_weights(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: m.weight.detach() for n, m in model.named_modules() if isinstance(m, nn.Linear)}


def _accuracy(metrics: dict[str, Any] | None) -> float | None:
    return ((metrics or {}).get("validation") or {}).get("accuracy")


def inspect(
    run: str | Path,
    against: str | Path | None = None,
    *,
    base: str | None = None,
    trust_remote_code: bool = False,
) -> Inspection:
    """Analyse the updates of the LoRA run or adapter ``run``, and of the full run ``against`` if given.

    ``trust_remote_code`` runs the models' own Python; what the runs saved never does.

    Raises:
        LoraFtError: ``run`` is not a LoRA run or adapter directory; ``against`` is not a finished
            ``train.method=full`` run, or fine-tuned another base model; a DoRA adapter.
    """
    run, against = Path(run).expanduser(), Path(against).expanduser() if against is not None else None
    _check_lora_source(run)
    if against is not None:
        _check_full_run(against)
    lora = load_artifact(run, base=base, trust_remote_code=trust_remote_code)
    base_weights = {name: layer.base.weight.detach() for name, layer in lora_layers(lora.model).items()}
    context: dict[str, Any] = {
        "run": str(run),
        "adapter": str(lora.adapter.path),
        "base": lora.base,
        "against": None,
        "validation_accuracy": {"lora": _accuracy(lora.metrics)},
    }
    full_weights = None
    if against is not None:
        full_cfg = _run_config(against).model
        full_base = {"name": full_cfg.name, "num_layers": full_cfg.num_layers, "revision": full_cfg.revision}
        if _same_base(full_base) != _same_base(lora.model_settings):
            raise LoraFtError(
                f"--against {against} fine-tuned {full_cfg.name} (num_layers={full_cfg.num_layers}) but the adapter's "
                f"base is {lora.base} (num_layers={lora.model_settings.get('num_layers')}); compare runs of the same base"
            )
        full = load_artifact(against, trust_remote_code=trust_remote_code)
        full_weights = _linear_weights(full.model)
        context["against"] = str(against)
        context["validation_accuracy"]["full"] = _accuracy(full.metrics)
    return Inspection(analyse(lora.adapter, base_weights, full_weights), context)


def write_inspection(inspection: Inspection, out: Path, *, force: bool = False) -> list[Path]:
    """Write ``inspect.json`` and the PNGs into ``out``: built in a hidden sibling, renamed into place."""
    check_output_dir(out, force)
    out.parent.mkdir(parents=True, exist_ok=True)
    with staging_dir(out.parent, f".{out.name}.", ".tmp") as tmp:
        (tmp / JSON_NAME).write_text(json.dumps(inspection.to_json()) + "\n", encoding="utf-8")
        names = [JSON_NAME, *(p.name for p in write_plots(inspection.updates, tmp))]
        publish_dir(tmp, out, "inspect", force)
    return [out / name for name in names]
