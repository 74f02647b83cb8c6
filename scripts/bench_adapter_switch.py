"""What serving several adapters on one base costs: switch time, and memory per extra adapter.

Builds 4 adapters of different ranks and targets on the built-in minilm-l6 (non-zero lora_B,
perturbed heads, so each one changes the logits), loads them into one ``AdapterSet`` and prints:

- the median time of ``set_adapter`` over many switches, beside one forward pass of one sentence;
- the parameter bytes and the RSS each extra adapter adds, beside what a second copy of the model
  (``load_artifact`` of the same adapter) adds;
- that the base weights are shared: every wrapper's base ``data_ptr`` is the base's, unchanged by
  switching, and each adapter's logits equal that adapter loaded alone.

    .venv/bin/python scripts/bench_adapter_switch.py
    .venv/bin/python scripts/bench_adapter_switch.py --switches 20000 --adapters 2
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import logging
import statistics
import tempfile
import time
from pathlib import Path

import torch

# (name, targets, r): from query/value at rank 4 to every encoder Linear at rank 16.
SPECS = [
    ("qv-r4", ["query", "value"], 4),
    ("qkv-r8", ["query", "key", "value"], 8),
    ("all-r16", "all-linear", 16),
    ("qv-r2-l0", [r"bert\.encoder\.layer\.0\.attention\.self\.(query|value)"], 2),
]
SENTENCE = "a gorgeous, moving film that never quite earns its ending"


def rss_bytes() -> int:
    """Resident memory now, after handing freed heap pages back to the OS (glibc)."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:
        pass
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096


def make_adapters(out: Path, count: int) -> dict[str, Path]:
    from lora_ft.config import ModelConfig
    from lora_ft.data.assets import hub_id_of
    from lora_ft.data.task import Task
    from lora_ft.lora.inject import inject_lora, lora_layers
    from lora_ft.lora.saving import save_adapter
    from lora_ft.lora.targets import default_head
    from lora_ft.training.modeling import load_model

    paths = {}
    for seed, (name, targets, r) in enumerate(SPECS[:count]):
        loaded = load_model(ModelConfig(name="minilm-l6"), Task.legacy(["negative", "positive"]))
        model = loaded.model
        head = default_head(model, loaded.newly_initialized)
        inject_lora(model, targets, r=r, alpha=2 * r, head=head)
        gen = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for layer in lora_layers(model).values():
                layer.lora_B.copy_(torch.randn(layer.lora_B.shape, generator=gen) * 0.02)
            for h in head:
                for p in model.get_submodule(h).parameters():
                    p.copy_(torch.randn(p.shape, generator=gen) * 0.1)
        paths[name] = save_adapter(
            model,
            out / name,
            head=head,
            base_model_name_or_path=hub_id_of("minilm-l6"),
            label_names=["negative", "positive"],
            model_settings={"name": "minilm-l6", "num_layers": None, "revision": None},
        )
    return paths


def touch(model) -> None:
    """Read every weight: safetensors may be memory-mapped, and a page counts in RSS once it is read."""
    with torch.no_grad():
        for p in model.parameters():
            p.sum()


def logits(model, tokenizer) -> torch.Tensor:
    with torch.inference_mode():
        return model(**tokenizer(SENTENCE, return_tensors="pt")).logits


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--adapters", type=int, default=4, choices=range(2, len(SPECS) + 1))
    parser.add_argument("--switches", type=int, default=5000, help="set_adapter calls timed")
    args = parser.parse_args()
    torch.set_num_threads(1)  # a shared machine: one core, so the forward time is comparable run to run
    with tempfile.TemporaryDirectory(prefix="bench-adapters-") as tmp:
        bench(args, Path(tmp))


