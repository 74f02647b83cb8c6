"""Merge a LoRA adapter into its base, verify the merge on real sentences, write a plain HF checkpoint.

The merge is done in float32 with ``LoRALinear.delta_weight()`` (the same update the adapter model
computes), and nothing is written unless the merged model reproduces the adapter model on a probe
batch: max |Δlogit| ≤ ``TOLERANCE`` and identical predictions as the task reads them (the class; the
labels at probability 0.5; the score). The checkpoint (``config.json`` with the task in transformers'
own fields, ``problem_type``, ``id2label``, ``label2id``; ``model.safetensors``, tokenizer files, a model card and ``lora-ft.json``) is built in a
hidden temporary directory and renamed into place, so it loads with
``AutoModelForSequenceClassification.from_pretrained`` (a token task's:
``AutoModelForTokenClassification``; its probe compares every scored word) with no lora-ft or PEFT installed.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lora_ft import __version__
from lora_ft.data import assets
from lora_ft.data.metrics import f1_average
from lora_ft.data.task import Task
from lora_ft.errors import LoraFtError
from lora_ft.failures import disk_full_error, is_disk_full
from lora_ft.finite import is_within, require_finite
from lora_ft.fsutil import staging_dir
from lora_ft.lora.card import metrics_lines, render_card
from lora_ft.lora.inject import lora_layers, merge_and_unload
from lora_ft.outputs import check_output_dir, publish_dir
from lora_ft.serving.artifacts import PROVENANCE_FORMAT, PROVENANCE_NAME, Artifact, load_artifact
from lora_ft.serving.probe import DEFAULT_PROBE_SIZE, Probe, probe_batch, probe_outputs
from lora_ft.training.layout import ADAPTER
from lora_ft.training.modeling import auto_class

log = logging.getLogger("lora_ft")

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
TOLERANCE = 1e-4


@dataclass
class MergeReport:
    """What ``export_merged`` measured and wrote.

    Attributes:
        max_abs_logit_diff: float32 merged model vs adapter model, over the probe batch.
        agreement: fraction of probe sentences on which both predict the same (``_agree``; 1.0 to pass).
        accuracy: the float32 merged model's probe accuracy (labelled classification probes only).
        drift: for ``dtype`` below float32, the saved model vs the float32 merge:
            ``{"max_abs_logit_diff", "agreement", "accuracy"}``.
    """

    out: Path
    dtype: str
    probe_source: str
    probe_size: int
    max_abs_logit_diff: float
    agreement: float
    accuracy: float | None
    drift: dict[str, Any] | None = None


def _agree(task: Task, reference: np.ndarray, other: np.ndarray) -> np.ndarray:
    """Per row of raw outputs ``(N, K)``: do both models predict the same? The same class (single-label),
    the same labels at sigmoid probability 0.5, i.e. logit 0 (multi-label), scores within ``TOLERANCE``
    (regression: a score has no discrete decision; NaN agrees with nothing)."""
    if task.is_multi_label:
        return ((reference >= 0.0) == (other >= 0.0)).all(axis=1)
    if task.is_regression:
        return np.abs(reference - other).max(axis=1, initial=0.0) <= TOLERANCE
    return reference.argmax(-1) == other.argmax(-1)


def _accuracy(task: Task, outputs: np.ndarray, labels: np.ndarray | None) -> float | None:
    """Probe accuracy (subset accuracy for multi-label); None for regression or unlabelled probes."""
    if labels is None or not len(labels) or task.is_regression:
        return None
    if task.is_multi_label:
        return float(((outputs >= 0.0) == labels.astype(bool)).all(axis=1).mean())
    return float((outputs.argmax(-1) == labels).mean())


def _compare(
    task: Task, reference: np.ndarray, other: np.ndarray, labels: np.ndarray | None
) -> dict[str, Any]:
    """Max |Δ raw output| (logits; the score for regression), the fraction of rows that agree
    (``_agree``), and ``other``'s probe accuracy (``_accuracy``)."""
    return {
        "max_abs_logit_diff": float(np.abs(reference - other).max()) if reference.size else 0.0,
        "agreement": float(_agree(task, reference, other).mean()) if len(reference) else 1.0,
        "accuracy": _accuracy(task, other, labels),
    }


