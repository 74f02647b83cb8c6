"""The recipe's sections as dataclasses (``model``, ``data``, ``lora``, ``train``, all in ``RunConfig``),
each with its defaults and its range checks in ``__post_init__``, so a config object is valid once it
exists. Every float is checked finite first (``x > 0`` is False for NaN, but ``x >= 0`` lets +inf in).

The defaults are the recommended recipe (README, "The demo"): LoRA r=8 on every Linear under the head,
no dropout, lr 2e-3, one epoch. ``lora_ft/configs/default.yaml`` restates them; a test holds the two equal.
"""
# Over 350 lines: why: one dataclass per config section with its checks, the schema in one place to read.

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass, field
from typing import Any, Union

from lora_ft.errors import LoraFtError
from lora_ft.lora.scaling import lora_scaling

METHODS = ("lora", "full", "head")
# What a model predicts, in Hugging Face's names (config.problem_type picks the Trainer's loss; a token
# task, one label per word, AutoModelForTokenClassification); data/task.py is the idea's home.
PROBLEM_TYPES = ("single_label_classification", "multi_label_classification", "regression",
                 "token_classification")  # fmt: skip
PRECISIONS = ("fp32", "bf16", "fp16", "auto")
BASE_DROPOUTS = ("sparse", "torch")
SCHEDULERS = ("linear", "cosine", "constant", "constant_with_warmup")
STRATEGIES = ("no", "steps", "epoch")
# What evaluations report (data/metrics.py: METRIC_KEYS of every problem type, f1_accuracy_mean, the
# Trainer's loss): what train.metric_for_best may name; a run's depend on its problem type (training/prepare.py).
BEST_METRICS = tuple(
    "loss accuracy f1 macro_f1 matthews_correlation f1_accuracy_mean micro_f1 subset_accuracy pearson "
    "spearman pearson_spearman_mean mse mae entity_f1 entity_precision entity_recall token_accuracy".split()
)
# The experiment trackers train.report_to may name (each an extra: pip install 'lora-ft[tensorboard]').
TRACKERS = ("tensorboard", "mlflow", "trackio")
# Settings that say where a run is reported, not what it trains: a resume or a reused comparison run
# may differ in them.
TRACKING_KEYS = frozenset({"train.report_to", "train.run_name", "train.project"})
# What numpy's seeding accepts (torch's takes more): transformers.set_seed seeds both.
MAX_SEED = 2**32 - 1


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise LoraFtError(message)


def _check_finite(section: Any, prefix: str) -> None:
    """Every float setting of ``section``, and every float in its mappings, is finite.

    Checked first, so the range checks after it hold: ``x > 0`` is False for NaN, but ``x >= 0`` lets
    +inf through, and ``x < 1`` lets -inf through.
    """
    for f in dataclasses.fields(section):
        value = getattr(section, f.name)
        items = value.items() if isinstance(value, dict) else [(None, value)]
        for key, v in items:
            if isinstance(v, float) and not math.isfinite(v):
                name = f"{prefix}.{f.name}" if key is None else f"{prefix}.{f.name}.{key}"
                raise LoraFtError(f"{name} must be a finite number, got {v}")


@dataclass
class ModelConfig:
    """Which pretrained model to start from."""

    name: str = "minilm-l6"  # built-in name, local HF model directory, or hub id
    revision: str | None = None
    trust_remote_code: bool = False  # never on unless the user asks: it runs the model repo's code
    num_layers: int | None = None  # keep only the first N encoder layers (fast runs, smoke tests)
    allow_pickle: bool = False  # load a pytorch_model.bin (weights_only) when no safetensors exist

    def __post_init__(self) -> None:
        _check_finite(self, "model")
        _check(
            bool(self.name), "model.name is empty; give a built-in name (minilm-l6), a directory or a hub id"
        )
        _check(
            self.num_layers is None or self.num_layers >= 1,
            f"model.num_layers must be >= 1, got {self.num_layers}",
        )


