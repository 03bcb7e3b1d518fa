import warnings

import numpy as np
import pytest
import torch
from scipy import linalg

from compare.fid import fid_from_features, frechet_distance, gaussian_stats


def reference_fd(mu1, s1, mu2, s2):
    """The textbook form with scipy.linalg.sqrtm of the (non-symmetric) product, as pytorch-fid computes it."""
    covmean = linalg.sqrtm(s1 @ s2)
    covmean = covmean.real
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


def random_feats(rng, n, d, shift=0.0):
    mix = rng.normal(size=(d, d)) / np.sqrt(d)
    return rng.normal(size=(n, d)) @ mix + shift + rng.normal(size=d) * 0.1


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("d", [1, 8, 64])
def test_matches_sqrtm_reference(seed, d):
    rng = np.random.default_rng(seed)
    a, b = random_feats(rng, 400, d), random_feats(rng, 300, d, shift=0.3)
    mu1, s1 = gaussian_stats(a)
    mu2, s2 = gaussian_stats(b)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # full-rank covariances: no eps offset
        fd = frechet_distance(mu1, s1, mu2, s2)
    ref = reference_fd(mu1, s1, mu2, s2)
    assert fd == pytest.approx(ref, rel=1e-6)
    assert fd > 0


def test_gaussian_stats_float64_and_torch_input():
    x = torch.randn(50, 5, generator=torch.Generator().manual_seed(0))
    mu, sigma = gaussian_stats(x)
    assert mu.dtype == np.float64 and sigma.dtype == np.float64
    assert mu.shape == (5,) and sigma.shape == (5, 5)
    np.testing.assert_allclose(sigma, np.cov(x.double().numpy(), rowvar=False))


def test_self_distance_is_zero_and_symmetric():
    rng = np.random.default_rng(3)
    a, b = random_feats(rng, 500, 32), random_feats(rng, 500, 32, shift=1.0)
    stats_a, stats_b = gaussian_stats(a), gaussian_stats(b)
    assert abs(frechet_distance(*stats_a, *stats_a)) < 1e-9
    ab, ba = frechet_distance(*stats_a, *stats_b), frechet_distance(*stats_b, *stats_a)
    assert ab == pytest.approx(ba, rel=1e-9)
    # the mean term alone: shifting every feature by 1 adds ||1||^2 = 32 to the distance of equal covariances
    assert frechet_distance(*stats_a, stats_a[0] + 1.0, stats_a[1]) == pytest.approx(32.0, rel=1e-9)
    assert fid_from_features(a, b) == pytest.approx(ab, rel=1e-12)


def test_singular_covariance_adds_eps_with_warning():
    rng = np.random.default_rng(4)
    a, b = rng.normal(size=(20, 50)), rng.normal(size=(30, 50)) + 0.5  # fewer samples than dims
    (mu1, s1), (mu2, s2) = gaussian_stats(a), gaussian_stats(b)
    with pytest.warns(RuntimeWarning, match="singular covariance"):
        fd = frechet_distance(mu1, s1, mu2, s2, eps=1e-6)
    off = 1e-6 * np.eye(50)
    assert np.isfinite(fd)
    assert fd == pytest.approx(reference_fd(mu1, s1 + off, mu2, s2 + off), rel=1e-6)
    with pytest.warns(RuntimeWarning):
        assert abs(frechet_distance(mu1, s1, mu1, s1)) < 1e-8 * np.trace(s1)


def test_bad_input_raises_clearly():
    mu, s = np.zeros(3), np.eye(3)
    with pytest.raises(ValueError, match="sigma2"):
        frechet_distance(mu, s, mu, np.eye(4))
    with pytest.raises(ValueError, match="mu2"):
        frechet_distance(mu, s, np.zeros(4), s)
    with pytest.raises(ValueError, match="non-finite"):
        frechet_distance(mu, s, mu * np.nan, s)
    with pytest.raises(ValueError, match="eps"):
        frechet_distance(mu, s, mu, s, eps=0)
    with pytest.raises(ValueError, match="at least 2"):
        gaussian_stats(np.zeros((1, 3)))


def test_stats_files_round_trip_in_pytorch_fid_format(tmp_path):
    from compare.fid import load_stats, save_stats

    f = np.random.default_rng(0).normal(size=(200, 6))
    mu, sigma = gaussian_stats(f)
    path = tmp_path / "ref.npz"
    save_stats(path, mu, sigma)
    with np.load(path) as z:  # the layout pytorch-fid reads: arrays named mu and sigma
        assert sorted(z.files) == ["mu", "sigma"] and z["sigma"].shape == (6, 6)
    mu2, sigma2 = load_stats(path, dim=6)
    assert frechet_distance(mu2, sigma2, *gaussian_stats(f)) == pytest.approx(0, abs=1e-8)
    with pytest.raises(ValueError, match="holds 6-d statistics; the feature network gives 2048-d"):
        load_stats(path, dim=2048)
    np.savez(tmp_path / "other.npz", mean=mu)
    with pytest.raises(ValueError, match=r"must hold arrays 'mu' and 'sigma'"):
        load_stats(tmp_path / "other.npz")
    with pytest.raises(ValueError, match="no statistics file at"):
        load_stats(tmp_path / "missing.npz")
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="cannot read statistics"):
        load_stats(tmp_path / "junk.npz")
    np.savez(tmp_path / "nan.npz", mu=mu * np.nan, sigma=sigma)
    with pytest.raises(ValueError, match="non-finite"):
        load_stats(tmp_path / "nan.npz")
