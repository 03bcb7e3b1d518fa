"""The main job end to end, in its reduced --quick form, and its checkpoint reuse."""
import json
import math

import pytest

from compare.__main__ import main, parse
from compare.arms import CHAIN, FACTORS
from compare.config import CompareConfig


def test_cli_validates_options():
    with pytest.raises(SystemExit):
        parse(["--samples", "1"])
    with pytest.raises(ValueError, match="samples"):
        CompareConfig(samples=0)
    assert parse(["--quick", "--seed", "3"]).quick and parse(["--quick", "--seed", "3"]).seed == 3
    assert parse(["--quick"]).seeds == 2 and parse([]).seeds == 3 and parse(["--seeds", "5"]).seeds == 5
    with pytest.raises(SystemExit):
        parse(["--seeds", "0"])
    with pytest.raises(ValueError, match="head_width"):
        CompareConfig(head_width=0)
    assert parse([]).arms == ("var", "flowar", "flowar-mlp")
    assert parse(["--arms", "var, flowar-fewstep"]).arms == ("var", "flowar-fewstep")
    for bad in ("", "var,var", "var,flowar-fast"):
        with pytest.raises(ValueError, match=r"arms must be a non-empty list of distinct arms from \('var', "):
            CompareConfig(arms=tuple(a for a in bad.split(",") if a))


def test_layers_defaults_quick_preset_then_given_flags():
    full = parse(["--preset", "cifar32"])
    assert (full.side, full.latent_channels, full.width, full.reference, full.train_steps["var"]["generator"]) == \
        (32, 16, 384, "train", 20000)
    quick = parse(["--preset", "cifar32", "--quick"])  # only the preset's data settings on top of --quick
    assert (quick.side, quick.latent_channels, quick.reference, quick.width, quick.seeds) == (32, 16, "train", 64, 2)
    given = parse(["--preset", "cifar32", "--reference", "test", "--train-steps", "100", "--seeds", "1"])
    assert (given.reference, given.train_steps["var"]["generator"], given.train_steps["flowar"]["autoencoder"],
            given.seeds, given.width) == ("test", 100, 50, 1, 384)
    assert parse([]) == CompareConfig()
    with pytest.raises(SystemExit):
        parse(["--preset", "cifar100"])


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    """The default arms' --quick run over 2 seeds, shared by the tests below (they copy its checkpoints
    into their own folders instead of training again)."""
    out = tmp_path_factory.mktemp("quick") / "cmp"
    main(["--quick", "--seeds", "2", "--out", str(out), "--seed", "0"])
    return out, json.loads((out / "results.json").read_text())


def _with_checkpoints_of(run_out, out):
    """A fresh output folder holding ``run_out``'s checkpoints (keyed: a run with the same configs reuses them)."""
    import shutil

    shutil.copytree(run_out / "checkpoints", out / "checkpoints")
    return out


@pytest.mark.slow
def test_quick_few_step_arm(quick_run, tmp_path):
    """The opt-in few-step arm: shortcut rows with exact NFE (a step [t, t + d] is guided where it meets
    t >= 0.1, at scales k > 1), its own training budget, finite metrics; it reuses the FlowAR family's
    autoencoder (and the classifier) of the shared run."""
    out = _with_checkpoints_of(quick_run[0], tmp_path / "fs")
    main(["--quick", "--seeds", "1", "--arms", "flowar-fewstep", "--out", str(out)])
    res = json.loads((out / "results.json").read_text())
    rows = {r["sampler"]: r for r in res["rows"]}
    assert set(rows) == {"shortcut x1, w 0.5", "shortcut x2, w 0.5"} and set(res["models"]) == {"flowar-fewstep"}
    for label, steps in (("shortcut x1, w 0.5", 1), ("shortcut x2, w 0.5", 2)):
        r = rows[label]
        assert r["settings"]["solver"] == "shortcut" and r["settings"]["cfg_scale"] == 0.5
        assert r["head_nfe_per_scale"] == [steps, 2 * steps, 2 * steps, 2 * steps]
        assert all(_finite(r[k]["mean"]) for k in ("fid", "recall", "class_acc", "ms_per_image"))
    m = res["models"]["flowar-fewstep"]
    assert m["config"]["few_step"] == "shortcut" and m["train_flops_per_image"] > 0
    assert m["per_seed"][0]["checkpoints"][0] == quick_run[1]["models"]["flowar"]["per_seed"][0]["checkpoints"][0]
    assert not m["per_seed"][0]["reused_checkpoints"]  # its generator is its own


