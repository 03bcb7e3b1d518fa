"""The smallest VAR transformer the universality theorem speaks about, and known Lipschitz maps to fit.

Chen et al. (2025) show that a VAR transformer with ONE single-head self-attention layer and ONE
(up-)interpolation layer approximates any Lipschitz image-to-image map on a compact domain, and
that flow-based AR transformers inherit this. :class:`UniversalVAR` is exactly that shape:

    tokens = Up(x)                       fixed linear pyramid up-interpolation (no parameters):
                                         [x, up(x, s_2), ..., up(x, s_K)] for the schedule s_1 < ... < s_K,
                                         x given at side s_1 (the initial token map)
    e      = W_in tokens + pos + level   token embedding with position and level embeddings
    h      = e + FFN_1(e)                token-wise feed-forward
    a      = h + Attn(h)                 ONE single-head softmax attention layer (block-causal)
    y      = W_out (a + FFN_2(a))        token-wise feed-forward, read out on the last scale (side s_K)

Only the last scale is read out and, block-causally, it sees every scale, so queries are computed
for the last scale only. :class:`UniversalFlowAR` keeps the same trunk and, like FlowAR, uses its
last-scale output to condition a token-wise flow network trained by flow matching and sampled
with Euler steps.

:class:`LipschitzMap` holds the target maps f: R^{C x s_1 x s_1} -> R^{C x s_K x s_K} with a known
Lipschitz bound (L2 to L2): a linear image operator T applied after the fixed bicubic upsampling
(Gaussian blur, circular shift, horizontal flip, mean removal), the edge magnitude of the upsampled
image, and a random smooth map ``U sin(lambda W x)`` with spectrally normalised U, W (Lipschitz <=
lambda). :class:`MapFit` wraps a model and a map into the contract of :func:`nextscale.train.train`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F

from nextscale.attention import attention
from nextscale.config import check_choice, check_float, check_int
from nextscale.scales import UPSAMPLE_MODES, level_ids, maps_to_seq, num_tokens, resize, scale_slices, validate_schedule

MAPS = ("blur", "shift", "flip", "edge", "center", "random")


@dataclass(frozen=True)
class UniversalConfig:
    schedule: tuple[int, ...] = (4, 6, 8)  # input side = schedule[0], output side = schedule[-1]
    channels: int = 1
    width: int = 32            # token width = the single head's dimension
    ffn_ratio: float = 4.0     # hidden width of both token-wise FFNs, as a multiple of width
    upsample: str = "bicubic"
    flow: bool = False         # the flow-based variant (UniversalFlowAR)
    flow_steps: int = 8        # Euler steps when sampling the flow variant

    def __post_init__(self):
        object.__setattr__(self, "schedule", validate_schedule(self.schedule))
        if len(self.schedule) < 2:
            raise ValueError(f"schedule needs at least two sides (input and output), got {self.schedule}")
        check_int("channels", self.channels, 1)
        check_int("width", self.width, 1)
        check_float("ffn_ratio", self.ffn_ratio, 0, lo_open=True)
        check_choice("upsample", self.upsample, UPSAMPLE_MODES)
        if not isinstance(self.flow, bool):
            raise ValueError(f"flow must be a bool, got {self.flow!r}")
        check_int("flow_steps", self.flow_steps, 1)

    @property
    def seq_len(self) -> int:
        return num_tokens(self.schedule)


def pyramid_up(x_BCss: torch.Tensor, schedule, mode: str = "bicubic") -> torch.Tensor:
    """The fixed linear interpolation layer: (B, C, s_1, s_1) -> (B, L, C), every scale upsampled from x."""
    return maps_to_seq([resize(x_BCss, s, mode) for s in schedule])


def _ffn(width: int, ratio: float) -> nn.Sequential:
    hidden = max(1, int(round(width * ratio)))
    return nn.Sequential(nn.Linear(width, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, width))


class SingleLayerTrunk(nn.Module):
    """Up-interpolation, embeddings, FFN, ONE single-head attention, FFN; returns the last scale (B, s_K^2, width)."""

    def __init__(self, cfg: UniversalConfig):
        super().__init__()
        w = cfg.width
        self.cfg = cfg
        self.embed = nn.Linear(cfg.channels, w)
        # unit-scale position / level embeddings: attention by position is then learnable from the start
        self.pos_emb = nn.Parameter(torch.randn(1, cfg.seq_len, w))
        self.level_emb = nn.Embedding(len(cfg.schedule), w)
        self.ffn1 = _ffn(w, cfg.ffn_ratio)
        self.q, self.k, self.v, self.o = (nn.Linear(w, w) for _ in range(4))
        self.ffn2 = _ffn(w, cfg.ffn_ratio)
        self.register_buffer("levels", level_ids(cfg.schedule), persistent=False)
        self.last = scale_slices(cfg.schedule)[-1]

    def check_input(self, x_BCss: torch.Tensor) -> None:
        s, C = self.cfg.schedule[0], self.cfg.channels
        if x_BCss.ndim != 4 or tuple(x_BCss.shape[1:]) != (C, s, s):
            raise ValueError(f"input must have shape (B, {C}, {s}, {s}) (the first scale), got {tuple(x_BCss.shape)}")

    def qk(self, x_BCss: torch.Tensor):
        """Hidden tokens h (B, L, w) and the attention's queries (last scale) and keys."""
        self.check_input(x_BCss)
        tok = pyramid_up(x_BCss, self.cfg.schedule, self.cfg.upsample)
        e = self.embed(tok) + self.pos_emb + self.level_emb(self.levels)
        h = e + self.ffn1(e)
        return h, self.q(h[:, self.last]), self.k(h)

    def forward(self, x_BCss: torch.Tensor) -> torch.Tensor:
        h, q, k = self.qk(x_BCss)
        # block-causal over the pyramid; the last scale sees every key, so no mask is needed
        a = attention(q[:, None], k[:, None], self.v(h)[:, None])[:, 0]
        a = h[:, self.last] + self.o(a)
        return a + self.ffn2(a)

    @torch.no_grad()
    def logit_stats(self, x_BCss: torch.Tensor) -> dict:
        """Largest |logit| q.k / sqrt(w) the layer uses on ``x``, and the entry bound B of Q, K (scaled by w^-1/4)."""
        _, q, k = self.qk(x_BCss)
        w = q.shape[-1]
        logits = q @ k.transpose(-1, -2) / math.sqrt(w)
        L = self.cfg.seq_len
        return {"max_logit": float(logits.abs().max()), "B": float(max(q.abs().max(), k.abs().max()) * w ** -0.25),
                "num_tokens": L, "log_L": math.log(L), "sqrt_log_L": math.sqrt(math.log(L))}


