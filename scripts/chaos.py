"""Kill a real training run at random points (SIGINT, SIGTERM, SIGKILL), resume it each time, and
check that it ends exactly where an uninterrupted run of the same config ends.

The run is the built-in defaults (MiniLM-L6 and rt-sentences) on a short budget like
configs/smoke.yaml: 2 layers, 256 training sentences, 2 epochs of 16-sentence batches (32 steps),
LoRA dropout on (so the RNG state matters), a checkpoint every 4 steps, keeping 2. Each kill lands
after a randomly drawn step, plus a random fraction of a second so a SIGKILL can hit mid-step or
mid-checkpoint. SIGINT/SIGTERM must exit 130/143 with a checkpoint; SIGKILL leaves whatever the last
complete checkpoint was. The last `--resume` runs to the end; its metrics, adapter tensors and log
must equal the uninterrupted run's bit for bit (wall-clock fields excepted).

    .venv/bin/python scripts/chaos.py                       # 6 kills, seed 0
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
SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGKILL)
EXPECTED_EXIT = {signal.SIGINT: 130, signal.SIGTERM: 143, signal.SIGKILL: -signal.SIGKILL}


def _command(*args: str) -> list[str]:
    return [sys.executable, "-m", "lora_ft", "train", *args]


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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=6, help="how many times to kill the run (default 6)")
    parser.add_argument("--seed", type=int, default=0, help="seed for the kill points and signals")
    parser.add_argument("--workdir", type=Path, help="where the runs go (default: a temporary directory)")
    parser.add_argument("--keep", action="store_true", help="keep the runs afterwards")
    args = parser.parse_args()
    rng = random.Random(args.seed)
    work = args.workdir or Path(tempfile.mkdtemp(prefix="lora-ft-chaos-"))
    work.mkdir(parents=True, exist_ok=True)
    sets = [a for s in SETTINGS for a in ("--set", s)]
    ref, run = work / "reference", work / "chaos"
    partial = run.with_name(f".{run.name}.partial")
    try:
        t0 = time.time()
        subprocess.run(_command(*sets, "--out", str(ref)), check=True, capture_output=True)
        total = json.loads((ref / "metrics.json").read_text(encoding="utf-8"))["global_steps"]
        print(f"reference: {total} steps, uninterrupted, in {time.time() - t0:.0f} s")

        targets = sorted(rng.sample(range(1, total), args.kills))
        signals = [SIGNALS[i % len(SIGNALS)] for i in range(args.kills)]
        rng.shuffle(signals)
        failures = 0
        for i, (target, sig) in enumerate(zip(targets, signals, strict=True), 1):
            argv = _command("--resume", str(run)) if partial.exists() else _command(*sets, "--out", str(run))
            before = _logged_step(partial / "log.jsonl")
            proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
            while proc.poll() is None and _logged_step(partial / "log.jsonl") < target:
                time.sleep(0.01)
            jitter = rng.uniform(0.0, 0.5)
            time.sleep(jitter)
            at = _logged_step(partial / "log.jsonl")
            if proc.poll() is not None:
                print(f"kill {i}/{args.kills}: the run ended (exit {proc.returncode}) before step {target}")
                failures += proc.returncode != 0
                break
            proc.send_signal(sig)
            _, err = proc.communicate()
            expected = EXPECTED_EXIT[sig]
            last = err.strip().splitlines()[-1] if err.strip() else ""
            told = sig == signal.SIGKILL or "resume with: lora-ft train --resume" in last
            ok = proc.returncode == expected and told and "Traceback" not in err
            failures += not ok
            # A target at or below where the run resumes lands while it is still starting up.
            when = f"after step {at:>2} (+{jitter:.2f} s)" if at > before else "while starting up   "
            print(
                f"kill {i}/{args.kills}: {signal.Signals(sig).name:<7} {when} -> "
                f"exit {proc.returncode}{'' if ok else f' (expected {expected}) FAIL: {last}'}; "
                f"checkpoints {', '.join(_checkpoints(partial)) or 'none'}"
            )
        t0 = time.time()
        final = subprocess.run(_command("--resume", str(run)), capture_output=True, text=True)
        print(f"final resume: exit {final.returncode} in {time.time() - t0:.0f} s")
        if final.returncode != 0:
            print(final.stderr.strip().splitlines()[-1])
            return 1
        same = compare(ref, run)
        print("PASS" if same and not failures else "FAIL")
        return 0 if same and not failures else 1
    finally:
        if args.keep or args.workdir:
            print(f"runs kept in {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
