"""Frechet distance between Gaussian fits of two feature sets (FID when the features are InceptionV3's).

    FD = ||mu1 - mu2||^2 + tr(S1) + tr(S2) - 2 tr sqrt(S1 S2)

``tr sqrt(S1 S2)`` is computed in the symmetric form ``tr sqrt(A S2 A)`` with ``A = sqrt(S1)`` (the PSD
square root): ``S1 S2 = A (A S2)`` and ``(A S2) A`` share their nonzero eigenvalues, and ``A S2 A`` is
symmetric PSD, so two ``eigh`` calls replace ``scipy.linalg.sqrtm`` of a non-symmetric product (several
times faster at 2048 dims, and real). The form is exact for singular covariances too (fewer samples
than dimensions): no ``eps`` is added anywhere. pytorch-fid adds ``eps * I`` inside the square root only
when ``sqrtm`` comes back non-finite; a shift of both covariances (traces included) lowers FID by up to
0.7 at the sample sizes of a digits run, so it is not done here.
"""
from __future__ import annotations

import numpy as np
import torch

from nextscale.checkpoint import atomic_path
from nextscale.data import check_npz_fits


def _as_array(x, name: str, ndim: int) -> np.ndarray:
    a = x.detach().cpu().double().numpy() if isinstance(x, torch.Tensor) else np.asarray(x, dtype=np.float64)
    if a.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-d, got shape {a.shape}")
    if not np.isfinite(a).all():
        raise ValueError(f"{name} holds non-finite values")
    return a


def gaussian_stats(feats_ND) -> tuple[np.ndarray, np.ndarray]:
    """Mean (D,) and unbiased covariance (D, D), float64, of N >= 2 feature vectors (numpy or torch)."""
    f = _as_array(feats_ND, "feats_ND", 2)
    if len(f) < 2:
        raise ValueError(f"need at least 2 feature vectors for a covariance, got {len(f)}")
    return f.mean(0), np.atleast_2d(np.cov(f, rowvar=False))


def _sqrt_eigenvalues(w: np.ndarray) -> np.ndarray:
    """Square roots of a PSD matrix's eigenvalues, those within round-off of 0 (numpy's matrix_rank
    tolerance, either sign) taken as 0: the square root would blow round-off of 1e-16 up to 1e-8 per
    null direction, which a rank-deficient covariance has hundreds of."""
    tol = max(float(np.abs(w).max()), 0.0) * len(w) * np.finfo(np.float64).eps
    return np.sqrt(np.where(w > tol, w, 0.0))


def _psd_sqrt(S: np.ndarray) -> np.ndarray:
    """The PSD square root of a symmetric PSD matrix."""
    w, V = np.linalg.eigh(S)
    return (V * _sqrt_eigenvalues(w)) @ V.T


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """Frechet distance between N(mu1, sigma1) and N(mu2, sigma2), exact for covariances of any rank."""
    mu1, mu2 = _as_array(mu1, "mu1", 1), _as_array(mu2, "mu2", 1)
    S1, S2 = _as_array(sigma1, "sigma1", 2), _as_array(sigma2, "sigma2", 2)
    D = len(mu1)
    for name, a in (("mu2", mu2), ("sigma1", S1), ("sigma2", S2)):
        want = (D,) if a.ndim == 1 else (D, D)
        if a.shape != want:
            raise ValueError(f"{name} must have shape {want} to match mu1 {mu1.shape}, got {a.shape}")
    S1, S2 = (S1 + S1.T) / 2, (S2 + S2.T) / 2
    A = _psd_sqrt(S1)
    M = A @ S2 @ A
    tr_covmean = _sqrt_eigenvalues(np.linalg.eigvalsh((M + M.T) / 2)).sum()
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(S1) + np.trace(S2) - 2 * tr_covmean)


def fid_from_features(feats1_ND, feats2_MD) -> float:
    """Frechet distance between the Gaussian fits of two feature sets."""
    return frechet_distance(*gaussian_stats(feats1_ND), *gaussian_stats(feats2_MD))


