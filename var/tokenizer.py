"""VAR's multi-scale residual VQ-VAE (Tian et al. 2024, sec. 3.2 and its ``quant.py``).

The shared conv encoder maps an image to a latent ``f`` (B, C, S, S). The residual quantizer walks
the schedule coarse to fine with ONE codebook for all scales::

    f_hat = 0, rest = f
    for k, h_k in enumerate(schedule):
        r_k   = nearest_code(resize(rest, h_k))            # area down, token map (B, h_k, h_k)
        z_k   = phi_k(resize(codebook[r_k], S))            # bicubic up + refinement conv
        f_hat = f_hat + z_k;   rest = rest - z_k

so the quantized latent is the sum of the per-scale contributions ``z_k``, and the decoder sees
``f_hat``. phi_k is one of ``phi_convs`` shared 3x3 convs, picked by the scale's relative position
k / (K - 1) (VAR's ``PhiPartiallyShared``), blended as ``(1 - ratio) * h + ratio * conv(h)``.

Training: reconstruction MSE + VAR's VQ loss, averaged over scales,
``beta * |sg(f_hat_k) - f|^2 + |f_hat_k - sg(f)|^2`` (commitment + codebook), straight-through
gradients to the encoder. The codebook learns from the codebook loss (``codebook="grad"``, as VAR)
or by k-means EMA updates (``codebook="ema"``); either way, codes unused for ``restart_every``
training steps are restarted on random residual vectors of the current batch, so usage does not
collapse (the codebook starts tiny, as in VAR, so the first restart is a data-dependent init).

The backbone's teacher-forcing input for scale k > 1 is the running ``f_hat`` after scales < k,
area-downsampled to h_k, flattened row-major, all such maps concatenated: ``(B, L - h_1^2, C)``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from nextscale.autoencoder import ConvAEConfig, check_images, coder_config, make_coder
from nextscale.config import check_choice, check_float, check_int
from nextscale.scales import UPSAMPLE_MODES, maps_to_seq, num_tokens, resize, validate_schedule

CODEBOOK_KINDS = ("grad", "ema")


@dataclass(frozen=True)
class VQConfig:
    ae: ConvAEConfig = field(default_factory=lambda: ConvAEConfig(latent_channels=8, down=1))
    schedule: tuple[int, ...] = (1, 2, 3, 4, 6, 8)  # must end at ae.latent_side
    vocab_size: int = 512
    beta: float = 0.25              # commitment weight
    vq_weight: float = 1.0          # weight of the VQ loss against the reconstruction MSE
    phi_convs: int = 4              # shared refinement convs, chosen by scale position (VAR: 4)
    phi_residual_ratio: float = 0.5  # phi(h) = (1 - r) h + r conv(h); 0 makes phi the identity
    codebook: str = "grad"          # "grad": learned by the codebook loss (VAR); "ema": k-means EMA
    ema_decay: float = 0.99         # for codebook="ema"
    restart_every: int = 25         # restart codes unused for this many training steps (0: never)
    upsample: str = "bicubic"       # how token maps grow back to the latent side

    def __post_init__(self):
        object.__setattr__(self, "ae", coder_config(self.ae))  # a dict: loaded from plain data
        object.__setattr__(self, "schedule", validate_schedule(self.schedule, self.ae.latent_side))
        check_int("vocab_size", self.vocab_size, 2)
        check_float("beta", self.beta, 0)
        check_float("vq_weight", self.vq_weight, 0)
        check_int("phi_convs", self.phi_convs, 1)
        check_float("phi_residual_ratio", self.phi_residual_ratio, 0, 1)
        check_choice("codebook", self.codebook, CODEBOOK_KINDS)
        check_float("ema_decay", self.ema_decay, 0, 1, hi_open=True)
        check_int("restart_every", self.restart_every, 0)
        check_choice("upsample", self.upsample, UPSAMPLE_MODES)

    @property
    def latent_channels(self) -> int:
        return self.ae.latent_channels

    @property
    def latent_side(self) -> int:
        return self.ae.latent_side


class Phi(nn.Conv2d):
    """VAR's refinement conv: a residual blend of the identity and a 3x3 conv."""

    def __init__(self, channels: int, ratio: float):
        super().__init__(channels, channels, 3, padding=1)
        self.ratio = ratio

    def forward(self, h_BCHW):
        return h_BCHW * (1 - self.ratio) + super().forward(h_BCHW) * self.ratio


