"""Run under ``torchrun --nproc_per_node 2``: the rank checks of lora_ft.training.distributed on a gloo group.

Each rank builds a LoRA layer twice, from the shared seed and from a seed that depends on the rank,
and writes ``rank<N>.json`` into the directory given as the only argument: the fingerprints, what
``check_same_on_all_ranks`` said about each, and the gloo threads still running after ``shutdown``
with the group held by a reference cycle, as a finished Trainer holds it.
"""

from __future__ import annotations

import gc
import json
import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from lora_ft.errors import LoraFtError
from lora_ft.lora import LoRALinear
from lora_ft.training.distributed import (
    check_same_on_all_ranks,
    from_main,
    is_main_process,
    seeded_fingerprint,
    shutdown,
)


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


def gloo_threads() -> list[str]:
    names = (Path(f"/proc/self/task/{t}/comm").read_text().strip() for t in os.listdir("/proc/self/task"))
    return sorted(name for name in names if "gloo" in name)


def main() -> None:
    gc.disable()  # the cycle below must outlive the call to shutdown, as the Trainer's does at exit
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
    # The finished Trainer is such a cycle, holding the group through its DDP wrapper's process_group.
    cycle = {"group": dist.group.WORLD}
    cycle["self"] = cycle
    del cycle
    record["gloo_threads_before_shutdown"] = gloo_threads()
    shutdown()
    record["gloo_threads_after_shutdown"] = gloo_threads()
    (Path(sys.argv[1]) / f"rank{rank}.json").write_text(json.dumps(record), encoding="utf-8")


if __name__ == "__main__":
    main()
