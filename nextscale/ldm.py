"""The latent-diffusion convolutional autoencoder (Rombach et al. 2022, the ``ldm`` model both releases
build on): ResNet blocks with GroupNorm(32) and swish, stride-2 convs down, nearest-neighbour + conv up, a
self-attention block in the middle, and quant / post-quant convs around the latent.

One config expresses both released tokenizers' coders:

- VAR's VQVAE (Tian et al. 2024, ``models/basic_vae.py``): ch 160, ch_mult (1, 1, 2, 2, 4), 2 blocks per
  level, z 32, attention after every block of the lowest-resolution level in the encoder and decoder,
  3x3 quant convs (:func:`var_vqvae_coder`);
- MAR's KL-16 VAE that FlowAR uses (Li et al. 2024, ``models/vae.py``): ch 128, the same ch_mult, z 16,
  level attention in the encoder only, 1x1 quant convs, a Gaussian posterior (:func:`mar_kl16_coder`).

Parameter names follow the release code (``encoder.down.0.block.1.conv2``, ``mid.attn_1``, ...) so a
release state dict maps onto these modules by prefix; the attention's q, k and v are one ``qkv`` conv
(VAR's layout; MAR's three convs are stacked by :mod:`flowar.release`). The encoder module ends with the
quant conv and the decoder starts with the post-quant conv, so each maps image <-> latent on its own.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import torch
import torch.nn as nn
import torch.nn.functional as F

from .config import check_bool, check_choice, check_float, check_int
from .release import count_under, state_shape


@dataclass(frozen=True)
class LDMConfig:
    image_channels: int = 3
    image_side: int = 256
    latent_channels: int = 32         # channels after the quant conv (VAR's Cvae; MAR's embed_dim)
    z_channels: int = 32              # channels of the encoder's last conv / the decoder's first
    ch: int = 128                     # channels at full resolution
    ch_mult: tuple[int, ...] = (1, 1, 2, 2, 4)  # per level; len - 1 stride-2 downsamplings
    res_blocks: int = 2               # per encoder level (decoder levels have one more, as in ldm)
    encoder_level_attn: bool = True   # attention after each block of the lowest-resolution level
    decoder_level_attn: bool = True
    quant_kernel: int = 3             # quant / post-quant conv kernel (VAR 3, MAR 1)
    dropout: float = 0.0

    def __post_init__(self):
        check_int("image_channels", self.image_channels, 1)
        check_int("image_side", self.image_side, 1)
        check_int("latent_channels", self.latent_channels, 1)
        check_int("z_channels", self.z_channels, 1)
        check_int("ch", self.ch, 32)
        if not isinstance(self.ch_mult, (tuple, list)) or not self.ch_mult:
            raise ValueError(f"ch_mult must be a non-empty tuple of positive ints, got {self.ch_mult!r}")
        object.__setattr__(self, "ch_mult", tuple(self.ch_mult))
        for m in self.ch_mult:
            check_int("ch_mult", m, 1)
        if any(self.ch * m % 32 for m in self.ch_mult):
            raise ValueError(f"ch * ch_mult must be multiples of 32 (GroupNorm groups), got ch {self.ch}, "
                             f"ch_mult {self.ch_mult}")
        check_int("res_blocks", self.res_blocks, 1)
        check_bool("encoder_level_attn", self.encoder_level_attn)
        check_bool("decoder_level_attn", self.decoder_level_attn)
        check_choice("quant_kernel", self.quant_kernel, (1, 3))
        check_float("dropout", self.dropout, 0, 1, hi_open=True)
        if self.image_side % self.stride:
            raise ValueError(f"image_side ({self.image_side}) must be divisible by the stride {self.stride} "
                             f"(2 ** (len(ch_mult) - 1))")

    @property
    def stride(self) -> int:
        return 2 ** (len(self.ch_mult) - 1)

    @property
    def latent_side(self) -> int:
        return self.image_side // self.stride


def var_vqvae_coder(ch: int = 160, latent_channels: int = 32, image_side: int = 256,
                    ch_mult: tuple[int, ...] = (1, 1, 2, 2, 4)) -> LDMConfig:
    """The coder of VAR's released VQVAE (``vae_ch160v4096z32.pth``)."""
    return LDMConfig(image_side=image_side, latent_channels=latent_channels, z_channels=latent_channels, ch=ch,
                     ch_mult=ch_mult, quant_kernel=3)


