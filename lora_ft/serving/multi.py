"""Load one base model and several named adapters into an ``AdapterSet``; predict and evaluate with each.

What ``lora-ft predict/eval BASE --adapter NAME=DIR ...`` does: the base is loaded once, each adapter
is built around its shared Linears, and every adapter sees the same inputs.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from lora_ft.config import DataConfig, ModelConfig
from lora_ft.data.loading import split_settings
from lora_ft.data.task import Task
from lora_ft.errors import LoraFtError
from lora_ft.lora.adapters import NAME_PATTERN, AdapterSet
from lora_ft.lora.io import CONFIG_NAME, Adapter, read_adapter
from lora_ft.serving.artifacts import (
    Artifact,
    RunRecord,
    _adapter_labels,
    _builtin_or,
    _model_max_length,
    read_run,
)
from lora_ft.serving.evaluate import eval_split, evaluate_loaded
from lora_ft.serving.predict import DEFAULT_BATCH_SIZE, DEFAULT_THRESHOLD, Prediction, predict, resolve_device
from lora_ft.serving.tasks import adapter_task, with_task
from lora_ft.training.layout import ADAPTER, RUN, classify
from lora_ft.training.modeling import load_model

log = logging.getLogger("lora_ft")


def parse_adapter_specs(specs: list[str]) -> dict[str, str]:
    """``["a=runs/a", "b=dir"]`` -> ``{"a": "runs/a", "b": "dir"}``, in order.

    Raises:
        LoraFtError: a spec without ``=``, a bad name, a name given twice.
    """
    out: dict[str, str] = {}
    for spec in specs:
        name, sep, path = spec.partition("=")
        if not sep or not name or not path:
            raise LoraFtError(f"--adapter {spec!r}: expected NAME=DIR, e.g. --adapter sst=runs/sst/adapter")
        if not NAME_PATTERN.fullmatch(name):
            raise LoraFtError(
                f"--adapter {spec!r}: the name {name!r} must be letters, digits, '_', '-' or '.'"
            )
        if name in out:
            raise LoraFtError(f"--adapter: the name {name!r} is given twice; give each adapter its own name")
        out[name] = path
    return out


def _locate(name: str, path: str | Path) -> tuple[Path, RunRecord | None]:
    """An adapter directory, or a run directory holding ``adapter/`` -> (adapter dir, its run or None)."""
    p = Path(path).expanduser()
    if not p.is_dir():
        raise LoraFtError(f"--adapter {name}={path}: {'not a directory' if p.exists() else 'not found'}")
    found = classify(p)
    if found.weights_kind == ADAPTER:
        return found.weights, read_run(found.run)
    if found.kind is not None:
        raise LoraFtError(
            f"--adapter {name}={path} is a full model or a run without an adapter; --adapter takes LoRA "
            "adapters (predict with that model on its own)"
        )
    raise LoraFtError(f"--adapter {name}={path} is not an adapter directory ({CONFIG_NAME} is missing)")


def load_adapter_set(
    base: str, adapters: dict[str, str | Path], *, trust_remote_code: bool = False
) -> AdapterSet:
    """Load ``base`` once and add each named adapter (an adapter directory or a run directory) to it.

    ``base`` is a built-in name, a model directory or a hub id (a built-in's hub id loads the built-in
    copy). It is cut to the layer count the adapters record and gets their number of labels; the
    first adapter is active afterwards. ``trust_remote_code`` runs the base directory's own Python;
    what the adapters' runs saved never does.

    Raises:
        LoraFtError: ``base`` is an adapter or run directory; adapters recording different layer cuts;
            see ``AdapterSet.add_adapter``.
    """
    if not adapters:
        raise LoraFtError("no adapters given; add --adapter NAME=DIR")
    p = Path(base).expanduser()
    if classify(p).kind in (RUN, ADAPTER):
        raise LoraFtError(
            f"{base} is an adapter or run directory; with --adapter the first argument is the base model "
            f"(minilm-l6, a model directory or a hub id): pass it as --adapter NAME={base}"
        )
    found = {name: _locate(name, path) for name, path in adapters.items()}
    read = {name: read_adapter(adir) for name, (adir, _) in found.items()}
    cuts = {name: a.num_layers for name, a in read.items()}
    if len(set(cuts.values())) > 1:
        listing = ", ".join(f"{n}: {c or 'all'}" for n, c in cuts.items())
        raise LoraFtError(f"the adapters were made on bases cut to different layer counts ({listing})")
    cfg = ModelConfig(
        name=_builtin_or(base, None),
        num_layers=next(iter(cuts.values())),
        trust_remote_code=trust_remote_code,
    )
    labels = {name: _adapter_labels(a, found[name][1], cfg) for name, a in read.items()}
    tasks = {name: adapter_task(a, found[name][1], labels[name]) for name, a in read.items()}
    loaded = load_model(cfg, _base_task(list(tasks.values())))
    model = loaded.model.float().eval()  # float32, as a single adapter is loaded (artifacts)
    model.requires_grad_(False)
    aset = AdapterSet(model, loaded.tokenizer, base_name=cfg.name, untrained=loaded.newly_initialized)
    for name, adapter in read.items():
        run = found[name][1]
        aset.add_adapter(
            name,
            adapter,
            label_names=labels[name],
            max_length=run.config.data.max_length if run else None,
            info={
                "path": Path(adapters[name]),
                "run_dir": run.path if run else None,
                "data": run.config.data if run else None,
                "metrics": run.metrics if run else None,
                "task": tasks[name],
            },
        )
        _warn_other_base(name, adapter, cfg.name)  # it fits: only a different record remains to say
    aset.set_adapter(next(iter(read)))
    return aset


def _base_task(tasks: list[Task]) -> Task:
    """What the shared base is built with: a token task as it is (another model class), any other as
    single-label over the first adapter's outputs (``with_task`` applies each adapter's own).

    Raises:
        LoraFtError: token and text classifiers mixed: one base has one kind of head.
    """
    if len({t.is_token_classification for t in tasks}) > 1:
        raise LoraFtError(
            "the adapters mix token classification and text classification, which need different model "
            "classes; serve each kind apart"
        )
    return tasks[0] if tasks[0].is_token_classification else Task.legacy(tasks[0].label_names)


def adapter_artifact(aset: AdapterSet, name: str) -> Artifact:
    """Activate adapter ``name`` and return it as an ``Artifact`` (for ``predict``/``evaluate``).

    The view shares the model: it shows adapter ``name`` only until another one is activated.
    """
    aset.set_adapter(name)
    info = aset.info(name)
    return Artifact(
        model=with_task(aset.model, info["task"]),
        tokenizer=aset.tokenizer,
        label_names=aset.label_names(name),
        task=info["task"],
        kind="adapter",
        path=info.get("path", aset.adapter(name).path),
        max_length=aset.max_length(name) or _model_max_length(aset.tokenizer, aset.model),
        adapter=aset.adapter(name),
        base=aset.base_name,
        run_dir=info.get("run_dir"),
        data=info.get("data"),
        metrics=info.get("metrics"),
    )


def _warn_other_base(name: str, adapter: Adapter, base: str) -> None:
    """Shapes are checked; same-shaped other weights are not detectable, so a different record warns."""
    recorded = (adapter.model_settings or {}).get("name") or adapter.base_model
    if not recorded:
        return
    same = _builtin_or(recorded, None) == base
    if not same and Path(recorded).expanduser().exists() and Path(base).expanduser().exists():
        same = Path(recorded).expanduser().resolve() == Path(base).expanduser().resolve()
    if not same:
        log.warning("adapter %s was made on %s; applying it to %s", name, recorded, base)


def predict_each(
    aset: AdapterSet,
    texts: list[str],
    names: list[str] | None = None,
    *,
    text_pairs: list[str] | None = None,
    threshold: float = DEFAULT_THRESHOLD,
    batch_size: int = DEFAULT_BATCH_SIZE,
    device: str | None = None,
    progress: bool = False,
) -> dict[str, list[Prediction]]:
    """Each adapter's predictions (default: every adapter's) on the same ``texts`` (and ``text_pairs``,
    for pair models), by adapter name."""
    aset.to(resolve_device(device))
    out = {}
    for name in names or aset.adapters:
        out[name] = predict(
            adapter_artifact(aset, name),
            texts,
            text_pairs=text_pairs,
            threshold=threshold,
            batch_size=batch_size,
            device=device,
            progress=progress,
        )
    return out


def common_data(
    aset: AdapterSet,
    names: list[str],
    split: str = "test",
    choose: Callable[[DataConfig], DataConfig] | None = None,
) -> DataConfig | None:
    """The data to evaluate every adapter on: each adapter's recorded training data as ``choose`` makes
    it (the command line's ``--data`` and columns; default: as recorded); None when none records any.

    Only the settings that decide the rows of ``split`` are compared (``loading.split_settings``): runs
    that differ in ``max_length``, or in the other splits' caps, read the same ``split``, and get the
    first adapter's data.

    Raises:
        LoraFtError: the data differ in a setting that changes ``split``, named with each adapter's value.
    """
    choose = choose or (lambda d: d)
    recorded = {name: adapter_artifact(aset, name).data for name in names}
    chosen = {name: choose(d) for name, d in recorded.items() if d is not None}
    for key in split_settings(split):
        values = {name: getattr(d, key) for name, d in chosen.items()}
        if len({repr(v) for v in values.values()}) > 1:
            listing = ", ".join(f"{'null' if v is None else v} for {n}" for n, v in values.items())
            raise LoraFtError(
                f"the adapters were trained on different data (data.{key}: {listing}); pass --data to "
                f"evaluate them on the same {split} split"
            )
    return next(iter(chosen.values()), None)


def evaluate_each(
    aset: AdapterSet,
    data: DataConfig | None,
    split: str = "test",
    names: list[str] | None = None,
    *,
    batch_size: int = DEFAULT_BATCH_SIZE,
    device: str | None = None,
    progress: bool = False,
) -> dict[str, dict]:
    """Each adapter's metrics on the same split of ``data`` (default: the adapters' common data), read once."""
    names = names or aset.adapters
    loaded, split = eval_split(data or common_data(aset, names, split) or DataConfig(), split)
    aset.to(resolve_device(device))
    return {
        name: evaluate_loaded(
            adapter_artifact(aset, name),
            loaded,
            split,
            batch_size=batch_size,
            device=device,
            progress=progress,
        )
        for name in names
    }
