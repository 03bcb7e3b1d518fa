import warnings

import numpy as np
import pytest
import torch
from scipy import linalg

from compare.metrics.fid import fid_from_features, frechet_distance, gaussian_stats


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


def pytorch_fid_reference(mu1, s1, mu2, s2, eps=1e-6):
    """pytorch-fid's calculate_frechet_distance, step for step: sqrtm of the product, eps * I added inside
    the square root only when it is not finite, the real part."""
    covmean = linalg.sqrtm(s1.dot(s2))
    if not np.isfinite(covmean).all():
        offset = np.eye(s1.shape[0]) * eps
        covmean = linalg.sqrtm((s1 + offset).dot(s2 + offset))
    covmean = covmean.real
    diff = mu1 - mu2
    return float(diff.dot(diff) + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


def exact_fd_few_samples(a, b):
    """FD when n < d, exactly: with centred X1 (n1, d), X2 (n2, d), the nonzero eigenvalues of S1 S2 are the
    squared singular values of X1 X2^T / sqrt((n1 - 1)(n2 - 1)), so tr sqrt(S1 S2) is their sum."""
    x1, x2 = a - a.mean(0), b - b.mean(0)
    sv = np.linalg.svd(x1 @ x2.T, compute_uv=False) / np.sqrt((len(a) - 1) * (len(b) - 1))
    diff = a.mean(0) - b.mean(0)
    return float(diff @ diff + (x1 ** 2).sum() / (len(a) - 1) + (x2 ** 2).sum() / (len(b) - 1) - 2 * sv.sum())


@pytest.mark.parametrize("n1, n2, d", [(20, 30, 50), (40, 200, 64), (150, 120, 256)])
def test_rank_deficient_covariances_are_exact(n1, n2, d):
    """Fewer samples than dimensions (every Inception FID under 2048 images): the distance equals the
    exact SVD value (no eps shift, no warning) and pytorch-fid's where its sqrtm is finite."""
    rng = np.random.default_rng(n1 + d)
    a, b = random_feats(rng, n1, d), random_feats(rng, n2, d, shift=0.2)
    (mu1, s1), (mu2, s2) = gaussian_stats(a), gaussian_stats(b)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fd = frechet_distance(mu1, s1, mu2, s2)
    exact = exact_fd_few_samples(a, b)
    assert fd == pytest.approx(exact, rel=1e-6)
    shifted = reference_fd(mu1, s1 + 1e-6 * np.eye(d), mu2, s2 + 1e-6 * np.eye(d))
    assert abs(fd - exact) < abs(shifted - exact) / 10  # the old shift's error is gone
    ref = pytorch_fid_reference(mu1, s1, mu2, s2)
    if np.isfinite(ref):
        assert fd == pytest.approx(ref, rel=1e-5)
    assert abs(frechet_distance(mu1, s1, mu1, s1)) < 1e-8 * np.trace(s1)


def test_matches_pytorch_fid_full_rank():
    rng = np.random.default_rng(7)
    a, b = random_feats(rng, 600, 128), random_feats(rng, 500, 128, shift=0.1)
    stats = (*gaussian_stats(a), *gaussian_stats(b))
    assert frechet_distance(*stats) == pytest.approx(pytorch_fid_reference(*stats), rel=1e-6)


def test_bad_input_raises_clearly():
    mu, s = np.zeros(3), np.eye(3)
    with pytest.raises(ValueError, match="sigma2"):
        frechet_distance(mu, s, mu, np.eye(4))
    with pytest.raises(ValueError, match="mu2"):
        frechet_distance(mu, s, np.zeros(4), s)
    with pytest.raises(ValueError, match="non-finite"):
        frechet_distance(mu, s, mu * np.nan, s)
    with pytest.raises(ValueError, match="at least 2"):
        gaussian_stats(np.zeros((1, 3)))


def test_stats_files_round_trip_in_pytorch_fid_format(tmp_path):
    from compare.metrics.fid import load_stats, save_stats

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


def test_stats_files_that_are_not_covariances_are_refused(tmp_path):
    """A negative-definite or asymmetric sigma would give a negative FID (-2e5 for -100 I): refused, with
    the file named; a real sample covariance of any rank (round-off included) is accepted."""
    from compare.metrics.fid import load_stats

    rng = np.random.default_rng(1)
    mu = np.zeros(8)
    few = gaussian_stats(rng.normal(size=(5, 8)))[1]  # rank 4 of 8: PSD up to round-off
    bad_asym = np.eye(8)
    bad_asym[0, 1] = 0.5
    for name, sigma, match in (("neg", -100 * np.eye(8), "not positive semi-definite"),
                               ("indef", np.diag([1.0] * 7 + [-0.5]), "not positive semi-definite"),
                               ("asym", bad_asym, "asymmetric"), ("few", few, None)):
        path = tmp_path / f"{name}.npz"
        np.savez(path, mu=mu, sigma=sigma)
        if match is None:
            assert load_stats(path)[1].shape == (8, 8)
        else:
            with pytest.raises(ValueError, match=f"{name}.npz: sigma is not a covariance: {match}"):
                load_stats(path)
