"""The training-memory estimate (``lora-ft targets --batch-size --seq-len``) against two measurements of a
few real training steps: the peak of the bytes of live tensors, and the peak RSS training adds.

Each model and method runs in its own process (a process's peak RSS only grows). The steps are plain
torch (forward, backward, AdamW step, zero_grad) on one batch of random token ids (memory depends on the
shapes alone; one row is padded, as real batches are). Tensors are counted through a
``TorchDispatchMode``: every storage an operator creates is added when created and taken off when
freed, so the peak is what was alive at once, weights and buffers excluded (they are loaded before).
The estimate's "added by training" (gradients + AdamW state + activations) should equal the live-tensor
peak up to the backward pass's transient buffers; the RSS adds the allocator's retained pages and the
libraries' buffers on top.

    .venv/bin/python scripts/memory_check.py                        # minilm-l6 and smollm2-135m, LoRA and full
    .venv/bin/python scripts/memory_check.py --models minilm-l6 --methods lora --batch-size 16 --seq-len 32
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import weakref

MB = 2**20


def _live_counter():
    import torch
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils._pytree import tree_flatten

    class LiveBytes(TorchDispatchMode):
        """The bytes of the storages operators create that are still alive, and their peak."""

        def __init__(self, known: set[int]):
            super().__init__()
            self.alive: set[int] = set(known)  # weights and buffers: not counted
            self.live = self.peak = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            for t in tree_flatten(out)[0]:
                if isinstance(t, torch.Tensor) and t.untyped_storage().data_ptr() not in self.alive:
                    storage = t.untyped_storage()
                    key, n = storage.data_ptr(), storage.nbytes()
                    if key:
                        self.alive.add(key)
                        self.live += n
                        self.peak = max(self.peak, self.live)
                        weakref.finalize(storage, self._freed, key, n)
            return out

        def _freed(self, key: int, n: int) -> None:
            self.alive.discard(key)
            self.live -= n

    return LiveBytes


def measure(name: str, method: str, batch: int, seq_len: int, steps: int, r: int) -> dict:
    """One model and method, in this process: the estimate, the live-tensor peak and the RSS added."""
    import torch
    from transformers import AutoModelForSequenceClassification

    from lora_ft.lora.calculator import savings
    from lora_ft.lora.inject import inject_lora
    from lora_ft.lora.memory import memory_plan
    from lora_ft.lora.targets import default_head
    from lora_ft.training.modeling import load_model_skeleton, quiet_transformers, resolve_model_path
    from lora_ft.training.resources import peak_rss_mb, reset_peak_rss, rss_mb

    quiet_transformers()
    skeleton = load_model_skeleton(name)
    plan = savings(skeleton, "all-linear", [r], default_head(skeleton))
    rows = {row.method: row for row in memory_plan(skeleton, plan, plan.wrapped_names, batch, seq_len)}
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(resolve_model_path(name), num_labels=2)
    if model.config.pad_token_id is None:
        model.config.pad_token_id = 0
    if method == "lora":
        inject_lora(model, "all-linear", r=r, alpha=2 * r, dropout=0.0, head=plan.head)
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    ids = torch.randint(5, 1000, (batch, seq_len))
    mask = torch.ones(batch, seq_len, dtype=torch.long)
    mask[0, -seq_len // 4 :] = 0
    labels = torch.zeros(batch, dtype=torch.long)
    known = {t.untyped_storage().data_ptr() for t in [*model.parameters(), *model.buffers()]}
    before = rss_mb()
    reset_peak_rss()
    with _live_counter()(known) as counter:
        for _ in range(steps):
            model(input_ids=ids, attention_mask=mask, labels=labels).loss.backward()
            optimizer.step()
            optimizer.zero_grad()
    return {
        "model": name,
        "method": method,
        "estimate_mb": rows[method].added_by_training() / MB,
        "live_peak_mb": counter.peak / MB,
        "rss_added_mb": peak_rss_mb() - before,
    }


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="minilm-l6,smollm2-135m")
    parser.add_argument("--methods", default="lora,full")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--seq-len", type=int, default=32)
    parser.add_argument("--steps", type=int, default=3, help="AdamW's state exists from the second step on")
    parser.add_argument("--r", type=int, default=8, help="LoRA rank (all-linear, alpha = 2r)")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # MODEL:METHOD, run in this process
    args = parser.parse_args(argv)
    shape = (args.batch_size, args.seq_len, args.steps, args.r)
    if args.one:
        print(json.dumps(measure(*args.one.split(":"), *shape)))
        return []
    results = []
    print(
        f"{'model':<14}{'method':<8}{'estimate':>10}{'live peak':>11}{'error':>8}{'RSS added':>11}{'error':>8}"
    )
    for name in args.models.split(","):
        for method in args.methods.split(","):
            cmd = [
                sys.executable,
                __file__,
                "--one",
                f"{name}:{method}",
                "--batch-size",
                str(args.batch_size),
            ]
            cmd += ["--seq-len", str(args.seq_len), "--steps", str(args.steps), "--r", str(args.r)]
            row = json.loads(
                subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.splitlines()[-1]
            )
            est, live, rss = row["estimate_mb"], row["live_peak_mb"], row["rss_added_mb"]
            print(
                f"{name:<14}{method:<8}{est:>8.0f}MB{live:>9.0f}MB{100 * (est - live) / live:>+7.0f}%"
                f"{rss:>9.0f}MB{100 * (est - rss) / rss:>+7.0f}%",
                flush=True,
            )
            results.append(row)
    return results


if __name__ == "__main__":
    main()
