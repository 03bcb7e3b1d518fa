"""Train FlowAR's autoencoder, then FlowAR, through the shared training loop; FlowAR's published recipe."""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import torch

from nextscale.autoencoder import conv_ae_config
from nextscale.backbone import BackboneConfig
from nextscale.data import ImageData
from nextscale.scales import doubling_schedule
from nextscale.stages import Stage, Trained, train_stages
from nextscale.train import TrainConfig, train

from .autoencoder import AEConfig, ContinuousAE
from .heads import TRANSFORMER_HEADS
from .model import FlowAR, FlowARConfig
from .sampling import PAPER_SAMPLING  # noqa: F401  (FlowAR's sampler, where the recipe is)


def default_configs(data: ImageData, backbone: BackboneConfig) -> tuple[AEConfig, FlowARConfig]:
    """A small VAE whose latent has ``backbone.in_dim`` channels at the schedule's last side (image
    side / 2**d), and FlowAR on ``backbone`` (the digits default: 8 channels, side 8)."""
    ae = AEConfig(conv_ae_config(data, backbone), kind="vae", kl_weight=1e-4)
    return ae, FlowARConfig(ae=ae, backbone=backbone)


def flowar_paper_configs(data: ImageData, backbone: BackboneConfig, head: str = "transformer"
                         ) -> tuple[AEConfig, FlowARConfig]:
    """FlowAR's published recipe on ``backbone``'s width, depth and heads: the doubling schedule ending
    at the latent side, FlowAR's released transformer head (integer time index) at the backbone's width
    with 2 blocks (the S model's depth), pure-noise source at every scale, uniform t per (image, scale),
    the release's next-scale input (bicubic to the full latent side, then area down), scale k weighted
    n_k / n_K. ``head="mlp"`` swaps in MAR's per-token head and keeps everything else. Sample with
    :data:`PAPER_SAMPLING`."""
    bb = replace(backbone, schedule=doubling_schedule(backbone.schedule[-1]))
    ae, _ = default_configs(data, bb)
    return ae, FlowARConfig(ae=ae, backbone=bb, head=head, head_width=bb.width, head_depth=2, path="noise",
                            input_resize="via_full", t_per="scale", t_sampling="uniform", loss_weight="tokens",
                            head_time="index" if head in TRANSFORMER_HEADS else "continuous")


def flowar_release_configs(data: ImageData, backbone: BackboneConfig, size: str = "S"
                           ) -> tuple[AEConfig, FlowARConfig]:
    """:func:`flowar_paper_configs` with the head of a released size (``flowar.release.RELEASE_SIZES``):
    S 2 blocks of width 1024, L 12 x 1024 and H 12 x 1536 with cross-attention blocks; head dim 64.
    The AR transformer is ``backbone`` (the release's own sizes are in ``RELEASE_SIZES`` for reference).
    Sample with ``RELEASE_SAMPLING[size]``."""
    from .release import RELEASE_SIZES
    if size not in RELEASE_SIZES:
        raise ValueError(f"size must be one of {tuple(RELEASE_SIZES)}, got {size!r}")
    r = RELEASE_SIZES[size]
    ae, fl = flowar_paper_configs(data, backbone)
    return ae, replace(fl, head=r["head"], head_width=r["head_width"], head_depth=r["head_depth"],
                       head_heads=r["head_width"] // 64)


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


def train_family(data: ImageData, ae_cfg: AEConfig, fl_cfg: FlowARConfig, ae_train: TrainConfig, fl_train: TrainConfig,
                 folder: str | Path, device: str | torch.device | None = None,
                 names: tuple[str, str] = ("autoencoder", "flowar")) -> Trained:
    """Train (or reuse) the autoencoder, then FlowAR on it, with checkpoints in ``folder`` keyed by
    everything that shapes their weights and named ``names`` (autoencoder, generator)."""
    return train_stages(data, Stage(names[0], ae_cfg, ae_train, train_autoencoder),
                        Stage(names[1], fl_cfg, fl_train, train_flowar), folder, device)


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
