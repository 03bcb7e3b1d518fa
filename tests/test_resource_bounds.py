"""Inputs that exhaust a resource (issue 33): sizes whose tensors cannot fit, files that inflate past memory,
solves and checkpoints that would run for hours, metric sets too small for their k. Each is refused where
its run is configured (one ``ValueError``; a command: one ``error:`` line, exit 2), before anything is built,
trained, sampled or read."""
import os
import sys
import time

import numpy as np
import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))

GiB = 2**30


def _one_error(capsys, call) -> str:
    with pytest.raises(SystemExit) as e:
        call()
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and len([ln for ln in err if "error:" in ln]) == 1 and "Traceback" not in err, err
    return next(ln for ln in err if "error:" in ln)


# ----------------------------------------------------------------------------- one memory estimate

def test_the_memory_estimate_counts_every_arms_parameters(digits):
    from compare.arms import ARMS, arm_configs, build_arm
    from compare.config import CompareConfig
    from nextscale.backbone import BackboneConfig
    from nextscale.cost import FLOAT, count_params, memory_estimate

    for coder in ("conv", "ldm"):
        cfg = CompareConfig(coder=coder)
        bb = BackboneConfig.for_images(digits.side, digits.num_classes, 8, width=128, depth=4, heads=4)
        for name in ARMS:
            configs = arm_configs(name, digits, bb, cfg)
            est = memory_estimate(configs, 64, 250)
            ratio = est.of("parameters") / FLOAT / count_params(build_arm(name, *configs))
            assert 0.7 < ratio < 1.35, (coder, name, ratio)
            assert est.of("optimizer") == 4 * est.of("parameters") and est.of("sampling") > 0
            assert est.total == est.of("parameters") + est.of("optimizer") + max(est.of("activations"),
                                                                                 est.of("sampling"))
    assert est.line().startswith("memory: about ") and "sampling batch" in est.line()


def test_the_estimate_refuses_naming_the_setting(monkeypatch):
    from nextscale import config
    from nextscale.backbone import BackboneConfig
    from nextscale.cost import memory_estimate
    from var.model import VARConfig

    big = VARConfig(backbone=BackboneConfig(width=4_000_000, heads=4), vocab_size=512)
    with pytest.raises(ValueError, match=r"memory estimate: needs [\d,.]+ GiB of memory, more than half of this "
                                         r"machine's .*the backbone \(width 4000000, depth 4\)"):
        memory_estimate([big], 32).check()
    with pytest.raises(ValueError,
                       match=r"the KV cache of the backbone \(width 128, depth 4\) at throughput_batch 100000000"):
        memory_estimate([VARConfig()], 32, 10**8, sample_name="throughput_batch").check()
    monkeypatch.setattr(config, "machine_memory", lambda: None)  # nothing to check against: no refusal
    memory_estimate([big], 32).check()


@pytest.mark.parametrize("spec, message", [
    ("[backbone]\nwidth = 4000000\nheads = 4\n", r"arm var: memory estimate: .*the backbone \(width 4000000"),
    ("[backbone]\ndepth = 1000000\n", r"arm var: memory estimate: .*the backbone \(width 64, depth 1000000\)"),
    ("[arms.flowar.overrides]\nhead_width = 10000000\n", r"arm flowar: memory estimate: .*head_width 10000000"),
    ("[eval]\nthroughput_batch = 100000000\n", r"arm var: memory estimate: .*at throughput_batch 100000000"),
])
def test_compare_refuses_sizes_that_cannot_fit_before_building_anything(tmp_path, capsys, spec, message):
    """Each was an allocator traceback (width, head width: at the first model built; the throughput batch:
    after every arm had trained) or hours of building a million blocks (depth)."""
    from compare.__main__ import main

    (tmp_path / "s.toml").write_text(spec)
    err = _one_error(capsys, lambda: main(["--quick", "--out", str(tmp_path / "run"), "--config",
                                           str(tmp_path / "s.toml")]))
    assert __import__("re").search(message, err), err
    assert not (tmp_path / "run" / "checkpoints").exists()


@pytest.mark.parametrize("cmd, argv, message", [
    ("var", ["--vocab-size", str(2**40)], r"the logits of vocab_size 1099511627776"),
    ("flowar", ["--width", "4000000", "--heads", "2"], r"velocity head \(head_width 4000000"),
])
def test_the_training_commands_refuse_before_the_first_stage(tmp_path, capsys, cmd, argv, message):
    """--vocab-size 2^40 was an allocator traceback; --width 4,000,000 one after the autoencoder had trained."""
    from flowar.__main__ import main as flowar_main
    from var.__main__ import main as var_main

    main = {"var": var_main, "flowar": flowar_main}[cmd]
    err = _one_error(capsys, lambda: main(["--out", str(tmp_path / "run"), "--depth", "1", "--steps", "1",
                                           "--per-class", "1", *argv]))
    assert __import__("re").search(message, err), err
    assert not list((tmp_path / "run").glob("checkpoints/*.pt"))


