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


def _sdpa_cpu_backward_flops(grad_out_shape, query_shape, key_shape, value_shape, *args, **kwargs) -> int:
    return flop_counter.sdpa_backward_flop_count(grad_out_shape, query_shape, key_shape, value_shape)


# torch's counter knows the CUDA attention kernels but not the fused CPU ones (torch 2.13): without these the
# O(L^2) attention term, the very cost the pyramid is about, would count as zero on CPU.
_EXTRA = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _sdpa_cpu_flops,
          torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward: _sdpa_cpu_backward_flops}


def count_flops(fn: Callable, *args, **kwargs) -> int:
    """FLOPs of one call of ``fn(*args, **kwargs)`` (no grad), counted by ``torch.utils.flop_counter``.

    A multiply-add counts as 2 FLOPs. Matmuls, convolutions and attention count; elementwise ops do not.
    """
    counter = FlopCounterMode(display=False, custom_mapping=_EXTRA)
    with torch.no_grad(), counter:
        fn(*args, **kwargs)
    return int(counter.get_total_flops())


def count_train_flops(loss_fn: Callable[[], torch.Tensor]) -> int:
    """FLOPs of one training step: ``loss_fn()`` (the forward) and the backward of its result, counted as
    :func:`count_flops` does (the backward of a matmul costs its weight and, where needed, input
    gradients: about twice the forward). Gradients are left in the parameters' ``.grad``."""
    counter = FlopCounterMode(display=False, custom_mapping=_EXTRA)
    with counter:
        loss_fn().backward()
    return int(counter.get_total_flops())
