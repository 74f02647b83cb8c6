"""What one training step of LoRA and of full fine-tuning costs: time side by side, memory step by step.

Speed (default): ``lora-ft compare`` trains the methods one after another, so on a shared machine a
change of load between two runs shows up as a speed difference. Here both models take turns on each
batch in one process, so both see the same load and the ratio is what the method costs. Phases are
timed apart (forward, backward, optimizer step); ``--profile`` adds the operators that took the most
CPU time.

Memory (``--memory METHOD``, one method per process: a process's peak RSS only grows): the peak RSS
that each of three steps on the longest batch adds over the RSS before the first. AdamW allocates its
two moments at the first ``optimizer.step()``, after the first step's peak, so from the second step
on full fine-tuning carries gradients and optimizer state on top of the activations.

    .venv/bin/python scripts/bench_lora_vs_full_step.py                      # configs/compare.yaml, 8 steps
    .venv/bin/python scripts/bench_lora_vs_full_step.py --steps 4 --profile --set lora.dropout=0
    .venv/bin/python scripts/bench_lora_vs_full_step.py --memory lora; ... --memory full
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

METHODS = ("lora", "full")
PHASES = ("forward", "backward", "optimizer")
KEYS = ("input_ids", "attention_mask", "token_type_ids", "labels")


class Trainee:
    """One method's model and AdamW, stepped by hand."""

    def __init__(self, cfg, method: str):
        from lora_ft.training.prepare import prepare

        self.prepared = prepare(cfg, method)
        self.model = self.prepared.loaded.model
        self.model.train()
        params = [q for q in self.model.parameters() if q.requires_grad]
        self.optimizer = torch.optim.AdamW(params, lr=cfg.train.lr_for(method))

    def batch(self, rows):
        from transformers import DataCollatorWithPadding

        collate = DataCollatorWithPadding(self.prepared.loaded.tokenizer)
        return collate([{k: row[k] for k in KEYS if k in row} for row in rows])

    def step(self, batch) -> tuple[float, float, float]:
        """Seconds spent in forward, backward and the optimizer step."""
        t0 = time.perf_counter()
        loss = self.model(**batch).loss
        t1 = time.perf_counter()
        loss.backward()
        t2 = time.perf_counter()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return t1 - t0, t2 - t1, time.perf_counter() - t2


def speed(cfg, steps: int, profile: bool) -> None:
    trainees = {m: Trainee(cfg, m) for m in METHODS}
    train = trainees["lora"].prepared.tokenized["train"].shuffle(seed=0)
    size = cfg.train.batch_size
    batches = [
        trainees["lora"].batch(train.select(range(i * size, (i + 1) * size))) for i in range(steps + 1)
    ]
    times = {m: {phase: [] for phase in PHASES} for m in METHODS}
    for i, batch in enumerate(batches):
        for method, trainee in trainees.items():  # turns on the same batch: both see the same load
            spent = trainee.step(batch)
            if i:  # the first step allocates the optimizer state and warms the allocator
                for phase, seconds in zip(PHASES, spent, strict=True):
                    times[method][phase].append(seconds)

    print(f"batch {size}, {steps} steps each after one warm-up, torch threads {torch.get_num_threads()}")
    print(f"{'method':<8}" + "".join(f"{p:>12}" for p in PHASES) + f"{'step':>12}{'samples/s':>12}")
    step_seconds = {}
    for method in METHODS:
        medians = [statistics.median(times[method][p]) for p in PHASES]
        step_seconds[method] = sum(medians)
        cells = "".join(f"{s:>11.3f}s" for s in medians)
        print(f"{method:<8}{cells}{step_seconds[method]:>11.3f}s{size / step_seconds[method]:>12.1f}")
    print(
        f"LoRA is {step_seconds['full'] / step_seconds['lora']:.2f}x faster per step (medians, same batches)"
    )

    if profile:
        from torch.profiler import ProfilerActivity, profile

        for method, trainee in trainees.items():
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                for batch in batches[1:]:
                    trainee.step(batch)
            print(f"\n{method}: top operators by self CPU time over {steps} steps")
            print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=10))


def memory(cfg, method: str) -> None:
    from lora_ft.training.resources import peak_rss_mb, reset_peak_rss, rss_mb

    trainee = Trainee(cfg, method)
    longest = trainee.prepared.tokenized["train"].sort("length", reverse=True)
    batch = trainee.batch(longest.select(range(cfg.train.batch_size)))
    start = rss_mb()
    added = []
    for _ in range(3):
        reset_peak_rss()
        trainee.step(batch)
        added.append(peak_rss_mb() - start)
    tokens = batch["input_ids"].shape[1]
    print(
        f"{method}: longest batch {cfg.train.batch_size} x {tokens} tokens; peak RSS added over the start by"
    )
    print("  " + ", ".join(f"step {i + 1}: {mb:.0f} MB" for i, mb in enumerate(added)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/compare.yaml")
    parser.add_argument("--steps", type=int, default=8, help="timed steps per method, after one warm-up")
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="config key=value")
    parser.add_argument("--profile", action="store_true", help="also print the top operators per method")
    parser.add_argument("--memory", choices=METHODS, help="measure this method's peak RSS per step instead")
    args = parser.parse_args()

    from lora_ft.config import load_config

    cfg = load_config(args.config, args.overrides)
    print(args.config, " ".join(f"--set {o}" for o in args.overrides))
    if args.memory:
        memory(cfg, args.memory)
    else:
        speed(cfg, args.steps, args.profile)


if __name__ == "__main__":
    main()
