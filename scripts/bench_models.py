"""The pieces ``scripts/bench.py`` times: each training method as a model with its optimizer, batches of
one fixed shape, the machine's GEMM rate and the FLOPs a step really runs. Not a script of its own.

Methods (one model each, all copied from one loaded base, so they start from the same weights):

- ``full``: every weight trains.
- ``head``: only the classifier head trains; the backward pass stops at the head.
- ``floor``: the head trains and the gradient flows back through every frozen layer to the embeddings,
  with no adapter: the least a LoRA step can cost, since LoRA needs the same input gradients.
- ``lora``: our LoRALinear; ``peft``: PEFT's LoRA with the same r, alpha, dropout, targets and head.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field, replace

import torch

KINDS = ("full", "head", "floor", "lora", "peft")
# Named sets of wrapped modules for BERT-style models: the LoRA paper's default, all attention, everything.
TARGET_SETS = {
    "q/v": ("query", "value"),
    "attention": ("query", "key", "value", "attention.output.dense"),
    "all-linear": ("all-linear",),
}


# What a step's time is read from: wall time (what a user waits), or the process's CPU time, which time
# slices lost to other processes on a shared machine do not inflate (with one torch thread it is the
# step's own compute time; with more, it also counts the threads' spin-waits).
CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}
clock = CLOCKS["wall"]


def set_clock(name: str) -> None:
    global clock
    clock = CLOCKS[name]


@dataclass(frozen=True)
class Method:
    """One row of a benchmark: a training method and, for ``lora``/``peft``, its adapter."""

    kind: str
    r: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    targets: tuple[str, ...] = ("query", "value")
    bf16: bool = (
        False  # frozen weights stored in bf16 and the forward autocast to bf16 (train.precision=bf16)
    )
    sparse_base: bool = False  # the frozen base's nn.Dropout drawn sparse (train.base_dropout=sparse)
    label: str = ""

    @property
    def name(self) -> str:
        if self.label:
            return self.label
        sparse = " sparse-base" if self.sparse_base else ""
        if self.kind not in ("lora", "peft"):
            return self.kind + ("-bf16" if self.bf16 else "") + sparse
        targets = next((k for k, v in TARGET_SETS.items() if v == self.targets), "+".join(self.targets))
        name = f"{self.kind} r{self.r} d{self.dropout:g}" + (" bf16" if self.bf16 else "") + sparse
        return name if targets == "q/v" else f"{name} {targets}"

    def with_(self, **changes) -> Method:
        return replace(self, **{"label": "", **changes})


def bench_config(overrides: list[str] = (), config: str = "configs/default.yaml"):
    """``config`` (default: the demo, MiniLM-L6 on rt-sentences) with ``--set`` overrides."""
    from lora_ft.config import load_config

    return load_config(config, list(overrides))


@dataclass
class Setup:
    """The tokenized training data and one loaded base model, shared by every method built from it."""

    cfg: object
    tokenizer: object
    base: torch.nn.Module
    head: list[str]
    train: object  # datasets.Dataset, tokenized
    seconds: dict[str, float] = field(default_factory=dict)
    _stream: list[int] = field(default_factory=list)

    @classmethod
    def load(cls, cfg) -> Setup:
        from lora_ft.data.loading import load_data
        from lora_ft.data.tokenization import tokenize_data
        from lora_ft.lora.targets import default_head
        from lora_ft.training.modeling import load_model, quiet_transformers

        quiet_transformers()
        if cfg.train.threads:
            torch.set_num_threads(cfg.train.threads)
        t0 = time.perf_counter()
        data = load_data(cfg.data)
        t1 = time.perf_counter()
        loaded = load_model(cfg.model, data.task)
        t2 = time.perf_counter()
        tokenized = tokenize_data(data, loaded.tokenizer, cfg.data.max_length)
        t3 = time.perf_counter()
        head = default_head(loaded.model, loaded.newly_initialized)
        seconds = {"load_data": t1 - t0, "load_model": t2 - t1, "tokenize": t3 - t2}
        return cls(cfg, loaded.tokenizer, loaded.model, head, tokenized["train"], seconds)

    def batch(self, size: int, tokens: int, index: int = 0) -> dict[str, torch.Tensor]:
        """``size`` rows of exactly ``tokens`` real tokens, no padding: ``(size, tokens)`` tensors.

        A row is consecutive training sentences joined and cut to ``tokens`` (the sentences are short,
        ~25 tokens, so longer rows need several); ``index`` starts at a different place in the data.
        """
        if not self._stream:
            self._stream = [t for ids in self.train["input_ids"] for t in ids]
        stream, labels = self._stream, self.train["labels"]
        start = (index * size * tokens) % (len(stream) - size * tokens)
        ids = torch.tensor(stream[start : start + size * tokens]).view(size, tokens)
        batch = {
            "input_ids": ids,
            "attention_mask": torch.ones_like(ids),
            "labels": torch.tensor([labels[(index * size + i) % len(labels)] for i in range(size)]),
        }
        if "token_type_ids" in self.tokenizer.model_input_names:  # BERT's; a Llama decoder takes none
            batch["token_type_ids"] = torch.zeros_like(ids)
        return batch

    def build(self, method: Method, seed: int = 0) -> torch.nn.Module:
        """A fresh copy of the base model, made trainable for ``method``, in train mode."""
        from lora_ft.lora.inject import freeze_for_method, inject_lora
        from lora_ft.training.precision import set_dtypes

        model = copy.deepcopy(self.base)
        torch.manual_seed(seed)  # LoRA A's initial values
        if method.kind in ("full", "head"):
            freeze_for_method(model, method.kind, self.head)
        elif method.kind == "floor":
            freeze_for_method(model, "head", self.head)
            model.enable_input_require_grads()  # the embeddings' output needs a gradient: all layers backprop
        elif method.kind == "lora":
            inject_lora(
                model,
                list(method.targets),
                r=method.r,
                alpha=method.alpha,
                dropout=method.dropout,
                head=self.head,
            )
        elif method.kind == "peft":
            from peft import LoraConfig, get_peft_model

            config = LoraConfig(
                r=method.r,
                lora_alpha=method.alpha,
                lora_dropout=method.dropout,
                target_modules=_peft_targets(model, method.targets),
                modules_to_save=self.head,
            )
            model = get_peft_model(model, config)
        else:
            raise ValueError(f"unknown method kind {method.kind!r}; one of {', '.join(KINDS)}")
        if method.sparse_base:
            from lora_ft.lora.sparse_dropout import use_sparse_dropout

            use_sparse_dropout(model)
        if method.bf16:
            set_dtypes(model, torch.bfloat16)
        return model.train()


def _peft_targets(model: torch.nn.Module, targets: tuple[str, ...]) -> list[str] | str:
    """Our target spec in PEFT's terms: the same modules (PEFT matches names by suffix, too)."""
    if targets == ("all-linear",):
        from lora_ft.lora.targets import default_head, match_targets

        return match_targets(model, "all-linear", exclude=default_head(model))
    return list(targets)


