"""Performance of lora-ft on this machine, against the targets of issue #5, with a PASS/MISS line each.

Sections (``--only`` picks some):

- ``speed``: train-step throughput of full fine-tuning, head-only, the floor (frozen base with input
  gradients, no adapter), our LoRA and PEFT's LoRA (dropout 0 and 0.05), bf16 autocast rows where the
  CPU multiplies bf16; the machine's GEMM rate (fp32, bf16) and each method's achieved FLOP/s;
- ``threads``: wall time per step at 1 thread and at one per CPU, to show which setting is right here;
- ``inference``: eval forward of the base model, our LoRA unmerged and merged;
- ``memory``: peak RSS (CUDA peak on a GPU) that a training step adds, one process per method;
- ``scaling``: step time vs LoRA rank (ours and PEFT, with and without dropout), vs sequence length,
  vs wrapped modules (query/value, all attention, all-linear);
- ``e2e``: ``lora-ft train`` on a short budget against the step-level rate on batches of the same
  shapes, and how soon a second run (tokenization cached) starts training;
- ``cli``: the command a new user types, ``lora-ft train --method lora|full`` on the built-in defaults
  with 512 training sentences and one epoch, alternated, each in its own process: the Trainer's
  samples/s, training memory, and where the rest of the process's wall time goes;
- ``decoder``: the built-in SmolLM2-135M decoder (``configs/smollm2-lora.yaml``): full, floor and LoRA
  step time in fp32 and bf16, and each one's training memory (one process per method).

Speed figures come from one process in which the methods take turns on the same batch, round after
round (each round starts at a different method); a ratio is the median over rounds of the per-round
ratio, so load that changes during the run cancels. Memory is measured one method per process,
since a process's peak only grows.

The defaults suit a shared machine: one torch thread, and steps timed by the process's CPU time,
which the time slices other processes take do not inflate (wall-time ratios on a busy 2-core machine
swing by 10-50%). On a machine of your own, ``--threads 0 --clock wall`` gives wall time with one
thread per core.

    make bench                                                    # everything, the defaults (minutes)
    .venv/bin/python scripts/bench.py --only speed,inference
    .venv/bin/python scripts/bench.py --rounds 30 --ranks 1,2,4,8,16,32,64 --lengths 16,32,64,128,256
    .venv/bin/python scripts/bench.py --threads 0 --clock wall     # a dedicated machine
    .venv/bin/python scripts/bench.py --profile "lora r8 d0.05"   # top operators of one method's step

Writes the figures to ``runs/bench/bench.json`` (``--json``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from bench_models import (
    TARGET_SETS,
    Gemm,
    Method,
    Setup,
    Trainee,
    bench_config,
    forward_flops,
    set_clock,
    step_flops,
)

from lora_ft.training.precision import native_bf16

SECTIONS = ("speed", "threads", "inference", "memory", "scaling", "e2e", "cli", "decoder")
PHASES = ("forward", "backward", "optimizer")
FLOOR, FULL = Method("floor"), Method("full")
LORA, PEFT = Method("lora", dropout=0.05), Method("peft", dropout=0.05)


# --- timing -------------------------------------------------------------------------------------


def take_turns(members: dict, rounds: int, warmup: int = 1) -> dict[str, list]:
    """Call each member once per round, the starting member rotating; return each one's results.

    ``members`` maps a name to a callable returning seconds (or a tuple of phase seconds).
    """
    names = list(members)
    results: dict[str, list] = {n: [] for n in names}
    for i in range(warmup + rounds):
        for name in names[i % len(names) :] + names[: i % len(names)]:
            spent = members[name]()
            if i >= warmup:
                results[name].append(spent)
    return results


def total(spent) -> float:
    return sum(spent) if isinstance(spent, tuple) else spent


def paired_ratio(times: dict[str, list], name: str, ref: str) -> dict[str, float]:
    """Median and quartiles over rounds of ``name``'s time over ``ref``'s in the same round."""
    ratios = sorted(total(a) / total(b) for a, b in zip(times[name], times[ref], strict=True))
    q = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else [ratios[0]] * 3
    return {"median": statistics.median(ratios), "p25": q[0], "p75": q[2]}


def median_ms(spent: list) -> float:
    return 1000 * statistics.median(total(s) for s in spent)


def fmt_ratio(r: dict[str, float]) -> str:
    return f"{r['median']:.3f} [{r['p25']:.2f}-{r['p75']:.2f}]"


def table(headers: list[str], rows: list[list]) -> None:
    cells = [[str(c) for c in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(headers)]
    print(
        "  ".join(
            h.rjust(w) if i else h.ljust(w) for i, (h, w) in enumerate(zip(headers, widths, strict=True))
        )
    )
    for row in cells:
        print(
            "  ".join(
                c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True))
            )
        )


# --- sections -----------------------------------------------------------------------------------


def speed(setup: Setup, args) -> dict:
    """Items 1 and 4: step throughput of every method side by side; achieved vs the GEMM peak FLOP/s.

    bf16 rows (where the CPU multiplies bf16) autocast the forward to bf16 with the frozen weights stored
    in bf16 (``train.precision=bf16``); their ratios are to the bf16 full and floor rows.
    """
    methods = [FULL, Method("head"), FLOOR, LORA.with_(dropout=0.0), LORA, PEFT.with_(dropout=0.0), PEFT]
    methods += [m.with_(sparse_base=True) for m in (FLOOR, LORA.with_(dropout=0.0))]
    bf16 = native_bf16()
    if bf16:
        methods += [m.with_(bf16=True) for m in (FULL, FLOOR, LORA)]
    batch = setup.batch(args.batch, args.tokens)
    trainees = {m.name: Trainee(setup, m) for m in methods}
    flops = {name: step_flops(t, batch) for name, t in trainees.items()}
    m, k = args.batch * args.tokens, setup.base.config.hidden_size
    dtypes = (torch.float32, torch.bfloat16) if bf16 else (torch.float32,)
    gemms = [Gemm(*shape, dtype) for dtype in dtypes for shape in ((m, k, 4 * k), (1024, 1024, 1024))]
    members = {name: (lambda t=t: t.step(batch)) for name, t in trainees.items()}
    members.update({g.name: g.run for g in gemms})
    times = take_turns(members, args.rounds)
    gemm_rate = {g.name: g.flops / statistics.median(times[g.name]) for g in gemms}
    peak = {
        d: max(r for n, r in gemm_rate.items() if f" {d} " in n)
        for d in ("float32", "bfloat16")[: len(dtypes)]
    }
    rows, out = [], {"batch": [args.batch, args.tokens], "gemm_flops_per_s": gemm_rate, "methods": {}}
    for method in methods:
        t = times[method.name]
        phases = [1000 * statistics.median(s[i] for s in t) for i in range(3)]
        step_ms = median_ms(t)
        achieved = flops[method.name] / (step_ms / 1000)
        full, floor = (r.with_(bf16=method.bf16).name for r in (FULL, FLOOR))
        entry = {
            "phases_ms": dict(zip(PHASES, phases, strict=True)),
            "step_ms": step_ms,
            "samples_per_s": args.batch / (step_ms / 1000),
            "vs_full": paired_ratio(times, method.name, full),
            "vs_floor": paired_ratio(times, method.name, floor),
            "gflop_per_step": flops[method.name] / 1e9,
            "achieved_gflop_per_s": achieved / 1e9,
            "fraction_of_gemm_peak": achieved / peak["bfloat16" if method.bf16 else "float32"],
        }
        out["methods"][method.name] = entry
        rows.append(
            [method.name, *(f"{p:.0f}" for p in phases), f"{step_ms:.0f}", f"{entry['samples_per_s']:.1f}",
             f"{1 / entry['vs_full']['median']:.2f}", fmt_ratio(entry["vs_floor"]),
             f"{entry['gflop_per_step']:.1f}", f"{achieved / 1e9:.1f}", f"{100 * entry['fraction_of_gemm_peak']:.0f}%"]
        )  # fmt: skip
    for peft in ("peft r8 d0", "peft r8 d0.05"):
        out["methods"][peft]["peft_over_ours"] = paired_ratio(times, peft, peft.replace("peft", "lora"))
    out["sparse_base_over_torch"] = {
        r.name: paired_ratio(times, r.with_(sparse_base=True).name, r.name)
        for r in (FLOOR, LORA.with_(dropout=0.0))
    }
    if bf16:
        out["bf16_over_fp32"] = {
            r.name: paired_ratio(times, r.with_(bf16=True).name, r.name) for r in (FULL, FLOOR, LORA)
        }
    print(
        f"\n## Train step, batch {args.batch} x {args.tokens} tokens, {args.rounds} rounds, {_clock_note(args)}"
    )
    table(
        ["method", "fwd", "bwd", "opt", "step ms", "samples/s", "x full speed", "x floor time [IQR]",
         "GFLOP", "GFLOP/s", "of peak"],
        rows,
    )  # fmt: skip
    print(
        "base dropout drawn sparse (train.base_dropout=sparse) over nn.Dropout's: "
        + ", ".join(f"{n} {fmt_ratio(r)} time" for n, r in out["sparse_base_over_torch"].items())
    )
    print("GEMM peak: " + ", ".join(f"{n} {r / 1e9:.1f} GFLOP/s" for n, r in gemm_rate.items()))
    print(
        "GFLOP: counted by torch's FlopCounterMode over a real forward + backward, so only what the method runs "
        "(no weight gradients for frozen layers); 'of peak': achieved over the same dtype's best GEMM rate."
    )
    return out


def threads(setup: Setup, args) -> dict:
    """Wall time of a step at 1 thread and at one per usable CPU, interleaved: which setting is right here."""
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    counts = sorted({1, usable})
    batch = setup.batch(args.batch, args.tokens)
    trainees = [Trainee(setup, LORA)]
    before = torch.get_num_threads()

    def timed(trainee: Trainee, n: int):
        torch.set_num_threads(n)
        t0 = time.perf_counter()
        trainee.step(batch)
        return time.perf_counter() - t0

    members = {f"{t.method.name} @{n}": (lambda t=t, n=n: timed(t, n)) for t in trainees for n in counts}
    times = take_turns(members, max(3, args.rounds // 2))
    torch.set_num_threads(before)
    out = {"load_average": os.getloadavg(), "steps": {}}
    rows = []
    for t in trainees:
        one = f"{t.method.name} @1"
        for n in counts:
            name = f"{t.method.name} @{n}"
            entry = {"wall_ms": median_ms(times[name]), "vs_1_thread": paired_ratio(times, name, one)}
            out["steps"][name] = entry
            rows.append([name, f"{entry['wall_ms']:.0f}", fmt_ratio(entry["vs_1_thread"])])
    print(
        f"\n## Threads: wall time per step, interleaved, load average {os.getloadavg()[0]:.1f} on {usable} CPUs"
    )
    table(["method @threads", "wall ms", "x 1 thread [IQR]"], rows)
    return out


def _clock_note(args) -> str:
    return (
        f"{torch.get_num_threads()} torch thread(s), {'process CPU' if args.clock == 'cpu' else 'wall'} time"
    )


def inference(setup: Setup, args) -> dict:
    """Item 2: eval forward of the base model, our LoRA unmerged, and merged into the base."""
    from lora_ft.lora.inject import merge_lora

    batch = setup.batch(args.batch, args.tokens)
    base = Trainee(setup, Method("head", label="base"))
    unmerged = Trainee(setup, LORA.with_(label="lora unmerged"))
    merged = Trainee(setup, LORA.with_(label="lora merged"))
    for t in (base, unmerged, merged):
        t.model.eval()
    with torch.no_grad():  # an adapter that changes the output, as after training
        for t in (unmerged, merged):
            for name, p in t.model.named_parameters():
                if "lora_B" in name:
                    p.normal_(std=0.02)
        merged.model.load_state_dict(unmerged.model.state_dict())
    merge_lora(merged.model)
    members = {t.method.name: (lambda t=t: t.infer(batch)) for t in (base, unmerged, merged)}
    times = take_turns(members, 2 * args.rounds, warmup=2)
    out = {"batch": [args.batch, args.tokens], "models": {}}
    rows = []
    for name in members:
        ms = median_ms(times[name])
        entry = {
            "ms": ms,
            "samples_per_s": args.batch / (ms / 1000),
            "vs_base": paired_ratio(times, name, "base"),
        }
        entry["gflop"] = forward_flops(unmerged if name != "base" else base, batch) / 1e9
        out["models"][name] = entry
        rows.append([name, f"{ms:.1f}", f"{entry['samples_per_s']:.0f}", fmt_ratio(entry["vs_base"])])
    print(
        f"\n## Inference (eval forward), batch {args.batch} x {args.tokens} tokens, {2 * args.rounds} rounds, "
        + _clock_note(args)
    )
    table(["model", "ms/batch", "samples/s", "x base time [IQR]"], rows)
    return out


def _memory_of(method: Method, args, *extra: str) -> dict:
    """The memory worker's figures for ``method``, in a process of its own (a process's peak only grows)."""
    command = [sys.executable, __file__, "--worker", "memory", "--method", json.dumps(method.__dict__)]
    command += _passthrough(args) + list(extra)
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode:
        raise SystemExit(f"memory worker for {method.name} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def memory(args) -> dict:
    """Item 3: what a training step adds to peak RSS (CUDA peak on a GPU), one process per method."""
    methods = [FULL, Method("head"), FLOOR, LORA.with_(dropout=0.0), LORA, PEFT.with_(dropout=0.0), PEFT]
    out = {"batch": [args.batch, args.memory_tokens], "methods": {}}
    for method in methods:
        out["methods"][method.name] = _memory_of(method, args)
    full_mb = out["methods"][FULL.name]["train_mb"]
    rows = []
    for name, m in out["methods"].items():
        m["vs_full"] = m["train_mb"] / full_mb
        cuda = f"{m['cuda_peak_mb']:.0f}" if m.get("cuda_peak_mb") is not None else "-"
        rows.append(
            [name, f"{m['before_mb']:.0f}", f"{m['train_mb']:.0f}", f"{m['vs_full']:.2f}",
             " ".join(f"{s:.0f}" for s in m["steps_mb"]), cuda]
        )  # fmt: skip
    print(f"\n## Training memory, batch {args.batch} x {args.memory_tokens} tokens, one process per method")
    table(["method", "RSS before MB", "train MB", "x full", "per step MB", "CUDA peak MB"], rows)
    print("train MB: the largest peak RSS over the steps, minus the RSS before the first step.")
    return out


def _return_free_heap() -> None:
    """Hand glibc's free heap back to the OS, so RSS counts live memory only (no-op elsewhere)."""
    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def memory_worker(args) -> None:
    from lora_ft.training.resources import cuda_peak_mb, peak_rss_mb, reset_peak_rss, rss_mb

    fields = json.loads(args.method)
    method = Method(**{**fields, "targets": tuple(fields["targets"])})
    setup = Setup.load(bench_config(args.overrides, args.config))
    trainee = Trainee(setup, method)
    batch = setup.batch(args.batch, args.memory_tokens)
    del setup
    _return_free_heap()  # else a bf16 copy's freed fp32 weights stay resident and hide the step's growth
    start = rss_mb()
    steps = []
    for _ in range(args.memory_steps):
        reset_peak_rss()
        trainee.step(batch)
        steps.append(peak_rss_mb() - start)
    print(
        json.dumps(
            {"before_mb": start, "train_mb": max(steps), "steps_mb": steps, "cuda_peak_mb": cuda_peak_mb()}
        )
    )


