"""LoRA on a task whose answer has a known rank: the loss against r bends at the true rank k.

A frozen random linear map W0 (d x d) plus a hidden update dW of rank k is the "fine-tuned" model; the
task is to regress its outputs from random inputs, starting from W0. LoRA at rank r can only express a
rank-r update, so by Eckart-Young its best loss is the energy of dW beyond its top r directions: the
loss falls with r until r = k and is flat (zero) after it. Full fine-tuning is the reference line.
Then ``lora_ft.analyse`` (what ``lora-ft inspect`` prints) reads the rank-2k adapter back from disk
and finds effective rank k.

    python examples/known_rank.py [--fast] [--out known_rank.png]
"""

from __future__ import annotations

import argparse
import copy
import tempfile
from pathlib import Path

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from torch import nn

import lora_ft


def hidden_update(d: int, k: int, gen: torch.Generator) -> torch.Tensor:
    """A (d, d) update of rank exactly k, singular values 2.0 down to 1.0 (no direction negligible).

    In float64, so that its SVD shows k non-zero singular values and not float32's rounding as more.
    """
    u, _ = torch.linalg.qr(torch.randn(d, k, generator=gen, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(d, k, generator=gen, dtype=torch.float64))
    return u @ torch.diag(torch.linspace(2.0, 1.0, k, dtype=torch.float64)) @ v.T


def fit(model: nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int) -> float:
    """Full-batch Adam on the mean squared error (summed over outputs); the final loss."""
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=2e-2)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    for _ in range(steps):
        loss = (model(x) - y).pow(2).sum(-1).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    with torch.no_grad():
        return (model(x) - y).pow(2).sum(-1).mean().item()


def knee(losses: dict[int, float], reference: float) -> int:
    """The smallest rank whose loss is within 1% of rank 1's loss above the reference (full fine-tuning)."""
    scale = losses[min(losses)] - reference
    return min(r for r, loss in losses.items() if loss - reference <= 0.01 * scale)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fast", action="store_true", help="a small task (d=32, k=3, 300 steps), for tests")
    parser.add_argument("--k", type=int, default=None, help="the hidden update's rank (default 4; --fast 3)")
    parser.add_argument("--out", type=Path, default=Path("known_rank.png"), help="the plot to write")
    args = parser.parse_args(argv)
    d, n, steps = (32, 256, 300) if args.fast else (128, 2048, 800)
    k = args.k or (3 if args.fast else 4)

    gen = torch.Generator().manual_seed(0)
    base = nn.Linear(d, d, bias=False)
    with torch.no_grad():
        base.weight.copy_(torch.randn(d, d, generator=gen) / d**0.5)
    delta = hidden_update(d, k, gen)
    x = torch.randn(n, d, generator=gen)
    y = x @ (base.weight.detach() + delta.float()).T  # the "fine-tuned" model's outputs

    # The update's spectrum, with the same Spectrum that inspect uses: k non-zero singular values.
    _, s = lora_ft.dense_svd(delta)
    spectrum = lora_ft.Spectrum(s, base_norm=float(base.weight.detach().norm()))
    print(
        f"hidden update: rank {spectrum.numerical_rank}, singular values {np.round(s[: k + 1], 3).tolist()}"
    )
    print(f"energy in the top 1..{k} directions: {np.round(spectrum.energy()[:k], 3).tolist()}")

    # LoRA at r = 1 .. 2k on the one frozen base (a fresh copy per rank); alpha = r keeps scaling 1.
    losses, adapters = {}, {}
    for r in range(1, 2 * k + 1):
        torch.manual_seed(r)
        model = nn.Sequential(copy.deepcopy(base))
        lora_ft.inject_lora(model, ["0"], r=r, alpha=r)
        losses[r] = fit(model, x, y, steps)
        adapters[r] = model
    full = copy.deepcopy(base).requires_grad_(True)
    full_loss = fit(full, x, y, steps)
    # Eckart-Young: the best any rank-r update does on white inputs (on n samples, about that).
    best = {r: float(np.sum(s[r:] ** 2)) for r in losses}
    print("\n  r   LoRA loss   best rank-r loss (Eckart-Young)")
    for r, loss in losses.items():
        print(f"{r:>3}   {loss:9.4f}   {best[r]:9.4f}")
    print(f"full fine-tuning: {full_loss:.4f}")
    found = knee(losses, full_loss)
    print(f"the loss stops falling at r = {found} (the true rank is {k})")

    # Read the rank-2k adapter back as lora-ft saves it, and let inspect's analysis count its directions.
    with tempfile.TemporaryDirectory() as tmp:
        model = adapters[2 * k]
        lora_ft.save_adapter(model, Path(tmp) / "adapter", head=[], base_model_name_or_path="known-rank")
        update = lora_ft.analyse(lora_ft.read_adapter(Path(tmp) / "adapter"), {"0": base.weight})[0]
    eff90, eff99 = update.lora.effective_rank(0.90), update.lora.effective_rank(0.99)
    print(f"inspect on the r={2 * k} adapter: effective rank {eff90} at 90% and {eff99} at 99% of the energy")

    fig = Figure(figsize=(6, 4))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.plot(list(losses), list(losses.values()), "o-", label="LoRA")
    ax.plot(list(best), list(best.values()), "k:", label="best rank-r (Eckart-Young)")
    ax.axhline(full_loss, color="grey", linestyle="--", label="full fine-tuning")
    ax.axvline(k, color="red", alpha=0.3, label=f"true rank k = {k}")
    ax.set(xlabel="LoRA rank r", ylabel="training loss (MSE)", title="Loss against rank: the knee at r = k")
    ax.legend()
    fig.savefig(args.out)
    print(f"wrote {args.out}")
    return {"k": k, "knee": found, "losses": losses, "full": full_loss, "effective_rank": (eff90, eff99)}


if __name__ == "__main__":
    main()
