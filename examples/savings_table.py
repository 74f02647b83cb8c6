"""What LoRA saves on Llama-2 7B, 13B and 70B: trainable parameters and adapter size at r = 4, 8, 16, 64.

The counts come from each model's ``config.json`` alone (the small files beside this script hold the
shapes of Meta's Llama-2 configs): ``load_model_skeleton`` builds the model on PyTorch's meta device,
so no weight is read and no memory is allocated, and ``savings`` counts what ``lora-ft targets
--ranks`` prints. LoRA wraps q_proj and v_proj, the LoRA paper's choice. A rank-r update of a (out,
in) Linear trains r * (in + out) values: for 7B (hidden 4096, 32 layers) at r = 8 that is
32 layers * 2 modules * 8 * (4096 + 4096) = 4,194,304. The 70B model uses grouped-query attention (8
key/value heads of 128), so its v_proj is 8192 -> 1024 and costs less than q_proj.

    python examples/savings_table.py [--ranks 4,8,16,64] [--models 7b,13b,70b]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import lora_ft

HERE = Path(__file__).resolve().parent
CONFIGS = {"7b": "llama2-7b", "13b": "llama2-13b", "70b": "llama2-70b"}  # examples/configs/<dir>/config.json


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ranks", default="4,8,16,64", help="comma-separated LoRA ranks")
    parser.add_argument("--models", default="7b,13b,70b", help=f"some of {', '.join(CONFIGS)}")
    args = parser.parse_args(argv)
    ranks = [int(r) for r in args.ranks.split(",")]
    out = {}
    print(
        f"{'model':<14}{'base params':>16}{'r':>5}{'LoRA params':>14}{'% of model':>12}{'adapter':>11}{'fp32 model':>11}"
    )
    for name in args.models.split(","):
        skeleton = lora_ft.load_model_skeleton(str(HERE / "configs" / CONFIGS[name] / "config.json"))
        # A classifier's head (score) trains fully in a run; the table counts the LoRA update alone.
        s = lora_ft.savings(skeleton, ["q_proj", "v_proj"], ranks, [], name=f"Llama-2 {name.upper()}")
        for cost in s.ranks:
            print(
                f"{s.model:<14}{s.total_params:>16,}{cost.r:>5}{cost.lora_params:>14,}"
                f"{cost.trainable_percent:>11.3f}%{cost.adapter_bytes / 2**20:>9.1f}MB"
                f"{s.full_model_bytes / 2**30:>9.1f}GB"
            )
        out[name] = {"total": s.total_params, **{c.r: c.lora_params for c in s.ranks}}
    return out


if __name__ == "__main__":
    main()