def bench(args: argparse.Namespace, tmp: Path) -> None:
    from lora_ft.config import ModelConfig
    from lora_ft.data.task import Task
    from lora_ft.lora.adapters import AdapterSet
    from lora_ft.lora.inject import lora_layers
    from lora_ft.lora.io import read_adapter
    from lora_ft.serving.artifacts import load_artifact
    from lora_ft.training.modeling import load_model, quiet_transformers

    quiet_transformers()
    logging.getLogger("lora_ft").setLevel(logging.ERROR)  # disable() warns: minilm-l6's own head is random
    paths = make_adapters(tmp, args.adapters)
    records = {name: read_adapter(path) for name, path in paths.items()}

    rss0 = rss_bytes()
    loaded = load_model(ModelConfig(name="minilm-l6"), Task.legacy(["negative", "positive"]))
    model = loaded.model.float().eval().requires_grad_(False)
    tokenizer = loaded.tokenizer
    touch(model)
    base_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    rss_base = rss_bytes() - rss0
    aset = AdapterSet(model, tokenizer, base_name="minilm-l6", untrained=loaded.newly_initialized)
    base_ptrs = {k: v.data_ptr() for k, v in model.state_dict().items()}

    print(
        f"base minilm-l6: {base_bytes / 1e6:.1f} MB of parameters, loading it added {rss_base / 1e6:.1f} MB RSS"
    )
    print(f"{'adapter':<10} {'targets':>8} {'r':>3} {'own MB':>7} {'RSS added MB':>13}")
    for name, (_, _, r) in zip(records, SPECS, strict=False):
        before = rss_bytes()
        aset.add_adapter(name, records[name])
        added = rss_bytes() - before
        aset.set_adapter(name)
        wrapped = len(lora_layers(model))
        print(f"{name:<10} {wrapped:>8} {r:>3} {aset.adapter_bytes(name) / 1e6:>7.3f} {added / 1e6:>13.3f}")
    del records
    before = rss_bytes()
    second = load_artifact(paths[aset.adapters[0]])
    touch(second.model)
    second_copy = rss_bytes() - before
    print(f"a second model (load_artifact of {aset.adapters[0]} alone) adds {second_copy / 1e6:.1f} MB RSS")

    names = aset.adapters
    worst = 0.0
    for name in names:
        aset.set_adapter(name)
        worst = max(
            worst,
            (logits(model, tokenizer) - logits(load_artifact(paths[name]).model, tokenizer))
            .abs()
            .max()
            .item(),
        )
    order = [names[i % len(names)] for i in range(args.switches)]
    times = []
    for name in order:
        t0 = time.perf_counter()
        aset.set_adapter(name)
        times.append(time.perf_counter() - t0)
    t0 = time.perf_counter()
    for _ in range(200):
        aset.disable(head=names[0])
    disable_us = (time.perf_counter() - t0) / 200 * 1e6
    aset.set_adapter(names[0])
    logits(model, tokenizer)
    forwards = []
    for _ in range(20):
        t0 = time.perf_counter()
        logits(model, tokenizer)
        forwards.append(time.perf_counter() - t0)
    aset.disable()
    shared = all(
        layer.base.weight.data_ptr() == base_ptrs[f"{n}.weight"]
        for entry in aset._entries.values()
        for n, layer in entry.modules.items()
        if hasattr(layer, "base")
    )
    unchanged = {k: v.data_ptr() for k, v in model.state_dict().items()} == base_ptrs
    del second

    switch_us = statistics.median(times) * 1e6
    forward_ms = statistics.median(forwards) * 1e3
    print(
        f"set_adapter: median {switch_us:.1f} µs over {args.switches} switches among {len(names)} adapters "
        f"(p90 {statistics.quantiles(times, n=10)[-1] * 1e6:.1f} µs); disable(head=...) {disable_us:.1f} µs"
    )
    print(
        f"one forward of one sentence (1 thread): {forward_ms:.2f} ms = {forward_ms * 1e3 / switch_us:.0f} switches"
    )
    print(f"each adapter vs loaded alone: max |Δlogit| {worst:.1e}")
    print(
        f"base weights shared by every adapter's wrappers: {shared}; data_ptrs unchanged after switching: {unchanged}"
    )


if __name__ == "__main__":
    main()