class UniversalVAR(nn.Module):
    """Single-head, single-layer VAR transformer with one interpolation layer: x (B,C,s_1,s_1) -> (B,C,s_K,s_K)."""

    def __init__(self, config: UniversalConfig = UniversalConfig()):
        super().__init__()
        if config.flow:
            raise ValueError("config.flow is True: use UniversalFlowAR")
        self.config = config
        self.trunk = SingleLayerTrunk(config)
        self.out = nn.Linear(config.width, config.channels)

    def predict(self, x_BCss: torch.Tensor, seed: int = 0) -> torch.Tensor:
        """The map's output (``seed`` is unused: the model is deterministic)."""
        s = self.config.schedule[-1]
        y = self.out(self.trunk(x_BCss))                          # (B, s^2, C)
        return y.transpose(1, 2).reshape(len(x_BCss), self.config.channels, s, s)

    def loss(self, x_BCss: torch.Tensor, target_BCSS: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"loss": F.mse_loss(self.predict(x_BCss), target_BCSS)}


class UniversalFlowAR(nn.Module):
    """The flow-based variant: the trunk's last-scale output conditions a token-wise velocity network
    v(F_t, t, c); trained by flow matching on F_t = t Y + (1 - t) F_0, sampled with Euler steps."""

    def __init__(self, config: UniversalConfig = UniversalConfig(flow=True)):
        super().__init__()
        if not config.flow:
            raise ValueError("config.flow is False: use UniversalVAR")
        self.config = config
        w, C = config.width, config.channels
        self.trunk = SingleLayerTrunk(config)
        self.in_f = nn.Linear(C, w)
        self.in_t = nn.Linear(1, w)
        self.vel = nn.Sequential(nn.SiLU(), nn.Linear(w, w), nn.SiLU(), nn.Linear(w, C))

    def velocity(self, f_BNC, t_B, c_BNw):
        return self.vel(self.in_f(f_BNC) + self.in_t(t_B[:, None, None].expand(-1, f_BNC.shape[1], 1)) + c_BNw)

    def loss(self, x_BCss: torch.Tensor, target_BCSS: torch.Tensor) -> dict[str, torch.Tensor]:
        c = self.trunk(x_BCss)
        y = target_BCSS.flatten(2).transpose(1, 2)                 # (B, N, C)
        f0 = torch.randn_like(y)
        t = torch.rand(len(y), device=y.device)
        ft = t[:, None, None] * y + (1 - t[:, None, None]) * f0
        return {"loss": F.mse_loss(self.velocity(ft, t, c), y - f0)}

    @torch.no_grad()
    def predict(self, x_BCss: torch.Tensor, seed: int = 0) -> torch.Tensor:
        """Integrate dF/dt = v from seeded noise at t=0 to t=1 with ``flow_steps`` Euler steps."""
        check_int("seed", seed, 0)
        c = self.trunk(x_BCss)
        s, C = self.config.schedule[-1], self.config.channels
        g = torch.Generator().manual_seed(seed)
        f = torch.randn(len(x_BCss), s * s, C, generator=g).to(c)
        n = self.config.flow_steps
        for i in range(n):
            t = torch.full((len(f),), i / n, device=f.device, dtype=f.dtype)
            f = f + self.velocity(f, t, c) / n
        return f.transpose(1, 2).reshape(len(f), C, s, s)


