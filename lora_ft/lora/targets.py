"""Which modules LoRA adapts: target specs, the per-architecture defaults, the head, PEFT's patterns.

A target spec entry selects a module when it is the module's full name, a dotted suffix of it
(``"query"``, ``"attention.self.query"``), or, when it holds regex metacharacters, a ``re.fullmatch``
of the full name; ``"all-linear"`` selects every Linear outside the head. Selection fails loudly:
zero matches, a match that is not ``nn.Linear``, or one already wrapped is a ``LoraFtError`` naming
the closest module names. Nothing here changes a model (``inject`` wraps what this selects).
"""

from __future__ import annotations

import difflib
import logging
import re
from collections import Counter
from collections.abc import Iterable
from typing import Any

from torch import nn

from lora_ft.errors import LoraFtError
from lora_ft.lora.layer import LoRALinear

log = logging.getLogger("lora_ft")

ALL_LINEAR = "all-linear"
_BERT_STYLE = (
    "bert", "roberta", "xlm-roberta", "electra", "camembert", "ernie", "data2vec-text", "mobilebert",
    "albert", "xmod", "roberta-prelayernorm", "megatron-bert", "layoutlm",
)  # fmt: skip
# Decoders whose attention projections are q_proj/k_proj/v_proj/o_proj and whose classifier head is `score`.
_LLAMA_STYLE = ("llama", "mistral", "mixtral", "qwen2", "qwen2_moe", "qwen3", "gemma", "gemma2", "opt")
# Query and value only: the LoRA paper's choice (§7.1), and PEFT's default for these architectures.
DEFAULT_TARGETS: dict[str, list[str]] = {
    "distilbert": ["q_lin", "v_lin"],
    "mpnet": ["q", "v"],
    "deberta": ["in_proj"],
    "deberta-v2": ["query_proj", "value_proj"],
    **{t: ["query", "value"] for t in _BERT_STYLE},
    **{t: ["q_proj", "v_proj"] for t in _LLAMA_STYLE},
}
# The modules a sequence classifier adds on top of the encoder; they start random, so they train fully.
DEFAULT_HEADS: dict[str, list[str]] = {
    "distilbert": ["pre_classifier", "classifier"],
    **{t: ["classifier"] for t in DEFAULT_TARGETS if t != "distilbert" and t not in _LLAMA_STYLE},
    **{t: ["score"] for t in _LLAMA_STYLE},
}
# Head names tried for architectures without an entry above (HF decoder classifiers call it `score`).
_FALLBACK_HEADS = ("pre_classifier", "classifier", "score")
# "." is left out: it is the separator of dotted suffixes, and module names hold no other regex syntax.
_REGEX_CHARS = set("^$*+?{}[]\\|()")


def _model_type(model: nn.Module) -> str | None:
    return getattr(getattr(model, "config", None), "model_type", None)


def _linears(model: nn.Module) -> dict[str, nn.Module]:
    """Every Linear by its logical name: a wrapped one under its wrapper's name, never as ``<name>.base``."""
    out: dict[str, nn.Module] = {}
    for name, module in model.named_modules():
        if isinstance(module, LoRALinear) or (
            isinstance(module, nn.Linear) and not _inside_lora(model, name)
        ):
            out[name] = module
    return out


def _inside_lora(model: nn.Module, name: str) -> bool:
    parent = name.rpartition(".")[0]
    return bool(name) and isinstance(model.get_submodule(parent), LoRALinear)


def _leaf_counts(names: Iterable[str]) -> str:
    counts = Counter(n.rsplit(".", 1)[-1] for n in names)
    return ", ".join(f"{leaf} (x{n})" if n > 1 else leaf for leaf, n in counts.items()) or "none"


def linear_names(model: nn.Module) -> list[str]:
    """Full names of the model's Linear modules (wrapped ones included, under their own name)."""
    return list(_linears(model))


def default_targets(model: nn.Module) -> list[str]:
    """The model type's default target spec; ``LoraFtError`` for an architecture we have none for."""
    model_type = _model_type(model)
    if model_type in DEFAULT_TARGETS:
        return list(DEFAULT_TARGETS[model_type])
    raise LoraFtError(
        f"no default LoRA targets for model type {model_type or type(model).__name__!r}; set lora.targets "
        f"(names, dotted suffixes, regexes or {ALL_LINEAR!r}). Linear modules in this model: "
        f"{_leaf_counts(linear_names(model))}"
    )


def is_under(name: str, prefix: str) -> bool:
    """``name`` is ``prefix`` or a module inside it (whole dotted components)."""
    return name == prefix or name.startswith(prefix + ".")


def resolve_head(model: nn.Module, head: Iterable[str]) -> list[str]:
    """Head names -> full module names: exact, or a suffix of whole dotted components."""
    names = [n for n, _ in model.named_modules() if n]
    out: list[str] = []
    for h in head:
        found = [n for n in names if n == h or n.endswith("." + h)]
        if not found:
            close = difflib.get_close_matches(h, names, n=5, cutoff=0.6)
            raise LoraFtError(
                f"head module {h!r} is not in {type(model).__name__}; closest: {', '.join(close) or 'none'}"
            )
        out += [n for n in found if n not in out]
    return out


def default_head(model: nn.Module, newly_initialized: Iterable[str] = ()) -> list[str]:
    """Full names of the classification head, plus the pooler when the checkpoint lacked it (random)."""
    names = {n for n, _ in model.named_modules() if n}
    spec = DEFAULT_HEADS.get(_model_type(model)) or [h for h in _FALLBACK_HEADS if h in names]
    head = [h for h in spec if h in names or any(n.endswith("." + h) for n in names)]
    if not head:
        raise LoraFtError(f"cannot tell the classification head of {type(model).__name__}; set lora.head")
    head = resolve_head(model, head)
    for new in newly_initialized:
        if any(is_under(new, h) for h in head):
            continue
        parts = new.split(".")
        if "pooler" in parts:
            pooler = ".".join(parts[: parts.index("pooler") + 1])
            if pooler in names and pooler not in head:
                head.append(pooler)
        else:
            log.warning("%s was newly initialised but is not in the head, so it stays random and frozen", new)
    return head


