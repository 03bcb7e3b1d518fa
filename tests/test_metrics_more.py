"""The comparable protocol and the metrics beyond FID/KID/PR: 8-bit rounding as saved PNGs, density and
coverage against the authors' ``prdc``, the Inception Score against its formula, FID extrapolated to
infinite n, KID's refused oversize subsets, and the standalone evaluator ``python -m compare.evaluate``."""
import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from compare.metrics.evaluate import Protocol, evaluate_samples, metric_names
from compare.metrics.features import to_8bit
from compare.metrics.fid import fid_infinity, frechet_distance, gaussian_stats
from compare.metrics.inception import inception_score
from compare.metrics.kid import kid
from compare.metrics.prdc import density_coverage, precision_recall
from nextscale.viz import save_grid


def test_8bit_rounding_is_what_a_saved_png_holds(tmp_path):
    x = torch.rand(4, 1, 8, 8) * 2.2 - 1.1  # a little past [-1, 1], as samplers overshoot
    save_grid(x, tmp_path / "g.png", nrow=4, pad=0, upscale=1)
    png = np.asarray(Image.open(tmp_path / "g.png").convert("L"), dtype=np.float64)
    tiles = torch.from_numpy(png).reshape(1, 8, 4, 8).permute(2, 0, 1, 3) / 127.5 - 1
    assert torch.allclose(to_8bit(x).double(), tiles, atol=1e-6)
    assert len(torch.unique(to_8bit(torch.linspace(-1, 1, 10_000)))) == 256


def _feats(n, d, seed, shift=0.0):
    return np.random.default_rng(seed).normal(size=(n, d)) + shift


@pytest.mark.parametrize("k", [3, 5])
def test_density_coverage_and_precision_recall_equal_the_authors_prdc(k):
    prdc = pytest.importorskip("prdc")
    real, fake = _feats(300, 16, 0), _feats(250, 16, 1, shift=0.3)
    ref = prdc.compute_prdc(real, fake, nearest_k=k)
    dc, pr = density_coverage(real, fake, k=k), precision_recall(real, fake, k=k)
    for name, ours in {**dc, **pr}.items():
        assert abs(ours - float(ref[name])) < 1e-12, (name, ours, ref[name])


def test_density_is_about_one_for_real_samples_and_coverage_drops_for_a_collapsed_one():
    real, same = _feats(1000, 8, 0), _feats(1000, 8, 1)
    dc = density_coverage(real, same)
    assert 0.85 < dc["density"] < 1.15 and dc["coverage"] > 0.9
    collapsed = _feats(1000, 8, 2) * 0.1
    assert density_coverage(real, collapsed)["coverage"] < 0.5


