"""Harness options that need no full run: precision, compile, the progress line, sampler and config
overrides (as a run spec gives them), checked before any training."""
import io
import sys

import pytest
import torch

import compare.progress
from compare.arms import arm_configs, build_arm, sampler_rows
from compare.config import CompareConfig
from compare.progress import Progress
from compare.sampling import check_samplers, compile_arm, precision_context
from nextscale.backbone import BackboneConfig
from nextscale.data import load_digits


@pytest.fixture(scope="module")
def small():
    data = load_digits(side=16, seed=0)
    bb = BackboneConfig(schedule=(1, 2, 3, 4, 6, 8), in_dim=8, num_classes=10, width=32, depth=1, heads=2)
    return data, bb


def test_bf16_autocasts_sampling_and_features_only_when_asked():
    lin = torch.nn.Linear(4, 4)
    with precision_context(CompareConfig(precision="bf16"), torch.device("cpu")):
        assert lin(torch.randn(2, 4)).dtype == torch.bfloat16
    with precision_context(CompareConfig(), torch.device("cpu")):
        assert lin(torch.randn(2, 4)).dtype == torch.float32
    with pytest.raises(ValueError, match=r"precision must be one of \('fp32', 'bf16'\), got 'fp16'"):
        CompareConfig(precision="fp16")


@pytest.mark.parametrize("arm", ["var", "flowar"])
def test_bf16_sampling_runs_and_stays_close(small, arm):
    data, bb = small
    cfg = CompareConfig(precision="bf16")
    torch.manual_seed(0)
    model = build_arm(arm, *arm_configs(arm, data, bb, cfg)).eval()
    kw = dict(cfg_scale=1.0) if arm == "var" else dict(solver="euler", steps=2, cfg_scale=1.0)
    ref, _ = model.sample(torch.arange(4), seed=0, **kw)
    with precision_context(cfg, torch.device("cpu")):
        low, _ = model.sample(torch.arange(4), seed=0, **kw)
    assert torch.isfinite(low.float()).all() and low.shape == ref.shape
    if arm == "flowar":  # continuous: bf16 moves the images a little (VAR's tokens may flip instead)
        assert 0 < (low.float() - ref).abs().mean() < 0.05


@pytest.mark.slow  # 13 s: torch.compile traces every block
def test_compile_wraps_the_blocks_and_the_head_and_traces(small, monkeypatch):
    """Every block's forward and the head's evaluation go through torch.compile, and dynamo really traces
    them (the eager backend: dynamo's tracing without code generation), giving the same samples."""
    data, bb = small
    wrapped = []
    real_compile = torch.compile

    def traced_compile(fn, **kw):
        wrapped.append(getattr(fn, "__name__", type(fn).__name__))
        return real_compile(fn, backend="eager", fullgraph=False, **kw)
    monkeypatch.setattr(torch, "compile", traced_compile)
    torch._dynamo.reset()
    for arm in ("var", "flowar"):
        torch.manual_seed(0)
        model = build_arm(arm, *arm_configs(arm, data, bb, CompareConfig())).eval()
        before, _ = model.sample(torch.arange(3), seed=1)
        compile_arm(arm, model)
        after, _ = model.sample(torch.arange(3), seed=1)
        assert torch.allclose(before, after, atol=1e-5)
    depth = bb.depth
    assert wrapped == ["forward"] * depth + ["forward"] + ["forward"] * depth + ["velocity"]


def test_progress_line_counts_stages_and_estimates_time_left(monkeypatch):
    err = io.StringIO()
    monkeypatch.setattr(sys, "stderr", err)
    clock = iter([0.0, 0.0, 30.0, 90.0])
    monkeypatch.setattr(compare.progress.time, "perf_counter", lambda: next(clock))
    p = Progress(4)
    p.stage("classifier")
    p.stage("train var")
    p.stage("sample var")
    lines = err.getvalue().splitlines()
    assert lines == ["== stage 1/4, 0:00 elapsed, ~? left: classifier",
                     "== stage 2/4, 0:30 elapsed, ~1:30 left: train var",
                     "== stage 3/4, 1:30 elapsed, ~1:30 left: sample var"]