def phi_index(k: int, num_scales: int, phi_convs: int) -> int:
    """Which shared phi scale k uses: the one whose tick (evenly spread in (0, 1)) is nearest k/(K-1),
    the first on a tie. As the release (``PhiPartiallyShared``): ticks from 1/(3n) to 1 - 1/(3n) for
    n = 4 convs, from 1/(2n) otherwise, in float64, where its ten-scale schedule has exact ties that
    float32 would break the other way (scales 3 and 8 of 10)."""
    at = k / (num_scales - 1) if num_scales > 1 else 0.0
    edge = 1 / 3 / phi_convs if phi_convs == 4 else 1 / 2 / phi_convs
    return int(np.argmin(np.abs(np.linspace(edge, 1 - edge, phi_convs) - at)))


class MultiScaleVQVAE(nn.Module):
    def __init__(self, config: VQConfig = VQConfig()):
        super().__init__()
        self.config = config
        C, V, K = config.latent_channels, config.vocab_size, len(config.schedule)
        self.build_coder(config)
        self.codebook = nn.Embedding(V, C)
        nn.init.uniform_(self.codebook.weight, -1 / V, 1 / V)  # as VAR; restarts give the real init
        self.phis = nn.ModuleList(Phi(C, config.phi_residual_ratio) for _ in range(config.phi_convs))
        self.phi_of_scale = [phi_index(k, K, config.phi_convs) for k in range(K)]
        if config.codebook == "ema":
            self.codebook.weight.requires_grad_(False)
            self.register_buffer("ema_count", torch.ones(V))
            self.register_buffer("ema_sum", self.codebook.weight.detach().clone())
        self.register_buffer("hits_since_restart", torch.zeros(V))
        self.register_buffer("train_steps", torch.zeros((), dtype=torch.long))

    def build_coder(self, config: VQConfig) -> None:
        """The encoder and decoder around the quantizer (trained with it; :mod:`crossfamily.latent`: a frozen one)."""
        self.encoder, self.decoder = make_coder(config.ae)

    # ---- checks -------------------------------------------------------------------------------
    def check_images(self, x_BCHW: torch.Tensor, name: str = "images", finite: bool = False) -> None:
        check_images(x_BCHW, self.config.ae.image_channels, self.config.ae.image_side, name, finite)

    def check_tokens(self, tokens, min_scales: int | None = None) -> None:
        sch, V = self.config.schedule, self.config.vocab_size
        need = len(sch) if min_scales is None else min_scales
        if not isinstance(tokens, (list, tuple)) or not need <= len(tokens) <= len(sch):
            got = f"length {len(tokens)}" if isinstance(tokens, (list, tuple)) else type(tokens).__name__
            raise ValueError(f"tokens must be a list of {need}..{len(sch)} token maps (one per scale of {sch}), "
                             f"got {got}")
        B = tokens[0].shape[0] if torch.is_tensor(tokens[0]) else None
        for k, (t, s) in enumerate(zip(tokens, sch)):
            if not torch.is_tensor(t) or t.dtype != torch.long or tuple(t.shape) != (B, s, s):
                got = (t.dtype, tuple(t.shape)) if torch.is_tensor(t) else type(t).__name__
                raise ValueError(f"tokens[{k}] must be a long tensor of shape ({B}, {s}, {s}), got {got}")
            if t.numel() and (t.min() < 0 or t.max() >= V):
                raise ValueError(f"tokens[{k}] ids must lie in [0, {V - 1}], got [{int(t.min())}, {int(t.max())}]")

    # ---- the quantizer ------------------------------------------------------------------------
    def nearest(self, z_NC: torch.Tensor) -> torch.Tensor:
        """Index of the closest code (squared L2) for each row."""
        with torch.autocast(z_NC.device.type, enabled=False):  # full precision for the argmin (float32 at least)
            dt = torch.promote_types(torch.promote_types(z_NC.dtype, self.codebook.weight.dtype), torch.float32)
            e_VC, z_NC = self.codebook.weight.to(dt), z_NC.to(dt)
            d_NV = z_NC.pow(2).sum(1, keepdim=True) - 2 * z_NC @ e_VC.t() + e_VC.pow(2).sum(1)
            return d_NV.argmin(1)

    def contribution(self, k: int, idx_Bhw: torch.Tensor) -> torch.Tensor:
        """z_k = phi_k(upsample(codebook[idx])): scale k's term of f_hat, (B, C, S, S)."""
        e_BChw = self.codebook(idx_Bhw).permute(0, 3, 1, 2)
        return self.phis[self.phi_of_scale[k]](resize(e_BChw, self.config.latent_side, self.config.upsample))

    def quantize(self, f_BCSS: torch.Tensor):
        """Residual quantization of a latent. Returns (f_hat, tokens, vq_loss, rests) where rests holds
        the downsampled residual vectors each scale quantized, (N_k, C) per scale."""
        f_ng = f_BCSS.detach()
        rest, f_hat = f_ng.clone(), torch.zeros_like(f_ng)
        tokens, rests, vq_loss = [], [], f_ng.new_zeros(())
        for k, s in enumerate(self.config.schedule):
            r_BChw = resize(rest, s)
            r_NC = r_BChw.permute(0, 2, 3, 1).reshape(-1, r_BChw.shape[1])
            with torch.no_grad():
                idx_Bhw = self.nearest(r_NC).view(-1, s, s)
            z = self.contribution(k, idx_Bhw)
            f_hat = f_hat + z
            rest = rest - z.detach()
            vq_loss = vq_loss + self.config.beta * F.mse_loss(f_hat.detach(), f_BCSS) + F.mse_loss(f_hat, f_ng)
            tokens.append(idx_Bhw)
            rests.append(r_NC)
        return f_hat, tokens, vq_loss / len(self.config.schedule), rests

    @torch.no_grad()
    def _update_codebook(self, tokens, rests) -> None:
        """EMA k-means step (codebook="ema") and dead-code restarts; training only."""
        cfg, W = self.config, self.codebook.weight
        idx_N = torch.cat([t.flatten() for t in tokens])
        r_NC = torch.cat(rests).float()
        hits_V = idx_N.bincount(minlength=cfg.vocab_size).float()
        if cfg.codebook == "ema":
            sums_VC = torch.zeros_like(self.ema_sum).index_add_(0, idx_N, r_NC)
            self.ema_count.lerp_(hits_V, 1 - cfg.ema_decay)
            self.ema_sum.lerp_(sums_VC, 1 - cfg.ema_decay)
            n = self.ema_count.sum()
            count = (self.ema_count + 1e-5) / (n + cfg.vocab_size * 1e-5) * n  # Laplace smoothing
            W.copy_(self.ema_sum / count[:, None])
        self.hits_since_restart += hits_V
        self.train_steps += 1
        if cfg.restart_every and int(self.train_steps) % cfg.restart_every == 0:
            dead = (self.hits_since_restart == 0).nonzero().flatten()
            if len(dead):
                pick = torch.randint(len(r_NC), (len(dead),), device=r_NC.device)
                W[dead] = r_NC[pick].to(W.dtype)
                if cfg.codebook == "ema":
                    self.ema_sum[dead] = W[dead]
                    self.ema_count[dead] = 1.0
            self.hits_since_restart.zero_()

    # ---- public API ---------------------------------------------------------------------------
    def forward(self, x_BCHW: torch.Tensor, y_B: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Training pass: {loss, recon_mse, vq_loss, usage (fraction of codes hit), perplexity}."""
        self.check_images(x_BCHW)
        f = self.encoder(x_BCHW)
        f_hat, tokens, vq_loss, rests = self.quantize(f)
        f_st = f + (f_hat - f).detach()  # straight-through: forward value f_hat, gradient to f
        recon = F.mse_loss(self.decoder(f_st), x_BCHW)
        usage, ppl = usage_stats(tokens, self.config.vocab_size)
        if self.training:
            self._update_codebook(tokens, rests)
        return {"loss": recon + self.config.vq_weight * vq_loss, "recon_mse": recon.detach(),
                "vq_loss": vq_loss.detach(), "usage": usage, "perplexity": ppl}

    @torch.no_grad()
    def encode(self, x_BCHW: torch.Tensor) -> list[torch.Tensor]:
        """Image -> token maps, one (B, h_k, h_k) long tensor per scale."""
        self.check_images(x_BCHW)
        return self.quantize(self.latent(x_BCHW))[1]

    def latent(self, x_BCHW: torch.Tensor) -> torch.Tensor:
        """Image -> the continuous latent f the quantizer reads, (B, C, S, S)."""
        return self.encoder(x_BCHW)

    def tokens_to_latent(self, tokens: list[torch.Tensor]) -> torch.Tensor:
        """f_hat = sum over scales of the contributions z_k, (B, C, S, S)."""
        self.check_tokens(tokens)
        return sum(self.contribution(k, t) for k, t in enumerate(tokens))

    def decode_latent(self, f_hat_BCSS: torch.Tensor) -> torch.Tensor:
        return self.decoder(f_hat_BCSS)

    def decode_tokens(self, tokens: list[torch.Tensor]) -> torch.Tensor:
        """Token maps -> images (B, C_img, S_img, S_img)."""
        return self.decode_latent(self.tokens_to_latent(tokens))

    def next_input(self, k: int, f_hat_BCSS: torch.Tensor, idx_Bhw: torch.Tensor):
        """Add scale k's contribution to f_hat; return (f_hat, backbone input of scale k+1 as
        (B, h_{k+1}^2, C), or None after the last scale). The sampling step of VAR."""
        sch = self.config.schedule
        f_hat_BCSS = f_hat_BCSS + self.contribution(k, idx_Bhw)
        if k + 1 == len(sch):
            return f_hat_BCSS, None
        return f_hat_BCSS, maps_to_seq([resize(f_hat_BCSS, sch[k + 1])])

    def teacher_inputs(self, tokens: list[torch.Tensor]) -> torch.Tensor:
        """Backbone inputs of scales 2..min(n+1, K) from the first n token maps: for each such scale k,
        f_hat after scales < k, area-downsampled to h_k, row-major; concatenated (B, sum h^2, C).
        With all K maps this is the full teacher-forcing input (B, L - h_1^2, C)."""
        self.check_tokens(tokens, min_scales=1)
        B, C, S = tokens[0].shape[0], self.config.latent_channels, self.config.latent_side
        f_hat = self.codebook.weight.new_zeros(B, C, S, S)
        xs = []
        for k, t in enumerate(tokens[:len(self.config.schedule) - 1]):
            f_hat, x_next = self.next_input(k, f_hat, t)
            xs.append(x_next)
        return torch.cat(xs, 1) if xs else f_hat.new_zeros(B, 0, C)

    @torch.no_grad()
    def reconstruct(self, x_BCHW: torch.Tensor) -> torch.Tensor:
        return self.decode_tokens(self.encode(x_BCHW))

    @torch.no_grad()
    def codebook_usage(self, x_NCHW: torch.Tensor, batch_size: int = 256) -> tuple[float, float]:
        """(fraction of codes used, perplexity of the code histogram) over all scales of ``x``."""
        check_int("batch_size", batch_size, 1)
        V = self.config.vocab_size
        hits = torch.zeros(V)
        for i in range(0, len(x_NCHW), batch_size):
            xb = x_NCHW[i:i + batch_size].to(self.codebook.weight.device)
            for t in self.encode(xb):
                hits += t.flatten().bincount(minlength=V).float().cpu()
        return usage_from_hits(hits)

    @property
    def seq_len(self) -> int:
        return num_tokens(self.config.schedule)


def usage_from_hits(hits_V: torch.Tensor) -> tuple[float, float]:
    """(fraction of codes with a hit, perplexity exp(entropy) of the code histogram)."""
    p = hits_V / hits_V.sum().clamp_min(1)
    entropy = -(p * p.clamp_min(1e-12).log()).sum()
    return float((hits_V > 0).float().mean()), float(math.exp(float(entropy)))


def usage_stats(tokens: list[torch.Tensor], vocab_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(fraction of codes hit, perplexity) of one batch of token maps, as scalar tensors."""
    hits = torch.cat([t.flatten() for t in tokens]).bincount(minlength=vocab_size).float()
    usage, ppl = usage_from_hits(hits)
    return hits.new_tensor(usage), hits.new_tensor(ppl)
