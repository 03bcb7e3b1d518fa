"""FlowAR's continuous tokenizer: the shared conv encoder/decoder with an identity (AE) or KL (VAE)
bottleneck, and latents normalised by a measured scale factor (as Stable Diffusion's VAE).

``encode(x)`` returns ``scale_factor * z`` where z is the (VAE: mean) latent and ``scale_factor`` =
1 / std of the raw latents on the training data, measured by :meth:`ContinuousAE.calibrate`, so the
flow model sees latents of unit variance; ``decode`` undoes it.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F

from nextscale.autoencoder import ConvAEConfig, check_images, coder_config, make_coder
from nextscale.config import check_choice, check_float

KINDS = ("ae", "vae")


@dataclass(frozen=True)
class AEConfig:
    ae: ConvAEConfig = field(default_factory=ConvAEConfig)
    kind: str = "vae"          # "ae": identity bottleneck; "vae": Gaussian posterior + KL to N(0, I)
    kl_weight: float = 1e-4    # weight of the KL term (per latent element, like the MSE); vae only

    def __post_init__(self):
        object.__setattr__(self, "ae", coder_config(self.ae))  # a dict: loaded from plain data
        check_choice("kind", self.kind, KINDS)
        check_float("kl_weight", self.kl_weight, 0)

    @property
    def latent_channels(self) -> int:
        return self.ae.latent_channels

    @property
    def latent_side(self) -> int:
        return self.ae.latent_side


class ContinuousAE(nn.Module):
    def __init__(self, config: AEConfig = AEConfig()):
        super().__init__()
        if not isinstance(config, AEConfig):
            raise ValueError(f"config must be an AEConfig, got {type(config).__name__}")
        self.config = config
        C = config.latent_channels
        self.encoder, self.decoder = make_coder(config.ae, out_channels=2 * C if config.kind == "vae" else C)
        self.register_buffer("scale_factor", torch.ones(()))  # set by calibrate(); saved with the weights

    def check_images(self, x_BCHW: torch.Tensor, name: str = "images", finite: bool = False) -> None:
        check_images(x_BCHW, self.config.ae.image_channels, self.config.ae.image_side, name, finite)

    def _moments(self, x_BCHW):
        """Raw (unnormalised) latent mean and log-variance (None for the plain AE)."""
        h = self.encoder(x_BCHW)
        if self.config.kind == "ae":
            return h, None
        mean, logvar = h.chunk(2, dim=1)
        return mean, logvar.clamp(-30.0, 20.0)

    def forward(self, x_BCHW: torch.Tensor, y_B: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Training losses (``y`` is unused: the tokenizer is unconditional)."""
        self.check_images(x_BCHW)
        mean, logvar = self._moments(x_BCHW)
        if logvar is None:
            z, kl = mean, mean.new_zeros(())
        else:
            z = mean + torch.exp(0.5 * logvar) * torch.randn_like(mean)
            kl = 0.5 * (mean.pow(2) + logvar.exp() - 1 - logvar).mean()
        recon_mse = F.mse_loss(self.decoder(z), x_BCHW)
        return {"loss": recon_mse + self.config.kl_weight * kl, "recon_mse": recon_mse, "kl": kl}

    def encode(self, x_BCHW: torch.Tensor) -> torch.Tensor:
        """Images (B, C_img, S, S) in [-1, 1] -> normalised latents (B, C, s, s); deterministic (VAE: mean)."""
        self.check_images(x_BCHW)
        return self._moments(x_BCHW)[0] * self.scale_factor

    def decode(self, z_BCHW: torch.Tensor) -> torch.Tensor:
        """Normalised latents -> images."""
        C, s = self.config.latent_channels, self.config.latent_side
        if z_BCHW.dim() != 4 or tuple(z_BCHW.shape[1:]) != (C, s, s):
            raise ValueError(f"latents must have shape (B, {C}, {s}, {s}), got {tuple(z_BCHW.shape)}")
        return self.decoder(z_BCHW / self.scale_factor)

    @torch.no_grad()
    def calibrate(self, x_NCHW: torch.Tensor, batch_size: int = 256) -> float:
        """Set ``scale_factor`` = 1 / std of the raw latents of ``x`` (all elements); returns it."""
        self.check_images(x_NCHW)
        was_training = self.training
        self.eval()
        dev = self.scale_factor.device
        z = torch.cat([self._moments(x_NCHW[i:i + batch_size].to(dev))[0].double()
                       for i in range(0, len(x_NCHW), batch_size)])
        self.scale_factor.fill_(1.0 / float(z.std()))
        self.train(was_training)
        return float(self.scale_factor)

    @torch.no_grad()
    def reconstruct(self, x_BCHW: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x_BCHW))
