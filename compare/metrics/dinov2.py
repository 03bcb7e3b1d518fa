"""DINOv2 ViT-L/14 (Oquab et al. 2023) as a feature network, for FD-DINOv2 and the other metrics in its
space (Stein et al. 2023, "Exposing flaws of generative model evaluation metrics", dgm-eval), in plain
torch.

The network is the release's ``DinoVisionTransformer`` as its hub builds ``dinov2_vitl14`` (patch 14,
width 1024, 24 blocks of 16 heads, LayerScale, GELU MLP, LayerNorm eps 1e-6, no register tokens, the
position table of a 518 image interpolated bicubically to the input's grid with the release's 0.1
offset); module and parameter names match its state dict (``dinov2_vitl14_pretrain.pth``), so the
weights load with no renaming. Features: the normalised class token, 1024-d (the hub model's output).
Input as dgm-eval prepares it: RGB in [0, 1] resized to 224x224 bicubically, then ImageNet's mean and
std. Differs from dgm-eval in one step: the resize is torch's antialiased bicubic on floats, dgm-eval's
PIL's bicubic on 8-bit images (the same filter; values differ by up to about one 8-bit level).
Its weights are NOT bundled and never downloaded: pass a local path to :func:`load_dinov2`.
"""
from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from nextscale.train import pick_device

from .features import FeatureNet

DINOV2_WEIGHTS_NAME = "dinov2_vitl14_pretrain.pth"
_GET_WEIGHTS = ("download dinov2_vitl14_pretrain.pth (https://dl.fbaipublicfiles.com/dinov2/dinov2_vitl14/"
                "dinov2_vitl14_pretrain.pth, released with facebookresearch/dinov2) and pass its local path")
VIT_L14 = dict(dim=1024, depth=24, heads=16, patch=14, grid=37)  # the release's 518 / 14 = 37 position grid
_MEAN, _STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


class _Sub(nn.Module):
    """A named container, so parameter names match the release's (``attn.qkv``, ``mlp.fc1``, ``ls1.gamma``)."""

    def __init__(self, **children):
        super().__init__()
        for k, v in children.items():
            setattr(self, k, v) if isinstance(v, nn.Module) else self.register_parameter(k, v)


class Block(nn.Module):
    """x += ls1 * Attn(LN(x)); x += ls2 * MLP(LN(x))."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.norm1, self.norm2 = nn.LayerNorm(dim, eps=1e-6), nn.LayerNorm(dim, eps=1e-6)
        self.attn = _Sub(qkv=nn.Linear(dim, 3 * dim), proj=nn.Linear(dim, dim))
        self.mlp = _Sub(fc1=nn.Linear(dim, 4 * dim), fc2=nn.Linear(4 * dim, dim))
        self.ls1, self.ls2 = (_Sub(gamma=nn.Parameter(torch.ones(dim))) for _ in range(2))

    def forward(self, x_BLC: torch.Tensor) -> torch.Tensor:
        B, L, C = x_BLC.shape
        q, k, v = self.attn.qkv(self.norm1(x_BLC)).view(B, L, 3, self.heads, C // self.heads).permute(2, 0, 3, 1, 4)
        a = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(B, L, C)
        x_BLC = x_BLC + self.ls1.gamma * self.attn.proj(a)
        return x_BLC + self.ls2.gamma * self.mlp.fc2(F.gelu(self.mlp.fc1(self.norm2(x_BLC))))


class DINOv2(FeatureNet):
    name = "dinov2"
    channels = (1, 3)

    def __init__(self, dim: int = 1024, depth: int = 24, heads: int = 16, patch: int = 14, grid: int = 37,
                 input_side: int = 224):
        super().__init__()
        self.dim, self.patch, self.input_side = dim, patch, input_side
        self.patch_embed = _Sub(proj=nn.Conv2d(3, dim, patch, patch))
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + grid * grid, dim))
        self.mask_token = nn.Parameter(torch.zeros(1, dim))  # in the release's state dict; unused for features
        self.blocks = nn.ModuleList(Block(dim, heads) for _ in range(depth))
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.requires_grad_(False).eval()

    def _positions(self, side: int) -> torch.Tensor:
        """The position table for a side x side patch grid: the release's bicubic interpolation with its
        0.1 offset in the scale factor (no antialias)."""
        n = self.pos_embed.shape[1] - 1
        g = math.isqrt(n)
        if side == g:
            return self.pos_embed
        s = (side + 0.1) / g
        grid = self.pos_embed[:, 1:].float().reshape(1, g, g, -1).permute(0, 3, 1, 2)
        grid = F.interpolate(grid, scale_factor=(s, s), mode="bicubic", antialias=False)
        return torch.cat([self.pos_embed[:, :1], grid.permute(0, 2, 3, 1).reshape(1, side * side, -1)], dim=1)

    def tokens_to_features(self, x_B3HW: torch.Tensor) -> torch.Tensor:
        """The release's forward on normalised images whose sides are multiples of the patch: the
        normalised class token (B, dim)."""
        x = self.patch_embed.proj(x_B3HW).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls_token.expand(len(x), -1, -1), x], dim=1)
        x = x + self._positions(x_B3HW.shape[-1] // self.patch)
        for block in self.blocks:
            x = block(x)
        return self.norm(x)[:, 0]

    def embed(self, x_BCHW: torch.Tensor) -> torch.Tensor:
        x = x_BCHW.expand(-1, 3, -1, -1) if x_BCHW.shape[1] == 1 else x_BCHW
        x = F.interpolate((x + 1) / 2, size=(self.input_side, self.input_side), mode="bicubic", antialias=True)
        mean, std = (torch.tensor(v, device=x.device).view(1, 3, 1, 1) for v in (_MEAN, _STD))
        return self.tokens_to_features((x - mean) / std)


def load_dinov2(path: str | Path, device: str | torch.device | None = None, **size) -> DINOv2:
    """DINOv2 with weights from a local state dict (the release's ``dinov2_vitl14_pretrain.pth``; ``size``
    overrides :data:`VIT_L14` for other sizes), on ``device``, in eval mode. A missing file, other names or
    shapes, or NaN/inf weights are a ``ValueError`` saying what is wrong and where to get the file."""
    from .inception import check_state

    path = Path(path)
    if not path.is_file():
        raise ValueError(f"no DINOv2 weights at {path}: {_GET_WEIGHTS}")
    model = DINOv2(**{**VIT_L14, **size})
    state = check_state(path, model, _GET_WEIGHTS, "DINOv2 ViT state dict")
    model.load_state_dict(state)
    return model.to(pick_device(device))
