import numpy as np
import pytest

import compare.metrics.kid as kid_mod
from compare.metrics.kid import kid, mmd2_polynomial


def slow_mmd2(x, y):
    """Unbiased MMD^2, written out with explicit loops over pairs."""
    d = x.shape[1]
    k = lambda a, b: (float(np.dot(a, b)) / d + 1) ** 3  # noqa: E731
    m = len(x)
    xx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    yy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    xy = sum(k(x[i], y[j]) for i in range(m) for j in range(m)) / (m * m)
    return xx + yy - 2 * xy


def test_mmd2_matches_slow_reference():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(12, 5)), rng.normal(size=(12, 5)) + 0.4
    assert mmd2_polynomial(x, y) == pytest.approx(slow_mmd2(x, y), rel=1e-10)


def test_kid_subsets_match_slow_reference():
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(15, 4)), rng.normal(size=(18, 4)) * 1.3
    mean, std = kid(x, y, subset_size=6, num_subsets=5, seed=7)
    # the same subsets, drawn by the same seeded generator
    g = np.random.default_rng(7)
    ref = []
    for _ in range(5):
        ix, iy = g.choice(15, 6, replace=False), g.choice(18, 6, replace=False)
        ref.append(slow_mmd2(x[ix], y[iy]))
    assert mean == pytest.approx(np.mean(ref), rel=1e-10)
    assert std == pytest.approx(np.std(ref), rel=1e-8)


def test_full_gram_and_per_subset_paths_agree(monkeypatch):
    rng = np.random.default_rng(2)
    x, y = rng.normal(size=(60, 8)), rng.normal(size=(50, 8)) + 0.2
    full = kid(x, y, subset_size=20, num_subsets=10, seed=3)
    monkeypatch.setattr(kid_mod, "_FULL_GRAM_LIMIT", 0)
    per_subset = kid(x, y, subset_size=20, num_subsets=10, seed=3)
    assert full == pytest.approx(per_subset, rel=1e-10)


def test_same_distribution_near_zero_shifted_clearly_positive():
    rng = np.random.default_rng(3)
    d = 16
    a, b = rng.normal(size=(600, d)), rng.normal(size=(600, d))
    shifted = rng.normal(size=(600, d)) + 0.5
    same_mean, same_std = kid(a, b, subset_size=200, num_subsets=50, seed=0)
    diff_mean, diff_std = kid(a, shifted, subset_size=200, num_subsets=50, seed=0)
    assert abs(same_mean) < 0.02 * diff_mean
    assert abs(same_mean) < 3 * same_std + 1e-3
    assert diff_mean > 10 * diff_std
    # seeded: same seed, same numbers; another seed, other subsets
    assert kid(a, shifted, subset_size=200, num_subsets=50, seed=0) == (diff_mean, diff_std)
    assert kid(a, shifted, subset_size=200, num_subsets=50, seed=1) != (diff_mean, diff_std)


def test_bad_input_raises():
    x = np.zeros((10, 3))
    with pytest.raises(ValueError, match="same dimension"):
        kid(x, np.zeros((10, 4)))
    with pytest.raises(ValueError, match="subset_size"):
        kid(x, x, subset_size=1)
    with pytest.raises(ValueError, match="num_subsets"):
        kid(x, x, num_subsets=0)
    with pytest.raises(ValueError, match=r"subset_size \(1000\) must be at most the smaller set's size \(1 and 10"):
        kid(np.zeros((1, 3)), x)  # torch-fidelity refuses too; shrinking would change the estimator
