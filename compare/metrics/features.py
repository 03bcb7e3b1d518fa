"""One interface for the networks whose features the metrics compare (FID, KID, precision/recall).

A :class:`FeatureNet` maps images in [-1, 1] of shape (B, C, H, W) to feature vectors (B, dim):
the domain classifier (:mod:`compare.metrics.classifier`) and the FID InceptionV3 (:mod:`compare.metrics.inception`).
"""
from __future__ import annotations

import torch
import torch.nn as nn

from nextscale.config import check_int


def check_images(images_BCHW, channels: tuple[int, ...], side: int | None = None) -> torch.Tensor:
    """Validate a batch of images in [-1, 1]; returns it as float, clamped to [-1, 1].

    Small overshoot (a sampler's output past the range) is clamped, as writing a PNG would; a range
    beyond [-2, 2] (e.g. 0..255 pixels) is an error."""
    if not isinstance(images_BCHW, torch.Tensor) or images_BCHW.ndim != 4:
        got = tuple(images_BCHW.shape) if isinstance(images_BCHW, torch.Tensor) else type(images_BCHW).__name__
        raise ValueError(f"images must be a (B, C, H, W) tensor, got {got}")
    B, C, H, W = images_BCHW.shape
    if B == 0:
        raise ValueError("images must hold at least one image")
    if C not in channels:
        raise ValueError(f"images must have {' or '.join(map(str, channels))} channels, got {C}")
    if side is not None and (H, W) != (side, side):
        raise ValueError(f"images must be {side}x{side}, got {H}x{W}")
    x = images_BCHW.float()
    if not torch.isfinite(x).all():
        raise ValueError("images hold non-finite values")
    lo, hi = x.min().item(), x.max().item()
    if lo < -2 or hi > 2:
        raise ValueError(f"images must lie in [-1, 1], got values in [{lo:.3g}, {hi:.3g}]")
    return x.clamp(-1, 1)


def to_8bit(images_BCHW: torch.Tensor) -> torch.Tensor:
    """Images in [-1, 1] rounded to the 256 levels a saved 8-bit PNG holds (``nextscale.viz.save_grid``'s
    mapping): what pytorch-fid and the ADM evaluator score, so numbers are comparable with published ones."""
    return ((images_BCHW.float().clamp(-1, 1) + 1) * 127.5).round() / 127.5 - 1


class FeatureNet(nn.Module):
    """A frozen feature network. Subclasses set ``name``, ``dim``, ``channels`` (accepted channel counts),
    optionally ``side`` (required image side), and implement :meth:`embed` on one batch."""

    name: str = "features"
    dim: int
    channels: tuple[int, ...] = (1, 3)
    side: int | None = None

    def embed(self, x_BCHW: torch.Tensor) -> torch.Tensor:
        """(B, dim) features of one validated batch already on the network's device."""
        raise NotImplementedError

    def class_logits(self, feats_ND: torch.Tensor) -> torch.Tensor | None:
        """Class logits from features, for the Inception Score (None: this network has none)."""
        return None

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @torch.no_grad()
    def features(self, images_BCHW: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
        """(B, dim) float32 CPU features of images in [-1, 1], computed in batches in eval mode."""
        check_int("batch_size", batch_size, 1)
        x = check_images(images_BCHW, self.channels, self.side)
        was_training = self.training
        self.eval()
        try:
            out = [self.embed(b.to(self.device)).float().cpu() for b in x.split(batch_size)]
        finally:
            self.train(was_training)
        return torch.cat(out)
