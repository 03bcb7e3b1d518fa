"""The conv encoder and decoder both tokenizers share (VAR's VQ-VAE, FlowAR's AE/VAE).

Two coder families, each a config class with one (encoder, decoder) pair in ``CODER_FAMILIES``: this module's
small ``ConvAEConfig`` (trained on small data in minutes) and ``nextscale.ldm.LDMConfig`` (the
latent-diffusion coder the released VAR and FlowAR tokenizers use).

Encoder: image (B, C_img, S, S) -> latent (B, C_lat, S / 2^down, S / 2^down); the decoder inverts it.
Each head adds only its bottleneck (residual VQ for VAR, identity or KL for FlowAR).
"""
from __future__ import annotations

from dataclasses import dataclass, fields, is_dataclass, replace

import torch
import torch.nn as nn

from .config import check_int, config_from_dict
from .ldm import LDMConfig, LDMDecoder, LDMEncoder


@dataclass(frozen=True)
class ConvAEConfig:
    image_channels: int = 1
    image_side: int = 16
    latent_channels: int = 8
    hidden: int = 64     # channels at full resolution
    down: int = 1        # number of stride-2 downsamplings: latent side = image_side / 2**down
    res_blocks: int = 1  # residual blocks per resolution

    def __post_init__(self):
        check_int("image_channels", self.image_channels, 1)
        check_int("image_side", self.image_side, 1)
        check_int("latent_channels", self.latent_channels, 1)
        check_int("hidden", self.hidden, 8)
        if self.hidden % 8:
            raise ValueError(f"hidden must be a multiple of 8 (GroupNorm groups), got {self.hidden}")
        check_int("down", self.down, 0, 4)
        check_int("res_blocks", self.res_blocks, 0)
        if self.image_side % (2 ** self.down):
            raise ValueError(f"image_side ({self.image_side}) must be divisible by 2**down ({2 ** self.down})")

    @property
    def latent_side(self) -> int:
        return self.image_side // 2 ** self.down


class ResBlock(nn.Module):
    def __init__(self, ch: int):
        super().__init__()
        self.net = nn.Sequential(nn.GroupNorm(8, ch), nn.SiLU(), nn.Conv2d(ch, ch, 3, padding=1),
                                 nn.GroupNorm(8, ch), nn.SiLU(), nn.Conv2d(ch, ch, 3, padding=1))

    def forward(self, x):
        return x + self.net(x)


def _stage(ch: int, n: int) -> list[nn.Module]:
    return [ResBlock(ch) for _ in range(n)]


class Encoder(nn.Module):
    def __init__(self, cfg: ConvAEConfig, out_channels: int | None = None):
        super().__init__()
        h = cfg.hidden
        layers = [nn.Conv2d(cfg.image_channels, h, 3, padding=1), *_stage(h, cfg.res_blocks)]
        for _ in range(cfg.down):
            layers += [nn.Conv2d(h, h, 4, stride=2, padding=1), *_stage(h, cfg.res_blocks)]
        layers += [nn.GroupNorm(8, h), nn.SiLU(), nn.Conv2d(h, out_channels or cfg.latent_channels, 3, padding=1)]
        self.net = nn.Sequential(*layers)

    def forward(self, x_BCHW):
        return self.net(x_BCHW)


class Decoder(nn.Module):
    def __init__(self, cfg: ConvAEConfig):
        super().__init__()
        h = cfg.hidden
        layers = [nn.Conv2d(cfg.latent_channels, h, 3, padding=1), *_stage(h, cfg.res_blocks)]
        for _ in range(cfg.down):
            layers += [nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(h, h, 3, padding=1),
                       *_stage(h, cfg.res_blocks)]
        layers += [nn.GroupNorm(8, h), nn.SiLU(), nn.Conv2d(h, cfg.image_channels, 3, padding=1)]
        self.net = nn.Sequential(*layers)

    def forward(self, z_BCHW):
        return self.net(z_BCHW)