def mar_kl16_coder(ch: int = 128, latent_channels: int = 16, image_side: int = 256,
                   ch_mult: tuple[int, ...] = (1, 1, 2, 2, 4)) -> LDMConfig:
    """The coder of MAR's KL-16 VAE (``kl16.ckpt``), FlowAR's tokenizer (build it with a Gaussian posterior)."""
    return LDMConfig(image_side=image_side, latent_channels=latent_channels, z_channels=latent_channels, ch=ch,
                     ch_mult=ch_mult, decoder_level_attn=False, quant_kernel=1)


def ldm_config_from_state(state: Mapping[str, torch.Tensor], latent_side: int, gaussian: bool,
                          what: str) -> LDMConfig:
    """The :class:`LDMConfig` of an ldm-style state dict (``encoder.*``, ``decoder.*``, ``quant_conv``),
    read from its shapes; ``gaussian``: the quant conv carries a mean and a log-variance (MAR's KL VAE).
    ``latent_side`` fixes the image side (it is not in the shapes). ``ValueError`` naming ``what`` if a
    key the reading needs is absent."""
    def shape(key):
        return state_shape(state, key, what, 4)  # conv weights

    def count(prefix):
        return count_under(state, prefix)

    ch, image_channels = shape("encoder.conv_in.weight")[:2]
    levels = count("encoder.down.")
    out, z = shape("quant_conv.weight")[:2]
    mult = 2 if gaussian else 1
    return LDMConfig(image_channels=image_channels, image_side=latent_side * 2 ** (levels - 1),
                     latent_channels=out // mult, z_channels=z // mult, ch=ch,
                     ch_mult=tuple(shape(f"encoder.down.{i}.block.0.conv1.weight")[0] // ch for i in range(levels)),
                     res_blocks=count("encoder.down.0.block."),
                     encoder_level_attn=count(f"encoder.down.{levels - 1}.attn.") > 0,
                     decoder_level_attn=count(f"decoder.up.{levels - 1}.attn.") > 0,
                     quant_kernel=shape("quant_conv.weight")[-1])


def _norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(32, channels, eps=1e-6)


class ResnetBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, dropout: float):
        super().__init__()
        self.norm1, self.conv1 = _norm(c_in), nn.Conv2d(c_in, c_out, 3, padding=1)
        self.norm2, self.conv2 = _norm(c_out), nn.Conv2d(c_out, c_out, 3, padding=1)
        self.dropout = nn.Dropout(dropout)
        self.nin_shortcut = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x_BCHW):
        h = self.conv1(F.silu(self.norm1(x_BCHW)))
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return self.nin_shortcut(x_BCHW) + h


class AttnBlock(nn.Module):
    """Single-head self-attention over the H x W positions, residual."""

    def __init__(self, channels: int):
        super().__init__()
        self.norm = _norm(channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj_out = nn.Conv2d(channels, channels, 1)

    def forward(self, x_BCHW):
        B, C, H, W = x_BCHW.shape
        q, k, v = self.qkv(self.norm(x_BCHW)).flatten(2).transpose(1, 2).chunk(3, dim=-1)  # (B, HW, C) each
        a_BnC = F.scaled_dot_product_attention(q[:, None], k[:, None], v[:, None])[:, 0]
        return x_BCHW + self.proj_out(a_BnC.transpose(1, 2).reshape(B, C, H, W))


class Downsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2)

    def forward(self, x_BCHW):  # ldm pads right and bottom only
        return self.conv(F.pad(x_BCHW, (0, 1, 0, 1)))


class Upsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x_BCHW):
        return self.conv(F.interpolate(x_BCHW, scale_factor=2.0, mode="nearest"))


def _level(c_in: int, c_out: int, blocks: int, attn: bool, dropout: float) -> nn.Module:
    level = nn.Module()
    level.block = nn.ModuleList(ResnetBlock(c_in if i == 0 else c_out, c_out, dropout) for i in range(blocks))
    level.attn = nn.ModuleList(AttnBlock(c_out) for _ in range(blocks if attn else 0))
    return level


