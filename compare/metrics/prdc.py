"""k-NN manifold metrics: precision and recall (Kynkaanniemi et al. 2019, "Improved Precision and Recall
Metric"), density and coverage (Naeem et al. 2020, "Reliable Fidelity and Diversity Metrics").

Each set's manifold is the union of balls around its points, the radius of a ball being the distance to
the point's k-th nearest neighbour within its own set. Precision is the share of generated points inside
the real manifold (fidelity); recall is the share of real points inside the generated manifold. Density
counts how many real balls hold each generated point (divided by k: 1 on average for a sample of the real
distribution, robust to real outliers); coverage is the share of real balls holding a generated point.
Density and coverage use a strict ``<`` as the authors' ``prdc`` package does (precision/recall: ``<=``
as Kynkaanniemi et al.); on continuous features the two differ only on exact ties.
"""
from __future__ import annotations

import torch

from nextscale.config import check_int

from .fid import _as_array

_CHUNK = 1024  # rows of the distance matrix held at once
PR_K = 3  # the harness's k (Kynkaanniemi et al.'s default); a set needs more than k points
DC_K = 5  # density and coverage's k (Naeem et al.'s recommended value)


def _distances(a_ND: torch.Tensor, b_MD: torch.Tensor) -> torch.Tensor:
    """(N, M) Euclidean distances, float64."""
    d2 = a_ND.pow(2).sum(1, keepdim=True) + b_MD.pow(2).sum(1) - 2 * a_ND @ b_MD.T
    return d2.clamp_min(0).sqrt()


def knn_radii(feats_ND: torch.Tensor, k: int) -> torch.Tensor:
    """(N,) distance from each point to its k-th nearest neighbour in the same set (itself excluded)."""
    return torch.cat([_distances(c, feats_ND).kthvalue(k + 1, dim=1).values for c in feats_ND.split(_CHUNK)])


def _coverage(points_ND: torch.Tensor, centers_MD: torch.Tensor, radii_M: torch.Tensor) -> float:
    """Share of points inside at least one ball (center, radius)."""
    inside = [(_distances(c, centers_MD) <= radii_M).any(1) for c in points_ND.split(_CHUNK)]
    return torch.cat(inside).double().mean().item()


def precision_recall(real_ND, fake_MD, k: int = PR_K) -> dict[str, float]:
    """{"precision", "recall"} of generated features ``fake_MD`` against real features ``real_ND``."""
    real = torch.from_numpy(_as_array(real_ND, "real_ND", 2))
    fake = torch.from_numpy(_as_array(fake_MD, "fake_MD", 2))
    if real.shape[1] != fake.shape[1]:
        raise ValueError(f"feature sets must have the same dimension, got {real.shape[1]} and {fake.shape[1]}")
    check_int("k", k, 1, min(len(real), len(fake)) - 1)
    return {"precision": _coverage(fake, real, knn_radii(real, k)),
            "recall": _coverage(real, fake, knn_radii(fake, k))}


def density_coverage(real_ND, fake_MD, k: int = DC_K) -> dict[str, float]:
    """{"density", "coverage"} of generated features ``fake_MD`` against real features ``real_ND``."""
    real = torch.from_numpy(_as_array(real_ND, "real_ND", 2))
    fake = torch.from_numpy(_as_array(fake_MD, "fake_MD", 2))
    if real.shape[1] != fake.shape[1]:
        raise ValueError(f"feature sets must have the same dimension, got {real.shape[1]} and {fake.shape[1]}")
    check_int("k", k, 1, len(real) - 1)
    radii = knn_radii(real, k)
    inside, nearest = [], []
    for c in fake.split(_CHUNK):
        d = _distances(c, real)  # (chunk, N)
        inside.append((d < radii).sum(1))
    for c in real.split(_CHUNK):
        nearest.append(_distances(c, fake).min(1).values)
    return {"density": torch.cat(inside).double().mean().item() / k,
            "coverage": (torch.cat(nearest) < radii).double().mean().item()}