def scaling(setup: Setup, args) -> dict:
    """Item 5: step time vs rank, sequence length and wrapped modules; ours vs PEFT at every point."""
    out: dict = {"rank": {}, "length": {}, "modules": {}}
    rounds = max(3, args.rounds // 2)
    batch = setup.batch(args.batch, args.tokens)
    for dropout in (0.0, 0.05):
        methods = [FLOOR] + [
            m.with_(r=r, alpha=2 * r, dropout=dropout) for r in args.ranks for m in (LORA, PEFT)
        ]
        times = _turns(setup, methods, batch, rounds)
        rows = []
        for r in args.ranks:
            ours, peft = (m.with_(r=r, alpha=2 * r, dropout=dropout).name for m in (LORA, PEFT))
            entry = {
                "ours_ms": median_ms(times[ours]),
                "peft_ms": median_ms(times[peft]),
                "ours_vs_floor": paired_ratio(times, ours, FLOOR.name),
                "peft_over_ours": paired_ratio(times, peft, ours),
            }
            out["rank"][f"r{r} d{dropout:g}"] = entry
            rows.append([r, f"{entry['ours_ms']:.0f}", f"{entry['peft_ms']:.0f}", fmt_ratio(entry["ours_vs_floor"]),
                         fmt_ratio(entry["peft_over_ours"])])  # fmt: skip
        print(
            f"\n## Scaling with rank (alpha = 2r, query/value, dropout {dropout:g}), batch {args.batch} x "
            f"{args.tokens}, {_clock_note(args)}"
        )
        table(["r", "ours ms", "PEFT ms", "ours x floor [IQR]", "PEFT / ours [IQR]"], rows)

    rows = []
    for tokens in args.lengths:
        methods = [FULL, FLOOR, LORA, PEFT]
        times = _turns(setup, methods, setup.batch(args.batch, tokens), rounds)
        entry = {m.name + "_ms": median_ms(times[m.name]) for m in methods}
        entry["ours_vs_floor"] = paired_ratio(times, LORA.name, FLOOR.name)
        entry["full_over_ours"] = paired_ratio(times, FULL.name, LORA.name)
        entry["peft_over_ours"] = paired_ratio(times, PEFT.name, LORA.name)
        out["length"][str(tokens)] = entry
        rows.append([tokens, *(f"{entry[m.name + '_ms']:.0f}" for m in methods), fmt_ratio(entry["ours_vs_floor"]),
                     fmt_ratio(entry["full_over_ours"]), fmt_ratio(entry["peft_over_ours"])])  # fmt: skip
    print(
        f"\n## Scaling with sequence length, batch {args.batch}, LoRA r8 dropout 0.05 (ms), {_clock_note(args)}"
    )
    table(["tokens", "full", "floor", "ours", "PEFT", "ours x floor", "full / ours", "PEFT / ours"], rows)

    methods = [FLOOR] + [m.with_(targets=t) for t in TARGET_SETS.values() for m in (LORA, PEFT)]
    times = _turns(setup, methods, batch, rounds)
    rows = []
    for label, targets in TARGET_SETS.items():
        ours, peft = (m.with_(targets=targets).name for m in (LORA, PEFT))
        entry = {
            "ours_ms": median_ms(times[ours]),
            "peft_ms": median_ms(times[peft]),
            "ours_vs_floor": paired_ratio(times, ours, FLOOR.name),
            "peft_over_ours": paired_ratio(times, peft, ours),
        }
        out["modules"][label] = entry
        rows.append([label, f"{entry['ours_ms']:.0f}", f"{entry['peft_ms']:.0f}", fmt_ratio(entry["ours_vs_floor"]),
                     fmt_ratio(entry["peft_over_ours"])])  # fmt: skip
    print(
        f"\n## Scaling with wrapped modules, r8 dropout 0.05, batch {args.batch} x {args.tokens}, {_clock_note(args)}"
    )
    table(["targets", "ours ms", "PEFT ms", "ours x floor [IQR]", "PEFT / ours [IQR]"], rows)
    return out


def _turns(setup: Setup, methods: list[Method], batch, rounds: int) -> dict[str, list]:
    named = {m.name: Trainee(setup, m) for m in methods}
    times = take_turns({n: (lambda t=t: t.step(batch)) for n, t in named.items()}, rounds)
    del named
    return times


def e2e(args) -> dict:
    """``lora-ft train`` on a short budget in a fresh process, against the step-level rate on the same
    batch shapes in the same process; and how soon a run whose tokenization is cached starts training."""
    command = [sys.executable, __file__, "--worker", "e2e", "--launched", repr(time.time())]
    result = subprocess.run(command + _passthrough(args), capture_output=True, text=True, check=False)
    if result.returncode:
        raise SystemExit(f"e2e worker failed:\n{result.stderr[-3000:]}")
    out = json.loads(result.stdout.strip().splitlines()[-1])
    c = args.clock
    print(
        f"\n## train end to end vs step level: configs/default.yaml, {args.e2e_steps} steps, eval and saving off"
    )
    table(
        ["measure", "value"],
        [
            ["process start -> first step (tokenization cached)", f"{out['launch_to_first_step_s']:.1f} s"],
            ["  of which load data + model + cached tokens", f"{out['prepare_s']:.1f} s"],
            ["tokenizing all splits (no cache), saving, loading", f"{out['tokenize_cold_s']:.1f} s"],
            ["train samples/s (the Trainer's figure, wall)", f"{out['trainer_samples_per_s']:.1f}"],
            [f"train samples/s ({c})", f"{out['train_samples_per_s'][c]:.1f}"],
            [f"step-level samples/s, same shapes, same process ({c})", f"{out['step_level_samples_per_s'][c]:.1f}"],
            [f"train / step level ({c})", f"{out['e2e_over_step_level'][c]:.3f}"],
            [f"time inside optimizer steps / train time ({c})", f"{out['in_step_fraction'][c]:.3f}"],
            [f"median Trainer step / median step-level step ({c})", " / ".join(f"{statistics.median(out['steps_ms'][c][k]):.0f}" for k in ("trainer", "step_level")) + " ms"],
        ],
    )  # fmt: skip
    return out


def _both() -> tuple[float, float]:
    return time.perf_counter(), time.process_time()


def e2e_worker(args) -> None:
    from transformers import TrainerCallback

    import lora_ft.data.loading as data_module
    import lora_ft.data.tokenization as tokenization_module
    import lora_ft.training.train as train_module

    launched = float(args.launched)

    class Clock(TrainerCallback):
        """Both clocks at train begin / end and around every optimizer step; the batch shapes the model saw."""

        def __init__(self):
            self.first_step = None
            self.marks: dict[str, tuple[float, float]] = {}
            self.steps: list[tuple[float, float]] = []
            self.batches: list[dict[str, torch.Tensor]] = []

        def on_train_begin(self, a, state, control, **kw):
            self.marks["begin"] = _both()

        def on_step_begin(self, a, state, control, **kw):
            self.first_step = self.first_step or time.time()
            self.start = _both()

        def on_step_end(self, a, state, control, **kw):
            self.steps.append(tuple(e - s for e, s in zip(_both(), self.start, strict=True)))

        def on_train_end(self, a, state, control, **kw):
            self.marks["end"] = _both()

    clock = Clock()
    overrides = [f"train.max_steps={args.e2e_steps}", "train.eval_strategy=no", "train.save_strategy=no"]
    cfg = bench_config(overrides + args.overrides)
    real_prepare, prepared = train_module.prepare, {}

    def timed_prepare(cfg, method=None):
        t0 = time.perf_counter()
        p = real_prepare(cfg, method)
        prepared["s"] = time.perf_counter() - t0

        def record(module, args, kwargs):
            if module.training:
                clock.batches.append({k: v.clone() for k, v in kwargs.items() if isinstance(v, torch.Tensor)})

        p.loaded.model.register_forward_pre_hook(record, with_kwargs=True)
        return p

    train_module.prepare = timed_prepare
    with tempfile.TemporaryDirectory() as tmp:
        metrics = train_module.train(cfg, Path(tmp) / "run", callbacks=[clock])
        train_module.prepare = real_prepare
        setup = Setup.load(cfg)
        cached = tokenization_module.tokenized_cache_dir
        tokenization_module.tokenized_cache_dir = lambda *a: Path(tmp) / "tokenized"
        t0 = time.perf_counter()
        tokenization_module.tokenize_data(
            data_module.load_data(cfg.data), setup.tokenizer, cfg.data.max_length
        )
        cold = time.perf_counter() - t0
        tokenization_module.tokenized_cache_dir = cached
    # The same batches (padding and all) stepped by hand, on the same method: forward, backward, AdamW; no
    # data loading, collation, clipping, scheduler, logging or callbacks. Both clocks, as for the Trainer.
    lora = cfg.lora
    targets = (lora.targets,) if isinstance(lora.targets, str) else tuple(lora.targets or ("query", "value"))
    trainee = Trainee(
        setup, Method("lora", r=lora.r, alpha=lora.alpha, dropout=lora.dropout, targets=targets)
    )
    replay = []
    for batch in clock.batches:
        start = _both()
        trainee.step(batch)
        replay.append(tuple(e - s for e, s in zip(_both(), start, strict=True)))
    samples = sum(len(b["input_ids"]) for b in clock.batches)
    out: dict = {
        "launch_to_first_step_s": clock.first_step - launched,
        "prepare_s": prepared["s"],
        "tokenize_cold_s": cold,
        "trainer_samples_per_s": metrics["train_samples_per_second"],
        "batch_shapes": [list(b["input_ids"].shape) for b in clock.batches],
        "steps_ms": {
            c: {"trainer": [1000 * s[i] for s in clock.steps], "step_level": [1000 * r[i] for r in replay]}
            for i, c in enumerate(("wall", "cpu"))
        },
    }
    for key in ("train_samples_per_s", "step_level_samples_per_s", "e2e_over_step_level", "in_step_fraction"):
        out[key] = {}
    for i, c in enumerate(("wall", "cpu")):
        train_time = clock.marks["end"][i] - clock.marks["begin"][i]
        replay_time = sum(r[i] for r in replay)
        out["train_samples_per_s"][c] = samples / train_time
        out["step_level_samples_per_s"][c] = samples / replay_time
        out["e2e_over_step_level"][c] = replay_time / train_time
        out["in_step_fraction"][c] = sum(s[i] for s in clock.steps) / train_time
    print(json.dumps(out))


def _cli_run(method: str, out: Path, args) -> dict:
    """One ``lora-ft train --method METHOD`` on the built-in defaults, in a process of its own."""
    command = [sys.executable, "-m", "lora_ft", "train", "--method", method, "--out", str(out)]
    for o in ("data.max_train_samples=512", "train.epochs=1", f"train.threads={args.threads}"):
        command += ["--set", o]
    t0 = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - t0
    if result.returncode:
        raise SystemExit(f"lora-ft train --method {method} failed:\n{result.stderr[-3000:]}")
    metrics = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
    logged = [json.loads(line) for line in (out / "log.jsonl").read_text(encoding="utf-8").splitlines()]
    evaluate = sum(e.get(k, 0.0) for e in logged for k in ("eval_runtime", "test_runtime"))
    return {
        "wall_s": wall,
        "train_s": metrics["train_seconds"],
        "evaluate_s": evaluate,
        "other_s": wall - metrics["train_seconds"] - evaluate,
        "samples_per_s": metrics["train_samples_per_second"],
        "train_memory_mb": metrics["train_memory_mb"],
        "precision": metrics["precision"],
    }


def cli(args) -> dict:
    """Item 4 of #16: what a user sees from the command line, LoRA against full fine-tuning on the
    built-in defaults (512 training sentences, one epoch), alternated ``lora full full lora ...`` so a
    load that drifts over the run weighs on both; ratios are per pair, then the median."""
    runs: dict[str, list[dict]] = {"lora": [], "full": []}
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.cli_rounds):
            for method in ("lora", "full") if i % 2 == 0 else ("full", "lora"):
                runs[method].append(_cli_run(method, Path(tmp) / f"{method}-{i}", args))
    pairs = list(zip(runs["lora"], runs["full"], strict=True))
    out = {
        "runs": runs,
        "samples_per_s_ratio": statistics.median(lo["samples_per_s"] / f["samples_per_s"] for lo, f in pairs),
        "train_memory_ratio": statistics.median(
            lo["train_memory_mb"] / f["train_memory_mb"] for lo, f in pairs
        ),
    }
    print(
        f"\n## lora-ft train --method lora|full, built-in defaults, 512 sentences, 1 epoch, "
        f"{args.cli_rounds} pairs alternated, {args.threads or 'all'} thread(s), wall clock"
    )
    rows = [
        [f"{m} #{i + 1}", r["precision"], f"{r['wall_s']:.1f}", f"{r['train_s']:.1f}", f"{r['evaluate_s']:.1f}",
         f"{r['other_s']:.1f}", f"{r['samples_per_s']:.1f}", f"{r['train_memory_mb']:.0f}"]
        for m, rs in runs.items() for i, r in enumerate(rs)
    ]  # fmt: skip
    table(
        [
            "run",
            "precision",
            "process s",
            "train s",
            "eval+test s",
            "start-up etc. s",
            "samples/s",
            "train MB",
        ],
        rows,
    )
    print(
        f"LoRA over full: samples/s {out['samples_per_s_ratio']:.2f}x, training memory {out['train_memory_ratio']:.2f}x "
        "(medians over pairs). 'start-up etc.': imports, loading, tokenization (cached after the first run), saving."
    )
    return out


