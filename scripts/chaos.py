"""Kill a real training run at random points (SIGINT, SIGTERM, SIGKILL), resume it each time, and
check that it ends exactly where an uninterrupted run of the same config ends.

The run is the built-in defaults (MiniLM-L6 and rt-sentences) on a short budget like
configs/smoke.yaml: 2 layers, 256 training sentences, 16-sentence batches (16 steps an epoch), LoRA
dropout on (so the RNG state matters), a checkpoint every 4 steps, keeping 2. Two budgets: 2 epochs
(32 steps), and train.max_steps=27, which ends mid-epoch (where the Trainer alone trains a step past
a resumed budget). Each budget gets ``--kills`` kills after randomly drawn steps, plus a random
fraction of a second so a SIGKILL can hit mid-step or mid-checkpoint, then two at the end of the run:
once its final checkpoint is on disk (landing in the final evaluations), and once its adapter/ is
written but metrics.json is not (the run is paused there for a second, numerics untouched, so the
kill can land). SIGINT/SIGTERM must exit 130/143 with the resume command; SIGKILL leaves whatever
the last complete checkpoint was. The last `--resume` runs to the end; its metrics, adapter tensors
and log must equal the uninterrupted run's bit for bit (wall-clock fields excepted).

    .venv/bin/python scripts/chaos.py                       # 4 kills + 2 at the end per budget, seed 0
    .venv/bin/python scripts/chaos.py --kills 9 --seed 3 --keep
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SETTINGS = [
    "model.name=minilm-l6", "model.num_layers=2", "data.name=rt-sentences", "data.max_length=64",
    "data.max_train_samples=256", "data.max_eval_samples=128", "lora.r=4", "lora.alpha=8", "lora.dropout=0.05",
    "train.epochs=2", "train.batch_size=16", "train.logging_steps=1", "train.save_strategy=steps",
    "train.save_steps=4", "train.save_total_limit=2", "train.threads=1",
]  # fmt: skip
BUDGETS = {"2 epochs": [], "max_steps 27 (mid-epoch)": ["train.max_steps=27"]}
SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGKILL)
EXPECTED_EXIT = {signal.SIGINT: 130, signal.SIGTERM: 143, signal.SIGKILL: -signal.SIGKILL}


# `lora-ft train`, paused for a second once adapter/ is written, so a kill can land before metrics.json.
PAUSED_AFTER_ADAPTER = """
import sys, time
import lora_ft.training.train
from lora_ft.cli.app import main

real = lora_ft.training.train._save_outputs

def save_then_pause(*args):
    real(*args)
    time.sleep(1.0)

