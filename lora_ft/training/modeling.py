"""Load a tokenizer and a sequence classifier from a built-in name, a local directory or a hub id,
and build it for one method: ``lora`` (our LoRALinear in the targets, head trained fully), ``full``
(everything trained) or ``head`` (only the classification head trained).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import datasets
import torch
import transformers
from torch import nn
from transformers import (
    AutoConfig,
    AutoModelForSequenceClassification,
    AutoModelForTokenClassification,
    AutoTokenizer,
)

from lora_ft.config import ModelConfig, RunConfig
from lora_ft.data import assets
from lora_ft.data.task import Task
from lora_ft.errors import LoraFtError, first_line
from lora_ft.lora.inject import InjectionReport, count_parameters, freeze_for_method, inject_lora
from lora_ft.lora.sparse_dropout import use_sparse_dropout
from lora_ft.lora.targets import default_head, default_targets

log = logging.getLogger("lora_ft")

# transformers' stand-in for "no limit" in a tokenizer's model_max_length is int(1e30).
_NO_LIMIT = 10**18


def quiet_transformers() -> None:
    """Silence transformers' load reports and the libraries' per-file progress bars; ours say what matters."""
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    datasets.disable_progress_bars()
    datasets.logging.set_verbosity_error()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@dataclass
class LoadedModel:
    """A classifier ready to build: the model, its tokenizer and where they came from."""

    model: nn.Module
    tokenizer: object
    source: str  # what the user named (minilm-l6, a path, a hub id)
    path: str  # what from_pretrained was given (the cache dir of a built-in, the path, or the hub id)
    newly_initialized: list[str] = field(default_factory=list)  # module names the checkpoint lacked

    @property
    def model_type(self) -> str:
        return getattr(self.model.config, "model_type", type(self.model).__name__)


@dataclass
class BuildReport:
    """What a method made trainable."""

    method: str
    head: list[str]
    trainable_params: int
    total_params: int
    injection: InjectionReport | None = None
    targets: list[str] = field(default_factory=list)

    @property
    def trainable_fraction(self) -> float:
        return self.trainable_params / self.total_params if self.total_params else 0.0


def resolve_model_path(name: str) -> str:
    """A built-in name -> its prepared cache dir; an existing directory -> itself; else a hub id."""
    if assets.is_builtin(name):
        return str(assets.ensure(name, "model"))
    p = Path(name).expanduser()
    if p.exists():
        if not p.is_dir() or not (p / "config.json").is_file():
            raise LoraFtError(
                f"model path {name} is not a Hugging Face model directory (no config.json in it)"
            )
        return str(p)
    if name.startswith((".", "/", "~")):
        raise LoraFtError(f"model path not found: {name} (give an HF model directory, a hub id or minilm-l6)")
    return name


def _check_weights_format(path: str, allow_pickle: bool) -> bool:
    """Return ``use_safetensors`` for from_pretrained; refuse pickled weights unless the user allowed them."""
    p = Path(path)
    if not p.is_dir():
        return not allow_pickle  # hub id: insist on safetensors unless pickles were allowed
    if any(p.glob("*.safetensors")):
        return True
    if any(p.glob("*.bin")) or any(p.glob("*.pt")):
        if not allow_pickle:
            raise LoraFtError(
                f"model {path} has only pickled weights (*.bin), which can run code when loaded; convert them to "
                "safetensors, or pass --set model.allow_pickle=true to load them with torch.load(weights_only=True)"
            )
        return False
    raise LoraFtError(f"model directory {path} has no weights (no *.safetensors or *.bin file)")


def load_tokenizer(path: str, cfg: ModelConfig):
    """The model's tokenizer; one that knows nothing but its special tokens is an error.

    transformers 5 builds a tokenizer from the model's config alone when the directory has no tokenizer
    files: every word becomes ``[UNK]``, and a model trained on that learns nothing from the text.
    """
    try:
        tokenizer = AutoTokenizer.from_pretrained(
            path, revision=cfg.revision, trust_remote_code=cfg.trust_remote_code
        )
    except (OSError, ValueError) as exc:
        raise LoraFtError(f"cannot load a tokenizer for model {cfg.name}: {load_error(exc)}") from None
    if len(tokenizer) <= len(set(tokenizer.all_special_tokens)):
        raise LoraFtError(
            f"model {path} has no tokenizer files (its tokenizer knows only its {len(tokenizer)} special "
            "tokens); copy them in from the model it was made from: "
            f"AutoTokenizer.from_pretrained(BASE).save_pretrained({path!r})"
        )
    return tokenizer


def set_padding(model: nn.Module, tokenizer, name: str) -> None:
    """Give ``tokenizer`` a pad token if it has none (its eos), pad on the right, and make the model's
    ``config.pad_token_id`` the tokenizer's.

    Decoders ship no pad token, and a decoder classifier (transformers' ``GenericForSequenceClassification``)
    pools the rightmost token whose id is not ``config.pad_token_id``: a pad id the tokenizer does not
    pad with pools a pad. Right padding keeps a row's logits those of the row alone, since a causal
    model's real tokens never attend to the pads after them and their positions do not shift. The
    config travels with every merged export, the tokenizer with every adapter and export.

    Raises:
        LoraFtError: the tokenizer has neither a pad nor an eos token.
    """
    if tokenizer.pad_token_id is None:
        if tokenizer.eos_token_id is None:
            raise LoraFtError(
                f"the tokenizer of model {name} has no pad token and no eos token to pad with, so batches "
                "cannot be padded; add one to its tokenizer: tok.pad_token = '<pad token>'; "
                f"tok.save_pretrained({name!r})"
            )
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "right"
    text_config = model.config.get_text_config()
    if text_config.pad_token_id != tokenizer.pad_token_id:
        text_config.pad_token_id = tokenizer.pad_token_id


def input_limit(model: nn.Module, tokenizer) -> tuple[int, str] | None:
    """The longest input, in tokens, that ``model`` and ``tokenizer`` accept, and what sets it; None if unbounded.

    Position embeddings end at ``max_position_embeddings`` (RoBERTa's start at 2, which only the
    tokenizer's ``model_max_length`` of 512 for 514 positions tells).
    """
    limits = []
    positions = getattr(model.config, "max_position_embeddings", None)
    if isinstance(positions, int) and positions > 0:
        limits.append((positions, f"max_position_embeddings={positions}"))
    stated = getattr(tokenizer, "model_max_length", None)
    if isinstance(stated, int) and 0 < stated < _NO_LIMIT:
        limits.append((stated, f"the tokenizer's model_max_length={stated}"))
    return min(limits) if limits else None


def check_max_length(loaded: LoadedModel, max_length: int) -> None:
    """Refuse a ``data.max_length`` the model cannot take, before any tokenizing or training."""
    limit = input_limit(loaded.model, loaded.tokenizer)
    if limit is not None and max_length > limit[0]:
        raise LoraFtError(
            f"data.max_length={max_length} is more than model {loaded.source} takes ({limit[0]} tokens: "
            f"{limit[1]}); set data.max_length={limit[0]} or lower"
        )


def auto_class(task: Task):
    """The transformers auto class of ``task``'s head: one output row per word
    (``AutoModelForTokenClassification``) or per text (``AutoModelForSequenceClassification``)."""
    return (
        AutoModelForTokenClassification
        if task.is_token_classification
        else AutoModelForSequenceClassification
    )


def load_model(cfg: ModelConfig, task: Task) -> LoadedModel:
    """Load tokenizer + the task's ``auto_class`` with ``task.num_labels`` outputs, the
    task's label names as ``id2label`` and its ``problem_type`` in the model config: the loss the model
    computes (cross-entropy, BCE-with-logits, MSE), for the Trainer and for any plain-transformers loader.

    Raises:
        LoraFtError: unknown path, pickled weights without ``allow_pickle``, unreachable hub id,
            or a checkpoint that is not a sequence-classification-capable architecture.
    """
    quiet_transformers()
    path = resolve_model_path(cfg.name)
    use_safetensors = _check_weights_format(path, cfg.allow_pickle)
    overrides = {} if cfg.num_layers is None else {"num_hidden_layers": cfg.num_layers}
    names = task.label_names
    try:
        config = AutoConfig.from_pretrained(
            path,
            revision=cfg.revision,
            trust_remote_code=cfg.trust_remote_code,
            num_labels=task.num_labels,
            id2label=dict(enumerate(names)),
            label2id={name: i for i, name in enumerate(names)},
            problem_type=task.problem_type,
            **overrides,
        )
        model, info = auto_class(task).from_pretrained(
            path,
            config=config,
            revision=cfg.revision,
            trust_remote_code=cfg.trust_remote_code,
            use_safetensors=use_safetensors,
            output_loading_info=True,
            # A checkpoint's own head sized for another task (2 classes; the task has 3, or 1 score)
            # starts afresh, as a head the checkpoint lacks does: it is listed as newly initialized.
            ignore_mismatched_sizes=True,
        )
    except (OSError, ValueError, KeyError) as exc:
        raise LoraFtError(f"cannot load model {cfg.name}: {load_error(exc)}") from None
    except Exception as exc:  # torch.load(weights_only=True) raises UnpicklingError on a foreign object
        if "Weights only load failed" not in str(exc):
            raise
        raise LoraFtError(f"cannot load model {cfg.name}: {load_error(exc)}") from None
    if cfg.num_layers is not None:
        have = getattr(model.config, "num_hidden_layers", None)
        if have != cfg.num_layers:
            raise LoraFtError(
                f"model.num_layers={cfg.num_layers} is not supported for {cfg.name} (it has {have})"
            )
    resized = sorted({key.rsplit(".", 1)[0] for key, *_ in info.get("mismatched_keys", ())})
    if resized:
        log.warning(
            "model %s: %s sized for another number of outputs; re-initialized for %d (%s)",
            cfg.name, ", ".join(resized), task.num_labels, task.problem_type,
        )  # fmt: skip
    missing = {k.rsplit(".", 1)[0] for k in info.get("missing_keys", ())}
    newly = sorted(missing | set(resized))
    tokenizer = load_tokenizer(path, cfg)
    set_padding(model, tokenizer, cfg.name)
    return LoadedModel(model=model, tokenizer=tokenizer, source=cfg.name, path=path, newly_initialized=newly)


def load_model_skeleton(name: str, num_labels: int = 2, trust_remote_code: bool = False) -> nn.Module:
    """The classifier's module structure with no weights (meta device), from a name, dir or config.json.

    Used by dry runs (``lora-ft targets``) that need shapes, not values, so planning for a large
    model needs only its config.
    """
    quiet_transformers()
    p = Path(name).expanduser()
    source = str(p.parent) if p.is_file() and p.name.endswith(".json") else resolve_model_path(name)
    try:
        config = AutoConfig.from_pretrained(
            source, num_labels=num_labels, trust_remote_code=trust_remote_code
        )
        with torch.device("meta"):
            return AutoModelForSequenceClassification.from_config(config, trust_remote_code=trust_remote_code)
    except (OSError, ValueError, KeyError) as exc:
        raise LoraFtError(f"cannot build model {name} from its config: {load_error(exc)}") from None


def build_for_method(loaded: LoadedModel, cfg: RunConfig, method: str | None = None) -> BuildReport:
    """Make ``loaded.model`` trainable for ``method`` (default ``cfg.train.method``), in place."""
    method = method or cfg.train.method
    model = loaded.model
    if method != "full" and cfg.train.base_dropout == "sparse":
        # A frozen base's dropout: the same distribution, drawn as the dropped positions (cheaper on
        # the CPU). Full fine-tuning keeps the plain modules: it is the reference the others meet.
        use_sparse_dropout(model)
    head = list(cfg.lora.head) if cfg.lora.head else default_head(model, loaded.newly_initialized)
    if method == "lora":
        targets = cfg.lora.targets if cfg.lora.targets is not None else default_targets(model)
        report = inject_lora(
            model,
            targets,
            r=cfg.lora.r,
            alpha=cfg.lora.alpha,
            dropout=cfg.lora.dropout,
            init=cfg.lora.init,
            init_std=cfg.lora.init_std,
            rslora=cfg.lora.rslora,
            use_dora=cfg.lora.use_dora,
            rank_pattern=cfg.lora.rank_pattern,
            alpha_pattern=cfg.lora.alpha_pattern,
            head=head,
        )
        # B @ A has rank at most min(in, out): a larger r only adds parameters that cannot raise it.
        # Refused for training only; an adapter saved that way (PEFT allows it) still loads.
        for w in report.wrapped:
            if w.r > min(w.in_features, w.out_features):
                raise LoraFtError(
                    f"r={w.r} for {w.name} is above what its {w.out_features}x{w.in_features} weight can use "
                    f"(rank at most {min(w.in_features, w.out_features)}); lower lora.r, or give that module "
                    "a smaller r in lora.rank_pattern"
                )
        trainable, total = count_parameters(model)
        return BuildReport(method, head, trainable, total, report, [w.name for w in report.wrapped])
    freeze_for_method(model, method, head)
    trainable, total = count_parameters(model)
    return BuildReport(method, head, trainable, total)


REMOTE_CODE_HINT = (
    "; the model ships its own Python code (auto_map in its config.json), which lora-ft runs only when "
    "the command line says so: add --trust-remote-code if you trust that code"
)


def load_error(exc: BaseException) -> str:
    """The first line of a loading error, with what to do when it is pickled weights or the model's own code."""
    # torch's own message goes on to suggest weights_only=False, which would run the pickle's code.
    if "Weights only load failed" in str(exc):
        return (
            "its pickled weights hold objects other than tensors, which torch.load(weights_only=True) "
            "refused; they may run code when unpickled, so lora-ft will not load them: convert the "
            "checkpoint to safetensors from a source you trust"
        )
    if "trust_remote_code" in str(exc):  # transformers' refusal: its advice names a Python argument
        return first_line(exc, type(exc).__name__) + REMOTE_CODE_HINT
    return first_line(exc, type(exc).__name__)
