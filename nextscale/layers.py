"""Layers of FlowAR's release (Ren et al. 2025) that the backbone and FlowAR's head share: RMSNorm, the
GEGLU MLP (timm's SwiGLU with GELU) and the 2-D rotary position embedding on the final grid's frame
(RoPE, Su et al. 2021; 2-D as in EVA-02). Written to compute what the release computes (same rounding
of the rotary frequencies, RMSNorm in float32), so that its weights ported here give its outputs. Each
computes in its input's dtype, float32 at least (half and bfloat16 are upcast to float32 as the release
does; float64 stays float64, the tests' comparisons with the release run in it)."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


def _wide(dtype: torch.dtype) -> torch.dtype:
    """The dtype to compute in: float32 at least (the release upcasts half precision), float64 kept."""
    return torch.promote_types(dtype, torch.float32)


def rms_norm(x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """x / rms(x) over the last dimension, computed in float32 or wider (the release's RMSNorm)."""
    xf = x.to(_wide(x.dtype))
    return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)).type_as(x)


class RMSNorm(nn.Module):
    """RMSNorm, with a learned per-channel weight or without one (``weight=False``: no parameters)."""

    def __init__(self, width: int, weight: bool = False, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(width)) if weight else None

    def forward(self, x):
        out = rms_norm(x, self.eps)
        return out if self.weight is None else out * self.weight


class GEGLU(nn.Module):
    """down(GELU(gate x) * up x), hidden int(W * mlp_ratio * 2/3): timm's SwiGLU with act_layer=GELU,
    as the release builds it (gate and up fused in one Linear here)."""

    def __init__(self, width: int, mlp_ratio: float = 4.0):
        super().__init__()
        hidden = int(width * mlp_ratio * 2 / 3.)
        self.gate_up = nn.Linear(width, 2 * hidden)
        self.down = nn.Linear(hidden, width)

    def forward(self, x):
        gate, up = self.gate_up(x).chunk(2, dim=-1)
        return self.down(F.gelu(gate) * up)


# ----------------------------------------------------------------------------- 2-D rotary embedding

def rope_freqs(head_dim: int, base: float = 10_000.0, device=None, dtype=torch.float32) -> torch.Tensor:
    """The (head_dim / 4,) rotary frequencies base^(-i / (head_dim / 4)), computed as EVA-02 and the
    FlowAR release do (their rounding; in ``dtype``: the release's buffer is float32)."""
    half = head_dim // 2
    return 1.0 / (base ** (torch.arange(0, half, 2, device=device, dtype=dtype) / half))


def rope_2d(side: int, head_dim: int, frame: int, base: float = 10_000.0,
            device=None, dtype=torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """(cos, sin), each (side^2, head_dim / 2), for the side x side grid in row-major order: the first
    half of the rotated pairs turns with the row position, the second half with the column position.
    Positions are i * frame / side (the release puts every scale on the final grid's frame, ``frame`` =
    the last side); computed in ``dtype``."""
    if head_dim % 4:
        raise ValueError(f"2-D rotary embedding needs a head dimension divisible by 4, got {head_dim}")
    freqs = rope_freqs(head_dim, base, device, dtype)                                      # (d/4,)
    pos = torch.arange(side, device=device, dtype=dtype) / side * frame
    rows, cols = pos.repeat_interleave(side), pos.repeat(side)                             # (n,)
    ang = torch.cat([rows[:, None] * freqs, cols[:, None] * freqs], dim=1)                 # (n, d/2)
    return ang.cos(), ang.sin()


def apply_rope(x_BHnd: torch.Tensor, cos_nh: torch.Tensor, sin_nh: torch.Tensor) -> torch.Tensor:
    """Rotate the channel pairs (2i, 2i+1) of x by the angles of its position (any leading dims that
    ``cos``/``sin`` broadcast against: (B, H, n, d) with (n, d/2), or (B, n, H, d) with (n, 1, d/2))."""
    x1, x2 = x_BHnd.to(_wide(x_BHnd.dtype)).unflatten(-1, (-1, 2)).unbind(-1)               # (B, H, n, d/2)
    out = torch.stack([x1 * cos_nh - x2 * sin_nh, x1 * sin_nh + x2 * cos_nh], dim=-1)
    return out.flatten(-2).to(x_BHnd.dtype)
