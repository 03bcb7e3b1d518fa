import numpy as np
import pytest

import compare.metrics.prdc as prdc
from compare.metrics.prdc import knn_radii, precision_recall


def clusters(rng, centers, n_per, scale=0.3):
    return np.concatenate([c + scale * rng.normal(size=(n_per, len(c))) for c in centers])


def brute_force(real, fake, k):
    """Loops over pairs, straight from the paper's definition."""
    def radii(s):
        return [sorted(np.linalg.norm(s - p, axis=1))[k] for p in s]  # index 0 is the point itself
    def share(points, centers, r):
        return np.mean([any(np.linalg.norm(p - c) <= rc for c, rc in zip(centers, r)) for p in points])
    return share(fake, real, radii(real)), share(real, fake, radii(fake))


def test_matches_brute_force(monkeypatch):
    rng = np.random.default_rng(0)
    real, fake = rng.normal(size=(40, 3)), rng.normal(size=(35, 3)) * 0.8 + 1.0
    p, r = brute_force(real, fake, k=3)
    monkeypatch.setattr(prdc, "_CHUNK", 7)  # several row chunks
    out = precision_recall(real, fake, k=3)
    assert out["precision"] == pytest.approx(p) and out["recall"] == pytest.approx(r)
    assert 0 < out["precision"] < 1 and 0 < out["recall"] < 1


def test_knn_radii_excludes_self():
    import torch
    x = torch.tensor([[0.0], [1.0], [3.0], [7.0]], dtype=torch.float64)
    assert knn_radii(x, 1).tolist() == [1.0, 1.0, 2.0, 4.0]
    assert knn_radii(x, 2).tolist() == [3.0, 2.0, 3.0, 6.0]


def test_identical_sets_give_one_one():
    x = np.random.default_rng(1).normal(size=(200, 8))
    assert precision_recall(x, x.copy()) == {"precision": 1.0, "recall": 1.0}


def test_disjoint_far_sets_give_zero_zero():
    rng = np.random.default_rng(2)
    real, fake = rng.normal(size=(150, 8)), rng.normal(size=(150, 8)) + 100.0
    assert precision_recall(real, fake) == {"precision": 0.0, "recall": 0.0}


def test_mode_collapse_high_precision_low_recall():
    rng = np.random.default_rng(3)
    angles = np.arange(8) * np.pi / 4
    centers = 10.0 * np.stack([np.cos(angles), np.sin(angles)], 1)  # the classic ring of eight modes
    real = clusters(rng, centers, 100)
    fake = clusters(rng, centers[:2], 400)  # every sample from two of the eight modes
    out = precision_recall(real, fake, k=3)
    assert out["precision"] > 0.9
    assert out["recall"] < 0.3
    full = precision_recall(real, clusters(rng, centers, 100), k=3)
    assert full["precision"] > 0.9 and full["recall"] > 0.9  # the same count spread over all modes


def test_bad_input_raises():
    x = np.zeros((10, 3))
    with pytest.raises(ValueError, match="same dimension"):
        precision_recall(x, np.zeros((10, 4)))
    with pytest.raises(ValueError, match="k must lie"):
        precision_recall(x, x, k=10)
    with pytest.raises(ValueError, match="k must"):
        precision_recall(x, x, k=0)
