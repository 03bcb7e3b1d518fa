"""Velocity heads: v(x_t, t | h) on the tokens of one scale, conditioned per position on the backbone.

Both heads take the noisy latent tokens of scale k, ``x_BnC`` (n = side_k^2, row-major), the time t
and the backbone output of that scale ``h_BnW``, and return a velocity (B, n, C). They share one
interface so the model, its solvers, guidance and inpainting do not care which head they drive:

- ``condition(h_BnW, k)``: everything that depends on h but not on (t, x): computed once per scale
  when sampling;
- ``velocity(x_BnC, t, c, k, d=None)``: one evaluation; ``t`` is (B, n) (one time per token), (B, 1)
  (one per image) or (1, 1) (one for the whole batch: its embedding is computed once per evaluation).
  ``d`` (shaped like ``t``) is the step size of a few-step head (``step_embedding=True``, the shortcut
  models of Frans et al. 2024): the head then predicts the average velocity over [t, t + d]. Its
  embedding is exactly 0 for d = 0 (and for any d below the finest trained step ``min_step``), so at
  d = 0 the head computes the plain flow velocity, the same function as without ``d``.

``"transformer"`` (:class:`TransformerHead`) is FlowAR's head (Ren et al. 2025, the release's
``SimpleTransformerAdaLN``): bidirectional self-attention over all tokens of the scale with 2-D
rotary position embedding (RoPE, Su et al. 2021; 2-D as in EVA-02 / FiT) on the scale's grid, a
SwiGLU MLP (Shazeer 2020), and "spatial" adaLN-Zero (DiT, Peebles & Xie 2023) whose shift, scale
and gate come per position from c = proj(h) + pos_emb_k + t_emb(t). Tokens of a scale are sampled
jointly. Here: the rotary angles use the integer grid positions of each scale; pos_emb is a learned
table over every position of the pyramid.

``"mlp"`` (:class:`MLPHead`) is MAR's diffusion head design (Li et al. 2024, "Autoregressive Image
Generation without Vector Quantization"): a residual MLP with adaLN applied to every position on its
own, so the distribution it samples at a scale is a product of per-token distributions. Kept as the
per-token baseline; it is not FlowAR's head.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange

from nextscale.attention import attention
from nextscale.scales import scale_slices

HEADS = ("transformer", "mlp")


def modulate(x, shift, scale):
    return x * (1 + scale) + shift


def sinusoid_angles(t, freq_dim: int):
    """(..., freq_dim / 2) angles 1000 t f_i of the sinusoidal features of t in [0, 1] (as DiT)."""
    half = freq_dim // 2
    freqs = torch.exp(-math.log(10_000) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    return (1000 * t.float())[..., None] * freqs


class TimeEmbedding(nn.Module):
    """Sinusoidal features of t in [0, 1] (times 1000, as DiT) followed by an MLP."""

    def __init__(self, width: int, freq_dim: int = 256):
        super().__init__()
        self.freq_dim = freq_dim
        self.mlp = nn.Sequential(nn.Linear(freq_dim, width), nn.SiLU(), nn.Linear(width, width))

    def forward(self, t):  # (...) -> (..., width)
        arg = sinusoid_angles(t, self.freq_dim)
        return self.mlp(torch.cat([torch.cos(arg), torch.sin(arg)], dim=-1))


def _init(module: nn.Module, zero: list[nn.Linear]) -> None:
    """Xavier linear layers, zero biases; ``zero`` (adaLN and output projections) start at 0 (adaLN-Zero)."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
    for lin in zero:
        nn.init.zeros_(lin.weight)
        nn.init.zeros_(lin.bias)


# ----------------------------------------------------------------------------- 2-D rotary embedding

