"""Train FlowAR's autoencoder, then FlowAR, through the shared training loop."""
from __future__ import annotations

from pathlib import Path

import torch

from nextscale.autoencoder import conv_ae_config
from nextscale.backbone import BackboneConfig
from nextscale.data import ImageData
from nextscale.train import TrainConfig, train

from .autoencoder import AEConfig, ContinuousAE
from .model import FlowAR, FlowARConfig


def default_configs(data: ImageData, backbone: BackboneConfig) -> tuple[AEConfig, FlowARConfig]:
    """A small VAE whose latent has ``backbone.in_dim`` channels at the schedule's last side (image
    side / 2**d), and FlowAR on ``backbone`` (the digits default: 8 channels, side 8)."""
    ae = AEConfig(conv_ae_config(data, backbone), kind="vae", kl_weight=1e-4)
    return ae, FlowARConfig(ae=ae, backbone=backbone)


def default_train_configs(seed: int = 0, ae_steps: int = 300, flowar_steps: int = 600, progress: bool = True
                          ) -> tuple[TrainConfig, TrainConfig]:
    """(autoencoder, FlowAR) training configs sized for digits on 2 CPU cores (about 1 and 5 minutes
    unloaded). FlowAR: batch 32, EMA 0.99 (the EMA weights are the ones returned)."""
    ae = TrainConfig(steps=ae_steps, batch_size=64, lr=2e-3, warmup_steps=20, seed=seed, progress=progress)
    fl = TrainConfig(steps=flowar_steps, batch_size=32, lr=1e-3, warmup_steps=50, ema_decay=0.99, seed=seed,
                     progress=progress)
    return ae, fl


def train_autoencoder(data: ImageData, cfg: AEConfig, train_cfg: TrainConfig, ckpt_path: str | Path | None = None,
                      device: str | torch.device | None = None) -> ContinuousAE:
    """Train (or reload a finished checkpoint of) the autoencoder (initialised from ``train_cfg.seed``),
    then set its latent scale factor
    from the training split. The checkpoint is written before calibration; calibration is a
    deterministic function of the weights and the data, so a reused checkpoint gets the same factor."""
    with torch.random.fork_rng(devices=[]):  # seeded init that leaves the caller's RNG alone
        torch.manual_seed(train_cfg.seed)
        model = ContinuousAE(cfg)
    res = train(model, data.x_train, data.y_train, train_cfg, ckpt_path=ckpt_path, device=device, desc="flowar-ae")
    ae = res.best.eval()
    ae.calibrate(data.x_train)
    return ae


def train_flowar(data: ImageData, autoencoder: ContinuousAE, cfg: FlowARConfig, train_cfg: TrainConfig,
                 ckpt_path: str | Path | None = None, device: str | torch.device | None = None) -> FlowAR:
    """Train (or reload) FlowAR (initialised from ``train_cfg.seed + 1``) on the frozen ``autoencoder``;
    returns the EMA weights when kept. The checkpoint holds the autoencoder too."""
    if data.num_classes != cfg.backbone.num_classes:
        raise ValueError(f"data has {data.num_classes} classes but backbone.num_classes is {cfg.backbone.num_classes}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(train_cfg.seed + 1)
        model = FlowAR(cfg, autoencoder)
    res = train(model, data.x_train, data.y_train, train_cfg, ckpt_path=ckpt_path, device=device, desc="flowar")
    return res.best.eval()


@torch.no_grad()
def recon_mse(autoencoder: ContinuousAE, x_NCHW: torch.Tensor, batch_size: int = 256) -> float:
    """Mean squared reconstruction error (encode with the posterior mean, decode) over ``x``."""
    autoencoder.eval()
    dev = autoencoder.scale_factor.device
    tot = sum(float((autoencoder.reconstruct(x_NCHW[i:i + batch_size].to(dev)) - x_NCHW[i:i + batch_size].to(dev))
                    .pow(2).sum()) for i in range(0, len(x_NCHW), batch_size))
    return tot / x_NCHW.numel()


@torch.no_grad()
def flow_losses(model: FlowAR, x_NCHW: torch.Tensor, y_N: torch.Tensor, seed: int = 0, batch_size: int = 256) -> dict:
    """The training objective (noise, t drawn from ``seed``; no label dropout) averaged over ``x``:
    ``{"loss": ..., "flow_s1": ..., ...}``."""
    was_training = model.training
    model.eval()
    torch.manual_seed(seed)
    sums: dict[str, float] = {}
    for i in range(0, len(x_NCHW), batch_size):
        xb, yb = x_NCHW[i:i + batch_size].to(model.device), y_N[i:i + batch_size].to(model.device)
        for k, v in model(xb, yb).items():
            sums[k] = sums.get(k, 0.0) + float(v) * len(xb)
    model.train(was_training)
    return {k: v / len(x_NCHW) for k, v in sums.items()}
