"""Every comparison with a saved file goes through here (``tests/test_golden_policy.py`` enforces it).

The saved files in ``tests/data/`` are made by the scripts under ``tools/`` from the releases' own code (and
one from an earlier revision of ours). The policy, chosen so that no CPU's rounding can fail a test:

- **float64 where both codes can run in it.** The script runs the release in float64 and saves float64
  outputs; the test runs ours in float64; :func:`close` allows ``FLOAT64_TOL`` relative to the largest
  magnitude of the saved values (at least 1). Rounding there is ~1e-13 on any CPU and kernel, a porting
  error (a swapped gate, a wrong scale) is > 1e-4. Weights are stored on an int8 grid, exact in both dtypes.
- **float32 only where a piece cannot run in float64**: the test passes its own ``tol`` (relative in the
  same way), at least 10x the largest difference seen across the CPU kernels ``.ci/run`` tries, and says
  why it is float32.
- **Integers** (token maps) and copied weights are :func:`equal`.

``NEXTSCALE_GOLDEN_LOG=FILE`` appends one line per comparison (test, difference, tolerance): the margins.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch

DATA = Path(__file__).parent / "data"
FLOAT64_TOL = 1e-9


def fixture(name: str) -> dict:
    """``tests/data/<name>.pt``: the only way a test reads a saved file."""
    return torch.load(DATA / f"{name}.pt", weights_only=True)


def release_state(entry: dict, dtype: torch.dtype = torch.float64) -> dict[str, torch.Tensor]:
    """A fixture's weights in the release's names, in ``dtype``: parameters stored as int8 grid values (q, e)
    are q * 2^-e (exact in float32 and float64); large derived buffers stored as their shape come back as
    zeros (the loaders ignore them); an attention mask stored as a bool (``== 0``) comes back as its
    0 / -inf values; other floating tensors are cast to ``dtype``, anything else is returned as it is."""
    def value(v):
        if isinstance(v, torch.Size):
            return torch.zeros(v, dtype=dtype)
        if isinstance(v, (tuple, list)):
            return v[0].to(dtype) * 2.0 ** -v[1]
        if v.dtype == torch.bool:
            return torch.zeros(v.shape, dtype=dtype).masked_fill(~v, float("-inf"))
        return v.to(dtype) if v.is_floating_point() else v
    return {k: value(v) for k, v in entry.items()}


def _log(diff: float, tol: float) -> None:
    path = os.environ.get("NEXTSCALE_GOLDEN_LOG")
    if path:
        test = os.environ.get("PYTEST_CURRENT_TEST", "?").rsplit(" ", 1)[0]
        with open(path, "a") as f:
            f.write(f"{test}\t{diff:.3e}\t{tol:.1e}\n")


def close(ours: torch.Tensor, release: torch.Tensor, tol: float | None = None, *,
          float32: str | None = None) -> None:
    """``ours`` within ``tol`` of the saved ``release``, relative to its largest magnitude where that exceeds 1.

    A float64 reference needs ``ours`` in float64 and allows ``FLOAT64_TOL``; a looser ``tol`` needs
    ``float32`` to name the piece that computes in float32 on both sides. A float32 reference needs ``tol``."""
    if release.dtype == torch.float64:
        assert ours.dtype == torch.float64, f"compare in float64: ours is {ours.dtype}"
        if tol is None:
            tol = FLOAT64_TOL
        assert tol <= FLOAT64_TOL or float32, "a tolerance above FLOAT64_TOL must name its float32 piece"
    elif tol is None:
        raise TypeError("a float32 comparison needs the test's tol (10x the spread across CPUs, at least)")
    assert ours.shape == release.shape, f"shape {tuple(ours.shape)} != {tuple(release.shape)}"
    scale = max(1.0, float(release.abs().max()))
    diff = float((ours.to(release.dtype) - release).abs().max()) / scale
    _log(diff, tol)
    assert diff <= tol, f"largest difference {diff:.3e} (relative to {scale:.3g}) exceeds {tol:.1e}"


def equal(ours: torch.Tensor, release: torch.Tensor) -> None:
    """Equal values (token maps, copied weights) of equal shape."""
    assert ours.shape == release.shape, f"shape {tuple(ours.shape)} != {tuple(release.shape)}"
    assert torch.equal(ours.to(release.dtype), release), \
        f"{int((ours.to(release.dtype) != release).sum())} of {release.numel()} values differ"