def _is_formula(logits, splits, seed):
    """The Inception Score written out in numpy: exp E_x KL(p(y|x) || p(y)) per split of the shuffled rows."""
    from scipy.special import log_softmax, softmax

    x = np.asarray(logits, dtype=np.float64)[np.random.RandomState(seed).permutation(len(logits))]
    scores = []
    for part in np.array_split(x, splits) if len(x) % splits == 0 else [
            x[i * len(x) // splits:(i + 1) * len(x) // splits] for i in range(splits)]:
        p = softmax(part, axis=1)
        kl = (p * (log_softmax(part, axis=1) - np.log(p.mean(0, keepdims=True)))).sum(1)
        scores.append(np.exp(kl.mean()))
    return np.mean(scores), np.std(scores)


def test_inception_score_equals_its_formula_and_bounds():
    logits = np.random.default_rng(0).normal(size=(103, 1008)) * 3
    ours = inception_score(torch.from_numpy(logits))
    assert np.allclose(ours, _is_formula(logits, 10, 2020), rtol=1e-12, atol=0)
    assert abs(inception_score(torch.zeros(50, 10))[0] - 1) < 1e-12  # one class distribution: IS 1
    sure = torch.eye(10).repeat(10, 1) * 50  # confident and every class equally often: IS ~ K
    assert abs(inception_score(sure, splits=1)[0] - 10) < 1e-6
    with pytest.raises(ValueError, match="logits must be finite"):
        inception_score(torch.zeros(5, 10))


def test_fid_infinity_removes_the_small_sample_bias():
    d, n = 16, 400
    mu, sigma = np.zeros(d), np.eye(d)  # the exact statistics of the real distribution
    fake = _feats(n, d, 3)
    at_n = frechet_distance(mu, sigma, *gaussian_stats(fake))
    assert abs(fid_infinity(mu, sigma, fake, seed=0)) < at_n / 3
    shifted = _feats(n, d, 4, shift=1.0)  # true FID = ||shift||^2 = d
    assert abs(fid_infinity(mu, sigma, shifted, seed=0) - d) < abs(frechet_distance(mu, sigma, *gaussian_stats(shifted)) - d)
    with pytest.raises(ValueError, match="subsets of at least two sizes"):
        fid_infinity(mu, sigma, fake[:2])


def test_kid_refuses_an_oversized_subset_instead_of_shrinking_it():
    with pytest.raises(ValueError, match=r"subset_size \(50\) must be at most the smaller set's size \(40 and 60"):
        kid(_feats(40, 4, 0), _feats(60, 4, 1), subset_size=50)
    assert Protocol().kid_size(359, 500) == 359 and Protocol().kid_size(5000, 5000) == 1000
    assert Protocol(kid_subset_size=50).kid_size(359, 500) == 50
    with pytest.raises(ValueError, match="kid_subset_size"):
        Protocol(kid_subset_size=1)


class _Flat(torch.nn.Module):
    """A feature network: the pixels themselves (so rounding shows in the features)."""
    name, dim = "classifier", 64

    def features(self, x):
        return x.flatten(1).float()

    def class_logits(self, feats):
        return None


def test_real_and_generated_images_go_through_the_same_rounding():
    from compare.metrics.evaluate import FeatureSpace

    x = torch.rand(40, 1, 8, 8) * 2 - 1
    real = to_8bit(torch.rand(60, 1, 8, 8) * 2 - 1).flatten(1)
    sp = FeatureSpace("classifier", _Flat(), real, *gaussian_stats(real), "w")
    clf = type("C", (), {})()
    rounded = evaluate_samples(x, None, [sp], clf, 0, Protocol(quantize=True))
    assert rounded == evaluate_samples(to_8bit(x), None, [sp], clf, 0, Protocol(quantize=False))
    assert rounded["fid"] != evaluate_samples(x, None, [sp], clf, 0, Protocol(quantize=False))["fid"]
    assert metric_names([sp], 64) == ("class_acc", "fid", "fid_inf", "kid", "precision", "recall", "density", "coverage")
    assert "fid_inf" not in metric_names([sp], 63)  # fewer samples than feature dimensions: no extrapolation


# ----------------------------------------------------------------------------- the standalone evaluator

@pytest.fixture(scope="module")
def inception_file(tmp_path_factory):
    from test_inception import randomized

    path = tmp_path_factory.mktemp("w") / "inception.pth"
    torch.save({k: v for k, v in randomized().state_dict().items() if not k.endswith("num_batches_tracked")}, path)
    return path


def _images(n, seed, side=16):
    return np.random.default_rng(seed).integers(0, 256, size=(n, side, side, 3), dtype=np.uint8)


@pytest.mark.slow
def test_standalone_evaluator_scores_folders_and_adm_npz(tmp_path, inception_file):
    from compare.metrics.inception import load_inception
    from compare.metrics.evaluate import main, score_sets as score

    fake, real = _images(12, 0), _images(14, 1)
    (tmp_path / "samples" / "sub").mkdir(parents=True)
    for i, a in enumerate(fake):
        Image.fromarray(a).save(tmp_path / "samples" / ("sub" if i % 2 else "") / f"{i:03d}.png")
    np.savez(tmp_path / "ref.npz", arr_0=real)  # the ADM evaluator's reference-batch layout
    res = main([str(tmp_path / "samples"), "--reference", str(tmp_path / "ref.npz"), "--inception",
                str(inception_file), "--out", str(tmp_path / "m.json"), "--kid-subset-size", "10"])
    m = res["metrics"]
    assert set(m) == {f"{k}_inception" for k in ("fid", "kid", "kid_std", "precision", "recall", "density",
                                                  "coverage", "is", "is_std")}  # no FID_inf: n < 2048
    assert json.loads((tmp_path / "m.json").read_text())["metrics"] == m
    assert "14 real (16x16) vs 12 generated (16x16); 8-bit images; KID 100 subsets of 10" in res["protocol"]
    order = sorted(range(12), key=lambda i: (f"sub/{i:03d}" if i % 2 else f"{i:03d}"))  # rglob, sorted paths
    direct = score(fake[order], real, {"inception": load_inception(inception_file, "cpu")}, 0,
                   Protocol(kid_subset_size=10))
    assert all(abs(direct[k] - m[k]) <= 1e-9 * max(1, abs(m[k])) for k in m)
    stats = tmp_path / "stats.npz"
    feats = load_inception(inception_file, "cpu").features(torch.from_numpy(real).permute(0, 3, 1, 2) / 127.5 - 1)
    np.savez(stats, **dict(zip(("mu", "sigma"), gaussian_stats(feats))))
    only = main([str(tmp_path / "samples"), "--reference", str(stats), "--inception", str(inception_file)])
    fid = m["fid_inception"]
    assert abs(only["metrics"]["fid_inception"] - fid) < 1e-6 * max(1, fid) and "skipped" in only["metrics"]


@pytest.mark.parametrize("case, message", [
    ("missing", "error: SAMPLES must be an image folder or an .npz file, got"),
    ("keys", "error: SAMPLES {d}/keys.npz: want 'arr_0' (N, H, W, C) uint8 images, 'x', or 'mu' and 'sigma'"),
    ("floats", "error: SAMPLES {d}/floats.npz: want uint8 pixels (0..255, as saved images), got dtype float32"),
    ("sizes", "error: SAMPLES {d}/sizes: images must share one size"),
    ("stats", "error: SAMPLES must be images (a folder or an .npz of images), not statistics"),
    ("kid", "error: --kid-subset-size (13) must be at most 12"),
    ("nonet", "error: give the weights of a feature network: --inception PATH and/or --dinov2 PATH"),
])
def test_standalone_evaluator_refuses_bad_inputs_in_one_line(tmp_path, capsys, inception_file, case, message):
    from compare.metrics.evaluate import main

    d = tmp_path
    np.savez(d / "ref.npz", arr_0=_images(12, 1))
    np.savez(d / "keys.npz", images=_images(4, 0))
    np.savez(d / "floats.npz", arr_0=_images(4, 0).astype(np.float32))
    np.savez(d / "stats.npz", mu=np.zeros(2048), sigma=np.eye(2048))
    (d / "sizes").mkdir()
    Image.fromarray(_images(1, 0)[0]).save(d / "sizes" / "a.png")
    Image.fromarray(_images(1, 0, side=8)[0]).save(d / "sizes" / "b.png")
    samples = {"missing": d / "nope", "keys": d / "keys.npz", "floats": d / "floats.npz", "sizes": d / "sizes",
               "stats": d / "stats.npz", "kid": d / "ref.npz", "nonet": d / "ref.npz"}[case]
    extra = ["--kid-subset-size", "13"] if case == "kid" else []
    nets = [] if case == "nonet" else ["--inception", str(inception_file)]
    with pytest.raises(SystemExit) as e:
        main([str(samples), "--reference", str(d / "ref.npz"), *nets, *extra])
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and len(err) == 1 and err[0].startswith(message.format(d=d)), err


def test_python_dash_m_compare_evaluate_is_the_command():
    r = subprocess.run([sys.executable, "-m", "compare.evaluate", "--help"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "usage: python -m compare.evaluate" in r.stdout and not r.stderr