def decoder(args) -> dict:
    """Item 5 of #16: the built-in SmolLM2-135M decoder, where AdamW's state dominates full fine-tuning's
    memory: full, floor and LoRA (q_proj, v_proj, r 8) step time in fp32 and bf16, taking turns in one
    process, and each one's training memory in a process of its own."""
    config = "configs/smollm2-lora.yaml"
    lora = Method("lora", dropout=0.0, targets=("q_proj", "v_proj"))
    methods = [FULL, FLOOR, lora]
    if native_bf16():
        methods += [m.with_(bf16=True) for m in (FULL, FLOOR, lora)]
    setup = Setup.load(bench_config(args.overrides, config))
    batch = setup.batch(args.decoder_batch, args.tokens)
    times = _turns(setup, methods, batch, args.decoder_rounds)
    del setup
    extra = ("--config", config, "--batch", str(args.decoder_batch), "--memory-tokens", str(args.tokens))
    memory = {m.name: _memory_of(m, args, *extra) for m in methods}
    out = {"batch": [args.decoder_batch, args.tokens], "methods": {}}
    rows = []
    for m in methods:
        full, floor = (r.with_(bf16=m.bf16).name for r in (FULL, FLOOR))
        entry = {
            "step_ms": median_ms(times[m.name]),
            "vs_full": paired_ratio(times, m.name, full),
            "vs_floor": paired_ratio(times, m.name, floor),
            "train_mb": memory[m.name]["train_mb"],
            "memory_vs_full": memory[m.name]["train_mb"] / memory[full]["train_mb"],
        }
        if m.bf16:
            entry["vs_fp32"] = paired_ratio(times, m.name, m.with_(bf16=False).name)
        out["methods"][m.name] = entry
        rows.append(
            [m.name, f"{entry['step_ms']:.0f}", fmt_ratio(entry["vs_full"]), fmt_ratio(entry["vs_floor"]),
             fmt_ratio(entry["vs_fp32"]) if m.bf16 else "-", f"{entry['train_mb']:.0f}", f"{entry['memory_vs_full']:.2f}"]
        )  # fmt: skip
    print(
        f"\n## SmolLM2-135M decoder ({config}), batch {args.decoder_batch} x {args.tokens} tokens, "
        f"{args.decoder_rounds} rounds, {_clock_note(args)}"
    )
    table(
        ["method", "step ms", "x full time", "x floor time", "x fp32 time", "train MB", "memory x full"], rows
    )
    return out