def _finite(v):
    return isinstance(v, (int, float)) and math.isfinite(v)


@pytest.mark.slow
def test_factor_arms_the_hybrid_and_the_attribution_section(quick_run, tmp_path):
    """Every factor arm and the hybrid run beside the published arms (reused from the shared run, one
    seed): the schedule arms on the other's schedule, VAR's quantizer on FlowAR's autoencoder checkpoint
    (the hybrid on the same quantizer), and the attribution whose chain adds up to the total."""
    out = _with_checkpoints_of(quick_run[0], tmp_path / "att")
    arms = "var,var-flowae,var-flowae-doubling,flowar,hart,var-doubling,flowar-varsched"
    main(["--quick", "--seeds", "1", "--samples", "40", "--arms", arms, "--out", str(out)])
    res = json.loads((out / "results.json").read_text())
    m = res["models"]
    doubling = ("var-doubling", "var-flowae-doubling", "flowar")
    assert all(m[arm]["schedule"] == [1, 2, 4, 8] for arm in doubling)
    assert m["flowar-varsched"]["schedule"] == m["var-flowae"]["schedule"] == m["var"]["schedule"] == [1, 2, 3, 4, 6, 8]
    assert all(m[arm]["per_seed"][0]["reused_checkpoints"] for arm in ("var", "flowar"))
    ck = {arm: m[arm]["per_seed"][0]["checkpoints"] for arm in m}
    for arm in ("flowar-varsched", "var-flowae", "var-flowae-doubling", "hart"):  # FlowAR's autoencoder, shared
        assert ck[arm][0] == ck["flowar"][0], arm
    assert ck["hart"][1] == ck["var-flowae"][1] != ck["var-flowae-doubling"][1]  # one quantizer per schedule
    assert m["hart"]["ceiling"]["recon_mse"]["mean"] == m["flowar"]["ceiling"]["recon_mse"]["mean"]
    assert m["var-flowae"]["ceiling"]["recon_mse"]["mean"] > m["flowar"]["ceiling"]["recon_mse"]["mean"]
    hart_rows = {r["sampler"]: r for r in res["rows"] if r["model"] == "hart"}
    assert hart_rows["cfg 0"]["head_nfe"]["mean"] == 6 + 8  # the last scale adds the residual's 8 Euler steps
    att = {f["factor"]: f for f in res["attribution"]}
    assert list(att) == ["total: var - flowar", *(f for f, a, b in FACTORS if a in m and b in m)]
    chain = [att[f]["fid_diff"]["mean"] for f, a, b in FACTORS if (a, b) in set(zip(CHAIN, CHAIN[1:]))]
    assert len(chain) == 3 and sum(chain) == pytest.approx(att["total: var - flowar"]["fid_diff"]["mean"], abs=1e-9)
    for f in att.values():
        assert f["fid_diff"]["n"] == 1 and f["fid_diff"]["resolved"] is False
        assert f["matched"]["b"]["model"] == f["b"]["model"]
    report = (out / "report.md").read_text()
    assert "## Attribution: one factor at a time" in report and "add up to the total, seed by seed" in report