lora_ft.training.train._save_outputs = save_then_pause
sys.argv = ["lora-ft", *sys.argv[1:]]
main()
"""


def _command(*args: str) -> list[str]:
    return [sys.executable, "-c", PAUSED_AFTER_ADAPTER, "train", *args]


def _logged_step(log: Path) -> int:
    if not log.is_file():
        return 0
    steps = [0]
    for line in log.read_text(encoding="utf-8").splitlines():
        try:
            steps.append(json.loads(line).get("step", 0))
        except json.JSONDecodeError:  # the line being written
            pass
    return max(steps)


def _checkpoints(partial: Path) -> list[str]:
    d = partial / "checkpoints"
    return sorted(
        (p.name for p in d.iterdir() if p.name.startswith("checkpoint-")), key=lambda n: int(n[11:])
    )


def _timing(key: str) -> bool:
    return key.endswith(("_runtime", "_per_second"))


def _log(run: Path) -> list[dict]:
    lines = [json.loads(x) for x in (run / "log.jsonl").read_text(encoding="utf-8").splitlines()]
    return [{k: v for k, v in line.items() if not _timing(k)} for line in lines]


def compare(ref: Path, run: Path) -> bool:
    from safetensors.torch import load_file
    from torch import equal

    a, b = (json.loads((d / "metrics.json").read_text(encoding="utf-8")) for d in (ref, run))
    ok = True
    for key in ("validation", "test", "train_loss", "global_steps"):
        same = a[key] == b[key]
        ok &= same
        print(f"  {key:<13} {'==' if same else '!='} reference: {b[key]}")
    ta, tb = (load_file(str(d / "adapter" / "adapter_model.safetensors")) for d in (ref, run))
    identical = sum(equal(ta[k], tb[k]) for k in ta) if ta.keys() == tb.keys() else 0
    ok &= identical == len(ta)
    print(f"  adapter       {identical}/{len(ta)} tensors bit-identical")
    la, lb = _log(ref), _log(run)
    ok &= la == lb
    print(
        f"  log.jsonl     {len(lb)} lines, {'identical' if la == lb else 'DIFFERENT'} (wall-clock fields aside)"
    )
    print(f"  resumed from steps {b['resumed_from_steps']}")
    return ok


def _kill(argv: list[str], partial: Path, ready, sig: int) -> tuple[bool, str]:
    """Start ``argv``, send ``sig`` once ``ready()`` holds; (as expected, what happened)."""
    before = _logged_step(partial / "log.jsonl")
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    while proc.poll() is None and not ready():
        time.sleep(0.01)
    if proc.poll() is not None:
        err = proc.stderr.read().strip()
        return proc.returncode == 0, f"the run ended first (exit {proc.returncode}) {err[-300:]}"
    at = _logged_step(partial / "log.jsonl")
    proc.send_signal(sig)
    _, err = proc.communicate()
    expected = EXPECTED_EXIT[sig]
    last = err.strip().splitlines()[-1] if err.strip() else ""
    told = sig == signal.SIGKILL or "resume with: lora-ft train --resume" in last
    ok = proc.returncode == expected and told and "Traceback" not in err
    when = f"after step {at:>2}" if at > before else f"before a new step ({at})"
    return ok, (
        f"{signal.Signals(sig).name:<7} {when} -> exit {proc.returncode}"
        f"{'' if ok else f' (expected {expected}) FAIL: {last}'}; checkpoints {', '.join(_checkpoints(partial)) or 'none'}"
    )


def budget(name: str, extra: list[str], kills: int, rng: random.Random, work: Path) -> bool:
    sets = [a for s in [*SETTINGS, *extra] for a in ("--set", s)]
    ref, run = work / f"reference-{len(extra)}", work / f"chaos-{len(extra)}"
    partial = run.with_name(f".{run.name}.partial")
    t0 = time.time()
    subprocess.run(_command(*sets, "--out", str(ref)), check=True, capture_output=True)
    total = json.loads((ref / "metrics.json").read_text(encoding="utf-8"))["global_steps"]
    print(f"{name}: reference {total} steps, uninterrupted, in {time.time() - t0:.0f} s")

    final = partial / "checkpoints" / f"checkpoint-{total}"
    plan: list[tuple[str, Once]] = []
    for target in sorted(rng.sample(range(1, total), kills)):
        jitter = rng.uniform(0.0, 0.5)
        reached = Once(lambda t=target: _logged_step(partial / "log.jsonl") >= t, jitter)
        plan.append((f"step {target:>2} +{jitter:.2f} s", reached))
    jitter = rng.uniform(0.0, 0.5)
    plan.append((f"final checkpoint +{jitter:.2f} s", Once(final.is_dir, jitter)))
    plan.append(("adapter/ written", Once((partial / "adapter").is_dir)))
    signals = [SIGNALS[i % len(SIGNALS)] for i in range(len(plan))]
    rng.shuffle(signals)
    failures = 0
    for i, ((what, ready), sig) in enumerate(zip(plan, signals, strict=True), 1):
        argv = _command("--resume", str(run)) if partial.exists() else _command(*sets, "--out", str(run))
        ok, told = _kill(argv, partial, ready, sig)
        failures += not ok
        print(f"  kill {i}/{len(plan)} at {what:<22} {told}")
        if not partial.exists():  # it finished before the kill point: nothing left to resume
            break
    if partial.exists():
        t0 = time.time()
        done = subprocess.run(_command("--resume", str(run)), capture_output=True, text=True)
        print(f"  final resume: exit {done.returncode} in {time.time() - t0:.0f} s")
        if done.returncode != 0:
            print("  " + done.stderr.strip().splitlines()[-1])
            return False
    return compare(ref, run) and not failures


class Once:
    """True from ``jitter`` seconds after ``condition()`` first held (polled)."""

    def __init__(self, condition, jitter: float = 0.0):
        self.condition, self.jitter, self.since = condition, jitter, None

    def __call__(self) -> bool:
        if self.since is None:
            if not self.condition():
                return False
            self.since = time.time()
        return time.time() - self.since >= self.jitter


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--kills", type=int, default=4, help="kills after random steps, per budget (default 4)"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed for the kill points and signals")
    parser.add_argument("--workdir", type=Path, help="where the runs go (default: a temporary directory)")
    parser.add_argument("--keep", action="store_true", help="keep the runs afterwards")
    args = parser.parse_args()
    rng = random.Random(args.seed)
    work = args.workdir or Path(tempfile.mkdtemp(prefix="lora-ft-chaos-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        results = [budget(name, extra, args.kills, rng, work) for name, extra in BUDGETS.items()]
        print("PASS" if all(results) else "FAIL")
        return 0 if all(results) else 1
    finally:
        if args.keep or args.workdir:
            print(f"runs kept in {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
