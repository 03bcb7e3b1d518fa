"""Attention, behind one call.

``attention(q, k, v, q_level, k_level, kind=...)`` computes softmax attention where query i may
see key j iff ``k_level[j] <= q_level[i]`` (block-causal over the scale pyramid); with the levels
left out every query sees every key (the KV-cached step of one scale).

Kinds:
- ``"exact"``: ``torch.nn.functional.scaled_dot_product_attention``.
- ``"poly"``: the polynomial method of Alman and Song (options ``degree``, ``fit``, ``beta``,
  ``fallback``), see :mod:`nextscale.fastattn`.
- ``"performer"``: FAVOR+ positive random features (options ``num_features``, ``seed``, ``fallback``).

The approximate kinds never form the L x L matrix; they need the levels sorted non-decreasing
along the sequence (the concatenated pyramid is) and take no attention dropout.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .fastattn import performer_attention, poly_attention

KINDS = ("exact", "poly", "performer")
OPTIONS = {"exact": (), "poly": ("degree", "fit", "beta", "fallback"),
           "performer": ("num_features", "seed", "fallback")}


def check_options(kind: str, **opts) -> dict:
    """Validate ``kind`` and its options (None values dropped); returns the options to pass on."""
    if kind not in KINDS:
        raise ValueError(f"attention kind must be one of {KINDS}, got {kind!r}")
    opts = {k: v for k, v in opts.items() if v is not None}
    wrong = sorted(set(opts) - set(OPTIONS[kind]))
    if wrong:
        raise ValueError(f"attention kind {kind!r} takes options {OPTIONS[kind]}, got {wrong}")
    if kind != "exact":  # validate values now, on a tiny input, rather than deep inside a forward pass
        x = torch.zeros(1, 1, 1, 2)
        (poly_attention if kind == "poly" else performer_attention)(x, x, x, **opts)
    return opts


def attention(
    q_BHLd: torch.Tensor,
    k_BHSd: torch.Tensor,
    v_BHSd: torch.Tensor,
    q_level: torch.Tensor | None = None,
    k_level: torch.Tensor | None = None,
    *,
    kind: str = "exact",
    dropout_p: float = 0.0,
    degree: int | None = None,
    fit: str | None = None,
    beta: float | None = None,
    num_features: int | None = None,
    seed: int | None = None,
    fallback: str | None = None,
) -> torch.Tensor:
    """Softmax attention with scale 1/sqrt(d); returns (B, H, L, d).

    Options left None take the kind's defaults (poly: degree 4, fit "relative", beta fitted per
    query scale, fallback "raise"; performer: 256 features, seed 0); an option the kind does not
    take raises ``ValueError``."""
    if kind not in KINDS:
        raise ValueError(f"attention kind must be one of {KINDS}, got {kind!r}")
    if (q_level is None) != (k_level is None):
        raise ValueError("give both q_level and k_level, or neither")
    if kind == "exact":
        if any(o is not None for o in (degree, fit, beta, num_features, seed, fallback)):
            check_options(kind, degree=degree, fit=fit, beta=beta, num_features=num_features, seed=seed,
                          fallback=fallback)
        mask_LS = None if q_level is None else k_level[None, :] <= q_level[:, None]
        return F.scaled_dot_product_attention(q_BHLd, k_BHSd, v_BHSd, attn_mask=mask_LS, dropout_p=dropout_p)
    if dropout_p:
        raise ValueError(f"attention kind {kind!r} takes no attention dropout, got dropout_p={dropout_p}")
    if kind == "poly":
        if num_features is not None or seed is not None:
            raise ValueError("num_features and seed are performer options, not poly options")
        opts = {k: v for k, v in dict(degree=degree, fit=fit, beta=beta, fallback=fallback).items() if v is not None}
        return poly_attention(q_BHLd, k_BHSd, v_BHSd, q_level, k_level, **opts)
    if degree is not None or fit is not None or beta is not None:
        raise ValueError("degree, fit and beta are poly options, not performer options")
    opts = {k: v for k, v in dict(num_features=num_features, seed=seed, fallback=fallback).items() if v is not None}
    return performer_attention(q_BHLd, k_BHSd, v_BHSd, q_level, k_level, **opts)
