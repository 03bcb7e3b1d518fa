"""``python -m compare.released`` end to end at a tiny size: the release fixtures' weights written as the
releases' files, a tiny DINOv2 as the feature network (the ViT-L/14 file is not made here)."""
from __future__ import annotations

import json
import math
from dataclasses import replace

import numpy as np
import pytest
import torch

from compare.metrics import evaluate
from compare.metrics.dinov2 import DINOv2, load_dinov2
from compare.metrics.fid import frechet_distance, gaussian_stats
from compare.metrics.prdc import precision_recall
from compare.metrics.sample_files import features
from compare.released import main, to_uint8
from flowar import release as flowar_release
from var import release as var_release
from test_flowar_release_model import GOLDEN as FLOWAR, flowar_state, release_state
from test_var_release import GOLDEN as VAR


@pytest.fixture
def files(tmp_path, monkeypatch):
    torch.save(release_state(VAR["vae"]), tmp_path / "vae.pth")
    torch.save(release_state(VAR["var"]), tmp_path / "var.pth")
    torch.save(flowar_state(), tmp_path / "flowar.pth")
    torch.save({"model": release_state(FLOWAR["vae"]["model"])}, tmp_path / "kl16.ckpt")
    ref = np.random.default_rng(0).integers(0, 256, (16, 32, 32, 3), dtype=np.uint8)
    np.savez(tmp_path / "ref.npz", arr_0=ref)
    torch.manual_seed(0)
    torch.save(DINOv2(dim=32, depth=2, heads=2, grid=4).state_dict(), tmp_path / "dinov2.pth")
    monkeypatch.setitem(evaluate.NETWORKS, "dinov2", replace(evaluate.NETWORKS["dinov2"], load=lambda path, device:
                        load_dinov2(path, device, dim=32, depth=2, heads=2, grid=4)))
    return tmp_path


def argv(d, *extra, models=("var", "flowar")):
    files = {"var": f"{d}/vae.pth,{d}/var.pth", "flowar": f"{d}/flowar.pth,{d}/kl16.ckpt"}
    return [a for m in models for a in (f"--{m}", files[m])] + [
        "--flowar-heads", "2", "--reference", f"{d}/ref.npz", "--dinov2", f"{d}/dinov2.pth", "--samples", "6",
        "--batch", "4", "--cost-batches", "1,3", "--device", "cpu", "--out", f"{d}/out", *extra]


def test_released_models_are_sampled_scored_and_costed(files):
    res = main(argv(files, "--save-samples"))
    out = files / "out"
    assert json.loads((out / "results.json").read_text())["models"].keys() == {"var", "flowar"}
    assert "| var |" in (out / "report.md").read_text()
    net = evaluate.NETWORKS["dinov2"].load(files / "dinov2.pth", "cpu")
    with np.load(files / "ref.npz") as z:
        real = features(net, z["arr_0"])
    loaders = {"var": lambda: var_release.load(files / "vae.pth", files / "var.pth"),
               "flowar": lambda: flowar_release.load(files / "flowar.pth", files / "kl16.ckpt", heads=2)}
    for name, m in res["models"].items():
        assert all(math.isfinite(m["metrics"][f"{k}_dinov2"]) for k in ("fid", "kid", "precision", "recall"))
        # the saved samples are the model's own preset samples, batch i of 4 seeded 0 + i ...
        model = loaders[name]().eval()
        y = torch.arange(6) % model.backbone.cfg.num_classes
        with torch.no_grad():
            mine = np.concatenate([to_uint8(model.sample(b, seed=i, **m["sampling"])[0])
                                   for i, b in enumerate(torch.split(y, 4))])
        with np.load(out / f"{name}_samples.npz") as z:
            assert np.array_equal(z["arr_0"], mine)
            fake = features(net, z["arr_0"])
        # ... and the metrics are those samples' against the reference
        fid = frechet_distance(*gaussian_stats(real), *gaussian_stats(fake))
        assert m["metrics"]["fid_dinov2"] == pytest.approx(fid, rel=1e-9)
        assert m["metrics"]["precision_dinov2"] == precision_recall(real, fake)["precision"]
        c = m["cost"]
        assert c["batches"][1]["ms_per_image"] > 0 and c["batches"][3]["images_per_s"] > 0 and c["gflops_per_image"] > 0
        with np.load(out / f"{name}_samples.npz") as z:  # the ADM evaluator's layout
            assert z["arr_0"].shape == (6, 32, 32, 3) and z["arr_0"].dtype == np.uint8
            assert z["arr_1"].tolist() == [i % (10 if name == "var" else 1000) for i in range(6)]
    assert res["models"]["var"]["cost"]["head_nfe"] == 2 * len(VAR["schedule"])
    assert res["models"]["var"]["sampling"]["top_k"] == 900
    assert res["models"]["flowar"]["sampling"]["steps"] == 24 and "cpu" in res["device"].lower()


