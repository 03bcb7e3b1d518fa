"""Kernel Inception Distance (Binkowski et al. 2018): unbiased MMD^2 with the cubic polynomial kernel

    k(x, y) = (x . y / d + 1)^3

averaged over random subsets (mean and std). Unlike FID it has an unbiased estimator, so it stays
meaningful at the small sample counts a CPU run affords (its expectation is 0 for equal distributions).
"""
from __future__ import annotations

import numpy as np

from nextscale.config import check_int, check_seed

from .fid import _as_array

# Below this many samples (both sets together) the full kernel matrices are computed once and indexed
# per subset; above it each subset computes its own (memory ~ 3 * n^2 float64).
_FULL_GRAM_LIMIT = 6000


def polynomial_kernel(x_ND: np.ndarray, y_MD: np.ndarray) -> np.ndarray:
    """(N, M) matrix of k(x_i, y_j) = (x_i . y_j / d + 1)^3."""
    return (x_ND @ y_MD.T / x_ND.shape[1] + 1) ** 3


def _mmd2_unbiased(k_xx: np.ndarray, k_yy: np.ndarray, k_xy: np.ndarray) -> float:
    """Unbiased MMD^2 from the kernel matrices of two samples of m points each (diagonals left out)."""
    m = len(k_xx)
    xx = (k_xx.sum() - np.trace(k_xx)) / (m * (m - 1))
    yy = (k_yy.sum() - np.trace(k_yy)) / (m * (m - 1))
    return float(xx + yy - 2 * k_xy.mean())


def mmd2_polynomial(x_ND, y_ND) -> float:
    """Unbiased MMD^2 with the cubic polynomial kernel between two equal-size samples (one KID subset)."""
    x, y = _as_array(x_ND, "x_ND", 2), _as_array(y_ND, "y_ND", 2)
    if x.shape != y.shape or len(x) < 2:
        raise ValueError(f"need two samples of the same shape with at least 2 points, got {x.shape} and {y.shape}")
    return _mmd2_unbiased(polynomial_kernel(x, x), polynomial_kernel(y, y), polynomial_kernel(x, y))


def kid(feats_x_ND, feats_y_MD, subset_size: int = 1000, num_subsets: int = 100, seed: int = 0) -> tuple[float, float]:
    """KID between two feature sets: (mean, std) of the unbiased MMD^2 over ``num_subsets`` random subsets of
    ``subset_size`` points drawn without replacement from each set; a subset larger than either set is a
    ``ValueError`` (as torch-fidelity: shrinking it silently would change the estimator's variance)."""
    check_int("subset_size", subset_size, 2)
    check_int("num_subsets", num_subsets, 1)
    check_seed("seed", seed)
    x, y = _as_array(feats_x_ND, "feats_x_ND", 2), _as_array(feats_y_MD, "feats_y_MD", 2)
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"feature sets must have the same dimension, got {x.shape[1]} and {y.shape[1]}")
    if subset_size > min(len(x), len(y)):
        raise ValueError(f"subset_size ({subset_size}) must be at most the smaller set's size "
                         f"({len(x)} and {len(y)} feature vectors)")
    m = subset_size
    rng = np.random.default_rng(seed)
    full = len(x) + len(y) <= _FULL_GRAM_LIMIT
    if full:
        k_xx, k_yy, k_xy = polynomial_kernel(x, x), polynomial_kernel(y, y), polynomial_kernel(x, y)
    mmds = np.empty(num_subsets)
    for i in range(num_subsets):
        ix, iy = rng.choice(len(x), m, replace=False), rng.choice(len(y), m, replace=False)
        if full:
            mmds[i] = _mmd2_unbiased(k_xx[np.ix_(ix, ix)], k_yy[np.ix_(iy, iy)], k_xy[np.ix_(ix, iy)])
        else:
            xs, ys = x[ix], y[iy]
            mmds[i] = _mmd2_unbiased(polynomial_kernel(xs, xs), polynomial_kernel(ys, ys), polynomial_kernel(xs, ys))
    return float(mmds.mean()), float(mmds.std())
