"""The scale pyramid: schedules, token bookkeeping and the one interpolation both heads use.

A schedule is a tuple of side lengths ``(h_1, ..., h_K)``, strictly increasing, ending at the
latent side. Scale k is an ``h_k x h_k`` token map; the backbone sees all maps concatenated
(coarse to fine, each row-major), so the sequence length is ``L = sum h_k^2``.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

VAR_SCHEDULE = (1, 2, 3, 4, 5, 6, 8, 10, 13, 16)
FLOWAR_SCHEDULE = (1, 2, 4, 8, 16)
UPSAMPLE_MODES = ("bicubic", "bilinear")


def validate_schedule(schedule: Sequence[int], latent_side: int | None = None) -> tuple[int, ...]:
    """Return ``schedule`` as a tuple of ints, or raise ``ValueError`` naming it."""
    try:
        sides = tuple(int(s) for s in schedule)
    except (TypeError, ValueError):
        raise ValueError(f"schedule must be a sequence of ints, got {schedule!r}") from None
    if any(s != v for s, v in zip(sides, schedule)):
        raise ValueError(f"schedule must hold whole numbers, got {schedule!r}")
    if not sides:
        raise ValueError("schedule must not be empty")
    if any(s <= 0 for s in sides):
        raise ValueError(f"schedule sides must be positive, got {sides}")
    if any(b <= a for a, b in zip(sides, sides[1:])):
        raise ValueError(f"schedule must be strictly increasing, got {sides}")
    if latent_side is not None and sides[-1] != latent_side:
        raise ValueError(f"schedule {sides} must end at the latent side {latent_side}")
    return sides


def num_tokens(schedule: Sequence[int]) -> int:
    """Sequence length L = sum of side^2."""
    return sum(s * s for s in schedule)


def scale_slices(schedule: Sequence[int]) -> list[slice]:
    """Position ranges of each scale in the concatenated sequence."""
    out, start = [], 0
    for s in schedule:
        out.append(slice(start, start + s * s))
        start += s * s
    return out


def level_ids(schedule: Sequence[int], device=None) -> torch.Tensor:
    """Scale index of every position, shape (L,)."""
    return torch.cat([torch.full((s * s,), k, dtype=torch.long, device=device) for k, s in enumerate(schedule)])


def block_causal_mask(schedule: Sequence[int], device=None) -> torch.Tensor:
    """(L, L) bool, True where query i may attend key j: level(j) <= level(i)."""
    lv = level_ids(schedule, device)
    return lv[None, :] <= lv[:, None]


def resize(x_BCHW: torch.Tensor, side: int, mode: str = "bicubic") -> torch.Tensor:
    """Resize a square map to ``side``: area when shrinking, ``mode`` (bicubic/bilinear) when growing."""
    if mode not in UPSAMPLE_MODES:
        raise ValueError(f"upsample mode must be one of {UPSAMPLE_MODES}, got {mode!r}")
    h = x_BCHW.shape[-1]
    if side == h:
        return x_BCHW
    if side < h:
        return F.interpolate(x_BCHW, size=(side, side), mode="area")
    return F.interpolate(x_BCHW, size=(side, side), mode=mode, align_corners=False)


def pyramid(x_BCHW: torch.Tensor, schedule: Sequence[int]) -> list[torch.Tensor]:
    """Area-downsampled copies of ``x`` at every side of the schedule."""
    return [resize(x_BCHW, s) for s in schedule]


def maps_to_seq(maps: Sequence[torch.Tensor]) -> torch.Tensor:
    """[(B, C, h_k, h_k)] -> (B, sum h_k^2, C), scales concatenated coarse to fine."""
    return torch.cat([m.flatten(2).transpose(1, 2) for m in maps], dim=1)


def seq_to_maps(x_BLC: torch.Tensor, schedule: Sequence[int]) -> list[torch.Tensor]:
    """(B, L, C) -> [(B, C, h_k, h_k)], the inverse of :func:`maps_to_seq`."""
    if x_BLC.shape[1] != num_tokens(schedule):
        raise ValueError(f"sequence length {x_BLC.shape[1]} does not match schedule {tuple(schedule)}")
    B, _, C = x_BLC.shape
    return [x_BLC[:, sl].transpose(1, 2).reshape(B, C, s, s) for sl, s in zip(scale_slices(schedule), schedule)]


def default_schedule(latent_side: int) -> tuple[int, ...]:
    """VAR-like sides below ``latent_side`` (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48), then the latent side itself."""
    if latent_side < 1:
        raise ValueError(f"latent side must be positive, got {latent_side}")
    return tuple(s for s in (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48) if s < latent_side) + (latent_side,)


def doubling_schedule(latent_side: int) -> tuple[int, ...]:
    """FlowAR's schedule: the latent side halved while it is even, coarse to fine (16 -> 1, 2, 4, 8, 16)."""
    if latent_side < 1:
        raise ValueError(f"latent side must be positive, got {latent_side}")
    sides = [latent_side]
    while sides[-1] % 2 == 0:
        sides.append(sides[-1] // 2)
    return tuple(reversed(sides))


def latent_side_of(image_side: int) -> int:
    """The latent side the commands use: image side / 2 (one stride-2 downsampling); odd sides are refused
    with the nearest sides that work."""
    if image_side < 2 or image_side % 2:
        below, above = max(4, image_side // 4 * 4), image_side // 4 * 4 + 4
        raise ValueError(f"image side {image_side} must be even (the latent is image side / 2): use --side "
                         f"{below} or {above} (multiples of 4 also give FlowAR's doubling schedule two scales)")
    return image_side // 2