def test_the_bench_refuses_a_batch_that_cannot_fit(capsys):
    from compare.bench import main

    err = _one_error(capsys, lambda: main(["--quick", "--batch", str(10**9), "--arms", "var"]))
    assert "python -m compare.bench: error: arm var: memory estimate" in err and "--batch 1000000000" in err


def test_the_library_refuses_before_training_a_stage(digits, tmp_path):
    from nextscale.backbone import BackboneConfig
    from nextscale.train import recipe
    from var.pipeline import default_configs, train_family

    vq, var = default_configs(digits, BackboneConfig.for_images(16, 10, 8, width=64, depth=10**6, heads=2))
    with pytest.raises(ValueError, match=r"memory estimate: .*depth 1000000"):
        train_family(digits, vq, var, *recipe(seed=0, ae_steps=1, gen_steps=1), tmp_path)
    assert not list(tmp_path.glob("*.pt"))


# ----------------------------------------------------------------------------- files inflate after the check

def _bomb(path, key="x", shape=(64, 128, 128)):
    np.savez_compressed(path, **{key: np.zeros(shape, np.uint8)}, y=np.arange(shape[0]) % 2)
    assert path.stat().st_size < 50_000  # 1 MB of zeros compresses to a few KB


@pytest.mark.parametrize("reader", ["data", "samples", "stats"])
def test_an_npz_that_inflates_past_memory_is_refused_before_it_is_read(tmp_path, monkeypatch, reader):
    """A compressed .npz of a few KB that inflates to more than half the memory (here: a machine of 1 MiB;
    the issue's file inflated to 12 GB) is refused from its headers, before any array is inflated."""
    from compare.metrics.fid import load_stats
    from compare.metrics.sample_files import read_set
    from nextscale import config
    from nextscale.data import load_npz

    path = tmp_path / "bomb.npz"
    _bomb(path, key={"data": "x", "samples": "arr_0", "stats": "sigma"}[reader])
    monkeypatch.setattr(config, "machine_memory", lambda: 2**20)

    def inflated(*a, **kw):
        raise AssertionError("an array was inflated before its size was checked")
    monkeypatch.setattr(np.lib.format, "read_array", inflated)
    call = {"data": lambda: load_npz(path), "samples": lambda: read_set(path, "SAMPLES"),
            "stats": lambda: load_stats(path)}[reader]
    with pytest.raises(ValueError, match=r"bomb\.npz: needs [\d.]+ MiB of memory, more than half of this "
                                         r"machine's .*inflate to that"):
        call()


# ----------------------------------------------------------------------------- hangs

def test_adaptive_tolerances_below_float32_are_refused():
    """rtol = atol = 1e-13 made dopri5 shrink its steps until max_num_steps at every scale: hours."""
    from flowar.sampling import FlowSampling
    from flowar.solvers import TOL_MIN, SolverConfig

    for name in ("rtol", "atol"):
        with pytest.raises(ValueError, match=rf"{name} must lie in \[1\.19e-07, inf\), got 1e-13: float32's"):
            FlowSampling(solver="dopri5", **{name: 1e-13})
    SolverConfig("dopri5", rtol=TOL_MIN, atol=TOL_MIN)


def test_compare_refuses_a_tolerance_row_before_training(tmp_path, capsys):
    from compare.__main__ import main

    (tmp_path / "s.toml").write_text('[arms.flowar]\nsamplers = [{label = "tight", solver = "dopri5", '
                                     'rtol = 1e-13, atol = 1e-13}]\n')
    err = _one_error(capsys, lambda: main(["--quick", "--arms", "flowar", "--out", str(tmp_path / "run"),
                                           "--config", str(tmp_path / "s.toml")]))
    assert "rtol must lie in [1.19e-07, inf), got 1e-13" in err
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_a_checkpoint_config_that_expands_without_end_is_refused_at_once(digits, tmp_path):
    """A list holding the one before it 8 times, 10 times over (a few hundred bytes pickled, 8^10 values
    expanded), in a checkpoint's config: comparing and printing it against the current config ran for hours."""
    from dataclasses import replace

    from nextscale.data import load_digits
    from nextscale.train import TrainConfig, load_trained, train
    from toy import Toy

    d8 = load_digits(side=8)
    ck = tmp_path / "m.pt"
    train(Toy(), d8.x_train, d8.y_train, TrainConfig(steps=1, batch_size=8, progress=False), ckpt_path=ck,
          device="cpu")
    raw = torch.load(ck, weights_only=True)
    dag, deep = [1], [1]
    for _ in range(10):  # 8^10 values, 11 levels deep
        dag = [dag] * 8
    for _ in range(40):
        deep = [deep]
    for bad, message in ((dag, r"its config holds more than 100,000 values"),
                         (deep, r"its config is nested more than 32 levels deep")):
        raw["config"]["backbone"]["schedule"] = bad
        torch.save(raw, ck)
        t = time.perf_counter()
        with pytest.raises(ValueError, match=rf"checkpoint .*m\.pt: {message}: not a config"):
            load_trained(Toy(), ck)
        with pytest.raises(ValueError, match=message):  # resuming reads it too
            train(Toy(), d8.x_train, d8.y_train, replace(TrainConfig(steps=2, batch_size=8, progress=False)),
                  ckpt_path=ck, device="cpu")
        assert time.perf_counter() - t < 10


