"""Two tasks on one base model: two LoRA adapters, switched in place, each a few hundred KB.

From the built-in rt-sentences reviews, two tasks: "sentiment" (the review's label) and "long" (is the
review longer than the median?). One LoRA adapter (plus its own classifier head) is trained per task
on the same frozen base, saved as a PEFT adapter directory, and both are loaded into one
``AdapterSet``: ``set_adapter`` swaps modules by reference (no tensor is copied), ``disable()`` gives
the base model's own outputs. Each adapter scores on its own task and not on the other's.

    python examples/two_adapters.py [--fast]   # --fast: a tiny random BERT, a few steps
"""

from __future__ import annotations

import argparse
import copy
import json
import random
import statistics
import tempfile
from pathlib import Path

import torch
from transformers import (
    AutoModelForSequenceClassification,
    AutoTokenizer,
    BertConfig,
    BertForSequenceClassification,
)

import lora_ft
from lora_ft.data import assets


def read_rows(split: str, limit: int) -> list[dict]:
    path = assets.ensure("rt-sentences") / f"{split}.jsonl"
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    random.Random(0).shuffle(rows)  # the file is in label order
    return rows[:limit]


def tasks(rows: list[dict], median: float) -> dict[str, torch.Tensor]:
    return {
        "sentiment": torch.tensor([r["label"] for r in rows]),
        "long": torch.tensor([int(len(r["sentence"].split()) > median) for r in rows]),
    }


def base_model(fast: bool, tokenizer_dir: Path) -> torch.nn.Module:
    if fast:  # random weights: the mechanics in seconds
        torch.manual_seed(0)
        config = BertConfig(
            vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
            intermediate_size=64, max_position_embeddings=128, num_labels=2,
        )  # fmt: skip
        return BertForSequenceClassification(config).eval()
    return AutoModelForSequenceClassification.from_pretrained(tokenizer_dir, num_labels=2).eval()


def train_adapter(base, batch, labels, steps: int, out: Path) -> Path:
    """LoRA on query/value plus the classifier head, on a copy of ``base``; saved to ``out``."""
    model = copy.deepcopy(base)
    lora_ft.inject_lora(model, ["query", "value"], r=8, alpha=16, head=["classifier"])
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-3)
    model.train()
    for _ in range(steps):
        loss = model(**batch, labels=labels).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    return lora_ft.save_adapter(model, out, head=["classifier"], base_model_name_or_path="minilm-l6")


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fast", action="store_true", help="a tiny random BERT, 64 rows, 30 steps")
    args = parser.parse_args(argv)
    n_train, n_eval, steps = (64, 64, 30) if args.fast else (512, 500, 150)

    minilm = assets.ensure("minilm-l6")
    tokenizer = AutoTokenizer.from_pretrained(minilm)
    train, val = read_rows("train", n_train), read_rows("validation", n_eval)
    median = statistics.median(len(r["sentence"].split()) for r in train)
    enc = {k: tokenizer([r["sentence"] for r in rows], padding=True, truncation=True, max_length=64, return_tensors="pt")
           for k, rows in (("train", train), ("val", val))}  # fmt: skip
    y_train, y_val = tasks(train, median), tasks(val, median)
    base = base_model(args.fast, minilm)
    base_bytes = sum(p.numel() * p.element_size() for p in base.parameters())

    with tempfile.TemporaryDirectory() as tmp:
        serving = lora_ft.AdapterSet(copy.deepcopy(base), tokenizer, base_name="minilm-l6")
        for task in y_train:
            torch.manual_seed(1)
            path = train_adapter(base, enc["train"], y_train[task], steps, Path(tmp) / task)
            serving.add_adapter(task, path)

    def accuracy_on(task: str) -> float:
        with torch.no_grad():
            return (serving.model(**enc["val"]).logits.argmax(-1) == y_val[task]).float().mean().item()

    scores: dict[str, dict[str, float]] = {}
    outputs = {}
    for adapter in serving.adapters:
        serving.set_adapter(adapter)  # setattr on the wrapped modules' parents: no weights copied
        scores[adapter] = {task: accuracy_on(task) for task in y_val}
        with torch.no_grad():
            outputs[adapter] = serving.model(**enc["val"]).logits
    serving.disable()
    with torch.no_grad():
        disabled = serving.model(**enc["val"]).logits
        base_logits = base(**enc["val"]).logits
    print(f"{'adapter':<12}" + "".join(f"{t + ' acc':>16}" for t in y_val) + f"{'own bytes':>12}")
    sizes = {}
    for adapter, row in scores.items():
        sizes[adapter] = serving.adapter_bytes(adapter)
        print(f"{adapter:<12}" + "".join(f"{row[t]:>16.3f}" for t in y_val) + f"{sizes[adapter]:>12,}")
    print(f"the shared base: {base_bytes:,} bytes, held once")
    gap = (disabled - base_logits).abs().max().item()
    print(f"disable(): max |outputs - base model's| = {gap:.2e}")
    between = (outputs["sentiment"] - outputs["long"]).abs().max().item()
    print(f"switching changes the outputs: max |sentiment - long| logit difference {between:.3f}")
    return {"scores": scores, "bytes": sizes, "base_bytes": base_bytes, "disabled_vs_base": gap,
            "between": between}  # fmt: skip


if __name__ == "__main__":
    main()