def _run_level(level: nn.Module, h):
    for i, blk in enumerate(level.block):
        h = blk(h)
        if len(level.attn):
            h = level.attn[i](h)
    return h


def _mid(channels: int, dropout: float) -> nn.Module:
    mid = nn.Module()
    mid.block_1 = ResnetBlock(channels, channels, dropout)
    mid.attn_1 = AttnBlock(channels)
    mid.block_2 = ResnetBlock(channels, channels, dropout)
    return mid


class LDMEncoder(nn.Module):
    """Image (B, C_img, S, S) -> latent (B, out_channels, S / stride, S / stride), through the quant conv.
    ``out_channels`` = 2 x latent_channels gives a Gaussian posterior's mean and log-variance (ldm's
    double_z: the last conv then has 2 x z_channels too)."""

    def __init__(self, cfg: LDMConfig, out_channels: int | None = None):
        super().__init__()
        out = out_channels or cfg.latent_channels
        double = out // cfg.latent_channels
        if out != double * cfg.latent_channels or double not in (1, 2):
            raise ValueError(f"out_channels must be latent_channels or twice it, got {out}")
        chans = [cfg.ch * m for m in cfg.ch_mult]
        last = len(chans) - 1
        self.conv_in = nn.Conv2d(cfg.image_channels, cfg.ch, 3, padding=1)
        self.down = nn.ModuleList()
        for i, c in enumerate(chans):
            level = _level(chans[i - 1] if i else cfg.ch, c, cfg.res_blocks,
                           cfg.encoder_level_attn and i == last, cfg.dropout)
            if i != last:
                level.downsample = Downsample(c)
            self.down.append(level)
        self.mid = _mid(chans[-1], cfg.dropout)
        self.norm_out = _norm(chans[-1])
        self.conv_out = nn.Conv2d(chans[-1], double * cfg.z_channels, 3, padding=1)
        self.quant_conv = nn.Conv2d(double * cfg.z_channels, out, cfg.quant_kernel, padding=cfg.quant_kernel // 2)

    def forward(self, x_BCHW):
        h = self.conv_in(x_BCHW)
        for level in self.down:
            h = _run_level(level, h)
            if hasattr(level, "downsample"):
                h = level.downsample(h)
        h = self.mid.block_2(self.mid.attn_1(self.mid.block_1(h)))
        return self.quant_conv(self.conv_out(F.silu(self.norm_out(h))))


class LDMDecoder(nn.Module):
    """Latent (B, latent_channels, s, s) -> image, from the post-quant conv on; no output clamp."""

    def __init__(self, cfg: LDMConfig):
        super().__init__()
        chans = [cfg.ch * m for m in cfg.ch_mult]
        last = len(chans) - 1
        k = cfg.quant_kernel
        self.post_quant_conv = nn.Conv2d(cfg.latent_channels, cfg.z_channels, k, padding=k // 2)
        self.conv_in = nn.Conv2d(cfg.z_channels, chans[-1], 3, padding=1)
        self.mid = _mid(chans[-1], cfg.dropout)
        up = []  # built coarse to fine, stored fine to coarse (ldm's order: up[0] is full resolution)
        for i in reversed(range(len(chans))):
            c_in = chans[min(i + 1, last)]
            level = _level(c_in, chans[i], cfg.res_blocks + 1, cfg.decoder_level_attn and i == last, cfg.dropout)
            if i != 0:
                level.upsample = Upsample(chans[i])
            up.insert(0, level)
        self.up = nn.ModuleList(up)
        self.norm_out = _norm(cfg.ch * cfg.ch_mult[0])
        self.conv_out = nn.Conv2d(cfg.ch * cfg.ch_mult[0], cfg.image_channels, 3, padding=1)

    def forward(self, z_BCHW):
        h = self.conv_in(self.post_quant_conv(z_BCHW))
        h = self.mid.block_2(self.mid.attn_1(self.mid.block_1(h)))
        for level in reversed(self.up):
            h = _run_level(level, h)
            if hasattr(level, "upsample"):
                h = level.upsample(h)
        return self.conv_out(F.silu(self.norm_out(h)))
