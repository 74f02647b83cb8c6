"""The model card (``README.md``) of an adapter directory, as PEFT writes one and more.

PEFT reads no label names from an adapter directory (``PeftModel`` keeps the base's config, and
``AutoPeftModelForSequenceClassification`` builds the base from the hub id alone), so the card's
snippet passes them to the base (``id2label``/``label2id``), with the layer cut when there is one.
The metadata block and the metrics table are shared with the merged export's card.
"""

from __future__ import annotations

import json
from typing import Any

from huggingface_hub import ModelCard, ModelCardData

from lora_ft.fmt import f1_heading

ADAPTER_PLACEHOLDER = "path/to/this/adapter"  # the card cannot know where its directory will be moved


def _fmt(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, float) else "—"


def metrics_lines(metrics: dict[str, Any] | None, f1_average: str | None = None) -> list[str]:
    """A markdown table of the run's validation and test metrics; no lines when there are none. The F1
    column says how it was averaged: ``f1_average``, else what the metrics record (``"binary"``/``"macro"``)."""
    metrics = metrics or {}
    rows = [(s, metrics[s]) for s in ("validation", "test") if isinstance(metrics.get(s), dict)]
    if not rows:
        return []
    lines = [f"## Metrics of the training run (data: {metrics.get('data', 'unknown')})", ""]
    task = metrics.get("task") if isinstance(metrics.get("task"), dict) else {}
    if task.get("problem_type", "single_label_classification") == "single_label_classification":
        keys, heads = (
            ("accuracy", "f1", "loss"),
            ["accuracy", f1_heading([f1_average or metrics.get("f1_average")]), "loss"],
        )
    else:  # the task's primary metric first, then its other figures as the run recorded them
        primary = task.get("primary_metric")
        keys = (primary, *(k for k in rows[0][1] if k not in (primary, "loss")), "loss")
        heads = [k.replace("_", " ") for k in keys]
    lines += [f"| split | {' | '.join(heads)} |", "|---|" + "---|" * len(keys)]
    lines += [f"| {s} | {' | '.join(_fmt(m.get(k)) for k in keys)} |" for s, m in rows]
    metric = task.get("primary_metric") or "accuracy"
    return [*lines, "", *_evaluation_lines(metrics.get("evaluations") or [], metric)]


def _evaluation_lines(rows: list[dict[str, Any]], metric: str) -> list[str]:
    """metrics.json's ``evaluations`` (one per periodic evaluation, with the task's primary ``metric``) as
    a markdown table."""
    if not rows:
        return []
    heading = metric.replace("_", " ")
    lines = ["### Evaluations during training", "", f"| step | train loss | validation loss | {heading} |"]
    lines.append("|---|---|---|---|")
    for r in rows:
        lines.append(
            f"| {r['step']} | {_fmt(r['train_loss'])} | {_fmt(r['validation_loss'])} | {_fmt(r.get(metric))} |"
        )
    return [*lines, ""]


def _is_hub_id(name: str) -> bool:
    return not name.startswith(("/", ".", "~")) and name.count("/") <= 1


def _peft_snippet(
    config: dict[str, Any], labels: list[str] | None, num_layers: int | None, with_tokenizer: bool
) -> list[str]:
    """The card's PEFT example; a token classifier's (``task_type: TOKEN_CLS``) tags every token."""
    base, tokens = config["base_model_name_or_path"], config.get("task_type") == "TOKEN_CLS"
    auto = "AutoModelForTokenClassification" if tokens else "AutoModelForSequenceClassification"
    shown = (
        "print([model.config.id2label[int(i)] for i in logits.argmax(-1)[0]])"
        if tokens
        else "print(model.config.id2label[int(logits.argmax(-1)[0])])"
    )
    kwargs = []
    if labels is not None:
        # JSON strings are Python literals too, in the double quotes of the lines around them.
        id2label = ", ".join(f"{i}: {json.dumps(name)}" for i, name in enumerate(labels))
        label2id = ", ".join(f"{json.dumps(name)}: {i}" for i, name in enumerate(labels))
        kwargs += [
            f"    num_labels={len(labels)},",
            f"    id2label={{{id2label}}},",
            f"    label2id={{{label2id}}},",
        ]
    if num_layers is not None:
        kwargs.append(f"    num_hidden_layers={num_layers},  # the adapter was trained on these layers only")
    return [
        "```python",
        "import torch",
        "from peft import PeftModel",
        f"from transformers import {auto}, AutoTokenizer",
        "",
        f'base = "{base}"  # offline: a local directory with the base\'s config.json and weights',
        f'adapter = "{ADAPTER_PLACEHOLDER}"',
        f"model = {auto}.from_pretrained(",
        "    base,",
        *kwargs,
        ")",
        "model = PeftModel.from_pretrained(model, adapter).eval()",
        f"tokenizer = AutoTokenizer.from_pretrained({'adapter' if with_tokenizer else 'base'})",
        "with torch.no_grad():",
        '    logits = model(**tokenizer(["a gorgeous, moving film"], return_tensors="pt")).logits',
        shown,
        "```",
    ]