# ----------------------------------------------------------------------------- metric sets checked up front

class _Net:
    def __init__(self, dim, logits):
        self.dim, self.logits = dim, logits

    def class_logits(self, feats):
        return feats @ torch.ones(self.dim, 3) if self.logits else None


def test_every_metric_need_is_checked_in_one_place():
    from compare.metrics.evaluate import IS_SPLITS, check_metric_inputs
    from compare.metrics.prdc import DC_K, PR_K

    clf, inception = {"classifier": _Net(64, False)}, {"inception": _Net(2048, True)}
    check_metric_inputs(PR_K + 1, DC_K + 1, clf)
    with pytest.raises(ValueError, match=rf"samples \(3 images\) must be more than 3: precision/recall's k-NN"):
        check_metric_inputs(3, 100, clf)
    with pytest.raises(ValueError, match=r"the reference \(4 images\) must be more than 5: density/coverage's k-NN "
                                         r"radii \(k = 5\) need 5 other images in the same set"):
        check_metric_inputs(100, 4, clf)
    with pytest.raises(ValueError, match=rf"samples \(5 images\) must be at least {IS_SPLITS}: the Inception Score"):
        check_metric_inputs(5, 100, inception)
    check_metric_inputs(5, 100, clf)  # no class logits: no Inception Score
    stats = (np.zeros(64), np.eye(64))
    with pytest.raises(ValueError, match=r"--reference holds 64-d statistics; inception gives 2048-d features"):
        check_metric_inputs(100, stats, inception, real="--reference")
    with pytest.raises(ValueError, match=r"statistics hold one network's features: give exactly one of"):
        check_metric_inputs(100, stats, {**clf, **inception})
    check_metric_inputs(3, stats, clf)  # FID alone: 3 samples give a covariance


def test_compare_checks_the_metrics_before_training(tmp_path, capsys):
    """2 classes x 10 images: a 4-image test split, too few for density/coverage's k = 5; refused only after
    every stage had trained."""
    from compare.__main__ import main

    rng = np.random.default_rng(0)
    np.savez(tmp_path / "d.npz", x=rng.integers(0, 256, (20, 8, 8), dtype=np.uint8), y=np.arange(20) % 2)
    err = _one_error(capsys, lambda: main(["--quick", "--data", str(tmp_path / "d.npz"), "--samples", "20",
                                           "--out", str(tmp_path / "run")]))
    assert err == ("error: the reference (test split) (4 images) must be more than 5: density/coverage's k-NN "
                   "radii (k = 5) need 5 other images in the same set"), err
    assert not (tmp_path / "run" / "checkpoints").exists()


@pytest.fixture(scope="module")
def inception_file(tmp_path_factory):
    from compare.metrics.inception import InceptionV3FID

    path = tmp_path_factory.mktemp("w") / "inception.pth"
    torch.save({k: v for k, v in InceptionV3FID().state_dict().items() if not k.endswith("num_batches_tracked")},
               path)
    return path


@pytest.mark.parametrize("n, message", [
    (3, "error: SAMPLES (3 images) must be more than 3: precision/recall's k-NN radii"),
    (5, "error: SAMPLES (5 images) must be at least 10: the Inception Score (inception) splits them in 10"),
])
def test_the_evaluator_checks_the_metrics_before_extracting_features(tmp_path, capsys, monkeypatch,
                                                                       inception_file, n, message):
    from compare.metrics import evaluate

    def extracted(*a, **kw):
        raise AssertionError("features were extracted before the sets were checked")
    monkeypatch.setattr(evaluate, "features", extracted)
    rng = np.random.default_rng(0)
    for name, m in (("s", n), ("r", 40)):
        np.savez(tmp_path / f"{name}.npz", arr_0=rng.integers(0, 256, (m, 16, 16, 3), dtype=np.uint8))
    err = _one_error(capsys, lambda: evaluate.main([str(tmp_path / "s.npz"), "--reference", str(tmp_path / "r.npz"),
                                                   "--inception", str(inception_file)]))
    assert err.startswith(message), err