@pytest.mark.slow
def test_quick_run_two_seeds_writes_every_output_and_reuses_checkpoints(quick_run, tmp_path):
    out, res = quick_run
    for f in ("report.md", "fid_vs_nfe.png", "fid_vs_gflops.png", "fid_vs_time.png", "precision_recall.png",
              "per_scale_cost.png"):
        assert (out / f).stat().st_size > 0, f
    assert res["seeds"] == [0, 1] and {r["model"] for r in res["rows"]} == {"var", "flowar", "flowar-mlp"}
    for r in res["rows"]:
        for key in ("fid", "fid_inf", "kid", "precision", "recall", "density", "coverage", "class_acc", "head_nfe",
                    "ms_per_image", "peak_mem_bytes"):
            s = r[key]
            assert s["n"] == 2 and len(s["values"]) == 2 and all(_finite(v) for v in s["values"]), (r["sampler"], key)
            assert _finite(s["mean"]) and _finite(s["std"]) and _finite(s["half"]) and s["lo"] <= s["mean"] <= s["hi"]
        assert r["fid"]["values"][0] != r["fid"]["values"][1], r["sampler"]  # real retraining, not a copy
        assert r["flops_per_image_exact"] > 0 and r["head_nfe"]["mean"] >= 1 and r["head_nfe"]["std"] == 0
        for key in ("latency_ms", "throughput_ms_per_image", "throughput_img_per_s"):
            assert _finite(r[key]) and r[key] > 0
        assert r["throughput_batch"] == 20
        assert (out / r["grid"]).stat().st_size > 0
        assert r["protocol"].startswith("features: classifier (weights ") and "rounded to 8 bits" in r["protocol"]
        assert f"vs 100 generated; 16x16 images, rounded to 8 bits; KID 100 subsets of 100" in r["protocol"]
    assert res["protocol"] == {"quantize": True, "kid_subset_size": None, "kid_subsets": 100, "pr_k": 3, "dc_k": 5}
    report = (out / "report.md").read_text()
    assert "## More metrics" in report and "FID_inf (classifier)" in report and "## Protocol of each row" in report
    for name, arm in res["models"].items():  # each arm's autoencoder ceiling: its reconstructions of the floor's images
        c = arm["ceiling"]
        assert c["fid"]["n"] == 2 and all(_finite(c[k]["mean"]) for k in ("fid", "recall", "density", "recon_mse"))
        assert 0 < c["recon_mse"]["mean"] < 0.5 and f"| {name} autoencoder | (ceiling" in report
    f = res["floor"]
    assert f["fid"]["n"] == 2 and f["fid"]["values"][0] != f["fid"]["values"][1] and f["test_class_acc"] > 0.5
    # budgets: parameters and training FLOPs per arm; the same backbone config for the FlowAR arms
    m = res["models"]
    for arm in m.values():
        assert arm["params_generator"] == arm["params_backbone"] + arm["params_head"]
        assert arm["train_flops_per_image"] > 0 and arm["train_seconds"]["n"] == 2
    assert m["flowar"]["params_backbone"] == m["flowar-mlp"]["params_backbone"]
    assert m["flowar"]["schedule"] == m["flowar-mlp"]["schedule"] == [1, 2, 4, 8]
    assert m["var"]["schedule"] == [1, 2, 3, 4, 6, 8]
    assert m["flowar"]["per_seed"][0]["checkpoints"][0] == m["flowar-mlp"]["per_seed"][0]["checkpoints"][0]
    assert m["flowar"]["per_seed"][0]["checkpoints"] != m["flowar"]["per_seed"][1]["checkpoints"]
    # fixed-step FlowAR NFE is exact: 1 per step, 2 where guided (scale k > 1 and t >= 0.1)
    for arm in ("flowar", "flowar-mlp"):
        nfe = {r["sampler"]: r for r in res["rows"] if r["model"] == arm}
        for label, steps in (("euler x2", 2), ("euler_maruyama x8", 8)):
            per_scale = [sum(2 if w > 0 and i / steps >= 0.1 else 1 for i in range(steps))
                         for w in nfe[label]["cfg_per_scale"]]
            assert nfe[label]["head_nfe_per_scale"] == per_scale, (arm, label)
            assert nfe[label]["head_nfe"]["values"] == [sum(per_scale)] * 2
    # paired differences: every pair of arms' best rows, plus VAR at matched cost
    whats = [c["what"] for c in res["comparisons"]]
    assert whats.count("best vs best") == 3 and len(whats) >= 5
    for c in res["comparisons"]:
        assert c["fid_diff"]["n"] == 2 and isinstance(c["fid_diff"]["resolved"], bool)
    assert res["versions"]["torch"] and res["seed"] == 0 and "t-interval" in res["interval"]
    assert not any(p["reused_checkpoints"] for a in m.values() for p in a["per_seed"][:1] if a is m["var"])

    # quality: every arm's best row beats the same arm untrained, scored the same way
    untrained = _untrained_fids(res, out)
    for arm, fid0 in untrained.items():
        best = min(r["fid"]["mean"] for r in res["rows"] if r["model"] == arm)
        assert best < 0.7 * fid0, (arm, best, fid0)

    # a rerun of seed 1's VAR rows with those checkpoints trains nothing and gives the same numbers
    again_out = _with_checkpoints_of(out, tmp_path / "again")
    main(["--quick", "--seeds", "1", "--seed", "1", "--arms", "var", "--out", str(again_out)])
    again = json.loads((again_out / "results.json").read_text())
    assert all(p["reused_checkpoints"] for a in again["models"].values() for p in a["per_seed"])
    first = [r for r in res["rows"] if r["model"] == "var"]
    assert [r["sampler"] for r in again["rows"]] == [r["sampler"] for r in first]
    for r, r2 in zip(first, again["rows"]):  # same seed, same weights, same samples, same numbers
        for key in ("fid", "kid", "precision", "recall", "class_acc"):
            assert r2[key]["values"] == pytest.approx(r[key]["values"][1:]), (r["sampler"], key)


