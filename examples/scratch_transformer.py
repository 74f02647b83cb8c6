"""LoRA inside a transformer written in plain torch: Wq and Wv wrapped, Wk, Wo and the rest frozen.

A small encoder (token and position embeddings, multi-head self-attention with Wq/Wk/Wv/Wo, a
feed-forward block, LayerNorm) classifies the built-in rt-sentences movie reviews from word tokens.
``lora_ft.inject_lora`` wraps every Wq and Wv with a rank-r update; only those A/B matrices and the
classifier head train. The base is random and stays frozen, so the accuracy is modest: the point is
the mechanics. After training, ``merge_and_unload`` folds the updates into plain ``nn.Linear``
weights, and the merged model gives the same outputs as the wrapped one.

    python examples/scratch_transformer.py [--fast]
"""

from __future__ import annotations

import argparse
import json
import random
import re
from collections import Counter

import torch
from torch import nn

import lora_ft
from lora_ft.data import assets

PAD, UNK = 0, 1


class Attention(nn.Module):
    def __init__(self, d: int, heads: int):
        super().__init__()
        self.heads = heads
        self.Wq, self.Wk, self.Wv, self.Wo = (nn.Linear(d, d) for _ in range(4))

    def forward(self, x: torch.Tensor, pad: torch.Tensor) -> torch.Tensor:  # (B, T, d), (B, T)
        b, t, d = x.shape
        q, k, v = (w(x).view(b, t, self.heads, -1).transpose(1, 2) for w in (self.Wq, self.Wk, self.Wv))
        keep = ~pad[:, None, None, :]  # (B, 1, 1, T): no query attends to padding
        y = nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=keep)  # (B, H, T, d/H)
        return self.Wo(y.transpose(1, 2).reshape(b, t, d))


class Block(nn.Module):
    def __init__(self, d: int, heads: int):
        super().__init__()
        self.attn = Attention(d, heads)
        self.ffn = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d))
        self.norm1, self.norm2 = nn.LayerNorm(d), nn.LayerNorm(d)

    def forward(self, x: torch.Tensor, pad: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), pad)  # pre-norm residual blocks
        return x + self.ffn(self.norm2(x))


class Encoder(nn.Module):
    """Word ids (B, T) -> logits (B, 2), from the mean of the last layer's non-padding positions."""

    def __init__(self, vocab: int, d: int, layers: int, heads: int, max_len: int):
        super().__init__()
        self.tokens = nn.Embedding(vocab, d, padding_idx=PAD)
        self.positions = nn.Embedding(max_len, d)
        self.blocks = nn.ModuleList(Block(d, heads) for _ in range(layers))
        self.norm = nn.LayerNorm(d)
        self.classifier = nn.Linear(d, 2)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        pad = ids == PAD
        x = self.tokens(ids) + self.positions(torch.arange(ids.shape[1]))
        for block in self.blocks:
            x = block(x, pad)
        x = self.norm(x).masked_fill(pad[..., None], 0.0)
        return self.classifier(x.sum(1) / (~pad).sum(1, keepdim=True))


def read_split(name: str, limit: int | None) -> list[dict]:
    """``limit`` rows of a split of the built-in data (fetched once), shuffled: the file is in label order."""
    path = assets.ensure("rt-sentences") / f"{name}.jsonl"
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    random.Random(0).shuffle(rows)
    return rows[:limit]


def words(text: str) -> list[str]:
    return re.findall(r"[a-z']+|[^\sa-z']", text.lower())


def encode(rows: list[dict], vocab: dict[str, int], max_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.full((len(rows), max_len), PAD)
    for i, row in enumerate(rows):
        toks = [vocab.get(w, UNK) for w in words(row["sentence"])][:max_len]
        ids[i, : len(toks)] = torch.tensor(toks)
    return ids, torch.tensor([row["label"] for row in rows])


def accuracy(model: nn.Module, ids: torch.Tensor, labels: torch.Tensor) -> float:
    with torch.no_grad():
        return (model(ids).argmax(-1) == labels).float().mean().item()


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fast", action="store_true", help="256 rows, 40 steps, a 2-layer d=32 encoder")
    parser.add_argument("--r", type=int, default=8, help="LoRA rank")
    args = parser.parse_args(argv)
    rows, eval_rows, steps, d = (256, 128, 40, 32) if args.fast else (None, None, 400, 64)
    max_len, batch = 48, 64

    train, val = read_split("train", rows), read_split("validation", eval_rows)
    counts = Counter(w for row in train for w in words(row["sentence"]))
    vocab = {w: i + 2 for i, (w, _) in enumerate(counts.most_common(5000))}  # 0: padding, 1: unknown
    x_train, y_train = encode(train, vocab, max_len)
    x_val, y_val = encode(val, vocab, max_len)

    torch.manual_seed(0)
    model = Encoder(len(vocab) + 2, d, layers=2, heads=4, max_len=max_len)
    # Wrap Wq and Wv of every block (a name matches by its dotted suffix); train them and the head only.
    report = lora_ft.inject_lora(model, ["Wq", "Wv"], r=args.r, alpha=2 * args.r, head=["classifier"])
    print(f"wrapped {len(report.wrapped)} Linears: {', '.join(w.name for w in report.wrapped)}")
    print(
        f"trainable: {report.trainable_params:,} of {report.total_params:,} parameters "
        f"({100 * report.trainable_fraction:.2f}%): LoRA {report.lora_params:,}, head {report.head_params:,}"
    )
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    model.eval()
    with torch.no_grad():
        base_logits = model(x_val)  # B starts at zero: the wrapped model still computes the base's outputs

    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    gen = torch.Generator().manual_seed(0)
    model.train()
    for step in range(1, steps + 1):
        pick = torch.randint(len(x_train), (batch,), generator=gen)
        loss = nn.functional.cross_entropy(model(x_train[pick]), y_train[pick])
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % max(1, steps // 4) == 0:
            print(f"step {step:>4}  train loss {loss.item():.4f}")
    model.eval()
    untouched = all(torch.equal(p, frozen[n]) for n, p in model.named_parameters() if n in frozen)
    print(f"frozen weights bit-identical after training: {untouched}")
    acc = accuracy(model, x_val, y_val)
    print(
        f"validation accuracy {acc:.3f} (chance {max(y_val.float().mean().item(), 1 - y_val.float().mean().item()):.3f})"
    )

    with torch.no_grad():
        wrapped_logits = model(x_val)
    lora_ft.merge_and_unload(model)  # W += B @ A * scaling, then the plain nn.Linear goes back
    with torch.no_grad():
        merged_logits = model(x_val)
    diff = (merged_logits - wrapped_logits).abs().max().item()
    moved = (wrapped_logits - base_logits).abs().max().item()
    print(f"the adapter moved the logits by up to {moved:.3f} from the base's")
    plain = not lora_ft.lora_layers(model) and isinstance(model.blocks[0].attn.Wq, nn.Linear)
    print(f"merged: no LoRA layers left: {plain}; max |merged - unmerged| logit difference {diff:.2e}")
    return {
        "accuracy": acc,
        "max_diff": diff,
        "moved": moved,
        "frozen_untouched": untouched,
        "plain_after_merge": plain,
    }


if __name__ == "__main__":
    main()
