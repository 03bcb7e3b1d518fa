"""Work spread over the ranks of a ``torchrun`` run (one process: plain Python)."""
from __future__ import annotations

import torch


def world() -> int:
    d = torch.distributed
    return d.get_world_size() if d.is_available() and d.is_initialized() else 1


def rank() -> int:
    d = torch.distributed
    return d.get_rank() if d.is_available() and d.is_initialized() else 0


def shard_map(fn, items: list) -> list:
    """``[fn(x) for x in items]`` with item i computed by rank i % world and gathered on every rank."""
    n = world()
    if n == 1:
        return [fn(x) for x in items]
    mine = [(i, fn(x)) for i, x in enumerate(items) if i % n == rank()]
    gathered = [None] * n
    torch.distributed.all_gather_object(gathered, mine)
    return [r for _, r in sorted((p for part in gathered for p in part), key=lambda p: p[0])]