def test_bad_data_and_out_are_refused_before_any_training(tmp_path, capsys):
    import numpy as np

    odd = tmp_path / "odd.npz"
    np.savez(odd, x=np.zeros((20, 25, 25), np.uint8), y=np.repeat(np.arange(2), 10))
    for argv, msg in ((["--data", str(odd)], "error: image side 25 must be even (the latent is image side / 2): "
                                             "use --side 24 or 28 (multiples of 4 also give FlowAR's doubling schedule two scales)"),
                      (["--out", str(odd)], f"error: --out {odd} is a file, not a folder")):
        with pytest.raises(SystemExit) as e:
            main(["--quick", "--out", str(tmp_path / "run"), *argv])
        err = capsys.readouterr().err.strip().splitlines()
        assert e.value.code == 2 and err[-1] == msg, err
        assert not (tmp_path / "run" / "checkpoints").exists()  # nothing trained, nothing cached
    with pytest.raises(SystemExit) as e:  # side 6: latent 3, a one-scale doubling schedule for FlowAR
        main(["--quick", "--out", str(tmp_path / "run"), "--side", "6"])
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and err[-1].startswith("error: arm flowar: backbone.schedule (3,) has one scale"), err
    assert not (tmp_path / "run" / "checkpoints").exists()


def _untrained_fids(res: dict, out) -> dict:
    """FID of each arm with random weights (its first sampler row's settings), against the same real
    test set in the same (cached) classifier features as the run."""
    import torch

    from compare.metrics.classifier import train_classifier
    from compare.metrics.fid import fid_from_features
    from compare.arms import arm_configs, build_arm
    from nextscale.backbone import BackboneConfig
    from nextscale.data import load_dataset

    cfg = CompareConfig.quick_config(out=str(out))
    data = load_dataset("digits", seed=cfg.split_seed)
    clf = train_classifier(data, seed=cfg.split_seed, cache_dir=out / "checkpoints", steps=cfg.classifier_steps,
                           device="cpu", progress=False)
    real = clf.features(data.x_test)
    backbone = BackboneConfig(**{k: tuple(v) if k == "schedule" else v for k, v in res["backbone"].items()})
    labels = torch.arange(cfg.samples) % data.num_classes
    fids = {}
    for arm in ("var", "flowar", "flowar-mlp"):
        torch.manual_seed(0)
        model = build_arm(arm, *arm_configs(arm, data, backbone, cfg))
        kw = next(r["settings"] for r in res["rows"] if r["model"] == arm)
        kw = {k: tuple(v) if isinstance(v, list) else v for k, v in kw.items()}
        images, _ = model.eval().sample(labels, seed=0, **kw)
        fids[arm] = fid_from_features(real, clf.features(images.float()))
    return fids


