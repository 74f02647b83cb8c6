"""Run under ``torchrun --nproc_per_node 2``: the rank checks of lora_ft.distributed on a gloo group.

Each rank builds a LoRA layer twice, from the shared seed and from a seed that depends on the rank,
and writes ``rank<N>.json`` into the directory given as the only argument: the fingerprints, and what
``check_same_on_all_ranks`` said about each.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from lora_ft.distributed import check_same_on_all_ranks, from_main, is_main_process, seeded_fingerprint
from lora_ft.errors import LoraFtError
from lora_ft.lora import LoRALinear


def build(seed: int) -> nn.Module:
    torch.manual_seed(0)  # the base weights: the same pretrained file on every rank
    base = nn.Linear(16, 8)
    torch.manual_seed(seed)
    return nn.Sequential(LoRALinear(base, r=4, alpha=8))


def verdict(fingerprint: str) -> str:
    try:
        check_same_on_all_ranks(fingerprint)
    except LoraFtError as exc:
        return str(exc)
    return "ok"


def main() -> None:
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    same = seeded_fingerprint(build(seed=42), [])
    per_rank = seeded_fingerprint(build(seed=42 + rank), [])
    record = {
        "rank": rank,
        "is_main": is_main_process(),
        "from_main": from_main(f"value-of-rank-{rank}"),
        "same_seed": same,
        "same_seed_check": verdict(same),
        "rank_seed_check": verdict(per_rank),
    }
    (Path(sys.argv[1]) / f"rank{rank}.json").write_text(json.dumps(record), encoding="utf-8")
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