def rope_2d(side: int, head_dim: int, base: float = 10_000.0, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """(cos, sin), each (side^2, head_dim / 2), for the side x side grid in row-major order: the first
    half of the rotated pairs turns with the row index, the second half with the column index."""
    if head_dim % 4:
        raise ValueError(f"2-D rotary embedding needs a head dimension divisible by 4, got {head_dim}")
    quarter = head_dim // 4
    freqs = base ** (-torch.arange(quarter, dtype=torch.float32, device=device) / quarter)  # (d/4,)
    pos = torch.arange(side, dtype=torch.float32, device=device)
    rows, cols = pos.repeat_interleave(side), pos.repeat(side)                             # (n,)
    ang = torch.cat([rows[:, None] * freqs, cols[:, None] * freqs], dim=1)                 # (n, d/2)
    return ang.cos(), ang.sin()


def apply_rope(x_BHnd: torch.Tensor, cos_nh: torch.Tensor, sin_nh: torch.Tensor) -> torch.Tensor:
    """Rotate the channel pairs (2i, 2i+1) of x by the angles of its position."""
    x1, x2 = x_BHnd.float().unflatten(-1, (-1, 2)).unbind(-1)                              # (B, H, n, d/2)
    out = torch.stack([x1 * cos_nh - x2 * sin_nh, x1 * sin_nh + x2 * cos_nh], dim=-1)
    return out.flatten(-2).to(x_BHnd.dtype)


class StepEmbedding(nn.Module):
    """Embedding of a step size d in [0, 1] that is exactly 0 at d = 0: the sinusoidal features of d
    minus those of 0, through a bias-free MLP (SiLU(0) = 0). Steps below ``min_step`` count as 0 (flow)."""

    def __init__(self, width: int, min_step: float, freq_dim: int = 256):
        super().__init__()
        self.freq_dim, self.min_step = freq_dim, min_step
        self.mlp = nn.Sequential(nn.Linear(freq_dim, width, bias=False), nn.SiLU(), nn.Linear(width, width, bias=False))

    def forward(self, d):  # (...) -> (..., width)
        arg = sinusoid_angles(torch.where(d.float() >= self.min_step, d.float(), 0.0), self.freq_dim)
        return self.mlp(torch.cat([torch.cos(arg) - 1, torch.sin(arg)], dim=-1))


class _Head(nn.Module):
    """What both heads share: input/condition projections, t (and step) embedding and the adaLN output
    layer. A subclass builds ``self.blocks`` and says how a block is called (:meth:`trunk`)."""

    def __init__(self, channels: int, cond_width: int, width: int, step_embedding: bool = False,
                 min_step: float = 0.0):
        super().__init__()
        self.x_in = nn.Linear(channels, width)
        self.c_in = nn.Linear(cond_width, width)
        self.t_emb = TimeEmbedding(width)
        self.d_emb = StepEmbedding(width, min_step) if step_embedding else None
        self.norm_out = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.ada_out = nn.Sequential(nn.SiLU(), nn.Linear(width, 2 * width))
        self.out = nn.Linear(width, channels)

    def _init_weights(self):
        _init(self, [b.ada[-1] for b in self.blocks] + [self.ada_out[-1], self.out])

    def condition(self, h_BnW: torch.Tensor, k: int) -> torch.Tensor:
        return self.c_in(h_BnW)

    def trunk(self, x_BnW, c_BnW, k: int):
        raise NotImplementedError

    def velocity(self, x_BnC, t, c_BnW, k: int, d=None):
        c = c_BnW + self.t_emb(t)
        if d is not None:
            if self.d_emb is None:
                if bool((torch.as_tensor(d) != 0).any()):
                    raise ValueError("this head has no step embedding (FlowARConfig.few_step=None): d must be 0")
            else:
                c = c + self.d_emb(torch.as_tensor(d, device=c.device))
        x = self.trunk(self.x_in(x_BnC), c, k)
        shift, scale = self.ada_out(c).chunk(2, dim=-1)
        return self.out(modulate(self.norm_out(x), shift, scale))

    def forward(self, x_BnC, t, h_BnW, k: int, d=None):
        return self.velocity(x_BnC, t, self.condition(h_BnW, k), k, d)


# ----------------------------------------------------------------------------- FlowAR's transformer head

class HeadBlock(nn.Module):
    """x + g1 * Attn(modulate(LN(x))) ; x + g2 * SwiGLU(modulate(LN(x))), all six modulations per position."""

    def __init__(self, width: int, heads: int, mlp_ratio: float):
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)
        self.norm2 = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        hidden = int(2 * mlp_ratio * width / 3)  # SwiGLU at the parameter count of a mlp_ratio GELU MLP
        self.gate_up = nn.Linear(width, 2 * hidden)
        self.down = nn.Linear(hidden, width)
        self.ada = nn.Sequential(nn.SiLU(), nn.Linear(width, 6 * width))

    def forward(self, x_BnW, c_BnW, rope):
        sh1, sc1, g1, sh2, sc2, g2 = self.ada(c_BnW).chunk(6, dim=-1)
        q, k, v = rearrange(self.qkv(modulate(self.norm1(x_BnW), sh1, sc1)), "B n (three H d) -> three B H n d",
                            three=3, H=self.heads)
        a = attention(apply_rope(q, *rope), apply_rope(k, *rope), v)  # no mask: every token sees the scale
        x_BnW = x_BnW + g1 * self.proj(rearrange(a, "B H n d -> B n (H d)"))
        gate, up = self.gate_up(modulate(self.norm2(x_BnW), sh2, sc2)).chunk(2, dim=-1)
        return x_BnW + g2 * self.down(F.silu(gate) * up)