# --- targets ------------------------------------------------------------------------------------


def targets(results: dict, clock: str) -> list[tuple[str, str, bool]]:
    """``(target, measured, passed)`` for every target whose section ran."""
    out = []
    s = results.get("speed", {}).get("methods")
    if s:
        for name in ("lora r8 d0", "lora r8 d0.05"):
            speedup = 1 / s[name]["vs_full"]["median"]
            out.append((f"{name}: step throughput >= 1.8x full", f"{speedup:.2f}x", speedup >= 1.8))
        for name, limit in (("lora r8 d0", 1.03), ("lora r8 d0.05", 1.08)):
            r = s[name]["vs_floor"]["median"]
            out.append((f"{name}: step time <= {limit}x floor", f"{r:.3f}x", r <= limit))
        for name, limit in (("peft r8 d0", 1.0), ("peft r8 d0.05", 1.05)):
            r = s[name]["peft_over_ours"]["median"]
            out.append((f"{name.replace('peft', 'PEFT')} time >= {limit}x ours", f"{r:.3f}x", r >= limit))
    sc = results.get("scaling")
    if sc:
        points = {**sc["rank"], **{f"{k} tokens": v for k, v in sc["length"].items()}, **sc["modules"]}
        worst = min(points, key=lambda k: points[k]["peft_over_ours"]["median"])
        r = points[worst]["peft_over_ours"]["median"]
        out.append(("ours as fast as PEFT at every sweep point", f"worst {r:.3f}x ({worst})", r >= 1.0))
        dropped = {k: v for k, v in sc["rank"].items() if not k.endswith("d0")}
        worst = min(dropped, key=lambda k: dropped[k]["peft_over_ours"]["median"])
        r = dropped[worst]["peft_over_ours"]["median"]
        out.append(("PEFT >= 1.05x ours at every rank with dropout", f"worst {r:.3f}x ({worst})", r >= 1.05))
    m = results.get("memory", {}).get("methods")
    if m:
        for name in ("lora r8 d0", "lora r8 d0.05"):
            r = m[name]["vs_full"]
            out.append((f"{name}: training memory <= 0.65x full", f"{r:.2f}x", r <= 0.65))
            peft = m[name.replace("lora", "peft")]["train_mb"]
            out.append((f"{name}: training memory <= PEFT's", f"{m[name]['train_mb']:.0f} vs {peft:.0f} MB",
                        m[name]["train_mb"] <= peft))  # fmt: skip
    i = results.get("inference", {}).get("models")
    if i:
        for name, limit in (("lora merged", 1.02), ("lora unmerged", 1.10)):
            r = i[name]["vs_base"]["median"]
            out.append((f"{name} inference <= {limit}x base latency", f"{r:.3f}x", r <= limit))
    e = results.get("e2e")
    if e:
        r = e["e2e_over_step_level"][clock]
        out.append(("train end to end >= 0.9x the step-level rate", f"{r:.3f}x", r >= 0.9))
    # Issue #16
    bf16 = results.get("speed", {}).get("bf16_over_fp32")
    if bf16:
        r = bf16["lora r8 d0.05"]["median"]
        out.append(("lora r8 d0.05: bf16 step <= 0.58x fp32 time", f"{r:.3f}x", r <= 0.58))
    c = results.get("cli")
    if c:
        r = c["samples_per_s_ratio"]
        out.append(("lora-ft train: LoRA samples/s >= 1.6x full", f"{r:.2f}x", r >= 1.6))
        r = c["train_memory_ratio"]
        out.append(("lora-ft train: LoRA training memory <= 0.6x full", f"{r:.2f}x", r <= 0.6))
    return out


