"""VAR's tokenizer on another autoencoder's latent: the multi-scale residual quantizer (one codebook, the
phi convs: :class:`var.tokenizer.MultiScaleVQVAE`) trained on the frozen latent of FlowAR's continuous
autoencoder (:class:`flowar.autoencoder.ContinuousAE`), decoding through that autoencoder's decoder.

With it VAR's discrete head and FlowAR's flow head read one latent, so the comparison can tell the
latent from the head (FlowAR's paper ablates its tokenizer the same way; HART's hybrid tokenizer,
Tang et al. 2025, quantizes a continuous autoencoder's latent with VAR's quantizer too). Training is
VAR's VQ loss alone (codebook + commitment, averaged over scales): the encoder and decoder are frozen,
so VAR's reconstruction and straight-through terms have nothing to train. The quantizer reads the
autoencoder's normalised latent (unit variance, as FlowAR's generator sees it); :func:`train_latent_tokenizer`
trains it through the shared loop, :func:`train_family` trains the autoencoder, the quantizer and VAR on them.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F

from flowar.autoencoder import AEConfig, ContinuousAE
from flowar.pipeline import train_autoencoder
from nextscale.config import config_as, config_to_dict
from nextscale.data import ImageData
from nextscale.stages import Stage, Trained, train_stages
from nextscale.train import TrainConfig, train
from var.model import VAR, VARConfig
from var.pipeline import train_var
from var.tokenizer import MultiScaleVQVAE, VQConfig, usage_stats


@dataclass(frozen=True)
class LatentVQConfig(VQConfig):
    frozen_ae: AEConfig = field(default_factory=AEConfig)  # the autoencoder whose latent is quantized

    def __post_init__(self):
        if isinstance(self.frozen_ae, dict):  # loaded from plain data
            object.__setattr__(self, "frozen_ae", AEConfig(**self.frozen_ae))
        if not isinstance(self.frozen_ae, AEConfig):
            raise ValueError(f"frozen_ae must be an AEConfig, got {type(self.frozen_ae).__name__}")
        super().__post_init__()
        if self.ae != self.frozen_ae.ae:
            raise ValueError("ae must equal frozen_ae.ae: the quantizer reads the frozen autoencoder's latent "
                             "(build the config with latent_vq_config)")


def latent_vq_config(frozen_ae: AEConfig, vq: VQConfig) -> LatentVQConfig:
    """``vq``'s quantizer settings (schedule, vocabulary, phi convs ...) on ``frozen_ae``'s latent."""
    return config_as(LatentVQConfig, vq, ae=frozen_ae.ae, frozen_ae=frozen_ae)


class LatentVQ(MultiScaleVQVAE):
    """:class:`MultiScaleVQVAE` whose encoder and decoder are a frozen :class:`ContinuousAE`'s."""

    def __init__(self, config: LatentVQConfig):
        if not isinstance(config, LatentVQConfig):
            raise ValueError(f"config must be a LatentVQConfig, got {type(config).__name__}")
        super().__init__(config)

    def build_coder(self, config: LatentVQConfig) -> None:
        self.autoencoder = ContinuousAE(config.frozen_ae).requires_grad_(False)

    def load_autoencoder(self, autoencoder: ContinuousAE) -> "LatentVQ":
        """Copy a trained autoencoder of ``config.frozen_ae`` in (weights and latent scale factor)."""
        if not isinstance(autoencoder, ContinuousAE) or \
                config_to_dict(autoencoder.config) != config_to_dict(self.config.frozen_ae):
            raise ValueError("autoencoder must be a ContinuousAE of config.frozen_ae")
        self.autoencoder.load_state_dict(autoencoder.state_dict())
        return self

    def train(self, mode: bool = True):
        super().train(mode)
        self.autoencoder.eval()
        return self

    def latent(self, x_BCHW: torch.Tensor) -> torch.Tensor:
        return self.autoencoder.encode(x_BCHW)

    def decode_latent(self, f_hat_BCSS: torch.Tensor) -> torch.Tensor:
        return self.autoencoder.decode(f_hat_BCSS)

    def forward(self, x_BCHW: torch.Tensor, y_B: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Training pass: {loss (the VQ loss), vq_loss, latent_mse |f_hat - f|^2, recon_mse of the decoded
        f_hat, usage, perplexity}."""
        self.check_images(x_BCHW)
        with torch.no_grad():
            f = self.latent(x_BCHW)
        f_hat, tokens, vq_loss, rests = self.quantize(f)
        with torch.no_grad():
            recon = F.mse_loss(self.decode_latent(f_hat), x_BCHW)
        usage, ppl = usage_stats(tokens, self.config.vocab_size)
        if self.training:
            self._update_codebook(tokens, rests)
        return {"loss": vq_loss, "vq_loss": vq_loss.detach(), "latent_mse": F.mse_loss(f_hat, f).detach(),
                "recon_mse": recon, "usage": usage, "perplexity": ppl}


def train_latent_tokenizer(data: ImageData, cfg: LatentVQConfig, train_cfg: TrainConfig,
                           ckpt_path: str | Path | None = None, device: str | torch.device | None = None,
                           base: ContinuousAE | None = None) -> LatentVQ:
    """Train (or reload) VAR's quantizer on the frozen latent of ``base``, a trained autoencoder of
    ``cfg.frozen_ae``; returns it in eval mode. The checkpoint holds the autoencoder."""
    if base is None:
        raise ValueError("train_latent_tokenizer needs base: the trained autoencoder whose latent it quantizes")
    torch.manual_seed(train_cfg.seed)
    model = LatentVQ(cfg).load_autoencoder(base)
    res = train(model, data.x_train, data.y_train, train_cfg, ckpt_path=ckpt_path, device=device, desc="latent vq")
    return res.best.eval()


def train_family(data: ImageData, vq_cfg: LatentVQConfig, var_cfg: VARConfig, tok_train: TrainConfig,
                 var_train: TrainConfig, folder: str | Path, device: str | torch.device | None = None,
                 names: tuple[str, str] = ("latent-tokenizer", "var-latent"), *, base_train: TrainConfig,
                 base_name: str = "flowar-autoencoder", model_cls: type = VAR) -> Trained:
    """Train (or reuse) FlowAR's autoencoder of ``vq_cfg.frozen_ae`` (with ``base_train``, its checkpoint named
    ``base_name`` and keyed as FlowAR's own arms key it, so they share it), VAR's quantizer on its latent,
    then VAR (or ``model_cls``, e.g. :class:`crossfamily.hybrid.HybridVAR`) on the quantizer, checkpoints in
    ``folder`` named ``names`` (quantizer, generator)."""
    return train_stages(data, Stage(names[0], vq_cfg, tok_train, train_latent_tokenizer),
                        Stage(names[1], var_cfg, var_train, partial(train_var, model_cls=model_cls)), folder, device,
                        base=Stage(base_name, vq_cfg.frozen_ae, base_train, train_autoencoder))
