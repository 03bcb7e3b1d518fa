"""The hybrid of discrete and continuous next-scale generation (HART, Tang et al. 2025, "Efficient Visual
Generation with Hybrid Autoregressive Transformer"): VAR's discrete tokens carry the image's structure,
and a small per-token flow head generates the continuous residual they leave, ``r = z - z_hat`` (z the
continuous latent, z_hat the tokens' sum), conditioned on the backbone's output at the last scale and
on the tokens drawn there.

Here: :class:`var.model.VAR` on a :class:`crossfamily.latent.LatentVQ` (VAR's quantizer on FlowAR's frozen
autoencoder), plus MAR's per-token MLP head (:class:`flowar.heads.MLPHead`) trained by flow matching
from noise (t = 0) to r (t = 1) on the condition ``h_K + Linear(z_hat)``. Loss: VAR's token CE +
``residual_weight`` x the residual's flow-matching MSE. Sampling: the tokens as VAR, then
``residual_steps`` Euler steps (:func:`flowar.solvers.solve`, every evaluation counted as head NFE of
the last scale) with the last scale's guidance weight. HART's residual head is a diffusion MLP
sampled in 8 steps; this one is a flow, the project's other heads' objective.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from flowar.heads import MLPHead
from flowar.solvers import SolverConfig, path_sample, solve
from nextscale.config import check_float, check_int
from nextscale.guidance import guide
from var.model import VAR, VARConfig, VARSampling

from .latent import LatentVQ


@dataclass(frozen=True)
class HybridConfig(VARConfig):
    residual_width: int | None = None  # the residual head's width (None: the backbone's)
    residual_depth: int = 3            # its residual MLP blocks
    residual_weight: float = 1.0       # of the residual's flow loss against the token CE

    def __post_init__(self):
        super().__post_init__()
        if self.residual_width is not None:
            check_int("residual_width", self.residual_width, 1)
        check_int("residual_depth", self.residual_depth, 1)
        check_float("residual_weight", self.residual_weight, 0)


@dataclass(frozen=True)
class HybridSampling(VARSampling):
    """:class:`VARSampling` plus ``residual_steps``: Euler steps of the residual flow (HART: 8)."""
    residual_steps: int = 8

    def __post_init__(self):
        super().__post_init__()
        check_int("residual_steps", self.residual_steps, 1, 10_000)


class HybridVAR(VAR):
    sampling_cls = HybridSampling

    def __init__(self, config: HybridConfig, tokenizer: LatentVQ):
        if not isinstance(config, HybridConfig):
            raise ValueError(f"config must be a HybridConfig, got {type(config).__name__}")
        if not isinstance(tokenizer, LatentVQ):
            raise ValueError(f"tokenizer must be a LatentVQ (a continuous latent leaves a residual), got "
                             f"{type(tokenizer).__name__}")
        super().__init__(config, tokenizer)
        C, W = tokenizer.config.latent_channels, config.backbone.width
        self.token_proj = nn.Linear(C, W)  # the drawn tokens' latent, added to the condition
        self.residual_head = MLPHead(C, W, config.residual_width or W, config.residual_depth)

    def _residual_condition(self, h_BnW: torch.Tensor, f_hat_BCSS: torch.Tensor) -> torch.Tensor:
        z_hat = f_hat_BCSS.flatten(2).transpose(1, 2)
        return self.residual_head.condition(h_BnW + self.token_proj(z_hat.repeat(len(h_BnW) // len(z_hat), 1, 1)),
                                            self.num_scales - 1)

    def forward(self, x_BCHW: torch.Tensor, y_B: torch.Tensor) -> dict[str, torch.Tensor]:
        """Token CE (as VAR) + the residual's flow loss: {"loss", "ce_s1".."ce_sK", "residual_flow"}."""
        tok = self.tokenizer
        tok.check_images(x_BCHW)
        with torch.no_grad():
            f = tok.latent(x_BCHW)
            f_hat, tokens, _, _ = tok.quantize(f)
        out, h_BLW = self.token_loss(tokens, y_B, return_hidden=True)
        r_BnC = (f - f_hat).flatten(2).transpose(1, 2)
        t_B = torch.rand(len(r_BnC), device=r_BnC.device)
        x_t, v_target = path_sample(torch.randn_like(r_BnC), r_BnC, t_B)
        c = self._residual_condition(h_BLW[:, self.slices[-1]], f_hat)
        v = self.residual_head.velocity(x_t, t_B[:, None], c, self.num_scales - 1)
        flow = (v.float() - v_target).pow(2).mean()
        out["loss"] = out["loss"] + self.config.residual_weight * flow
        out["residual_flow"] = flow.detach()
        return out

    def _finish(self, f_hat_BCSS, h_BnW, w: float, sp: HybridSampling, g: torch.Generator):
        """The residual flow from noise, then the decoded image; returns (images, head NFE it took)."""
        B, C, S, _ = f_hat_BCSS.shape
        guided, k = len(h_BnW) == 2 * B, self.num_scales - 1
        c = self._residual_condition(h_BnW, f_hat_BCSS)
        t_11 = torch.zeros(1, 1, device=c.device)

        def velocity(t, x, rows):
            t_11.fill_(float(t))
            if not guided:
                return self.residual_head.velocity(x, t_11, c, k)
            v_c, v_u = self.residual_head.velocity(torch.cat([x, x]), t_11, c, k).chunk(2)
            return guide(v_c, v_u, w)

        x0 = torch.randn(B, S * S, C, device=c.device, generator=g)
        sol = solve(velocity, x0, SolverConfig("euler", sp.residual_steps), cost=lambda t: 2 if guided else 1)
        f = f_hat_BCSS + sol.x.transpose(1, 2).reshape(B, C, S, S)
        return self.tokenizer.decode_latent(f).clamp(-1, 1), sol.nfe[0]

    @torch.no_grad()
    def reconstruct(self, x_BCHW: torch.Tensor) -> torch.Tensor:
        """Tokens plus the exact residual: the continuous autoencoder's own reconstruction (this arm's
        ceiling; the tokens alone are :meth:`LatentVQ.reconstruct`)."""
        return self.tokenizer.autoencoder.reconstruct(x_BCHW)
