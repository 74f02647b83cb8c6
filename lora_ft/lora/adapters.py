"""Serve several LoRA adapters on one base model, switching between them without touching the base weights.

Each adapter gets its own wrapper modules (``LoRALinear``, or whatever ``apply_adapter`` builds) around
the *same* base ``nn.Linear`` objects, shared by reference, plus its own copy of the head modules
(``classifier``, ``pre_classifier``, ...): a classifier's head is trained per adapter. Switching puts
one adapter's modules into the model with ``setattr`` on their parents: O(modules), no tensor is
copied, and an extra adapter costs only its own LoRA and head tensors. Modules an adapter does not
target hold the plain base Linear.

Merging is refused: folding one adapter's update into a base weight that the others share would
change them all (export one adapter with ``lora-ft merge``).
"""

from __future__ import annotations

import copy
import functools
import logging
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lora_ft.errors import LoraFtError
from lora_ft.lora.apply import apply_adapter, check_adapter, check_cut
from lora_ft.lora.io import Adapter, read_adapter
from lora_ft.lora.targets import is_under

log = logging.getLogger("lora_ft")

NAME_PATTERN = re.compile(r"[A-Za-z0-9_.-]+")


@dataclass
class _Entry:
    adapter: Adapter
    modules: dict[str, nn.Module]  # slot name -> this adapter's wrapper or head module
    label_names: list[str]
    max_length: int | None
    info: dict[str, Any] = field(default_factory=dict)  # provenance for serving's views (run, data, metrics)


def _refuse_merge(name: str, *_args, **_kwargs) -> None:
    raise LoraFtError(
        f"adapter {name!r} shares its base weights with the other adapters of an AdapterSet, so merging "
        "it would change them all; merge a single adapter instead (lora-ft merge ADAPTER --out DIR)"
    )


