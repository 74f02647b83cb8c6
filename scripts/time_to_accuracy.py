"""Time-to-accuracy: `lora-ft train` on its default recipe against the classic LoRA recipe.

The classic recipe is the one of the original DistilBERT/SST-2 LoRA walkthroughs: a plain HF
``Trainer`` with its default arguments, ``DataCollatorWithPadding``, ``max_length`` 256, batch 16,
learning rate 2e-4, 2 epochs, LoRA r=8 / alpha=16 / dropout 0.05 on query and value, the classifier
trained. It runs here on the same model (the built-in MiniLM-L6), the same data (the built-in
Rotten Tomatoes sentences, same train/validation/test split) and the same LoRA layer (lora-ft's
own, so the comparison is between recipes, not implementations).

Each recipe runs in its own process, one after the other; the wall time counts everything the
process does (model and data loading, tokenization, training, evaluation). The machine's load
average and each child's CPU time are recorded next to the wall times: on a shared machine a run
that got less CPU than it wanted shows it (cpu/wall well below the thread count).

    .venv/bin/python scripts/time_to_accuracy.py                    # both recipes, ~15 min on 2 cores
    .venv/bin/python scripts/time_to_accuracy.py --only default     # one of them
    .venv/bin/python scripts/time_to_accuracy.py --json runs/tta.json
    .venv/bin/python scripts/time_to_accuracy.py --race --seeds 42,43,44   # previous default vs today's

``--race`` (issue #16) runs the previous default recipe (the same recipe in fp32 with torch's own
dropout in the frozen base: ``train.precision=fp32``, ``train.base_dropout=torch``) against today's
default, once per seed, alternating which goes first, and compares the median per-seed ratio of
training time and the mean test accuracy.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RECIPES = ("classic", "default", "previous")
# The default recipe before bf16 autocast and the sparse base dropout became defaults (issue #16).
PREVIOUS = ["train.precision=fp32", "train.base_dropout=torch"]


def _classic(out: Path) -> dict:
    """The walkthrough's recipe, written the way the walkthrough writes it."""
    import datasets
    import numpy as np
    from transformers import (
        AutoModelForSequenceClassification,
        AutoTokenizer,
        DataCollatorWithPadding,
        Trainer,
        TrainingArguments,
    )

    from lora_ft.data import assets
    from lora_ft.lora.inject import count_parameters, inject_lora
    from lora_ft.training.modeling import quiet_transformers

    quiet_transformers()
    model_dir = str(assets.asset_path("minilm-l6"))
    data_dir = assets.asset_path("rt-sentences")
    files = {split: str(data_dir / f"{split}.jsonl") for split in ("train", "validation", "test")}
    ds = datasets.load_dataset("json", data_files=files, cache_dir=str(out / "hf"))
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    ds = ds.map(lambda b: tokenizer(b["sentence"], truncation=True, max_length=256), batched=True)
    ds = ds.select_columns(["input_ids", "attention_mask", "token_type_ids", "label"])
    model = AutoModelForSequenceClassification.from_pretrained(model_dir, num_labels=2)
    inject_lora(model, ["query", "value"], r=8, alpha=16, dropout=0.05, head=["classifier"])

    def accuracy(pred) -> dict:
        return {"accuracy": float((np.argmax(pred.predictions, axis=-1) == pred.label_ids).mean())}

    args = TrainingArguments(
        output_dir=str(out / "trainer"),
        per_device_train_batch_size=16,
        per_device_eval_batch_size=16,
        learning_rate=2e-4,
        num_train_epochs=2,
        eval_strategy="epoch",
        save_strategy="no",
        logging_steps=50,
        report_to=[],
        seed=42,
        use_cpu=True,
    )
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=ds["train"],
        eval_dataset=ds["validation"],
        data_collator=DataCollatorWithPadding(tokenizer),
        compute_metrics=accuracy,
    )
    result = trainer.train()
    validation = trainer.evaluate(ds["validation"], metric_key_prefix="validation")
    test = trainer.evaluate(ds["test"], metric_key_prefix="test")
    trainable, total = count_parameters(model)
    return {
        "validation_accuracy": validation["validation_accuracy"],
        "test_accuracy": test["test_accuracy"],
        "train_seconds": result.metrics["train_runtime"],
        "steps": result.global_step,
        "trainable_params": trainable,
        "total_params": total,
    }


def _default(out: Path, config: str, overrides: list[str]) -> dict:
    cmd = [str(ROOT / ".venv/bin/lora-ft"), "train", config, "--out", str(out / "run")]
    for item in overrides:
        cmd += ["--set", item]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    metrics = json.loads((out / "run" / "metrics.json").read_text())
    return {
        "validation_accuracy": metrics["validation"]["accuracy"],
        "test_accuracy": metrics["test"]["accuracy"],
        "train_seconds": metrics["train_seconds"],
        "steps": metrics["global_steps"],
        "trainable_params": metrics["trainable_params"],
        "total_params": metrics["total_params"],
    }


def _worker(recipe: str, out: Path, config: str, overrides: list[str]) -> None:
    if recipe == "classic":
        result = _classic(out)
    else:
        result = _default(out, config, (PREVIOUS if recipe == "previous" else []) + overrides)
    (out / "result.json").write_text(json.dumps(result))


