"""Velocity heads: v(x_t, t | h) on the tokens of one scale, conditioned per position on the backbone.

Every head takes the noisy latent tokens of scale k, ``x_BnC`` (n = side_k^2, row-major), the time t
and the backbone output of that scale ``h_BnW``, and returns a velocity (B, n, C). They share one
interface so the model, its solvers, guidance and inpainting do not care which head they drive:

- ``condition(h_BnW, k)``: everything that depends on h but not on (t, x): computed once per scale
  when sampling;
- ``velocity(x_BnC, t, c, k, d=None)``: one evaluation; ``t`` is (B, n) (one time per token), (B, 1)
  (one per image) or (1, 1) (one for the whole batch: its embedding is computed once per evaluation).
  ``d`` (shaped like ``t``) is the step size of a few-step head (``step_embedding=True``, the shortcut
  models of Frans et al. 2024): the head then predicts the average velocity over [t, t + d]. Its
  embedding is exactly 0 for d = 0 (and for any d below the finest trained step ``min_step``), so at
  d = 0 the head computes the plain flow velocity, the same function as without ``d``.

``"transformer"`` (:class:`TransformerHead`) is FlowAR's head exactly as released (Ren et al. 2025,
``SimpleTransformerAdaLN`` with its ``Block_v1``, the S model's): self-attention over all tokens of
the scale with 2-D rotary position embedding (RoPE, Su et al. 2021; 2-D as in EVA-02), a GEGLU MLP
(timm's SwiGLU with GELU), RMSNorm without weight, no qkv bias, head dim 64, and "spatial" adaLN whose
shift, scale and gate come per position from c = Linear(h + pos_k) + t_emb. ``"transformer_cross"``
(``Block_v2``, FlowAR-L/H): self-attention modulated by t only, an un-gated cross-attention to
RMSNorm(h + pos_k) (with weight), and the MLP modulated per position by c + t_emb. Both equal the
release's head with ported weights (:mod:`flowar.release`, ``tests/test_flowar_release.py``).

Release conventions kept so that ported weights compute the same function: the rotary positions of a
side-s scale are i * S / s on the final S x S grid's frame; every Linear starts xavier-uniform with
zero bias (the release re-initialises the whole model so; no adaLN-Zero); the position embedding has
the backbone's width and is added before the condition projection. The time embedding reads the
release's clock s = 1 - t (it runs from noise, s = 1, to data): ``time_input="index"`` embeds the
integer index as the release computes it, ``(s * 1000).long()`` with s and the product in float32 (its
training draws s in float32, its sampler casts its float64 grid to its float32 model first), so a time
just below i / 1000 gets i - 1 as there, a grid time i / 1000 gets i (its first sampling step embeds
1000, which training never draws); ``"continuous"`` (this project's default) embeds 1000 s. s is read
from t in float64: exactly for the float32 times training draws, and for the float64 grid times the
model hands the head (:func:`flowar.solvers.grid_times`) to within the rounding of t = 1 - s, which
float32 absorbs. The release's velocity points from data to noise; here it points from noise to data
(t = 0 noise), so a ported output layer is negated.

``"mlp"`` (:class:`MLPHead`) is MAR's diffusion head design (Li et al. 2024, "Autoregressive Image
Generation without Vector Quantization"): a residual MLP with adaLN-Zero and LayerNorm applied to
every position on its own (time embedding of 1000 t), so the distribution it samples at a scale is a
product of per-token distributions. Kept as the per-token baseline; it is not FlowAR's head.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
from einops import rearrange

from nextscale.attention import attention
from nextscale.backbone import modulate
from nextscale.layers import GEGLU, RMSNorm, apply_rope, rms_norm, rope_2d, rope_freqs  # noqa: F401 (re-exported)
from nextscale.scales import scale_slices

TRANSFORMER_HEADS = ("transformer", "transformer_cross")  # attention over the scale: rotary, head dim, time input
HEADS = TRANSFORMER_HEADS + ("mlp",)
TIME_INPUTS = ("continuous", "index")


def sinusoid_angles(v, freq_dim: int):
    """(..., freq_dim / 2) angles v f_i of the sinusoidal features of v (v = 1000 t, as DiT), in v's dtype
    (float32 at least: the release's)."""
    half, dtype = freq_dim // 2, torch.promote_types(v.dtype, torch.float32)
    freqs = torch.exp(-math.log(10_000) * torch.arange(half, device=v.device, dtype=dtype) / half)
    return v.to(dtype)[..., None] * freqs


def release_index(t: torch.Tensor) -> torch.Tensor:
    """The release's integer time index of our time t: ``(s * 1000).long()`` with s = 1 - t, s and the
    product in float32 as the release computes them (returned as int64)."""
    return (1000 * (1 - t.double()).float()).long()


CLOCKS = ("t", "continuous", "index")


class TimeEmbedding(nn.Module):
    """Sinusoidal features of a time value followed by an MLP. ``clock`` says which value: ``"t"`` 1000 t
    (MAR's head here); ``"continuous"`` 1000 s and ``"index"`` the release's integer index of s
    (:func:`release_index`), s = 1 - t; computed in the MLP's dtype (index: s in float32, as the release)."""

    def __init__(self, width: int, clock: str = "t", freq_dim: int = 256):
        super().__init__()
        if clock not in CLOCKS:
            raise ValueError(f"clock must be one of {CLOCKS}, got {clock!r}")
        self.clock, self.freq_dim = clock, freq_dim
        self.mlp = nn.Sequential(nn.Linear(freq_dim, width), nn.SiLU(), nn.Linear(width, width))

    def value(self, t: torch.Tensor) -> torch.Tensor:
        dtype = self.mlp[0].weight.dtype
        if self.clock == "t":
            return 1000 * t.to(dtype)
        if self.clock == "continuous":
            return 1000 * (1 - t.to(dtype))
        return release_index(t).to(dtype)

    def forward(self, t):  # (...) -> (..., width)
        arg = sinusoid_angles(self.value(t), self.freq_dim)
        return self.mlp(torch.cat([torch.cos(arg), torch.sin(arg)], dim=-1))


class StepEmbedding(nn.Module):
    """Embedding of a step size d in [0, 1] that is exactly 0 at d = 0: the sinusoidal features of d
    minus those of 0, through a bias-free MLP (SiLU(0) = 0). Steps below ``min_step`` count as 0 (flow)."""

    def __init__(self, width: int, min_step: float, freq_dim: int = 256):
        super().__init__()
        self.freq_dim, self.min_step = freq_dim, min_step
        self.mlp = nn.Sequential(nn.Linear(freq_dim, width, bias=False), nn.SiLU(), nn.Linear(width, width, bias=False))

    def forward(self, d):  # (...) -> (..., width)
        d = d.to(self.mlp[0].weight.dtype)
        arg = sinusoid_angles(1000 * torch.where(d >= self.min_step, d, 0.0), self.freq_dim)
        return self.mlp(torch.cat([torch.cos(arg) - 1, torch.sin(arg)], dim=-1))


def _init(module: nn.Module, zero: list[nn.Linear]) -> None:
    """Xavier-uniform linear layers with zero biases; the layers in ``zero`` start at 0."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
    for lin in zero:
        nn.init.zeros_(lin.weight)
        nn.init.zeros_(lin.bias)


# ----------------------------------------------------------------------------- what every head shares

class _Head(nn.Module):
    """Input and condition projections, t (and step) embedding and the adaLN output layer. A subclass
    builds ``self.blocks`` and ``self.norm_out`` and says how the blocks run (:meth:`trunk`)."""

    def __init__(self, channels: int, cond_width: int, width: int, clock: str, step_embedding: bool = False,
                 min_step: float = 0.0):
        super().__init__()
        self.width = width
        self.x_in = nn.Linear(channels, width)
        self.c_in = nn.Linear(cond_width, width)
        self.t_emb = TimeEmbedding(width, clock)
        self.d_emb = StepEmbedding(width, min_step) if step_embedding else None
        self.ada_out = nn.Sequential(nn.SiLU(), nn.Linear(width, 2 * width))
        self.out = nn.Linear(width, channels)

    def condition(self, h_BnW: torch.Tensor, k: int) -> torch.Tensor:
        return self.c_in(h_BnW)

    def trunk(self, x_BnW, ct_BnW, te, cond, k: int):
        """The blocks; ``ct`` = projected condition + time (and step) embedding ``te``; ``cond`` as
        returned by :meth:`condition`."""
        raise NotImplementedError

    def velocity(self, x_BnC, t, c, k: int, d=None):
        te = self.t_emb(t)
        if d is not None:
            if self.d_emb is None:
                if bool((torch.as_tensor(d) != 0).any()):
                    raise ValueError("this head has no step embedding (FlowARConfig.few_step=None): d must be 0")
            else:
                te = te + self.d_emb(torch.as_tensor(d, device=te.device))
        ct = c[..., :self.width] + te
        x = self.trunk(self.x_in(x_BnC), ct, te, c, k)
        shift, scale = self.ada_out(ct).chunk(2, dim=-1)
        return self.out(modulate(self.norm_out(x), shift, 1 + scale))

    def forward(self, x_BnC, t, h_BnW, k: int, d=None):
        return self.velocity(x_BnC, t, self.condition(h_BnW, k), k, d)


# ----------------------------------------------------------------------------- FlowAR's transformer heads

class SelfAttention(nn.Module):
    """Attention among all tokens of the scale (no mask), RoPE on q and k, no qkv bias (the release's)."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(width, 3 * width, bias=False)
        self.proj = nn.Linear(width, width)

    def forward(self, x_BnW, rope):
        q, k, v = rearrange(self.qkv(x_BnW), "B n (three H d) -> three B H n d", three=3, H=self.heads)
        a = attention(apply_rope(q, *rope), apply_rope(k, *rope), v)
        return self.proj(rearrange(a, "B H n d -> B n (H d)"))


class CrossAttention(nn.Module):
    """Queries from the head's tokens, keys and values from the condition at the same positions (RoPE on
    q and k, no q/kv bias): the release's cross-attention of FlowAR-L/H."""

    def __init__(self, width: int, cond_width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.q = nn.Linear(width, width, bias=False)
        self.kv = nn.Linear(cond_width, 2 * width, bias=False)
        self.proj = nn.Linear(width, width)

    def forward(self, x_BnW, z_BnW, rope):
        q = rearrange(self.q(x_BnW), "B n (H d) -> B H n d", H=self.heads)
        k, v = rearrange(self.kv(z_BnW), "B n (two H d) -> two B H n d", two=2, H=self.heads)
        a = attention(apply_rope(q, *rope), apply_rope(k, *rope), v)
        return self.proj(rearrange(a, "B H n d -> B n (H d)"))


class HeadBlock(nn.Module):
    """The release's ``Block_v1``: x + g1 Attn(modulate(RMS(x))); x + g2 GEGLU(modulate(RMS(x))), the six
    modulations per position from c + t_emb, in the release's order (g1, g2, scale1, scale2, shift1, shift2)."""

    def __init__(self, width: int, cond_width: int, heads: int):
        super().__init__()
        self.attn = SelfAttention(width, heads)
        self.mlp = GEGLU(width)
        self.ada = nn.Sequential(nn.SiLU(), nn.Linear(width, 6 * width))

    def forward(self, x_BnW, ct_BnW, te, z_BnW, rope):
        g1, g2, sc1, sc2, sh1, sh2 = self.ada(ct_BnW).chunk(6, dim=-1)
        x_BnW = x_BnW + g1 * self.attn(modulate(rms_norm(x_BnW), sh1, 1 + sc1), rope)
        return x_BnW + g2 * self.mlp(modulate(rms_norm(x_BnW), sh2, 1 + sc2))


class CrossBlock(nn.Module):
    """The release's ``Block_v2`` (FlowAR-L/H): self-attention modulated by t only (per image), an
    un-gated cross-attention from RMS(x) (with weight) to RMS(h + pos) (with weight), and the GEGLU
    modulated per position by c + t_emb; modulations in the release's order (gate, scale, shift)."""

    def __init__(self, width: int, cond_width: int, heads: int):
        super().__init__()
        self.attn = SelfAttention(width, heads)
        self.cross = CrossAttention(width, cond_width, heads)
        self.norm_x, self.norm_z = RMSNorm(width, weight=True), RMSNorm(cond_width, weight=True)
        self.mlp = GEGLU(width)
        self.ada_attn = nn.Sequential(nn.SiLU(), nn.Linear(width, 3 * width))
        self.ada_mlp = nn.Sequential(nn.SiLU(), nn.Linear(width, 3 * width))

    def forward(self, x_BnW, ct_BnW, te, z_BnW, rope):
        g1, sc1, sh1 = self.ada_attn(te).chunk(3, dim=-1)
        g2, sc2, sh2 = self.ada_mlp(ct_BnW).chunk(3, dim=-1)
        x_BnW = x_BnW + g1 * self.attn(modulate(rms_norm(x_BnW), sh1, 1 + sc1), rope)
        x_BnW = x_BnW + self.cross(self.norm_x(x_BnW), self.norm_z(z_BnW), rope)
        return x_BnW + g2 * self.mlp(modulate(rms_norm(x_BnW), sh2, 1 + sc2))


class TransformerHead(_Head):
    """FlowAR's released head (see the module doc); ``cross=True`` builds FlowAR-L/H's blocks. The
    condition of a scale is c = Linear(h + pos_k) (and, with ``cross``, h + pos_k itself after it, along
    the channels, for the cross-attention)."""

    def __init__(self, channels: int, cond_width: int, width: int, depth: int, heads: int,
                 schedule: tuple[int, ...], cross: bool = False, time_input: str = "continuous", **step):
        if time_input not in TIME_INPUTS:
            raise ValueError(f"time_input must be one of {TIME_INPUTS}, got {time_input!r}")
        super().__init__(channels, cond_width, width, time_input, **step)
        self.schedule, self.head_dim, self.cross = tuple(schedule), width // heads, cross
        self.slices = scale_slices(schedule)
        self.pos_emb = nn.Parameter(torch.zeros(1, sum(s * s for s in schedule), cond_width))
        self.blocks = nn.ModuleList((CrossBlock if cross else HeadBlock)(width, cond_width, heads)
                                    for _ in range(depth))
        self.norm_out = RMSNorm(width)
        _init(self, [])  # the release re-initialises every Linear so: nothing starts at zero
        nn.init.normal_(self.pos_emb, std=0.02)
        self._rope: dict = {}  # (scale, device, dtype) -> (cos, sin): tables are built once per scale

    def rope(self, k: int, device, dtype=torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
        key = (k, str(device), dtype)
        if key not in self._rope:
            self._rope[key] = rope_2d(self.schedule[k], self.head_dim, frame=self.schedule[-1], device=device,
                                      dtype=dtype)
        return self._rope[key]

    def condition(self, h_BnW: torch.Tensor, k: int) -> torch.Tensor:
        z = h_BnW + self.pos_emb[:, self.slices[k]]
        return torch.cat([self.c_in(z), z], dim=-1) if self.cross else self.c_in(z)

    def trunk(self, x_BnW, ct_BnW, te, cond, k: int):
        rope = self.rope(k, x_BnW.device, torch.promote_types(x_BnW.dtype, torch.float32))
        z = cond[..., self.width:]
        for blk in self.blocks:
            x_BnW = blk(x_BnW, ct_BnW, te, z, rope)
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
        return x + gate * self.mlp(modulate(self.norm(x), shift, 1 + scale))


class MLPHead(_Head):
    """v(x_t, t | h) independently at every position (MAR's head design)."""

    def __init__(self, channels: int, cond_width: int, width: int, depth: int, **step):
        super().__init__(channels, cond_width, width, "t", **step)
        self.norm_out = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.blocks = nn.ModuleList(MLPBlock(width) for _ in range(depth))
        _init(self, [b.ada[-1] for b in self.blocks] + [self.ada_out[-1], self.out])

    def trunk(self, x_BnW, ct_BnW, te, cond, k: int):
        for blk in self.blocks:
            x_BnW = blk(x_BnW, ct_BnW)
        return x_BnW


def make_head(kind: str, channels: int, cond_width: int, width: int, depth: int, heads: int,
              schedule: tuple[int, ...], step_embedding: bool = False, min_step: float = 0.0,
              time_input: str = "continuous") -> nn.Module:
    """A velocity head; ``step_embedding`` makes it a few-step head (conditioned on the step size d);
    ``time_input`` applies to the transformer heads (MAR's head embeds 1000 t)."""
    step = dict(step_embedding=step_embedding, min_step=min_step)
    if kind in TRANSFORMER_HEADS:
        return TransformerHead(channels, cond_width, width, depth, heads, schedule,
                               cross=kind == "transformer_cross", time_input=time_input, **step)
    if kind == "mlp":
        return MLPHead(channels, cond_width, width, depth, **step)
    raise ValueError(f"head must be one of {HEADS}, got {kind!r}")