@dataclass
class DataConfig:
    """Which sentence-classification data, and how to read it."""

    name: str = "rt-sentences"  # built-in name, hub name (glue/sst2, rotten_tomatoes), file or directory
    text_column: str = "sentence"
    # The second text of a pair task (GLUE's MRPC, MNLI, ...): tokenized as the model's pair encoding.
    # null: single texts.
    text_pair_column: str | None = None
    label_column: str = "label"
    # single_label_classification, multi_label_classification (a list per row, or split on label_separator),
    # regression (float labels, one output) or token_classification (words, IOB2 tags: data/token_data.py).
    problem_type: str = "single_label_classification"
    label_separator: str | None = None  # multi-label labels given as one string: "fire;flood"
    # Names of integer labels 0..K-1, in id order (checked against the data when it is read);
    # null: a data directory's labels.json, else "0", "1", ...
    label_names: list[str] | None = None
    train_split: str = "train"
    validation_split: str = "validation"
    test_split: str | None = "test"
    max_length: int = 128
    max_train_samples: int | None = None
    max_eval_samples: int | None = None

    def __post_init__(self) -> None:
        _check_finite(self, "data")
        _check(
            bool(self.name), "data.name is empty; give a built-in name (rt-sentences), a hub name or a path"
        )
        _check(
            self.problem_type in PROBLEM_TYPES,
            f"data.problem_type must be one of {', '.join(PROBLEM_TYPES)}, got {self.problem_type!r}",
        )
        _check(
            self.label_separator is None
            or (self.label_separator != "" and self.problem_type == PROBLEM_TYPES[1]),
            "data.label_separator (the non-empty string between labels) needs multi_label_classification",
        )
        _check(self.max_length >= 8, f"data.max_length must be >= 8 tokens, got {self.max_length}")
        for key in ("max_train_samples", "max_eval_samples"):
            value = getattr(self, key)
            _check(
                value is None or value >= 1, f"data.{key} must be >= 1 (or null for all rows), got {value}"
            )


@dataclass
class LoRAConfig:
    """The adapter: rank, scaling, dropout, which Linears to wrap, which head modules to train fully."""

    r: int = 8
    alpha: float = 16.0
    # No copy of each input for a dropout mask: faster, and no loss in the recipe's one epoch.
    dropout: float = 0.0
    # Exact names or dotted suffixes ("query", "attention.self.query"), regexes (full match on the
    # module name), or "all-linear" (every Linear outside the head: attention and feed-forward, which
    # in one epoch matches full fine-tuning where q/v alone is 2-3 points lower, BENCHMARKS.md "End to
    # end"). null: the model type's default (BERT query/value, DistilBERT q_lin/v_lin).
    targets: Union[list[str], str, None] = "all-linear"  # noqa: UP007 - the config parser reads this annotation
    init: str = "kaiming"  # or "gaussian"
    init_std: float | None = None  # the gaussian init's std for lora_A; null: PEFT's 1/r (tutorials: 0.01)
    rslora: bool = False  # scaling alpha / sqrt(r) (rsLoRA) instead of alpha / r
    use_dora: bool = False  # DoRA: a trainable magnitude per output feature beside the low-rank direction
    # Another r / alpha for some modules, PEFT's rank_pattern / alpha_pattern: {regex: value}, where the
    # first key (in order) matching the end of a module name wins, e.g. {query: 16, value: 4}.
    rank_pattern: dict[str, int] = field(default_factory=dict)
    alpha_pattern: dict[str, float] = field(default_factory=dict)
    # Modules trained fully and saved with the adapter (PEFT's modules_to_save). null: the classifier head.
    head: list[str] | None = None

    def __post_init__(self) -> None:
        _check_finite(self, "lora")
        _check(self.r >= 1, f"lora.r must be an integer >= 1, got {self.r}")
        _check(self.alpha > 0, f"lora.alpha must be > 0, got {self.alpha}")
        _check(0.0 <= self.dropout < 1.0, f"lora.dropout must be in [0, 1), got {self.dropout}")
        _check(
            self.init in ("kaiming", "gaussian"), f"lora.init must be kaiming or gaussian, got {self.init!r}"
        )
        std, gaussian = self.init_std, self.init == "gaussian"
        _check(std is None or std > 0, f"lora.init_std must be > 0, got {std}")
        _check(std is None or gaussian, f"lora.init_std is for lora.init=gaussian, not {self.init}")
        if isinstance(self.targets, list):
            _check(
                len(self.targets) > 0, "lora.targets is an empty list; name modules, or null for the default"
            )
        for key, r in self.rank_pattern.items():
            _check(r >= 1, f"lora.rank_pattern.{key} must be an integer >= 1, got {r}")
        for key, alpha in self.alpha_pattern.items():
            _check(alpha > 0, f"lora.alpha_pattern.{key} must be > 0, got {alpha}")
        for what in ("rank_pattern", "alpha_pattern"):
            for key in getattr(self, what):
                try:
                    re.compile(key)
                except re.error as exc:
                    raise LoraFtError(
                        f"lora.{what} key {key!r} is not a valid regex ({exc}); escape special characters"
                    ) from None

    @property
    def scaling(self) -> float:
        return lora_scaling(self.alpha, self.r, self.rslora)