class TransformerHead(_Head):
    def __init__(self, channels: int, cond_width: int, width: int, depth: int, heads: int,
                 schedule: tuple[int, ...], mlp_ratio: float = 4.0, **step):
        super().__init__(channels, cond_width, width, **step)
        self.schedule, self.head_dim = tuple(schedule), width // heads
        self.slices = scale_slices(schedule)
        self.pos_emb = nn.Parameter(torch.zeros(1, sum(s * s for s in schedule), width))
        self.blocks = nn.ModuleList(HeadBlock(width, heads, mlp_ratio) for _ in range(depth))
        self._init_weights()
        nn.init.trunc_normal_(self.pos_emb, std=0.02)
        self._rope: dict = {}  # (scale, device) -> (cos, sin): tables are built once per scale

    def rope(self, k: int, device) -> tuple[torch.Tensor, torch.Tensor]:
        key = (k, str(device))
        if key not in self._rope:
            self._rope[key] = rope_2d(self.schedule[k], self.head_dim, device=device)
        return self._rope[key]

    def condition(self, h_BnW: torch.Tensor, k: int) -> torch.Tensor:
        return self.c_in(h_BnW) + self.pos_emb[:, self.slices[k]]

    def trunk(self, x_BnW, c_BnW, k: int):
        rope = self.rope(k, x_BnW.device)
        for blk in self.blocks:
            x_BnW = blk(x_BnW, c_BnW, rope)
        return x_BnW


# ----------------------------------------------------------------------------- MAR's per-token head

class MLPBlock(nn.Module):
    """x + gate * MLP(modulate(LN(x))), shift/scale/gate from the condition (adaLN-Zero)."""

    def __init__(self, width: int):
        super().__init__()
        self.norm = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.mlp = nn.Sequential(nn.Linear(width, width), nn.SiLU(), nn.Linear(width, width))
        self.ada = nn.Sequential(nn.SiLU(), nn.Linear(width, 3 * width))

    def forward(self, x, c):
        shift, scale, gate = self.ada(c).chunk(3, dim=-1)
        return x + gate * self.mlp(modulate(self.norm(x), shift, scale))


class MLPHead(_Head):
    """v(x_t, t | h) independently at every position (MAR's head design)."""

    def __init__(self, channels: int, cond_width: int, width: int, depth: int, **step):
        super().__init__(channels, cond_width, width, **step)
        self.blocks = nn.ModuleList(MLPBlock(width) for _ in range(depth))
        self._init_weights()

    def trunk(self, x_BnW, c_BnW, k: int):
        for blk in self.blocks:
            x_BnW = blk(x_BnW, c_BnW)
        return x_BnW


def make_head(kind: str, channels: int, cond_width: int, width: int, depth: int, heads: int,
              schedule: tuple[int, ...], step_embedding: bool = False, min_step: float = 0.0) -> nn.Module:
    """A velocity head; ``step_embedding`` makes it a few-step head (conditioned on the step size d)."""
    step = dict(step_embedding=step_embedding, min_step=min_step)
    if kind == "transformer":
        return TransformerHead(channels, cond_width, width, depth, heads, schedule, **step)
    if kind == "mlp":
        return MLPHead(channels, cond_width, width, depth, **step)
    raise ValueError(f"head must be one of {HEADS}, got {kind!r}")