def make_model(config: UniversalConfig) -> nn.Module:
    return UniversalFlowAR(config) if config.flow else UniversalVAR(config)


# ----------------------------------------------------------------------------- target maps

@dataclass(frozen=True)
class MapConfig:
    name: str = "blur"
    in_side: int = 4
    out_side: int = 8
    channels: int = 1
    lipschitz: float = 4.0   # lambda of the random map (ignored by the others)
    sigma: float = 1.0       # Gaussian blur width (pixels of the output)
    shift: int = 2           # circular shift (pixels of the output, right and down)
    hidden: int = 64         # inner dimension m of the random map
    seed: int = 0            # draws the random map

    def __post_init__(self):
        check_choice("name", self.name, MAPS)
        check_int("in_side", self.in_side, 1)
        check_int("out_side", self.out_side, 1)
        check_int("channels", self.channels, 1)
        check_float("lipschitz", self.lipschitz, 0, lo_open=True)
        check_float("sigma", self.sigma, 0, lo_open=True)
        check_int("shift", self.shift, 0)
        check_int("hidden", self.hidden, 1)
        check_int("seed", self.seed, 0)


def _spectral_normalised(rows: int, cols: int, g: torch.Generator) -> torch.Tensor:
    m = torch.randn(rows, cols, generator=g, dtype=torch.float64)
    return (m / torch.linalg.matrix_norm(m, ord=2)).float()


class LipschitzMap(nn.Module):
    """A fixed map f: (B, C, in_side, in_side) -> (B, C, out_side, out_side) with a known Lipschitz bound."""

    def __init__(self, cfg: MapConfig):
        super().__init__()
        self.cfg = cfg
        C, s = cfg.channels, cfg.out_side
        if cfg.name == "random":
            g = torch.Generator().manual_seed(cfg.seed)
            self.register_buffer("W", _spectral_normalised(cfg.hidden, C * cfg.in_side ** 2, g))
            self.register_buffer("U", _spectral_normalised(C * s * s, cfg.hidden, g))
        r = max(1, int(math.ceil(3 * cfg.sigma)))
        k1 = torch.exp(-0.5 * (torch.arange(-r, r + 1, dtype=torch.float32) / cfg.sigma) ** 2)
        self.register_buffer("blur_k", (k1 / k1.sum())[None, None], persistent=False)
        sob = torch.tensor([[-1.0, 0, 1], [-2, 0, 2], [-1, 0, 1]]) / 8
        self.register_buffer("sobel", torch.stack([sob, sob.T])[:, None], persistent=False)

    def up(self, x):
        return resize(x, self.cfg.out_side, "bicubic")

    def forward(self, x_BCss: torch.Tensor) -> torch.Tensor:
        cfg = self.cfg
        if x_BCss.ndim != 4 or tuple(x_BCss.shape[1:]) != (cfg.channels, cfg.in_side, cfg.in_side):
            raise ValueError(f"map input must have shape (B, {cfg.channels}, {cfg.in_side}, {cfg.in_side}), "
                             f"got {tuple(x_BCss.shape)}")
        B, C = x_BCss.shape[:2]
        if cfg.name == "random":
            y = torch.sin(cfg.lipschitz * x_BCss.flatten(1) @ self.W.T) @ self.U.T
            return y.reshape(B, C, cfg.out_side, cfg.out_side)
        u = self.up(x_BCss)
        if cfg.name == "blur":       # separable Gaussian, zero padding
            p = self.blur_k.shape[-1] // 2
            u = u.reshape(B * C, 1, *u.shape[-2:])
            u = F.conv2d(F.conv2d(u, self.blur_k[..., None, :], padding=(0, p)), self.blur_k[..., :, None],
                         padding=(p, 0))
            return u.reshape(B, C, *u.shape[-2:])
        if cfg.name == "shift":
            return torch.roll(u, shifts=(cfg.shift, cfg.shift), dims=(-2, -1))
        if cfg.name == "flip":
            return u.flip(-1)
        if cfg.name == "center":     # remove the global mean of each image and channel
            return u - u.mean((-2, -1), keepdim=True)
        gxy = F.conv2d(u.reshape(B * C, 1, *u.shape[-2:]), self.sobel, padding=1)   # edge magnitude
        return gxy.square().sum(1).add(1e-6).sqrt().reshape(B, C, *u.shape[-2:])

    @torch.no_grad()
    def lipschitz_bound(self) -> float:
        """An upper bound on the L2 -> L2 Lipschitz constant (exact for the linear maps)."""
        cfg = self.cfg
        if cfg.name == "random":
            return float(cfg.lipschitz)   # |U|_2 = |W|_2 = 1 and sin is 1-Lipschitz
        n = cfg.channels * cfg.in_side ** 2
        basis = torch.eye(n).reshape(n, cfg.channels, cfg.in_side, cfg.in_side)
        if cfg.name == "edge":            # |(gx, gy)| per pixel is 1-Lipschitz in (gx, gy): bound by the linear part
            u = self.up(basis)
            J = F.conv2d(u.reshape(-1, 1, *u.shape[-2:]), self.sobel, padding=1).reshape(n, -1)
        else:
            J = self(basis).reshape(n, -1) - self(torch.zeros_like(basis[:1])).reshape(1, -1)
        return float(torch.linalg.matrix_norm(J.double(), ord=2))


