"""Parameter and FLOP counts, reused by every head and by the comparison harness."""
from __future__ import annotations

from typing import Callable

import torch
from torch.utils.flop_counter import FlopCounterMode


def count_params(module: torch.nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


def count_flops(fn: Callable, *args, **kwargs) -> int:
    """FLOPs of one call of ``fn(*args, **kwargs)`` (no grad), counted by ``torch.utils.flop_counter``.

    A multiply-add counts as 2 FLOPs. Only ops the counter knows (matmuls, convs, attention) count.
    """
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        fn(*args, **kwargs)
    return int(counter.get_total_flops())
