"""Sample grids as PNG."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from einops import rearrange

from .checkpoint import atomic_path


def save_grid(images_BCHW: torch.Tensor, path: str | Path, nrow: int, pad: int = 1, upscale: int = 4) -> Path:
    """Write images in [-1, 1] as a grid with ``nrow`` images per row (row-major), each upscaled
    ``upscale`` times (nearest) so small images stay visible. Returns the path."""
    from PIL import Image

    x = images_BCHW.detach().float().cpu().clamp(-1, 1).add(1).div(2)
    B, C, H, W = x.shape
    if C not in (1, 3):
        raise ValueError(f"images must have 1 or 3 channels, got {C}")
    rows = -(-B // nrow)
    x = torch.cat([x, torch.ones(rows * nrow - B, C, H, W)])
    x = torch.nn.functional.pad(x, (pad, pad, pad, pad), value=1.0)
    grid = rearrange(x, "(r c) ch h w -> (r h) (c w) ch", r=rows, c=nrow)
    grid = grid.repeat_interleave(upscale, 0).repeat_interleave(upscale, 1)
    arr = (grid.numpy() * 255).round().astype(np.uint8)
    path = Path(path)
    with atomic_path(path) as tmp:
        Image.fromarray(arr[..., 0] if C == 1 else arr).save(tmp, format="PNG")
    return path