@dataclass
class TrainConfig:
    """How to train: method, budget, optimiser, evaluation, precision."""

    method: str = "lora"
    epochs: float = 1.0
    max_steps: int = -1  # > 0 overrides epochs
    batch_size: int = 32
    eval_batch_size: int = 128
    gradient_accumulation_steps: int = 1
    # null: the method's own rate from learning_rates (full fine-tuning needs a much smaller one).
    learning_rate: float | None = None
    learning_rates: dict[str, float] = field(
        default_factory=lambda: {"lora": 2e-3, "full": 5e-5, "head": 2e-3}
    )
    weight_decay: float = 0.0
    warmup_ratio: float = 0.06
    lr_scheduler: str = "linear"
    max_grad_norm: float = 1.0
    seed: int = 42
    group_by_length: bool = True  # batches of similar lengths: less padding, faster steps
    precision: str = "fp32"  # or bf16, fp16, auto: bf16 where the hardware multiplies it natively, else fp32
    gradient_checkpointing: bool = False
    # A frozen base's nn.Dropout (lora, head): sparse draws the dropped positions (same distribution, a
    # third of the time on the CPU: lora/sparse_dropout.py); torch keeps nn.Dropout's random stream.
    base_dropout: str = "torch"
    eval_strategy: str = "epoch"
    eval_steps: int | None = None
    logging_steps: int = 25
    save_strategy: str = "epoch"
    save_steps: int | None = None
    save_total_limit: int = 1
    # Stop after this many evaluations in a row that do not improve metric_for_best; null: never.
    early_stopping_patience: int | None = None
    load_best_model: bool = False  # publish the checkpoint with the best metric_for_best, not the last step
    # A metric of the validation split (BEST_METRICS: the data's problem type decides which exist):
    # loss, mse and mae are better lower, the rest higher.
    metric_for_best: str = "loss"
    threads: int | None = None  # torch intra-op threads; null: one per physical core
    # Experiment trackers (TRACKERS): a list, or one name; []: none.
    report_to: Union[list[str], str] = field(default_factory=list)  # noqa: UP007 - read by the config parser
    run_name: str | None = None  # the run's name in the trackers; null: the run directory's name
    project: str | None = None  # MLflow experiment / trackio project; null: "lora-ft"
    # Further TrainingArguments fields passed through unchanged (fsdp, deepspeed, ...).
    trainer: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _check_finite(self, "train")
        _check(
            self.method in METHODS, f"train.method must be one of {', '.join(METHODS)}, got {self.method!r}"
        )
        _check(self.epochs > 0 or self.max_steps > 0, f"train.epochs must be > 0, got {self.epochs}")
        _check(self.batch_size >= 1, f"train.batch_size must be >= 1, got {self.batch_size}")
        _check(self.eval_batch_size >= 1, f"train.eval_batch_size must be >= 1, got {self.eval_batch_size}")
        _check(
            self.gradient_accumulation_steps >= 1,
            f"train.gradient_accumulation_steps must be >= 1, got {self.gradient_accumulation_steps}",
        )
        _check(
            self.learning_rate is None or self.learning_rate > 0,
            f"train.learning_rate must be > 0, got {self.learning_rate}",
        )
        for method, lr in self.learning_rates.items():
            _check(
                method in METHODS,
                f"train.learning_rates has unknown method {method!r}; use {', '.join(METHODS)}",
            )
            _check(lr > 0, f"train.learning_rates.{method} must be > 0, got {lr}")
        _check(self.weight_decay >= 0, f"train.weight_decay must be >= 0, got {self.weight_decay}")
        _check(
            0.0 <= self.warmup_ratio < 1.0, f"train.warmup_ratio must be in [0, 1), got {self.warmup_ratio}"
        )
        _check(
            self.max_grad_norm >= 0,
            f"train.max_grad_norm must be >= 0 (0 turns gradient clipping off), got {self.max_grad_norm}",
        )
        _check(
            0 <= self.seed <= MAX_SEED,
            f"train.seed must be in [0, {MAX_SEED}] (what numpy's seeding accepts), got {self.seed}",
        )
        _check(
            self.lr_scheduler in SCHEDULERS,
            f"train.lr_scheduler must be one of {', '.join(SCHEDULERS)}, got {self.lr_scheduler!r}",
        )
        for key, allowed in (("precision", PRECISIONS), ("base_dropout", BASE_DROPOUTS)):
            value = getattr(self, key)
            _check(value in allowed, f"train.{key} must be one of {', '.join(allowed)}, got {value!r}")
        for key in ("eval_strategy", "save_strategy"):
            value = getattr(self, key)
            _check(value in STRATEGIES, f"train.{key} must be one of {', '.join(STRATEGIES)}, got {value!r}")
        _check(self.logging_steps >= 1, f"train.logging_steps must be >= 1, got {self.logging_steps}")
        _check(
            self.save_total_limit >= 1, f"train.save_total_limit must be >= 1, got {self.save_total_limit}"
        )
        _check(self.threads is None or self.threads >= 1, f"train.threads must be >= 1, got {self.threads}")
        self._check_best()
        self._check_tracking()

    def _check_best(self) -> None:
        """Early stopping and the best checkpoint, checked as ``TrainingArguments`` would, in our words."""
        _check(
            self.metric_for_best in BEST_METRICS,
            f"train.metric_for_best must be one of {', '.join(BEST_METRICS)}, got {self.metric_for_best!r}",
        )
        patience = self.early_stopping_patience
        _check(
            patience is None or patience >= 1, f"train.early_stopping_patience must be >= 1, got {patience}"
        )
        for key, on in (
            ("early_stopping_patience", patience is not None),
            ("load_best_model", self.load_best_model),
        ):
            _check(
                not on or self.eval_strategy != "no",
                f"train.{key} needs evaluations to compare: set train.eval_strategy to steps or epoch",
            )
        if not self.load_best_model:
            return
        _check(
            self.save_strategy == self.eval_strategy,
            "train.load_best_model needs a checkpoint at every evaluation: set train.save_strategy to "
            f"train.eval_strategy ({self.eval_strategy}), got {self.save_strategy}",
        )
        every = self.eval_steps or self.logging_steps  # the Trainer evaluates every logging_steps by default
        _check(
            self.eval_strategy != "steps" or (self.save_steps is not None and self.save_steps % every == 0),
            "train.load_best_model needs a checkpoint at every evaluation: set train.save_steps to a multiple "
            f"of the {every} steps between evaluations, got {self.save_steps}",
        )

    def _check_tracking(self) -> None:
        """``report_to`` as a list of known trackers, each once; names that are not blank."""
        if isinstance(self.report_to, str):
            self.report_to = [self.report_to]
        for tracker in self.report_to:
            _check(
                tracker in TRACKERS,
                f"train.report_to takes a list of {', '.join(TRACKERS)} ([] for none), got {tracker!r}",
            )
        _check(
            len(set(self.report_to)) == len(self.report_to),
            f"train.report_to names a tracker twice: {self.report_to}",
        )
        for key in ("run_name", "project"):
            value = getattr(self, key)
            _check(value is None or bool(value.strip()), f"train.{key} is empty; give a name, or null")

    def lr_for(self, method: str) -> float:
        if self.learning_rate is not None:
            return self.learning_rate
        if method not in self.learning_rates:
            raise LoraFtError(f"no learning rate for method {method!r}; set train.learning_rates.{method}")
        return self.learning_rates[method]


@dataclass
class RunConfig:
    """Everything a run needs; ``lora-ft train`` saves the resolved copy as ``config.yaml``."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    lora: LoRAConfig = field(default_factory=LoRAConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