def verify_merge(task: Task, reference: np.ndarray, merged: np.ndarray, probe: Probe) -> dict[str, Any]:
    """Compare the merged model's outputs ``(N, K)`` with the adapter model's; raise unless they match.

    Raises:
        LoraFtError: max |Δ output| above ``TOLERANCE`` or not finite, or a prediction that differs
            (``_agree``: the class, the label set at probability 0.5, the score).
    """
    check = _compare(task, reference, merged, probe.labels)
    # NaN-safe: a NaN difference is not within the limit (``nan > limit`` would be False).
    if not is_within(check["max_abs_logit_diff"], TOLERANCE) or not check["agreement"] >= 1.0:
        raise LoraFtError(
            f"merge verification failed on {probe.source}: max |Δlogit| {check['max_abs_logit_diff']:.3g} "
            f"(limit {TOLERANCE:g}), predictions agree on {check['agreement']:.1%}; nothing was written"
        )
    return check


def _check_plain(model: torch.nn.Module, task: Task, trust_remote_code: bool) -> None:
    """After unloading: no LoRA layer left, and exactly the state-dict keys of the base architecture."""
    with torch.device("meta"):
        reference = auto_class(task).from_config(model.config, trust_remote_code=trust_remote_code)
    extra = sorted(set(model.state_dict()) ^ set(reference.state_dict()))
    if lora_layers(model) or extra:
        raise LoraFtError(
            f"the merged model does not have the base architecture's keys: {', '.join(extra[:5])}"
        )


