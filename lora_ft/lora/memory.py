"""Training memory per method from a model's config alone: weights, gradients, AdamW state, activations.

For ``P`` parameters of which ``N`` train (``calculator.savings`` counts both), in bytes:

    weights      full: 4 P;  LoRA: 4 (P + LoRA);  LoRA on a bf16 base: 2 (P - head) + 4 (LoRA + head)
    gradients    4 N           (float32: what trains stays float32, bf16 base or not)
    AdamW state  8 N           (two float32 moments per trainable value)
    activations  bytes x values autograd keeps for the backward pass (4 bytes; 2 under bf16 autocast)

Activations, for ``T = batch x seq_len`` tokens, ``L`` layers, hidden ``h``, attention width
``q = heads x head_dim``, intermediate ``i``, ``a`` heads and ``s`` = seq_len, in values per token
(what autograd saves in PyTorch 2 on the CPU, tensor by tensor; ``tests/test_memory.py`` holds the
formula within 2.5% of the tensors autograd actually saves on tiny models):

    Llama-style decoder layer (RMSNorm, SDPA flash attention, gated MLP):
        6h + 4q + 4i + a + s + 2
        (2 norms: input, normalised, weighted: 6h, and 2 rsqrt; q, k, v after RoPE (k, v repeated to q
        for grouped-query attention) and the attention output: 4q; the log-sum-exp: a; the padding mask:
        s; gate and up outputs, SiLU output, down input: 4i); the final norm adds 3h + 1.
    BERT-family encoder layer (LayerNorm, attention probabilities kept, dropout on the CPU):
        6h + 4q + 2i + 3as + 4
        (query, key, value, context: 4q; softmax output, its dropout mask, the dropped probabilities:
        3as; the attention input, 2 residual sums, the feed-forward input, 2 dropout masks: 6h; GELU
        input and output: 2i; 2 LayerNorm means and rstds: 4); the embeddings add 2h + 2.

LoRA with a frozen base changes what is kept: a norm with a frozen weight keeps no normalised copy
(-2h per Llama layer); a frozen Linear keeps no input unless a wrapped Linear shares it (Llama: q/k/v
-h, gate/up -h, down -i; BERT: query/key/value -h, attention output -q, intermediate -h, output -i; so
all-linear LoRA loses only the norms' copies, q/v LoRA much of the feed-forward's inputs too); each
wrapped Linear keeps its rank-r ``A x`` (+r); and nothing below the first layer trains, so the
embeddings keep nothing and the first norm no input (the model-level terms become h + 1 and 0).
Gradient checkpointing (per layer, as Transformers does it) keeps each layer's input and recomputes one
layer at a time in the backward pass: ``L h + one layer + the model-level terms``.

Not counted: the forward and backward passes' transient tensors, the optimizer's temporaries, the
allocator's retained pages and the libraries' buffers (the README compares the estimate with measured
peaks).
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass

from torch import nn

from lora_ft.errors import LoraFtError
from lora_ft.lora.calculator import FP32_BYTES, Savings

BF16_BYTES = 2
ADAM_BYTES_PER_PARAM = 2 * FP32_BYTES  # exp_avg and exp_avg_sq, float32
_DECODERS = ("llama", "mistral", "mixtral", "qwen2", "qwen2_moe", "qwen3", "gemma", "gemma2")
# The Linears of a layer that share one input, per family (a regex on the path under the layer, and the
# input's width in `Shape` terms): under LoRA the input is kept only if one of them is wrapped. The
# decoder's o_proj is not listed: SDPA keeps the attention output, its input, for its own backward.
_INPUT_GROUPS = {
    "decoder": ((r"self_attn\.[qkv]_proj", "h"), (r"mlp\.(gate|up)_proj", "h"), (r"mlp\.down_proj", "i")),
    "encoder": ((r"attention\.self\.(query|key|value)", "h"), (r"attention\.output\.dense", "q"),
                (r"intermediate\.dense", "h"), (r"output\.dense", "i")),
}  # fmt: skip
_LAYER = re.compile(r"\.(?:layers|layer)\.(\d+)\.(.+)$")


@dataclass(frozen=True)
class Shape:
    """The sizes that set activation memory, read from a Transformers config."""

    family: str  # "decoder" (Llama-style) or "encoder" (BERT-family)
    layers: int
    hidden: int
    attention: int  # heads x head_dim
    intermediate: int
    heads: int

    def width(self, key: str) -> int:
        return {"h": self.hidden, "q": self.attention, "i": self.intermediate}[key]


def model_shape(model: nn.Module) -> Shape:
    """The ``Shape`` of a model (a meta-device skeleton is enough).

    Raises:
        LoraFtError: a model type that is neither a Llama-style decoder nor a BERT-family encoder.
    """
    config = getattr(model, "config", None)
    model_type = getattr(config, "model_type", None)
    if model_type in _DECODERS:
        family = "decoder"
    elif config is not None and hasattr(config, "type_vocab_size") and hasattr(config, "hidden_dropout_prob"):
        family = "encoder"
    else:
        raise LoraFtError(
            f"no activation-memory formula for model type {model_type!r}: it covers Llama-style decoders "
            f"({', '.join(_DECODERS)}) and BERT-family encoders; leave out --batch-size/--seq-len"
        )
    heads = int(config.num_attention_heads)
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    return Shape(
        family=family,
        layers=int(config.num_hidden_layers),
        hidden=int(config.hidden_size),
        attention=int(heads * head_dim),
        intermediate=int(config.intermediate_size),
        heads=heads,
    )


def layer_values(shape: Shape, seq_len: int, wrapped: list[str] | None, r: int) -> int:
    """Values per token one layer keeps for the backward pass: full fine-tuning (``wrapped`` None) or
    LoRA at rank ``r`` on the Linears ``wrapped`` names (paths under the layer, e.g. ``self_attn.q_proj``)."""
    h, q, i, a, s = shape.hidden, shape.attention, shape.intermediate, shape.heads, seq_len
    if shape.family == "decoder":
        values = 6 * h + 4 * q + 4 * i + a + s + 2
    else:
        values = 6 * h + 4 * q + 2 * i + 3 * a * s + 4
    if wrapped is None:
        return values
    if shape.family == "decoder":
        values -= 2 * h  # the two RMSNorms' weights are frozen: their normalised input is not kept
    for pattern, width in _INPUT_GROUPS[shape.family]:
        if not any(re.fullmatch(pattern, name) for name in wrapped):
            values -= shape.width(width)
    return values + r * len(wrapped)


def model_values(shape: Shape, lora: bool) -> int:
    """Values per token kept outside the layers: the decoder's final norm, the encoder's embeddings."""
    if shape.family == "decoder":  # under LoRA, also no input to the first layer's frozen norm: -h
        return (1 if lora else 3) * shape.hidden + 1
    return 0 if lora else 2 * shape.hidden + 2  # frozen embeddings keep nothing


def activation_bytes(
    shape: Shape,
    batch: int,
    seq_len: int,
    wrapped: list[str] | None,
    r: int,
    *,
    checkpointing: bool,
    bytes_: int,
) -> int:
    """Activation bytes for one batch of ``batch x seq_len`` tokens (see the module docstring)."""
    layer = layer_values(shape, seq_len, wrapped, r)
    per_token = model_values(shape, wrapped is not None)
    per_token += shape.layers * shape.hidden + layer if checkpointing else shape.layers * layer
    return bytes_ * batch * seq_len * per_token


@dataclass
class MethodMemory:
    """Training memory of one method, in bytes."""

    method: str  # "full", "lora" or "lora-bf16"
    r: int | None
    trainable_params: int
    weights: int
    gradients: int
    optimizer: int
    activations: int
    activations_checkpointed: int

    def total(self, checkpointing: bool = False) -> int:
        acts = self.activations_checkpointed if checkpointing else self.activations
        return self.weights + self.gradients + self.optimizer + acts

    def added_by_training(self, checkpointing: bool = False) -> int:
        """What training adds over the loaded model: what ``train_memory_mb`` measures."""
        return self.total(checkpointing) - self.weights

    def as_dict(self) -> dict:
        return {**asdict(self), "total": self.total(), "total_checkpointed": self.total(True)}


def layer_paths(wrapped_names: list[str]) -> list[str]:
    """The wrapped Linears of one layer, by their path under it (every layer wraps the same ones)."""
    by_layer: dict[str, list[str]] = {}
    for name in wrapped_names:
        match = _LAYER.search(name)
        if match:
            by_layer.setdefault(match.group(1), []).append(match.group(2))
    return max(by_layer.values(), key=len) if by_layer else []


def memory_plan(
    model: nn.Module, plan: Savings, wrapped_names: list[str], batch: int, seq_len: int
) -> list[MethodMemory]:
    """Full fine-tuning, then LoRA and LoRA on a bf16 base at each of ``plan``'s ranks.

    ``plan`` is ``calculator.savings`` of ``model``; ``wrapped_names`` the Linears it wraps. Example
    (Llama-2 7B, batch 1): ``memory_plan(...)[0].optimizer`` is 8 x 6,607,351,808 = 52,858,814,464.

    Raises:
        LoraFtError: a batch size or sequence length < 1; see ``model_shape``.
    """
    if batch < 1 or seq_len < 1:
        raise LoraFtError(f"--batch-size and --seq-len must be >= 1, got {batch} and {seq_len}")
    shape = model_shape(model)
    paths = layer_paths(wrapped_names)
    total = plan.total_params

    def acts(wrapped, r, bytes_):
        return [
            activation_bytes(shape, batch, seq_len, wrapped, r, checkpointing=gc, bytes_=bytes_)
            for gc in (False, True)
        ]

    full = MethodMemory(
        "full",
        None,
        total,
        FP32_BYTES * total,
        FP32_BYTES * total,
        ADAM_BYTES_PER_PARAM * total,
        *acts(None, 0, FP32_BYTES),
    )
    rows = [full]
    for cost in plan.ranks:
        n = cost.trainable_params
        state = (FP32_BYTES * n, ADAM_BYTES_PER_PARAM * n)
        rows.append(
            MethodMemory(
                "lora",
                cost.r,
                n,
                FP32_BYTES * (total + cost.lora_params),
                *state,
                *acts(paths, cost.r, FP32_BYTES),
            )
        )
        bf16_weights = BF16_BYTES * (total - cost.head_params) + FP32_BYTES * n
        rows.append(
            MethodMemory("lora-bf16", cost.r, n, bf16_weights, *state, *acts(paths, cost.r, BF16_BYTES))
        )
    return rows


def savings_json(
    plan: Savings, memory: list[MethodMemory] | None, batch: int | None, seq_len: int | None
) -> dict:
    """What ``lora-ft targets --ranks ... --json`` prints: the savings per rank and, given a batch, the memory."""
    out = {
        "model": plan.model,
        "targets": plan.targets,
        "head": plan.head,
        "wrapped": plan.wrapped,
        "linears": plan.linears,
        "targeted_params": plan.targeted_params,
        "total_params": plan.total_params,
        "ranks": [asdict(cost) for cost in plan.ranks],
    }
    if memory is not None:
        out["memory"] = {
            "batch_size": batch,
            "seq_len": seq_len,
            "methods": [row.as_dict() for row in memory],
        }
    return out
