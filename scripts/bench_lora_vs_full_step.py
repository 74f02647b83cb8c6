"""Side-by-side training-step cost of LoRA and full fine-tuning, in one process on the same batches.

``lora-ft compare`` trains the methods one after another, so on a shared machine a change of load
between two runs shows up as a speed difference. Here the two models take turns on each batch, so
both see the same load, and the ratio is what the method costs. Phases are timed apart (forward,
backward, optimizer step); ``--profile`` adds the operators that took the most CPU time.

    .venv/bin/python scripts/bench_lora_vs_full_step.py                      # configs/compare.yaml, 8 steps
    .venv/bin/python scripts/bench_lora_vs_full_step.py --steps 4 --profile --set lora.dropout=0
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

METHODS = ("lora", "full")
PHASES = ("forward", "backward", "optimizer")
KEYS = ("input_ids", "attention_mask", "token_type_ids", "labels")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/compare.yaml")
    parser.add_argument(
        "--steps", type=int, default=8, help="timed steps per method (after one warm-up step)"
    )
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], help="config override key=value"
    )
    parser.add_argument("--profile", action="store_true", help="also print the top operators per method")
    args = parser.parse_args()

    from transformers import DataCollatorWithPadding

    from lora_ft.config import load_config
    from lora_ft.train import prepare

    cfg = load_config(args.config, args.overrides)
    prepared = {m: prepare(cfg, m) for m in METHODS}
    collate = DataCollatorWithPadding(prepared["lora"].loaded.tokenizer)
    train = prepared["lora"].tokenized["train"].shuffle(seed=0)
    size = cfg.train.batch_size
    batches = []
    for i in range(args.steps + 1):
        rows = train.select(range(i * size, (i + 1) * size))
        batches.append(collate([{k: row[k] for k in KEYS if k in row} for row in rows]))
    optimizers = {}
    for m, p in prepared.items():
        p.loaded.model.train()
        params = [q for q in p.loaded.model.parameters() if q.requires_grad]
        optimizers[m] = torch.optim.AdamW(params, lr=cfg.train.lr_for(m))
    times = {m: {phase: [] for phase in PHASES} for m in METHODS}

    def step(method: str, batch) -> tuple[float, float, float]:
        model, optimizer = prepared[method].loaded.model, optimizers[method]
        t0 = time.perf_counter()
        loss = model(**batch).loss
        t1 = time.perf_counter()
        loss.backward()
        t2 = time.perf_counter()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return t1 - t0, t2 - t1, time.perf_counter() - t2

    for i, batch in enumerate(batches):
        for method in METHODS:  # turns on the same batch: both see the same machine load
            spent = step(method, batch)
            if i:  # the first step allocates the optimizer state and warms the allocator
                for phase, seconds in zip(PHASES, spent, strict=True):
                    times[method][phase].append(seconds)

    print(f"{args.config}, batch {size}, {args.steps} steps each, torch threads {torch.get_num_threads()}")
    print(f"{'method':<8}" + "".join(f"{p:>12}" for p in PHASES) + f"{'step':>12}{'samples/s':>12}")
    medians = {}
    for method in METHODS:
        med = [statistics.median(times[method][p]) for p in PHASES]
        medians[method] = sum(med)
        cells = "".join(f"{s:>11.3f}s" for s in med)
        print(f"{method:<8}{cells}{medians[method]:>11.3f}s{size / medians[method]:>12.1f}")
    print(f"LoRA is {medians['full'] / medians['lora']:.2f}x faster per step (median step, same batches)")

    if args.profile:
        from torch.profiler import ProfilerActivity, profile

        for method in METHODS:
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                for batch in batches[1:]:
                    step(method, batch)
            print(f"\n{method}: top operators by self CPU time over {args.steps} steps")
            print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=10))


if __name__ == "__main__":
    main()
