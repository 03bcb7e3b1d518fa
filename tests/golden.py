"""Reading the release fixtures in tests/data/ (made by the scripts under tools/ from the releases' code)."""
from __future__ import annotations

import torch


def release_state(entry: dict) -> dict[str, torch.Tensor]:
    """A fixture's weights in the release's names: parameters stored as int8 grid values (q, e) are q * 2^-e;
    large derived buffers stored as their shape come back as zeros (the loaders ignore them); an attention
    mask stored as a bool (``== 0``) comes back as its 0 / -inf values; anything else as it is."""
    def value(v):
        if isinstance(v, torch.Size):
            return torch.zeros(v)
        if isinstance(v, (tuple, list)):
            return v[0].float() * 2.0 ** -v[1]
        if v.dtype == torch.bool:
            return torch.zeros(v.shape).masked_fill(~v, float("-inf"))
        return v
    return {k: value(v) for k, v in entry.items()}


def close(ours: torch.Tensor, release: torch.Tensor, atol: float) -> None:
    """Within ``atol`` of the release's values, scaled by their largest magnitude where it exceeds 1 (random
    weights give values up to ~20, where float32's ulp is 2e-6)."""
    torch.testing.assert_close(ours, release, rtol=0, atol=atol * max(1.0, float(release.abs().max())))
