"""What one training step of a LoRA variant costs next to plain LoRA, measured side by side.

Each variant (a ``compare --methods`` name: dora, rslora, lora-all) and plain LoRA take turns on the
same batches in one process, so all see the same load, and the ratio of median step times is what the
variant costs. DoRA's extra work per wrapped Linear: the row norms of ``W + ΔW`` (one ``(out, in)``
addmm) and the rescaling of the output; with ``lora.dropout > 0`` also a second matmul with ``W``
(PEFT's dropout handling).

Besides wall time, the process CPU time of each step is recorded: with ``--set train.threads=1`` it is
the work the step did, which other processes on a shared machine barely disturb.

    .venv/bin/python scripts/bench_variants_step.py                          # dora vs lora, configs/compare.yaml
    .venv/bin/python scripts/bench_variants_step.py --set train.threads=1 --set lora.dropout=0
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from bench_lora_vs_full_step import PHASES, Trainee  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/compare.yaml")
    parser.add_argument("--variants", default="dora", help="comma-separated: dora, rslora, lora-all")
    parser.add_argument("--steps", type=int, default=8, help="timed steps per method, after one warm-up")
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="config key=value")
    args = parser.parse_args()

    from lora_ft.compare.results import RunSpec
    from lora_ft.compare.runner import parse_methods, run_config
    from lora_ft.config import load_config

    cfg = load_config(args.config, args.overrides)
    names = ["lora", *(m for m in parse_methods(args.variants) if m != "lora")]
    trainees = {m: Trainee(run_config(cfg, RunSpec(m, cfg.train.seed)), "lora") for m in names}
    train = trainees["lora"].prepared.tokenized["train"].shuffle(seed=0)
    size = cfg.train.batch_size
    batches = [
        trainees["lora"].batch(train.select(range(i * size, (i + 1) * size))) for i in range(args.steps + 1)
    ]
    times = {m: {phase: [] for phase in PHASES} for m in names}
    cpu = {m: [] for m in names}
    for i, batch in enumerate(batches):
        for name, trainee in trainees.items():  # turns on the same batch: all see the same load
            start = time.process_time()
            spent = trainee.step(batch)
            if i:  # the first step allocates the optimizer state and warms the allocator
                cpu[name].append(time.process_time() - start)
                for phase, seconds in zip(PHASES, spent, strict=True):
                    times[name][phase].append(seconds)

    print(args.config, " ".join(f"--set {o}" for o in args.overrides))
    print(
        f"batch {size}, lora.dropout {cfg.lora.dropout:g}, {args.steps} steps each after one warm-up, "
        f"torch threads {torch.get_num_threads()}"
    )
    print(
        f"{'method':<9}"
        + "".join(f"{p:>12}" for p in PHASES)
        + f"{'step':>12}{'vs lora':>10}{'CPU/step':>12}{'vs lora':>10}"
    )
    # Per batch, the variant's step over LoRA's on that same batch, then the median of those ratios: the
    # batches differ in length and the load drifts, and pairing takes both out.
    steps = {m: [sum(t) for t in zip(*(times[m][p] for p in PHASES), strict=True)] for m in names}
    for name in names:
        cells = "".join(f"{statistics.median(times[name][p]):>11.3f}s" for p in PHASES)
        ratio = statistics.median(a / b for a, b in zip(steps[name], steps["lora"], strict=True))
        cpu_ratio = statistics.median(a / b for a, b in zip(cpu[name], cpu["lora"], strict=True))
        print(
            f"{name:<9}{cells}{statistics.median(steps[name]):>11.3f}s{ratio:>9.2f}x"
            f"{statistics.median(cpu[name]):>11.3f}s{cpu_ratio:>9.2f}x"
        )


if __name__ == "__main__":
    main()
