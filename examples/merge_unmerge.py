"""Merge and unmerge: fold a LoRA update into the base weight and take it back out, exactly.

``merge_lora`` computes W += B @ A * scaling in every wrapped layer (a second call is a no-op),
``unmerge_lora`` takes it back out, ``set_lora_disabled`` switches the update off without touching W,
and ``merge_and_unload`` leaves plain ``nn.Linear`` layers whose state-dict keys equal the original
model's. Every step prints the largest output difference it makes.

    python examples/merge_unmerge.py [--fast]
"""

from __future__ import annotations

import argparse
import copy

import torch
from torch import nn

import lora_ft


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fast", action="store_true", help="a 64-wide model instead of 512")
    args = parser.parse_args(argv)
    d = 64 if args.fast else 512

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(d, d), nn.GELU(), nn.Linear(d, d), nn.GELU(), nn.Linear(d, 10))
    original = copy.deepcopy(model)
    x = torch.randn(32, d)
    base_out = model(x).detach()

    lora_ft.inject_lora(model, ["0", "2"], r=8, alpha=16)  # the two hidden Linears; "4" stays plain
    with torch.no_grad():  # stand-in for training: B leaves zero, so the update changes something
        for layer in lora_ft.lora_layers(model).values():
            layer.lora_B.normal_(std=0.05)
    w0 = model[0].base.weight.detach().clone()

    def gap(a: torch.Tensor, b: torch.Tensor) -> float:
        return (a - b).abs().max().item()

    with torch.no_grad():
        adapted = model(x)
        print(f"adapted vs base outputs:          {gap(adapted, base_out):.4f} (the update does something)")
        lora_ft.merge_lora(model)
        lora_ft.merge_lora(model)  # idempotent: the second call changes nothing
        merged = model(x)
        print(f"merged vs unmerged outputs:       {gap(merged, adapted):.2e}")
        print(
            f"merged W vs W0 + B@A*scaling:     {gap(model[0].base.weight, w0 + model[0].delta_weight()):.2e}"
        )
        lora_ft.unmerge_lora(model)
        w_back = gap(model[0].base.weight, w0)
        print(f"unmerge(merge(W)) vs W:           {w_back:.2e}")
        lora_ft.set_lora_disabled(model, True)
        disabled = gap(model(x), base_out)
        print(f"disabled vs base outputs:         {disabled:.2e}")
        lora_ft.set_lora_disabled(model, False)
        lora_ft.merge_and_unload(model)
        unloaded = model(x)
    same_keys = set(model.state_dict()) == set(original.state_dict())
    print(
        f"after merge_and_unload: LoRA layers left {len(lora_ft.lora_layers(model))}, keys as the original: {same_keys}"
    )
    print(f"unloaded vs adapted outputs:      {gap(unloaded, adapted):.2e}")
    return {
        "adapted_vs_base": gap(adapted, base_out),
        "merged_vs_unmerged": gap(merged, adapted),
        "unmerged_weight": w_back,
        "disabled_vs_base": disabled,
        "unloaded_vs_adapted": gap(unloaded, adapted),
        "same_keys": same_keys,
    }


if __name__ == "__main__":
    main()