def test_a_killed_run_resumes_from_its_batches(files):
    main(argv(files, "--save-samples", "--cost-batches", "1", models=("flowar",)))
    out = files / "out"
    with np.load(out / "flowar_samples.npz") as z:
        first = z["arr_0"]
    batches = sorted(out.glob("samples-flowar-*/*.npz"))
    assert len(batches) == 2  # 6 samples in batches of 4
    kept = batches[0].stat().st_mtime_ns
    batches[1].unlink()  # as if killed before the last batch
    main(argv(files, "--save-samples", "--cost-batches", "1", models=("flowar",)))
    with np.load(out / "flowar_samples.npz") as z:
        assert np.array_equal(z["arr_0"], first)  # batch i is seeded seed + i: remade the same
    assert batches[0].stat().st_mtime_ns == kept and batches[1].is_file()  # the finished batch was reused
    main(argv(files, "--seed", "1", "--cost-batches", "1", models=("flowar",)))
    assert len(list(out.glob("samples-flowar-*"))) == 2  # another seed: other batch files, none reused


@pytest.mark.parametrize("change, message", [
    (["--var", "nowhere.pth,x.pth"], "error: --var: no file at nowhere.pth (its VAE.pth)"),
    (["--var", "a.pth"], "error: --var takes two files, VAE.pth,VAR.pth"),
    (["--samples", "1"], "error: --samples must lie in [2, inf), got 1"),
    (["--precision", "fp8"], "error: --precision must be one of ('fp32', 'bf16')"),
    (["--cost-batches", "1,x"], "error: --cost-batches must be comma-separated batch sizes"),
    (["--flowar-heads", "3"], "error: width (64) must be divisible by heads (3)"),
])
def test_bad_input_is_one_line_and_exit_2(files, capsys, change, message):
    args = argv(files)
    for flag, value in zip(change[::2], change[1::2]):
        if flag in args:
            args[args.index(flag) + 1] = value
        else:
            args += [flag, value]
    with pytest.raises(SystemExit) as e:
        main(args)
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and len(err) == 1 and err[0].startswith(message), err
    assert not (files / "out" / "results.json").exists()


@pytest.mark.slow
def test_torchrun_ranks_split_the_batches_and_draw_the_same_samples(files):
    """Two gloo processes make the batches (batch i on rank i mod 2) and rank 0 scores: the samples equal one
    process's."""
    from pathlib import Path

    from launch import torchrun

    one = argv(files, "--save-samples", "--cost-batches", "1", "--batch", "2", models=("flowar",))
    main(one)
    with np.load(files / "out" / "flowar_samples.npz") as z:
        alone = z["arr_0"]
    two = [a if a != f"{files}/out" else f"{files}/out2" for a in one]
    torchrun([str(Path(__file__).parent / "released_worker.py"), *two])
    with np.load(files / "out2" / "flowar_samples.npz") as z:
        assert np.array_equal(z["arr_0"], alone)
    assert json.loads((files / "out2" / "results.json").read_text())["models"]["flowar"]["metrics"]["fid_dinov2"] > 0


@pytest.mark.parametrize("extra, message", [
    (["--samples", "3"], "error: --samples (3 images) must be more than 3: precision/recall's k-NN radii"),
    (["--reference", "{d}/stats.npz"], "error: --reference holds 64-d statistics; dinov2 gives 32-d features")])
def test_released_checks_the_metrics_before_sampling(files, capsys, monkeypatch, extra, message):
    from compare import released
    np.savez(files / "stats.npz", mu=np.zeros(64), sigma=np.eye(64))
    monkeypatch.setattr(released, "draw_samples", lambda *a, **kw: pytest.fail("sampled before the check"))
    with pytest.raises(SystemExit) as e:
        main(argv(files, *[x.format(d=files) for x in extra], models=("var",)))
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and len(err) == 1 and err[0].startswith(message), err