def adapter_card(
    config: dict[str, Any],
    *,
    label_names: list[str] | None,
    num_layers: int | None,
    metrics: dict[str, Any] | None = None,
    local_base: str | None = None,
    with_tokenizer: bool = False,
) -> str:
    """The text of an adapter directory's ``README.md``.

    Args:
        config: the adapter's ``adapter_config.json``.
        label_names: the head's labels, in id order (None: unknown).
        num_layers: the layer cut the adapter was trained on, or None.
        metrics: the run's ``metrics.json``, for the metrics table.
        local_base: where the base lives on the machine that wrote the adapter, for offline use.
        with_tokenizer: the tokenizer is saved beside the card (else the snippet takes the base's).
    """
    base = config["base_model_name_or_path"]
    method = "DoRA" if config.get("use_dora") else "rsLoRA" if config.get("use_rslora") else "LoRA"
    head = ", ".join(config.get("modules_to_save") or []) or "none"
    lines = [
        f"# {method} adapter for {base}",
        "",
        f"A {method} adapter (r={config['r']}, alpha={config['lora_alpha']:g}, on "
        f"{', '.join(config['target_modules'])}; head {head} trained fully) for `{base}`, written by lora-ft "
        "in PEFT's format: PEFT and lora-ft both load it.",
        "",
    ]
    if label_names is not None:
        lines += ["Labels: " + ", ".join(f"{i} = {name}" for i, name in enumerate(label_names)) + ".", ""]
    if num_layers is not None:
        lines += [
            f"**Trained on a cut base: the first {num_layers} layers of `{base}`** (lora-ft's "
            f"`model.num_layers`, recorded as `lora_ft_num_layers` in `adapter_config.json`). It fits only the "
            f"base cut the same way: load the base with `num_hidden_layers={num_layers}`. lora-ft refuses "
            "an uncut base; PEFT would load it with a missing-keys warning and wrong results.",
            "",
        ]
    lines += metrics_lines(metrics)
    lines += ["## Use it with PEFT", "", *_peft_snippet(config, label_names, num_layers, with_tokenizer), ""]
    lines += [
        "PEFT reads no label names from this directory, so they are passed to the base above. "
        "Offline (`HF_HUB_OFFLINE=1`), set `base` to a local copy of the base model"
        + (f"; on the machine that trained this adapter it is `{local_base}`." if local_base else "."),
        "",
        "## Use it with lora-ft",
        "",
        "```bash",
        f'lora-ft predict {ADAPTER_PLACEHOLDER} "a gorgeous, moving film"',
        f"lora-ft eval {ADAPTER_PLACEHOLDER} --data DATA",
        f"lora-ft merge {ADAPTER_PLACEHOLDER} --out merged  # a plain checkpoint: no PEFT needed",
        "```",
        "",
        "lora-ft rebuilds the base from this directory's records, offline for its built-in models; "
        "`--base DIR` points it at another local copy.",
    ]
    return render_card(lines, base=base, library_name="peft", tags=["lora", "lora-ft", "transformers"])


def render_card(lines: list[str], *, base: str, library_name: str, tags: list[str]) -> str:
    """``lines`` of markdown under the Hub's metadata (``huggingface_hub.ModelCardData``): the base
    model when it is a hub id (a local path is no Hub reference), the library, the task, ``tags``."""
    hub = _is_hub_id(base)
    data = ModelCardData(
        base_model=base if hub else None,
        library_name=library_name,
        pipeline_tag="text-classification",
        tags=[*([f"base_model:adapter:{base}"] if hub and library_name == "peft" else []), *tags],
    )
    return str(ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(lines) + "\n"))