class AdapterSet:
    """One base classifier serving several named adapters, one active at a time.

    Args:
        model: the base classifier, plain (no LoRA layers); it is switched in place.
        tokenizer: kept for serving's views of one adapter (``serving.multi.adapter_artifact``).
        base_name: what the base was loaded as, for messages and the base-model check.
        untrained: modules the base checkpoint lacked (randomly initialised on load); every adapter
            must hold them in its head, and a ``disable()`` that uses them warns.

    The state is one of: an adapter is active (``active`` is its name), or the adapters are disabled
    (``active`` is None). Disabled means every target module holds its plain base Linear and every head
    module holds the base model's own head as loaded, so the outputs are exactly the base model's;
    ``disable(head=name)`` instead keeps adapter ``name``'s head on the plain encoder (how much of an
    adapter's effect is its LoRA layers and how much its head).

    Example (``examples/two_adapters.py`` runs it)::

        serving = AdapterSet(base_classifier, tokenizer, base_name="minilm-l6")
        serving.add_adapter("sentiment", "runs/sentiment/adapter")
        serving.add_adapter("topic", "runs/topic/adapter")
        serving.set_adapter("topic")  # setattr on the wrapped modules' parents; no tensor copied
        serving.model(**batch).logits
        serving.disable()  # the base model's own outputs
        serving.adapter_bytes("topic")  # its LoRA and head tensors alone
    """

    def __init__(
        self,
        model: nn.Module,
        tokenizer: Any = None,
        *,
        base_name: str | None = None,
        untrained: list[str] | tuple[str, ...] = (),
    ):
        self.model = model
        self.tokenizer = tokenizer
        self.base_name = base_name
        self.untrained = list(untrained)
        self._entries: dict[str, _Entry] = {}
        self._base: dict[str, nn.Module] = {}  # slot -> the base model's own module there
        # slot -> (parent module, attribute): parents are never swapped (no slot lies inside another),
        # so they are looked up once, and a switch is a dict walk plus one setattr per changed slot.
        self._parents: dict[str, tuple[nn.Module, str]] = {}
        self._heads: set[str] = set()  # slots that hold head modules (the rest hold LoRA wrappers)
        self._active: str | None = None
        self._disabled_head: str | None = None

    @property
    def adapters(self) -> list[str]:
        """Adapter names, in the order they were added."""
        return list(self._entries)

    @property
    def active(self) -> str | None:
        """The active adapter's name; None while disabled."""
        return self._active

    @property
    def num_labels(self) -> int:
        return int(self.model.config.num_labels)

    def label_names(self, name: str) -> list[str]:
        return list(self._entry(name).label_names)

    def adapter(self, name: str) -> Adapter:
        return self._entry(name).adapter

    def max_length(self, name: str) -> int | None:
        """The truncation adapter ``name`` was added with (its run's), or None."""
        return self._entry(name).max_length

    def info(self, name: str) -> dict[str, Any]:
        """The provenance adapter ``name`` was added with (``path``, ``run_dir``, ``data``, ``metrics``)."""
        return dict(self._entry(name).info)

    def _entry(self, name: str) -> _Entry:
        if name not in self._entries:
            raise LoraFtError(f"no adapter named {name!r}; adapters: {', '.join(self._entries) or 'none'}")
        return self._entries[name]

    def _parent(self, slot: str) -> tuple[nn.Module, str]:
        parent, _, child = slot.rpartition(".")
        return self.model.get_submodule(parent), child

    def _install(self, choice: dict[str, nn.Module]) -> None:
        """Put ``choice[slot]`` (else the base's own module) into every slot: setattr only, no copies."""
        for slot, base in self._base.items():
            module = choice.get(slot, base)
            parent, child = self._parents[slot]
            if parent._modules[child] is not module:
                setattr(parent, child, module)

    def set_adapter(self, name: str) -> None:
        """Make adapter ``name`` active: its LoRA wrappers and its head go into the model."""
        entry = self._entry(name)
        self._install(entry.modules)
        self._active, self._disabled_head = name, None

    def disable(self, head: str | None = None) -> None:
        """Plain base Linears everywhere; the base model's own head, or adapter ``head``'s head.

        With the base's own head, the model computes exactly what the base model loaded alone computes.
        If the base checkpoint had no trained head (an encoder such as minilm-l6 gets a random one on
        load), that head's outputs mean nothing; a warning says so.
        """
        choice: dict[str, nn.Module] = {}
        if head is not None:
            choice = {s: m for s, m in self._entry(head).modules.items() if s in self._heads}
        else:
            random = [m for m in self.untrained if any(is_under(m, h) or is_under(h, m) for h in self._heads)]
            if random:
                log.warning(
                    "base %s has no trained head (%s is randomly initialised), so disabled outputs are "
                    "meaningless; use disable(head=NAME) to keep an adapter's head",
                    self.base_name or "model",
                    ", ".join(random),
                )
        self._install(choice)
        self._active, self._disabled_head = None, head

    def add_adapter(
        self,
        name: str,
        adapter: Adapter | str | Path,
        *,
        label_names: list[str] | None = None,
        max_length: int | None = None,
        info: dict[str, Any] | None = None,
    ) -> None:
        """Build adapter ``name``'s modules around the shared base Linears; the active state is kept.

        Args:
            adapter: an ``Adapter`` from ``read_adapter``, or an adapter directory.
            label_names: the adapter's labels; default its own record, else the base config's names.
            max_length: truncation for serving's views (the adapter's run's, when known).
            info: ``path``/``run_dir``/``data``/``metrics`` for serving's views.

        Raises:
            LoraFtError: a bad or duplicate name; an adapter made for another base (module names or
                shapes, a different layer cut); another number of labels than the base's head; an
                adapter that lacks a module the base left random; modules that overlap others' heads.
        """
        if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name):
            raise LoraFtError(f"adapter name {name!r} must be letters, digits, '_', '-' or '.'")
        if name in self._entries:
            raise LoraFtError(f"an adapter named {name!r} is already loaded; give each adapter its own name")
        if not isinstance(adapter, Adapter):
            adapter = read_adapter(adapter)
        self._check_fits(name, adapter)
        labels = list(label_names or adapter.label_names or self._base_labels())
        self._check_labels(name, labels)
        self._check_slots(name, adapter)

        state = self._plain_view()
        try:
            modules = self._build(adapter)
        except BaseException:
            self._restore(state)
            raise
        self._heads.update(adapter.head)
        for slot, module in modules.items():
            module.eval()
            module.requires_grad_(False)
            if slot in adapter.lora and callable(getattr(module, "merge", None)):
                # An instance attribute shadows the method, so merge_lora/merge_and_unload refuse too.
                module.merge = functools.partial(_refuse_merge, name)
        # The record keeps views of the served tensors, not the copies read from disk: one copy per adapter.
        record = replace(
            adapter,
            lora={m: (modules[m].lora_A.detach(), modules[m].lora_B.detach()) for m in adapter.lora},
            head={h: dict(modules[h].state_dict()) for h in adapter.head},
        )
        self._entries[name] = _Entry(record, modules, labels, max_length, dict(info or {}))
        self._restore(state)
        log.debug("adapter %s: %d LoRA modules, head %s", name, len(adapter.lora), ", ".join(adapter.head))

    def _build(self, adapter: Adapter) -> dict[str, nn.Module]:
        """``adapter``'s modules by slot, built in the plain model around the shared base Linears.

        On any failure every slot is plain again and the new slots are forgotten.
        """
        new_slots = [s for s in [*adapter.lora, *adapter.head] if s not in self._base]
        self._base.update({s: self.model.get_submodule(s) for s in new_slots})
        self._parents.update({s: self._parent(s) for s in new_slots})
        try:
            for h in adapter.head:  # the adapter's head is loaded into a copy: the base's stays as loaded
                parent, child = self._parent(h)
                setattr(parent, child, copy.deepcopy(self._base[h]))
            apply_adapter(self.model, adapter)
            return {s: self.model.get_submodule(s) for s in [*adapter.lora, *adapter.head]}
        except BaseException:
            self._install({})
            for s in new_slots:
                del self._base[s], self._parents[s]
            raise

    def _base_labels(self) -> list[str]:
        id2label = getattr(self.model.config, "id2label", {}) or {}
        return [str(id2label.get(i, f"LABEL_{i}")) for i in range(self.num_labels)]

    def _check_fits(self, name: str, adapter: Adapter) -> None:
        base = self.base_name or type(self.model).__name__
        check_cut(self.model, adapter, f"adapter {name!r} ({adapter.path})", base)
        if adapter.num_labels is not None and adapter.num_labels != self.num_labels:
            raise LoraFtError(
                f"adapter {name!r} ({adapter.path}) has {adapter.num_labels} labels but the base's head has "
                f"{self.num_labels}; adapters served together must have the same number of labels"
            )
        probe = self._plain_view()
        try:
            check_adapter(self.model, adapter)
        except LoraFtError as exc:
            msg = str(exc).removesuffix("; pass the adapter's base model with --base")
            raise LoraFtError(f"adapter {name!r} does not fit base {base}: {msg}") from None
        finally:
            self._restore(probe)
        missing = [
            m for m in self.untrained if not any(is_under(m, h) or is_under(h, m) for h in adapter.head)
        ]
        if missing:
            raise LoraFtError(
                f"adapter {name!r} ({adapter.path}) does not hold {', '.join(missing)}, which base {base} "
                "leaves randomly initialised; save the adapter with it (PEFT: modules_to_save)"
            )

    def _plain_view(self) -> tuple[str | None, str | None]:
        state = (self._active, self._disabled_head)
        self._install({})
        return state

    def _restore(self, state: tuple[str | None, str | None]) -> None:
        active, head = state
        if active is not None:
            self.set_adapter(active)
        elif head is not None:
            self.disable(head)
        else:
            self._install({})

    def _check_labels(self, name: str, labels: list[str]) -> None:
        if len(labels) != self.num_labels:
            raise LoraFtError(
                f"adapter {name!r} has labels {', '.join(labels)} but the base's head has {self.num_labels} "
                "outputs; adapters served together must have the same number of labels"
            )
        for other, entry in self._entries.items():
            if entry.label_names != labels:
                log.warning(
                    "adapter %s has labels %s, adapter %s has %s; each adapter's predictions use its own names",
                    name,
                    ", ".join(labels),
                    other,
                    ", ".join(entry.label_names),
                )
                break

    def _check_slots(self, name: str, adapter: Adapter) -> None:
        """A module is a LoRA slot or a head slot, never both, and no slot lies inside another."""
        lora = set(adapter.lora) | (set(self._base) - self._heads)
        heads = set(adapter.head) | self._heads
        for h in heads:
            inside = sorted(s for s in lora | heads if s != h and (is_under(s, h) or is_under(h, s)))
            if inside:
                raise LoraFtError(
                    f"adapter {name!r}: module {h} is a head module in one adapter and overlaps "
                    f"{', '.join(inside)} in another; adapters served together must agree on their heads"
                )

    def adapter_bytes(self, name: str) -> int:
        """Bytes of adapter ``name``'s own tensors: its LoRA and head weights, not the shared base."""
        shared = {t.data_ptr() for m in self._base.values() for t in [*m.parameters(), *m.buffers()]}
        own: dict[int, torch.Tensor] = {}
        for module in self._entry(name).modules.values():
            for t in [*module.parameters(), *module.buffers()]:
                if t.data_ptr() not in shared:
                    own[t.data_ptr()] = t
        return sum(t.numel() * t.element_size() for t in own.values())

    def to(self, device: torch.device | str) -> AdapterSet:
        """Move the base and every adapter's modules (inactive ones too)."""
        self.model.to(device)
        for entry in self._entries.values():
            for module in entry.modules.values():
                module.to(device)
        return self