def export_merged(
    path: str | Path,
    out: str | Path,
    *,
    base: str | None = None,
    dtype: str = "float32",
    force: bool = False,
    probe_size: int = DEFAULT_PROBE_SIZE,
    trust_remote_code: bool = False,
) -> MergeReport:
    """Merge the adapter of a run or adapter directory into its base and write a plain checkpoint to ``out``.

    Args:
        path: a run directory (LoRA method) or an adapter directory (ours or PEFT's).
        out: the checkpoint directory to write; an existing one is replaced only with ``force``.
        base: the base model, overriding the one the adapter records.
        dtype: the saved precision; below float32 the drift against the float32 merge is measured.
        probe_size: sentences in the verification batch.
        trust_remote_code: run the base model directory's own Python (never taken from the run).

    Raises:
        LoraFtError: bad input (see ``load_artifact``), an unknown dtype, ``out`` existing without
            ``force`` or unwritable, or a merge that does not reproduce the adapter model.
    """
    if dtype not in DTYPES:
        raise LoraFtError(f"--dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    out = Path(out).expanduser()
    check_output_dir(out, force, [Path(path).expanduser()])
    artifact = load_artifact(path, base=base, trust_remote_code=trust_remote_code)
    if artifact.kind != ADAPTER:
        raise LoraFtError(
            f"{path} holds a complete model, not a LoRA adapter: there is nothing to merge, and it already "
            f"loads with {auto_class(artifact.task).__name__}.from_pretrained"
        )
    if artifact.run_dir is not None:
        check_output_dir(out, force, [artifact.run_dir])
    report = _merge_verified(artifact, probe_batch(artifact, probe_size), out, dtype, trust_remote_code)
    _write(artifact, report, force)
    return report


def _merge_verified(
    artifact: Artifact, probe: Probe, out: Path, dtype: str, trust_remote_code: bool
) -> MergeReport:
    """Merge ``artifact``'s adapter in place, check it against the unmerged logits, cast it to ``dtype``.

    Raises:
        LoraFtError: a merge that does not reproduce the adapter model, or not finite in ``dtype``.
    """
    model = artifact.model

    def logits(which: str) -> tuple[np.ndarray, np.ndarray | None]:
        try:
            return probe_outputs(artifact, probe)
        except LoraFtError as exc:
            raise LoraFtError(f"merge verification failed, {which}: {exc}; nothing was written") from None

    reference, labels = logits("the adapter model")
    # The labels in the rows of the outputs (a token probe's: the scored words' tags, flattened).
    scored = dataclasses.replace(probe, labels=labels)
    merge_and_unload(model)
    merged, _ = logits("the merged model")
    check = verify_merge(artifact.task, reference, merged, scored)
    _check_plain(model, artifact.task, trust_remote_code)
    report = MergeReport(
        out=out,
        dtype=dtype,
        probe_source=probe.source,
        probe_size=len(probe.texts),
        max_abs_logit_diff=check["max_abs_logit_diff"],
        agreement=check["agreement"],
        accuracy=check["accuracy"],
    )
    if dtype != "float32":
        model.to(DTYPES[dtype])
    hint = " (its largest value is 65504: export as bfloat16 or float32)" if dtype == "float16" else ""
    require_finite(
        model.state_dict(), f"the merged model in {dtype} is not finite{hint}, so nothing was written"
    )
    if dtype != "float32":
        report.drift = _compare(
            artifact.task, merged, logits(f"the merged model in {dtype}")[0], scored.labels
        )
    return report


def _write(artifact: Artifact, report: MergeReport, force: bool) -> None:
    out = report.out
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        with staging_dir(out.parent, f".{out.name}.", ".partial") as tmp:
            artifact.model.save_pretrained(tmp)
            artifact.tokenizer.save_pretrained(tmp)
            provenance = _provenance(artifact, report)
            (tmp / PROVENANCE_NAME).write_text(json.dumps(provenance, indent=2) + "\n", encoding="utf-8")
            (tmp / "README.md").write_text(model_card(artifact, report, provenance), encoding="utf-8")
            publish_dir(tmp, out, "merged", force)
    except Exception as exc:  # safetensors reports a full disk as its own error type, torch as a RuntimeError
        if is_disk_full(exc):
            raise disk_full_error(exc, out, "free some space or choose another --out") from None
        if not isinstance(exc, OSError):
            raise
        raise LoraFtError(f"cannot write {out}: {exc.strerror or exc} (choose another --out)") from None


def _provenance(artifact: Artifact, report: MergeReport) -> dict[str, Any]:
    adapter = artifact.adapter
    settings = artifact.model_settings
    cfg = adapter.config
    return {
        "format": PROVENANCE_FORMAT,
        "lora_ft_version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "source": str(artifact.path),
        "base_model": assets.hub_id_of(settings["name"]) or settings["name"],
        "base_settings": settings,
        "adapter": {
            "r": cfg.get("r"),
            "lora_alpha": cfg.get("lora_alpha"),
            "use_rslora": bool(cfg.get("use_rslora")),
            "use_dora": adapter.use_dora,
            "modules": len(adapter.lora),
            "targets": sorted({m.rsplit(".", 1)[-1] for m in adapter.lora}),
            "head": sorted(adapter.head),
        },
        "label_names": artifact.label_names,
        "task": artifact.task.to_dict(),
        "data": asdict(artifact.data) if artifact.data else None,
        "metrics": artifact.metrics,
        "merge": {k: v for k, v in asdict(report).items() if k != "out"},
    }


def model_card(artifact: Artifact, report: MergeReport, provenance: dict[str, Any]) -> str:
    """A short README.md: what the model is, its labels, the run's metrics and the merge figures."""
    base = provenance["base_model"]
    settings = provenance["base_settings"]
    cut = f" (first {settings['num_layers']} layers)" if settings.get("num_layers") else ""
    ad = provenance["adapter"]
    labels = ", ".join(f"{i} = {name}" for i, name in enumerate(artifact.label_names))
    pipeline = "token-classification" if artifact.task.is_token_classification else "text-classification"
    lines = [
        f"# {report.out.name}",
        "",
        f"A `{type(artifact.model).__name__}`: the {'DoRA' if ad['use_dora'] else 'LoRA'} adapter of "
        f"`{artifact.path}` (r={ad['r']}, "
        f"alpha={ad['lora_alpha']:g}, {ad['modules']} modules: {', '.join(ad['targets'])}; head "
        f"{', '.join(ad['head']) or 'none'} trained fully) merged into `{base}`{cut} by lora-ft {__version__}. "
        "A plain checkpoint: neither lora-ft nor PEFT is needed to load it.",
        "",
        f"Labels: {labels} ({artifact.task.problem_type}).",
        "",
        "```python",
        "from transformers import pipeline",
        f'classifier = pipeline("{pipeline}", model="{report.out.name}")',
        "```",
        "",
    ]
    lines += metrics_lines(
        artifact.metrics, f1_average(artifact.task.num_labels) if artifact.task.is_single_label else None
    )
    lines += [
        "## Merge verification",
        "",
        f"Probe: {report.probe_source}. The float32 merged model against the adapter model: max |Δlogit| = "
        f"{report.max_abs_logit_diff:.2e} (limit {TOLERANCE:g}); identical predictions on all "
        f"{report.probe_size} sentences"
        + (f"; probe accuracy {report.accuracy:.4f}." if report.accuracy is not None else "."),
    ]
    if report.drift is not None:
        d = report.drift
        acc = f", probe accuracy {d['accuracy']:.4f}" if d["accuracy"] is not None else ""
        lines += [
            "",
            f"Saved as {report.dtype}: max |Δlogit| = {d['max_abs_logit_diff']:.2e} against float32, predictions "
            f"agree on {d['agreement']:.1%}{acc}.",
        ]
    lines += ["", f"Provenance in `{PROVENANCE_NAME}`."]
    return render_card(lines, base=base, library_name="transformers", tags=["lora", "lora-ft", "merged"])
