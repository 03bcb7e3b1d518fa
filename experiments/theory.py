"""The theory's measuring tools: the FLOP model of block-causal attention over a pyramid, where the
polynomial method starts to pay, and the entry bound of a trained model's attention (Alman and Song,
"Fast attention requires bounded entries"). The core (``nextscale``) does not import this module."""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch

from nextscale.config import check_int
from nextscale.fastattn import degree_needed, feature_rank


# ----------------------------------------------------------------------------- cost model

def pyramid_attention_flops(schedule, head_dim: int, kind: str = "exact", *, degree: int = 4,
                            num_features: int = 256) -> int:
    """Matmul FLOPs (2 per multiply-add) of one head of block-causal attention over ``schedule``.

    exact: scores and weighted sum over visible keys only, 4 d sum_k h_k^2 L_k (the masked dense
    kernel does 4 d L^2). poly / performer with rank r: key sums 2 L r (d + 1) plus query products
    2 L r (d + 1), plus the feature map (poly: L r g multiplies per side, performer: 2 L r d)."""
    sides = [int(s) for s in schedule]
    n = [s * s for s in sides]
    L = sum(n)
    d = head_dim
    if kind == "exact":
        prefix = np.cumsum(n)
        return int(sum(4 * d * nk * Lk for nk, Lk in zip(n, prefix)))
    if kind == "exact_dense":
        return 4 * d * L * L
    if kind == "poly":
        r = feature_rank(d, degree)
        return int(4 * L * r * (d + 1) + 2 * L * r * degree)
    if kind == "performer":
        r = num_features
        return int(4 * L * r * (d + 1) + 2 * 2 * L * r * d)
    raise ValueError(f"kind must be one of ('exact', 'exact_dense', 'poly', 'performer'), got {kind!r}")


def halving_sides(n: int) -> tuple[int, ...]:
    """Sides n, n/2, n/4, ... down to 1 (halves rounded up), coarse to fine: L ~ 4 n^2 / 3. Unlike
    :func:`nextscale.scales.doubling_schedule` (FlowAR's schedule, which stops at an odd side), it
    always reaches side 1: the pyramid the complexity bounds speak about."""
    check_int("n", n, 1)
    sides = {n}
    while n > 1:
        n = -(-n // 2)
        sides.add(n)
    return tuple(sorted(sides))


def crossover_side(head_dim: int, degree: int, max_side: int = 4096) -> int:
    """Smallest power-of-two latent side n whose halving pyramid makes poly attention cheaper than exact."""
    n = 1
    while n <= max_side:
        sch = halving_sides(n)
        if pyramid_attention_flops(sch, head_dim, "poly", degree=degree) < pyramid_attention_flops(sch, head_dim):
            return n
        n *= 2
    raise ValueError(f"no crossover up to side {max_side} for head dim {head_dim}, degree {degree}")


# ----------------------------------------------------------------------------- entry bound

@dataclass
class EntryBound:
    """How large the attention entries of a model are on real inputs (max over every layer and head).

    ``B``: max |entry| of ``Q d^{-1/4}`` and ``K d^{-1/4}`` (so logits are ``(Q d^{-1/4})(K d^{-1/4})^T``);
    ``max_logit``: the largest |q.k| / sqrt(d) over visible pairs; ``beta``: the largest Cauchy-Schwarz
    range max|q| max|k| / sqrt(d) (what ``poly_attention`` fits on); ``logit_bound = d B^2`` is the
    worst case the entry bound allows. Alman and Song's threshold: fast attention exists for logits
    o(log L) and not (under SETH) for Theta(log L), i.e. entries around sqrt(log L)."""
    B: float
    head_dim: int
    num_tokens: int
    max_logit: float
    beta: float
    layers: list[dict] = field(default_factory=list)

    @property
    def logit_bound(self) -> float:
        return self.head_dim * self.B ** 2

    @property
    def log_L(self) -> float:
        return math.log(self.num_tokens)

    @property
    def sqrt_log_L(self) -> float:
        return math.sqrt(self.log_L)

    def degree_needed(self, target_error: float = 1e-2, fit: str = "relative") -> int:
        """Degree poly attention needs on this model's range ``beta`` for the given output error."""
        return degree_needed(math.sqrt(self.beta), target_error, head_dim=1, fit=fit)

    def to_dict(self) -> dict:
        return {"B": self.B, "head_dim": self.head_dim, "num_tokens": self.num_tokens, "max_logit": self.max_logit,
                "beta": self.beta, "logit_bound": self.logit_bound, "sqrt_log_L": self.sqrt_log_L,
                "layers": self.layers}


def _layer_record(i: int, q: torch.Tensor, k: torch.Tensor, q_level, k_level) -> dict:
    d, L = q.shape[-1], q.shape[2]
    s = d ** -0.25
    logits = (q * s) @ (k * s).transpose(-1, -2)
    if q_level is not None:
        logits = logits.masked_fill(~(k_level[None, :] <= q_level[:, None]), 0.0)
    cs = q.norm(dim=-1).amax(-1) * k.norm(dim=-1).amax(-1) / math.sqrt(d)
    return {"layer": i, "head_dim": d, "num_tokens": L, "B_q": float(q.abs().max() * s),
            "B_k": float(k.abs().max() * s), "max_logit": float(logits.abs().max()), "beta": float(cs.max())}


@torch.no_grad()
def entry_bound(model: torch.nn.Module, *inputs, **kwargs) -> EntryBound:
    """Run ``model(*inputs, **kwargs)`` (eval mode, no grad) and measure the queries and keys every
    attention layer of every :class:`~nextscale.backbone.Backbone` inside it attends with: those handed
    to the attention call, so a qk-normalised model is measured with its normalisation and logit scale.

    Use a teacher-forced pass (e.g. a VAR / FlowAR model's ``forward(x, y)`` or ``Backbone.forward``):
    logits are then taken under the block-causal mask. Raises ``ValueError`` if ``model`` holds no
    backbone or the call never reached one."""
    import nextscale.backbone as backbone_module

    if not any(isinstance(m, backbone_module.Backbone) for m in model.modules()):
        raise ValueError(f"{type(model).__name__} contains no nextscale Backbone")
    real, layers = backbone_module.attention, []

    def recording(q, k, v, q_level=None, k_level=None, **kw):
        layers.append(_layer_record(len(layers), q.float(), k.float(), q_level, k_level))
        return real(q, k, v, q_level, k_level, **kw)

    was_training = model.training
    model.eval()
    backbone_module.attention = recording
    try:
        model(*inputs, **kwargs)
    finally:
        backbone_module.attention = real
        model.train(was_training)
    if not layers:
        raise ValueError("the call did not run any attention layer")
    return EntryBound(B=max(max(r["B_q"], r["B_k"]) for r in layers), head_dim=layers[0]["head_dim"],
                      num_tokens=max(r["num_tokens"] for r in layers),
                      max_logit=max(r["max_logit"] for r in layers), beta=max(r["beta"] for r in layers),
                      layers=layers)