def test_sampler_and_config_overrides_are_checked_before_training(small):
    data, bb = small
    cfg = CompareConfig(arms=("var",), samplers={"var": (("greedy-ish", {"cfg_scale": 0.0, "top_k": 1}),)})
    assert sampler_rows("var", cfg) == [("greedy-ish", {"cfg_scale": 0.0, "top_k": 1})]
    check_samplers(cfg, data, bb, torch.device("cpu"))
    bad = CompareConfig(arms=("var",), samplers={"var": (("typo", {"cfg_scal": 1.0}),)})
    with pytest.raises(ValueError, match=r"samplers.var \[typo\]: .*cfg_scal"):
        check_samplers(bad, data, bb, torch.device("cpu"))
    bad_value = CompareConfig(arms=("var",), samplers={"var": (("neg", {"cfg_scale": -1.0}),)})
    with pytest.raises(ValueError, match=r"samplers.var \[neg\]: cfg_scale"):
        check_samplers(bad_value, data, bb, torch.device("cpu"))
    with pytest.raises(ValueError, match="samplers.var must be a non-empty list"):
        CompareConfig(samplers={"var": ()})
    over = CompareConfig(arm_overrides={"flowar": {"head_depth": 3}})
    assert arm_configs("flowar", data, bb, over)[1].head_depth == 3
    assert arm_configs("flowar-mlp", data, bb, over)[1].head_depth == 2  # only the arm named
    with pytest.raises(ValueError, match=r"arm_overrides.flowar: unknown field 'hed_depth'"):
        arm_configs("flowar", data, bb, CompareConfig(arm_overrides={"flowar": {"hed_depth": 3}}))
    with pytest.raises(ValueError, match="head_depth must lie in"):
        arm_configs("flowar", data, bb, CompareConfig(arm_overrides={"flowar": {"head_depth": 0}}))


@pytest.mark.parametrize("reference", ["test", "train"])
def test_the_floor_never_draws_from_the_reference(monkeypatch, reference, small):
    """The floor's real images are disjoint from the images the samples are scored against (with
    --reference train they come from the test split), so it is a floor and not a copy of the reference."""
    from compare import harness

    data, _ = small
    seen = []
    monkeypatch.setattr(harness, "evaluate_samples", lambda x, y, *a: seen.append(x) or {"class_acc": 1.0})
    monkeypatch.setattr(harness, "class_accuracy", lambda *a: 1.0)
    cfg = CompareConfig(reference=reference, samples=50, seeds=2)
    run = harness.Run(cfg, None, torch.device("cpu"), data, None, Progress(1, enabled=False))
    floor, per_seed = harness._floor(run)
    ref = data.x_test if reference == "test" else data.x_train
    ref_rows = {tuple(r.flatten().tolist()) for r in ref}
    assert len(seen) == 2 and all(len(x) == 50 for x in seen)
    for x in seen:
        assert not any(tuple(r.flatten().tolist()) in ref_rows for r in x)
    assert harness.floor_split(cfg) == ("test" if reference == "train" else "train")


def test_more_refusals_before_any_training(tmp_path, capsys):
    """Sampler labels that would overwrite each other's sample grid, fewer samples than classes (no longer
    class-balanced) and an empty --out are refused with one line, before anything trains."""
    from compare.__main__ import main

    with pytest.raises(ValueError, match=r"labels \['cfg 0', 'cfg_0'\] name the same sample-grid file"):
        CompareConfig(samplers={"var": (("cfg 0", {"cfg_scale": 0.0}), ("cfg_0", {"cfg_scale": 0.5}))})
    for argv, msg in ((["--samples", "5", "--out", str(tmp_path / "run")],
                       "error: samples (5) must be at least the number of classes (10)"),
                      (["--out", ""], "error: --out must name a folder, got an empty path")):
        with pytest.raises(SystemExit) as e:
            main(["--quick", *argv])
        err = capsys.readouterr().err.strip().splitlines()
        assert e.value.code == 2 and err[-1].startswith(msg), err
    assert not (tmp_path / "run" / "checkpoints").exists()
