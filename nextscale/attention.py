"""Attention, behind one call.

``attention(q, k, v, q_level, k_level, kind=...)`` computes softmax attention where query i may
see key j iff ``k_level[j] <= q_level[i]`` (block-causal over the scale pyramid); with the levels
left out every query sees every key (the KV-cached step of one scale).

Kinds:
- ``"exact"``: ``torch.nn.functional.scaled_dot_product_attention``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

KINDS = ("exact",)


def attention(
    q_BHLd: torch.Tensor,
    k_BHSd: torch.Tensor,
    v_BHSd: torch.Tensor,
    q_level: torch.Tensor | None = None,
    k_level: torch.Tensor | None = None,
    *,
    kind: str = "exact",
    dropout_p: float = 0.0,
) -> torch.Tensor:
    """Softmax attention with scale 1/sqrt(d); returns (B, H, L, d)."""
    if kind not in KINDS:
        raise ValueError(f"attention kind must be one of {KINDS}, got {kind!r}")
    if (q_level is None) != (k_level is None):
        raise ValueError("give both q_level and k_level, or neither")
    mask_LS = None if q_level is None else k_level[None, :] <= q_level[:, None]
    return F.scaled_dot_product_attention(q_BHLd, k_BHSd, v_BHSd, attn_mask=mask_LS, dropout_p=dropout_p)
