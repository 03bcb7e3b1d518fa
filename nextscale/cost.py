"""Parameter and FLOP counts, reused by every head and by the comparison harness."""
from __future__ import annotations

from typing import Callable

import torch
from torch.utils import flop_counter
from torch.utils.flop_counter import FlopCounterMode


def count_params(module: torch.nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


def _sdpa_cpu_flops(query_shape, key_shape, value_shape, *args, **kwargs) -> int:
    return flop_counter.sdpa_flop_count(query_shape, key_shape, value_shape)


# torch's counter knows the CUDA attention kernels but not the fused CPU one (torch 2.13): without this the
# O(L^2) attention term, the very cost the pyramid is about, would count as zero on CPU.
_EXTRA = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _sdpa_cpu_flops}


def count_flops(fn: Callable, *args, **kwargs) -> int:
    """FLOPs of one call of ``fn(*args, **kwargs)`` (no grad), counted by ``torch.utils.flop_counter``.

    A multiply-add counts as 2 FLOPs. Matmuls, convolutions and attention count; elementwise ops do not.
    """
    counter = FlopCounterMode(display=False, custom_mapping=_EXTRA)
    with torch.no_grad(), counter:
        fn(*args, **kwargs)
    return int(counter.get_total_flops())