def match_targets(
    model: nn.Module, targets: str | list[str] | None, exclude: Iterable[str] = ()
) -> list[str]:
    """Full names of the Linears that ``targets`` selects, skipping modules under ``exclude``.

    Raises:
        LoraFtError: no module matches, a match is not ``nn.Linear`` or is already wrapped, a bad regex.
    """
    if targets is None:
        targets = default_targets(model)
    spec = [targets] if isinstance(targets, str) else list(targets)
    exclude = list(exclude)
    modules = {n: m for n, m in model.named_modules() if n and not _inside_lora(model, n)}
    kept = {n: m for n, m in modules.items() if not any(is_under(n, e) for e in exclude)}
    if ALL_LINEAR in spec:
        if spec != [ALL_LINEAR]:
            raise LoraFtError(f"lora.targets {spec}: {ALL_LINEAR!r} cannot be combined with other names")
        matched = [n for n, m in kept.items() if isinstance(m, nn.Linear)]
    else:
        matched = [n for n in kept if any(_selects(t, n) for t in spec)]
    if not matched:
        raise LoraFtError(_no_match_message(model, spec, modules, exclude))
    for name in matched:
        module = kept[name]
        if isinstance(module, LoRALinear):
            raise LoraFtError(f"{name} is already wrapped with LoRA; a layer can be wrapped only once")
        if not isinstance(module, nn.Linear):
            raise LoraFtError(
                f"lora.targets {spec} matched {name}, a {type(module).__name__}, not an nn.Linear; "
                f"name Linears (inside it: {_leaf_counts(n for n in linear_names(module) if n)})"
            )
    return matched


def _selects(target: str, name: str) -> bool:
    if _REGEX_CHARS & set(target):
        try:
            return re.fullmatch(target, name) is not None
        except re.error as exc:
            raise LoraFtError(f"lora.targets entry {target!r} is not a valid regex: {exc}") from None
    return name == target or name.endswith("." + target)


def _no_match_message(model: nn.Module, spec: list[str], modules: dict, exclude: list[str]) -> str:
    in_head = [
        n for n in modules if any(_selects(t, n) for t in spec) and any(is_under(n, e) for e in exclude)
    ]
    if in_head:
        return f"lora.targets {spec} matched only head modules, which train fully: {', '.join(in_head)}"
    candidates = sorted(set(modules) | {n.rsplit(".", 1)[-1] for n in modules})
    close = {c for t in spec for c in difflib.get_close_matches(t, candidates, n=5, cutoff=0.6)}
    return (
        f"lora.targets {spec} matched no module in {type(model).__name__}; closest module names: "
        f"{', '.join(sorted(close)) or 'none'}. Linear modules: {_leaf_counts(linear_names(model))}"
    )


def pattern_value(pattern: dict[str, Any] | None, module: str, default: Any) -> Any:
    """PEFT's ``rank_pattern``/``alpha_pattern`` lookup (``peft.utils.other.get_pattern_key``): the value
    of the first key, in order, that is a regex matching the end of ``module`` at a dot boundary."""
    for key, value in (pattern or {}).items():
        if re.match(rf"(.*\.)?({key})$", module):
            return value
    return default


def check_patterns(names: list[str], patterns: dict[str, dict[str, Any] | None]) -> None:
    for what, pattern in patterns.items():
        for key in pattern or {}:
            try:
                hit = any(re.match(rf"(.*\.)?({key})$", n) for n in names)
            except re.error as exc:
                raise LoraFtError(f"lora.{what} key {key!r} is not a valid regex: {exc}") from None
            if not hit:
                raise LoraFtError(
                    f"lora.{what} key {key!r} matches none of the wrapped modules (it must match the end of a "
                    f"name, like 'query' or 'layer.0.attention.self.query'); wrapped: {_leaf_counts(names)}"
                )


def head_params(model: nn.Module, head: list[str]) -> list[nn.Parameter]:
    """The parameters of the ``head`` modules (full names), each once."""
    seen: dict[int, nn.Parameter] = {}
    for h in head:
        for p in model.get_submodule(h).parameters():
            seen[id(p)] = p
    return list(seen.values())


def targets_table(model: nn.Module, targets, r: int, head: list[str]) -> tuple[list[dict], dict]:
    """The dry run behind ``lora-ft targets``: one row per Linear, and the totals. The model is not touched.

    Works on a meta-device skeleton: only shapes are read.
    """
    head_names = resolve_head(model, head)
    wrapped = set(match_targets(model, targets, exclude=head_names))
    rows = [
        dict(name=n, shape=(m.out_features, m.in_features), out_features=m.out_features,
             in_features=m.in_features, wrapped=n in wrapped,
             lora_params=r * (m.in_features + m.out_features) if n in wrapped else 0)
        for n, m in _linears(model).items()
    ]  # fmt: skip
    lora_params = sum(row["lora_params"] for row in rows)
    head_count = sum(p.numel() for p in head_params(model, head_names))
    total = sum(p.numel() for p in model.parameters()) + lora_params  # each shared tensor once
    totals = {
        "linears": len(rows),
        "wrapped": len(wrapped),
        "lora_params": lora_params,
        "head_params": head_count,
        "trainable_params": lora_params + head_count,
        "total_params": total,
        "trainable_percent": 100.0 * (lora_params + head_count) / total if total else 0.0,
    }
    return rows, totals