@dataclass(frozen=True)
class FitConfig:
    model: UniversalConfig = field(default_factory=UniversalConfig)
    target: MapConfig = field(default_factory=MapConfig)

    def __post_init__(self):
        if not isinstance(self.model, UniversalConfig) or not isinstance(self.target, MapConfig):
            raise ValueError("FitConfig takes a UniversalConfig and a MapConfig")
        m, t = self.model, self.target
        if (t.in_side, t.out_side, t.channels) != (m.schedule[0], m.schedule[-1], m.channels):
            raise ValueError(f"map sides/channels ({t.in_side} -> {t.out_side}, {t.channels}) must match the model's "
                             f"schedule {m.schedule} and channels {m.channels}")


class MapFit(nn.Module):
    """Trains a universality model on a target map through the shared loop: ``forward(x, y)`` area-resizes
    the images to the input side, applies the map and returns the model's loss (labels are unused)."""

    def __init__(self, config: FitConfig):
        super().__init__()
        self.config = config
        self.model = make_model(config.model)
        self.target = LipschitzMap(config.target)

    def inputs(self, x_BCHW: torch.Tensor) -> torch.Tensor:
        return resize(x_BCHW, self.config.model.schedule[0])

    def forward(self, x_BCHW: torch.Tensor, y_B: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        x = self.inputs(x_BCHW)
        with torch.no_grad():
            t = self.target(x)
        return self.model.loss(x, t)

    @torch.no_grad()
    def evaluate(self, x_NCHW: torch.Tensor, batch_size: int = 256, seed: int = 0) -> dict:
        """Test error of the fitted map: MSE and MSE relative to the target's variance, plus logit stats."""
        was = self.training
        self.eval()
        se, var, n, stats = 0.0, 0.0, 0, {"max_logit": 0.0, "B": 0.0}
        mean = self.target(self.inputs(x_NCHW)).mean(0, keepdim=True)
        for i in range(0, len(x_NCHW), batch_size):
            x = self.inputs(x_NCHW[i:i + batch_size])
            t = self.target(x)
            p = self.model.predict(x, seed=seed + i)
            se += float((p - t).square().sum())
            var += float((t - mean).square().sum())
            n += t.numel()
            st = self.model.trunk.logit_stats(x)
            stats = {k: max(stats[k], st[k]) for k in ("max_logit", "B")} | {k: st[k] for k in st
                                                                            if k not in ("max_logit", "B")}
        self.train(was)
        return {"mse": se / n, "relative_mse": se / max(var, 1e-12), **stats}