def _measure(recipe: str, args, extra: tuple[str, ...] = ()) -> dict:
    with tempfile.TemporaryDirectory(prefix=f"tta-{recipe}-") as tmp:
        out = Path(tmp)
        cmd = [sys.executable, __file__, "--worker", recipe, "--scratch", tmp, "--config", args.config]
        for item in [*args.set, *extra]:
            cmd += ["--set", item]
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        load0 = os.getloadavg()[0]
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True)
        wall = time.perf_counter() - t0
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        result = json.loads((out / "result.json").read_text())
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {
        **result,
        "wall_seconds": wall,
        "cpu_seconds": cpu,
        "load_before": load0,
        "load_after": os.getloadavg()[0],
    }


def race(args) -> None:
    """The previous default against today's, one pair per seed, alternating which goes first."""
    seeds = [int(s) for s in args.seeds.split(",") if s]
    runs: dict[str, list[dict]] = {"previous": [], "default": []}
    for i, seed in enumerate(seeds):
        for recipe in ("previous", "default") if i % 2 == 0 else ("default", "previous"):
            r = _measure(recipe, args, (f"train.seed={seed}",))
            runs[recipe].append({**r, "seed": seed})
            print(
                f"{recipe:<9} seed {seed}  train {r['train_seconds']:6.1f} s  wall {r['wall_seconds']:6.1f} s  "
                f"cpu/wall {r['cpu_seconds'] / r['wall_seconds']:.2f}  load {r['load_before']:.1f}  "
                f"val {r['validation_accuracy']:.4f}  test {r['test_accuracy']:.4f}",
                flush=True,
            )
    p, d = runs["previous"], runs["default"]
    ratio = statistics.median(b["train_seconds"] / a["train_seconds"] for a, b in zip(p, d, strict=True))
    wall = statistics.median(b["wall_seconds"] / a["wall_seconds"] for a, b in zip(p, d, strict=True))
    summary = {}
    for recipe, rs in runs.items():
        summary[recipe] = {
            key: (
                statistics.mean(r[key] for r in rs),
                statistics.stdev(r[key] for r in rs) if len(rs) > 1 else 0.0,
            )
            for key in ("validation_accuracy", "test_accuracy", "train_seconds", "wall_seconds")
        }
        m = summary[recipe]
        print(
            f"{recipe:<9} mean over {len(rs)} seed(s): val {m['validation_accuracy'][0]:.4f} ± {m['validation_accuracy'][1]:.4f}"
            f"  test {m['test_accuracy'][0]:.4f} ± {m['test_accuracy'][1]:.4f}  train {m['train_seconds'][0]:.1f} s"
        )
    gain = summary["default"]["test_accuracy"][0] - summary["previous"]["test_accuracy"][0]
    ok = ratio <= 0.5 and gain >= 0
    print(
        f"default/previous train time {ratio:.2f}x (median of pairs; target <= 0.5x), process wall {wall:.2f}x; "
        f"mean test accuracy {gain:+.4f}: {'PASS' if ok else 'MISS'}"
    )
    if args.json:
        args.json.write_text(
            json.dumps({"runs": runs, "summary": summary, "train_ratio": ratio}, indent=2) + "\n"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=RECIPES, action="append", help="run only this recipe")
    parser.add_argument(
        "--config", default=str(ROOT / "lora_ft/configs/default.yaml"), help="the lora-ft recipe"
    )
    parser.add_argument("--set", action="append", default=[], help="override for the lora-ft recipe")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--race", action="store_true", help="previous default vs today's, over --seeds")
    parser.add_argument("--seeds", default="42", help="comma-separated seeds of --race")
    parser.add_argument("--worker", choices=RECIPES, help=argparse.SUPPRESS)
    parser.add_argument("--scratch", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        _worker(args.worker, args.scratch, args.config, args.set)
        return
    if args.race:
        return race(args)

    results = {recipe: _measure(recipe, args) for recipe in (args.only or ("classic", "default"))}
    print(
        f"{'recipe':<9} {'wall s':>8} {'train s':>8} {'cpu/wall':>8} {'steps':>6} {'val acc':>8} {'test acc':>8}"
    )
    for recipe, r in results.items():
        print(
            f"{recipe:<9} {r['wall_seconds']:>8.1f} {r['train_seconds']:>8.1f} "
            f"{r['cpu_seconds'] / r['wall_seconds']:>8.2f} {r['steps']:>6} "
            f"{r['validation_accuracy']:>8.4f} {r['test_accuracy']:>8.4f}"
        )
    if len(results) == 2:
        c, d = results["classic"], results["default"]
        ratio = d["wall_seconds"] / c["wall_seconds"]
        ok = ratio <= 0.5 and d["test_accuracy"] >= c["test_accuracy"]
        print(
            f"default/classic wall time {ratio:.2f}x (target <= 0.5x), test accuracy "
            f"{d['test_accuracy'] - c['test_accuracy']:+.4f}: {'PASS' if ok else 'MISS'}"
        )
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