def fid_infinity(mu, sigma, feats_ND, seed: int = 0, points: int = 5) -> float:
    """FID extrapolated to infinitely many samples (Chong and Forsyth 2020, "Effectively Unbiased FID"):
    the FID of random subsets of ``points`` sizes evenly spaced from n/4 to n, fit linearly in 1/size,
    read at 1/size = 0. FID's bias falls like 1/n; the fit is only as good as that law holds, so read
    it where n is well above the feature dimension (the harness computes it where n >= the dimension)."""
    f = _as_array(feats_ND, "feats_ND", 2)
    sizes = np.unique(np.linspace(max(2, len(f) // 4), len(f), points).astype(int))
    if len(sizes) < 2:
        raise ValueError(f"FID_inf needs subsets of at least two sizes, got {len(f)} feature vectors")
    rng = np.random.default_rng(seed)
    fids = [frechet_distance(mu, sigma, *gaussian_stats(f[rng.choice(len(f), m, replace=False)])) for m in sizes]
    return float(np.polyfit(1.0 / sizes, fids, 1)[1])


# ----------------------------------------------------------------------------- statistics files

def save_stats(path, mu, sigma) -> None:
    """Write ``mu`` (D,) and ``sigma`` (D, D) as an ``.npz`` in pytorch-fid's format (keys ``mu``, ``sigma``),
    so the statistics can be compared with numbers from other FID code."""
    mu, sigma = _as_array(mu, "mu", 1), _as_array(sigma, "sigma", 2)
    if sigma.shape != (len(mu), len(mu)):
        raise ValueError(f"sigma must have shape {(len(mu), len(mu))} to match mu, got {sigma.shape}")
    with atomic_path(path) as tmp, open(tmp, "wb") as f:  # a file object: np.savez would append .npz
        np.savez(f, mu=mu, sigma=sigma)


def load_stats(path, dim: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(mu, sigma) from an ``.npz`` with keys ``mu`` and ``sigma`` (pytorch-fid's format, e.g. precomputed
    reference statistics); ``dim`` checks the feature dimension (2048 for InceptionV3 pool3)."""
    from pathlib import Path

    path = Path(path)
    if not path.is_file():
        raise ValueError(f"no statistics file at {path} (an .npz with arrays 'mu' (D,) and 'sigma' (D, D), "
                         f"as pytorch-fid writes with --save-stats)")
    check_npz_fits(path, ("mu", "sigma"), f"statistics file {path}")  # before anything is inflated
    try:
        with np.load(path, allow_pickle=False) as z:  # mu and sigma alone: other arrays are not read
            found, arrays = sorted(z.files), {k: z[k] for k in z.files if k in ("mu", "sigma")}
    except Exception as e:  # not an .npz (numpy then refuses to unpickle it), truncated, unreadable
        raise ValueError(f"cannot read statistics from {path} (want an .npz with arrays 'mu' and 'sigma'): {e}") from None
    if not {"mu", "sigma"} <= set(arrays):
        raise ValueError(f"{path} must hold arrays 'mu' and 'sigma' (pytorch-fid's format), has {found}")
    mu, sigma = arrays["mu"], arrays["sigma"]
    mu, sigma = _as_array(mu, f"{path}: mu", 1), _as_array(sigma, f"{path}: sigma", 2)
    if sigma.shape != (len(mu), len(mu)):
        raise ValueError(f"{path}: sigma must have shape {(len(mu), len(mu))} to match mu, got {sigma.shape}")
    if dim is not None and len(mu) != dim:
        raise ValueError(f"{path} holds {len(mu)}-d statistics; the feature network gives {dim}-d features")
    problem = covariance_problem(sigma)
    if problem:
        raise ValueError(f"{path}: sigma is not a covariance: {problem}")
    return mu, sigma


def covariance_problem(sigma: np.ndarray, rtol: float = 1e-6) -> str | None:
    """Why ``sigma`` is not a covariance matrix (None if it is): asymmetric beyond ``rtol`` of its largest
    entry, or an eigenvalue below ``-rtol`` times the largest (round-off in a sample covariance stays
    far inside both)."""
    scale = max(float(np.abs(sigma).max()), np.finfo(np.float64).tiny)
    asym = float(np.abs(sigma - sigma.T).max())
    if asym > rtol * scale:
        return f"asymmetric (max |sigma - sigma^T| = {asym:.3g}, {asym / scale:.3g} of its largest entry)"
    w = np.linalg.eigvalsh((sigma + sigma.T) / 2)
    if w[0] < -rtol * max(w[-1], 0.0) or (w[-1] <= 0 and w[0] < 0):
        return f"not positive semi-definite (smallest eigenvalue {w[0]:.3g}, largest {w[-1]:.3g})"
    return None