# --- main ---------------------------------------------------------------------------------------


def _passthrough(args) -> list[str]:
    out = ["--batch", str(args.batch), "--memory-tokens", str(args.memory_tokens), "--clock", args.clock]
    out += ["--threads", str(args.threads)]
    out += ["--memory-steps", str(args.memory_steps), "--e2e-steps", str(args.e2e_steps)]
    for o in args.overrides:
        out += ["--set", o]
    return out


def machine() -> dict:
    cpu = next(
        (line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
        platform.processor(),
    ) if Path("/proc/cpuinfo").exists() else platform.processor()  # fmt: skip
    return {
        "cpu": cpu,
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "bf16_native": native_bf16(),
        "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "load_average_at_start": os.getloadavg(),
    }


def profile(setup: Setup, args) -> None:
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    by_name = {
        m.name: m
        for m in (FULL, Method("head"), FLOOR, LORA, LORA.with_(dropout=0.0), PEFT, PEFT.with_(dropout=0.0))
    }
    if args.profile not in by_name:
        raise SystemExit(f"--profile takes one of: {', '.join(by_name)}")
    trainee = Trainee(setup, by_name[args.profile])
    batch = setup.batch(args.batch, args.tokens)
    for _ in range(2):
        trainee.step(batch)
    with torch_profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        for _ in range(args.rounds):
            trainee.step(batch)
    print(
        f"{args.profile}: top operators by self CPU time over {args.rounds} steps, batch {args.batch} x {args.tokens}"
    )
    print(prof.key_averages(group_by_input_shape=True).table(sort_by="self_cpu_time_total", row_limit=25))


def ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default=",".join(SECTIONS), help=f"comma-separated: {', '.join(SECTIONS)}")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--tokens", type=int, default=32, help="sequence length of the speed batches")
    parser.add_argument("--rounds", type=int, default=8, help="timed rounds of the speed section")
    parser.add_argument("--ranks", type=ints, default=[1, 8, 64])
    parser.add_argument("--lengths", type=ints, default=[16, 32, 64])
    parser.add_argument("--memory-tokens", type=int, default=64)
    parser.add_argument("--memory-steps", type=int, default=3)
    parser.add_argument("--e2e-steps", type=int, default=30)
    parser.add_argument("--cli-rounds", type=int, default=2, help="lora/full pairs of the cli section")
    parser.add_argument("--decoder-batch", type=int, default=8, help="batch of the decoder section")
    parser.add_argument("--decoder-rounds", type=int, default=4)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads; 0: one per core")
    parser.add_argument(
        "--clock", choices=("wall", "cpu"), default="cpu", help="time steps by wall or CPU time"
    )
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="config key=value")
    parser.add_argument("--profile", metavar="METHOD", help="only profile one method's step")
    parser.add_argument("--json", default="runs/bench/bench.json")
    parser.add_argument("--worker", choices=("memory", "e2e"), help=argparse.SUPPRESS)
    parser.add_argument("--method", help=argparse.SUPPRESS)
    parser.add_argument("--config", default="configs/default.yaml", help=argparse.SUPPRESS)
    parser.add_argument("--launched", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    set_clock(args.clock)
    if args.worker == "memory":
        return memory_worker(args)
    if args.worker == "e2e":
        return e2e_worker(args)
    only = [s for s in args.only.split(",") if s]
    unknown = set(only) - set(SECTIONS)
    if unknown:
        raise SystemExit(
            f"unknown section(s) {', '.join(sorted(unknown))}; choose from {', '.join(SECTIONS)}"
        )

    results: dict = {"machine": machine(), "command": " ".join(sys.argv)}
    print(json.dumps(results["machine"]))
    started = time.perf_counter()
    in_process = ("speed", "threads", "inference", "scaling")  # share one loaded model
    needs_model = set(in_process) & set(only) or args.profile
    setup = Setup.load(bench_config(args.overrides)) if needs_model else None
    if args.profile:
        return profile(setup, args)
    for section in SECTIONS:
        if section in only:
            run = globals()[section]
            results[section] = run(setup, args) if section in in_process else run(args)
    results["machine"]["load_average_at_end"] = os.getloadavg()
    results["seconds"] = time.perf_counter() - started
    results["targets"] = [{"target": t, "measured": v, "pass": p} for t, v, p in targets(results, args.clock)]
    print("\n## Targets (issues #5 and #16)")
    table(
        ["target", "measured", ""],
        [[t, v, "PASS" if p else "MISS"] for t, v, p in targets(results, args.clock)],
    )
    print(f"\n{results['seconds']:.0f} s; load average at start {results['machine']['load_average_at_start'][0]:.1f}, "
          f"at end {results['machine']['load_average_at_end'][0]:.1f} on {results['machine']['cpus_usable']} CPUs")  # fmt: skip
    path = Path(args.json)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