def conv_ae_config(data, backbone, hidden: int = 32, res_blocks: int = 1) -> ConvAEConfig:
    """The conv AE that fits ``data`` (an ImageData) to ``backbone``: ``backbone.in_dim`` latent channels at
    the schedule's last side, which must be the image side over a power of two (d = 0..4 halvings)."""
    if backbone.num_classes != data.num_classes:
        raise ValueError(f"backbone.num_classes ({backbone.num_classes}) must equal the data's ({data.num_classes})")
    latent = backbone.schedule[-1]
    down = (data.side // latent).bit_length() - 1
    if data.side % latent or data.side != latent * 2 ** down or down > 4:
        ok = ", ".join(str(latent * 2 ** d) for d in range(5))
        raise ValueError(f"image side {data.side} must be the schedule's last side {latent} times 2**d, d in 0..4 "
                         f"(image sides {ok}): resize the data (--side) or change the schedule")
    return ConvAEConfig(image_channels=data.channels, image_side=data.side, latent_channels=backbone.in_dim,
                        hidden=hidden, down=down, res_blocks=res_blocks)


def check_images(x_BCHW, channels: int, side: int, name: str = "images", finite: bool = False) -> None:
    """Raise ``ValueError`` naming ``name`` unless it is a float tensor (B, channels, side, side); with
    ``finite``, also unless every value is finite (the first bad index is named) and in [-1, 1]. That scan
    is for user-facing calls (inpainting inputs); training batches were checked when loaded."""
    want = (channels, side, side)
    if not torch.is_tensor(x_BCHW) or x_BCHW.ndim != 4 or tuple(x_BCHW.shape[1:]) != want:
        got = tuple(x_BCHW.shape) if torch.is_tensor(x_BCHW) else type(x_BCHW).__name__
        raise ValueError(f"{name} must have shape (B, {want[0]}, {want[1]}, {want[2]}), got {got}")
    if not x_BCHW.is_floating_point():
        raise ValueError(f"{name} must be a float tensor, got {x_BCHW.dtype}")
    if finite:
        bad = ~torch.isfinite(x_BCHW)
        if bad.any():
            first = tuple(int(i) for i in bad.nonzero()[0])
            raise ValueError(f"{name} holds {int(bad.sum())} NaN/inf values, the first at index {first}")
        lo, hi = float(x_BCHW.min()), float(x_BCHW.max())
        if lo < -1 - 1e-4 or hi > 1 + 1e-4:  # e.g. [0, 255] pixels would come back as values up to 255
            raise ValueError(f"{name} must lie in [-1, 1] (the models' pixel range), got [{lo:.4g}, {hi:.4g}]")


# The coder families: config class -> (encoder class, decoder class).
CODER_FAMILIES = {ConvAEConfig: (Encoder, Decoder), LDMConfig: (LDMEncoder, LDMDecoder)}


def coder_config(value, name: str = "ae"):
    """A coder config as given, or rebuilt from its plain data (a checkpoint's): the family that has all
    the dict's fields. ``ValueError`` naming ``name`` for anything else."""
    names = ", ".join(c.__name__ for c in CODER_FAMILIES)
    if isinstance(value, tuple(CODER_FAMILIES)):
        return value
    if isinstance(value, dict):
        for cls in CODER_FAMILIES:
            if set(value) <= {f.name for f in fields(cls)}:
                return config_from_dict(cls, value)
        raise ValueError(f"{name} fits no coder family ({names}): fields {sorted(value)}")
    raise ValueError(f"{name} must be one of {names}, got {type(value).__name__}")


def make_coder(cfg, out_channels: int | None = None) -> tuple[nn.Module, nn.Module]:
    """(encoder, decoder) of a coder config; ``out_channels``: the encoder's (e.g. 2 x latent for a
    Gaussian posterior)."""
    enc, dec = CODER_FAMILIES[type(cfg)]
    return enc(cfg, out_channels), dec(cfg)


def ldm_coder_for(cfg: ConvAEConfig, ch: int = 128) -> LDMConfig:
    """The ldm coder (VAR's VQVAE design: ch_mult (1, 1, 2, 2, 4) cut to the stride, 2 blocks per level,
    attention at the lowest resolution, 3x3 quant convs) with ``cfg``'s image and latent shapes."""
    mult = (1, 1, 2, 2, 4)[:cfg.down + 1]
    return LDMConfig(image_channels=cfg.image_channels, image_side=cfg.image_side,
                     latent_channels=cfg.latent_channels, z_channels=cfg.latent_channels, ch=ch, ch_mult=mult)


# The autoencoders' coder family by name (the commands' --coder): this module's small conv coder as built, or
# the ldm coder the releases use with the same image and latent shapes.
CODERS = {"conv": lambda cfg: cfg, "ldm": ldm_coder_for}


def with_coder(cfg, swap):
    """``cfg`` (a dataclass config) with every :class:`ConvAEConfig` inside it, at any depth, replaced by
    ``swap(it)``; rebuilt in one step per level, so checks that tie fields together (a latent quantizer's
    ``ae`` equals its ``frozen_ae.ae``) see the new values together."""
    changes = {}
    for f in fields(cfg):
        v = getattr(cfg, f.name)
        new = swap(v) if isinstance(v, ConvAEConfig) else with_coder(v, swap) if is_dataclass(v) else v
        if new is not v:
            changes[f.name] = new
    return replace(cfg, **changes) if changes else cfg