@pytest.mark.slow
def test_torchrun_two_processes_give_one_process_metrics(quick_run, tmp_path):
    """Under torchrun (2 CPU processes on gloo), sampling batches and feature chunks are sharded over the
    ranks and gathered: on the same weights (the shared quick run's seed 0) the metrics equal the
    one-process run's."""
    import torch
    from launch import torchrun

    out = _with_checkpoints_of(quick_run[0], tmp_path / "tr")
    args = ["--quick", "--seeds", "1", "--arms", "var,flowar", "--samples", "40", "--sample-batch", "10",
            "--out", str(out)]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each torchrun worker: another thread count reorders float sums, and a
    try:                      # token drawn near a CDF boundary can then flip, changing an image
        main(args)
    finally:
        torch.set_num_threads(threads)
    one = json.loads((out / "results.json").read_text())
    assert all(p["reused_checkpoints"] for a in one["models"].values() for p in a["per_seed"])
    torchrun(["-m", "compare", *args], cwd=tmp_path)
    two = json.loads((out / "results.json").read_text())
    assert all(p["reused_checkpoints"] for a in two["models"].values() for p in a["per_seed"])
    assert [r["sampler"] for r in two["rows"]] == [r["sampler"] for r in one["rows"]]
    for r1, r2 in zip(one["rows"], two["rows"]):
        for key in ("fid", "kid", "precision", "recall", "class_acc"):
            assert r2[key]["values"] == pytest.approx(r1[key]["values"], rel=1e-4, abs=1e-6), (r1["sampler"], key)
    assert two["floor"]["fid"]["values"] == pytest.approx(one["floor"]["fid"]["values"], rel=1e-4)


def test_run_spec_on_the_command_line(tmp_path, capsys):
    """--print-config prints the default spec; a spec equal to it changes nothing (same config, so the
    same checkpoint keys), with --quick too; flags given beat the spec; a bad spec stops the command
    with status 2 and one `error:` line per problem, naming its path, within seconds and before training."""
    import subprocess
    import sys
    import time

    with pytest.raises(SystemExit) as e:
        parse(["--print-config"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    spec = tmp_path / "run.toml"
    spec.write_text(text)
    assert parse(["--config", str(spec)]) == CompareConfig()
    assert parse(["--config", str(spec), "--quick"]) == CompareConfig.quick_config()
    spec.write_text(text.replace("seeds = 3", "seeds = 4"))
    assert parse(["--config", str(spec)]).seeds == 4 and parse(["--config", str(spec), "--seeds", "2"]).seeds == 2
    bad = tmp_path / "bad.toml"
    bad.write_text("[run]\nseeds = 0\n[arms.flowar]\noverrides = { hed_depth = 3 }\n")
    t = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "compare", "--config", str(bad), "--out", str(tmp_path / "o")],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and time.perf_counter() - t < 60
    assert r.stderr.strip().splitlines() == [
        "error: unknown key arms.flowar.overrides.hed_depth (did you mean head_depth?)"], r.stderr
    bad.write_text("[run]\nseeds = 0\n")
    r = subprocess.run([sys.executable, "-m", "compare", "--config", str(bad), "--out", str(tmp_path / "o")],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and r.stderr.strip() == "error: run.seeds must lie in [1, 2147483648], got 0"
    assert not (tmp_path / "o" / "checkpoints").exists()