class Trainee:
    """One method's model and AdamW (over the trainable parameters only), stepped by hand."""

    def __init__(self, setup: Setup, method: Method, seed: int = 0):
        self.method = method
        self.model = setup.build(method, seed)
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(params, lr=1e-4)

    def _autocast(self):
        return torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.method.bf16)

    def step(self, batch) -> tuple[float, float, float]:
        """One training step; seconds spent in forward, backward and the optimizer step."""
        t0 = clock()
        with self._autocast():
            loss = self.model(**batch).loss
        t1 = clock()
        loss.backward()
        t2 = clock()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return t1 - t0, t2 - t1, clock() - t2

    @torch.inference_mode()
    def infer(self, batch) -> tuple[float, float, float]:
        """One forward pass in eval mode; timed as a forward, with zero backward and optimizer time."""
        t0 = clock()
        with self._autocast():
            self.model(**{k: v for k, v in batch.items() if k != "labels"})
        return clock() - t0, 0.0, 0.0


class Gemm:
    """A ``(m, k) @ (k, n)`` matrix product repeated ``repeat`` times: the machine's matmul rate."""

    def __init__(self, m: int, k: int, n: int, dtype: torch.dtype, repeat: int = 4):
        self.a = torch.randn(m, k).to(dtype)
        self.b = torch.randn(k, n).to(dtype)
        self.out = torch.empty(m, n, dtype=dtype)
        self.repeat = repeat
        self.flops = 2 * m * k * n * repeat
        self.name = f"gemm {str(dtype).removeprefix('torch.')} {m}x{k}x{n}"

    def run(self) -> float:
        t0 = clock()
        for _ in range(self.repeat):
            torch.mm(self.a, self.b, out=self.out)
        return clock() - t0


def step_flops(trainee: Trainee, batch) -> int:
    """FLOPs of one forward + backward as autograd really runs them (frozen weights get no weight
    gradients, and no input gradient is computed below the lowest layer that needs one)."""
    from torch.utils.flop_counter import FlopCounterMode

    _register_cpu_attention()
    with FlopCounterMode(display=False) as counter:
        with trainee._autocast():
            loss = trainee.model(**batch).loss
        loss.backward()
    trainee.optimizer.zero_grad(set_to_none=True)
    return counter.get_total_flops()


def forward_flops(trainee: Trainee, batch) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    _register_cpu_attention()
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        trainee.model(**{k: v for k, v in batch.items() if k != "labels"})
    return counter.get_total_flops()


_registered = False


def _register_cpu_attention() -> None:
    """Teach the FLOP counter the CPU flash-attention kernels (torch counts only the CUDA ones)."""
    global _registered
    if _registered:
        return
    from torch.utils import flop_counter as fc

    aten = torch.ops.aten

    @fc.register_flop_formula(aten._scaled_dot_product_flash_attention_for_cpu, get_raw=True)
    def _forward(query, key, value, *args, out_val=None, **kwargs) -> int:
        return fc.sdpa_flop_count(query.shape, key.shape, value.shape)

    @fc.register_flop_formula(aten._scaled_dot_product_flash_attention_for_cpu_backward, get_raw=True)
    def _backward(grad_out, query, key, value, *args, out_val=None, **kwargs) -> int:
        return fc.sdpa_backward_flop_count(grad_out.shape, query.shape, key.shape, value.shape)

    _registered = True
