"""flowar.pipeline and ``python -m flowar``: training through the shared loop, checkpoint reuse, metrics."""
import json

import pytest
import torch

from nextscale.backbone import BackboneConfig
from nextscale.data import load_digits
from nextscale.train import TrainConfig

from flowar.__main__ import main
from flowar.autoencoder import ContinuousAE
from flowar.model import FlowAR
from flowar.pipeline import (PAPER_SAMPLING, default_configs, flow_losses, flowar_paper_configs,
                             flowar_release_configs, recon_mse, train_autoencoder, train_flowar)
from flowar.solvers import time_grid

BB = BackboneConfig(schedule=(1, 2, 4), in_dim=4, num_classes=10, width=32, depth=1, heads=2)


@pytest.fixture(scope="module")
def digits():
    return load_digits(side=8, seed=0)


def test_default_configs(digits):
    ae, fl = default_configs(digits, BB)
    assert ae.latent_channels == 4 and ae.latent_side == 4 and fl.backbone == BB and fl.ae == ae
    d16 = load_digits(side=16, seed=0)
    ae16, fl16 = default_configs(d16, BackboneConfig())  # the digits default: 8 channels at side 8
    assert (ae16.latent_channels, ae16.latent_side, ae16.ae.down) == (8, 8, 1)
    with pytest.raises(ValueError, match="num_classes"):
        default_configs(digits, BackboneConfig(schedule=(1, 2, 4), in_dim=4, num_classes=3))
    with pytest.raises(ValueError, match="image side 8 must be the schedule's last side 3"):
        default_configs(digits, BackboneConfig(schedule=(1, 3), in_dim=4))


def test_paper_preset_pins_flowars_recipe():
    """The preset's fields are FlowAR's published recipe (Ren et al. 2025 and its release)."""
    d16 = load_digits(side=16, seed=0)
    bb = BackboneConfig(width=64, depth=3, heads=4)  # VAR's schedule (1, 2, 3, 4, 6, 8) goes in ...
    ae, fl = flowar_paper_configs(d16, bb)
    assert fl.backbone.schedule == (1, 2, 4, 8)      # ... FlowAR's doubling schedule comes out
    assert (fl.backbone.width, fl.backbone.depth, fl.backbone.heads) == (64, 3, 4)
    # the released head: head dim 64 (one head at width 64), the integer time index
    assert (fl.head, fl.head_width, fl.head_depth, fl.head_heads, fl.head_time) == ("transformer", 64, 2, 1, "index")
    assert (fl.path, fl.t_per, fl.t_sampling, fl.input_resize, fl.loss_weight) == \
        ("noise", "scale", "uniform", "via_full", "tokens")
    assert fl.ae == ae and ae.latent_side == 8
    # the release's grid: n = 25 time points, 24 steps (mirrored: t = 0 noise here)
    assert PAPER_SAMPLING == dict(solver="euler", steps=24, time_grid="two_segment", cfg_schedule="linear",
                                  cfg_interval=(0.1, 1.0))
    release = torch.cat([torch.linspace(1, 0.3, 25 // 2, dtype=torch.float64),
                         torch.linspace(0.25, 0, 25 // 2 + 1, dtype=torch.float64)])
    assert torch.allclose(1 - release, time_grid(24, "two_segment", dtype=torch.float64), rtol=0, atol=1e-15)
    # scale k's loss weighted n_k / n_K (the release: n_k / 256 at 256 px)
    model = FlowAR(fl, ContinuousAE(ae))
    assert model.scale_weights.tolist() == [1 / 64, 4 / 64, 16 / 64, 1.0]
    _, mlp = flowar_paper_configs(d16, bb, head="mlp")
    assert mlp.head == "mlp" and mlp.backbone == fl.backbone and mlp.head_time == "continuous"
    for size, (head, width, depth) in {"S": ("transformer", 1024, 2), "L": ("transformer_cross", 1024, 12),
                                       "H": ("transformer_cross", 1536, 12)}.items():
        _, rel = flowar_release_configs(d16, bb, size)
        assert (rel.head, rel.head_width, rel.head_depth, rel.head_heads, rel.head_time) == \
            (head, width, depth, width // 64, "index")
        assert rel.backbone == fl.backbone and rel.loss_weight == "tokens"
    with pytest.raises(ValueError, match=r"size must be one of \('S', 'L', 'H'\), got 'XL'"):
        flowar_release_configs(d16, bb, "XL")
    from nextscale.scales import doubling_schedule
    assert doubling_schedule(16) == (1, 2, 4, 8, 16) and doubling_schedule(12) == (3, 6, 12)


def test_train_and_reuse_checkpoints(digits, tmp_path):
    ae_cfg, fl_cfg = default_configs(digits, BB)
    tc = TrainConfig(steps=4, batch_size=16, warmup_steps=1, progress=False)
    ae = train_autoencoder(digits, ae_cfg, tc, ckpt_path=tmp_path / "ae.pt")
    scale = float(ae.scale_factor)
    assert scale != 1.0 and not ae.training
    with torch.no_grad():
        z = ae.encode(digits.x_train)
    assert float(z.double().std()) == pytest.approx(1.0, abs=1e-4)  # calibrated on the train split
    mtime = (tmp_path / "ae.pt").stat().st_mtime_ns
    ae2 = train_autoencoder(digits, ae_cfg, tc, ckpt_path=tmp_path / "ae.pt")
    assert (tmp_path / "ae.pt").stat().st_mtime_ns == mtime  # reused: nothing trained or written
    assert float(ae2.scale_factor) == scale  # the same scale factor from the reused checkpoint
    assert torch.equal(ae2.encode(digits.x_test), ae.encode(digits.x_test))

    model = train_flowar(digits, ae, fl_cfg, tc, ckpt_path=tmp_path / "fl.pt")
    assert not model.training and float(model.ae.scale_factor) == scale
    a, st = model.sample(torch.arange(3), seed=0, steps=2, cfg_scale=0.0)
    model2 = train_flowar(digits, ae2, fl_cfg, tc, ckpt_path=tmp_path / "fl.pt")
    b, _ = model2.sample(torch.arange(3), seed=0, steps=2, cfg_scale=0.0)
    assert torch.equal(a, b) and st["head_nfe"] == 6

    fl = flow_losses(model, digits.x_test, digits.y_test, seed=0)
    assert set(fl) == {"loss", "flow_s1", "flow_s2", "flow_s3"}
    assert fl == flow_losses(model, digits.x_test, digits.y_test, seed=0)  # seeded: same numbers


def test_same_seed_same_models(digits):
    ae_cfg, fl_cfg = default_configs(digits, BB)
    tc = TrainConfig(steps=2, batch_size=16, warmup_steps=1, progress=False)
    torch.manual_seed(123)  # the global RNG state must not matter
    a = train_autoencoder(digits, ae_cfg, tc)
    b = train_autoencoder(digits, ae_cfg, tc)
    c = train_autoencoder(digits, ae_cfg, TrainConfig(steps=2, batch_size=16, warmup_steps=1, progress=False, seed=1))
    assert all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values()))
    assert not torch.equal(a.decoder.net[0].weight, c.decoder.net[0].weight)
    fa, fb = train_flowar(digits, a, fl_cfg, tc), train_flowar(digits, a, fl_cfg, tc)
    assert all(torch.equal(p, q) for p, q in zip(fa.state_dict().values(), fb.state_dict().values()))


def test_trained_autoencoder_beats_the_mean_image(digits):
    """30 steps of autoencoder training reconstruct the test split to below half the MSE of predicting
    the mean image (its per-pixel variance, 0.29 on 8x8 digits): the untrained autoencoder (0.77) and a
    decoder that outputs 0 (E[x^2] = 0.72) are far above it; trained, 0.12 here."""
    ae_cfg, _ = default_configs(digits, BB)
    bound = 0.5 * float((digits.x_test - digits.x_test.mean(0)).pow(2).mean())
    torch.manual_seed(0)
    assert recon_mse(ContinuousAE(ae_cfg).eval(), digits.x_test) > bound
    ae = train_autoencoder(digits, ae_cfg, TrainConfig(steps=30, batch_size=64, lr=2e-3, warmup_steps=5,
                                                       progress=False))
    assert recon_mse(ae, digits.x_test) < bound


def test_ema_weights_are_returned(digits):
    ae_cfg, fl_cfg = default_configs(digits, BB)
    tc = TrainConfig(steps=3, batch_size=16, warmup_steps=1, progress=False)
    ae = train_autoencoder(digits, ae_cfg, tc)
    raw = train_flowar(digits, ae, fl_cfg, tc)
    ema = train_flowar(digits, ae, fl_cfg, TrainConfig(steps=3, batch_size=16, warmup_steps=1, progress=False,
                                                       ema_decay=0.9))
    w_raw, w_ema = raw.head.out.weight, ema.head.out.weight
    assert not torch.allclose(w_raw, w_ema)
    torch.manual_seed(tc.seed + 1)  # train_flowar's initialisation
    w_init = FlowAR(fl_cfg, ae).head.out.weight
    # the EMA moved with training: it is neither the initial copy nor the raw weights
    assert not torch.allclose(w_ema, w_init) and not ema.training


@pytest.mark.slow
def test_command_writes_samples_and_metrics(tmp_path):
    out = tmp_path / "run"
    args = ["--out", str(out), "--steps", "3", "--ae-steps", "3", "--width", "32", "--depth", "1", "--heads", "2",
            "--per-class", "1", "--batch-size", "16", "--side", "8", "--latent-channels", "4"]
    m = main(args)
    files = {p.name for p in out.iterdir()}
    assert {"checkpoints", "samples.png", "inpaint.png", "metrics.json", "samples_euler_x2.png",
            "samples_euler_maruyama_x24.png", "samples_dopri5.png"} <= files
    cks = [out / m["files"]["autoencoder"], out / m["files"]["flowar"]]
    assert all(c.is_file() for c in cks) and m["configs"]["flowar"]["head"] == "transformer"
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["autoencoder"]["recon_mse_test"] == pytest.approx(m["autoencoder"]["recon_mse_test"])
    assert set(saved["flowar"]["flow_loss_test"]) == {"loss"} | {f"flow_s{k}" for k in range(1, 4)}  # (1, 2, 4)
    s = saved["sampling"]["samplers"]
    assert [s[f"euler x{n}"]["head_nfe_per_scale"][0] for n in (2, 4, 8, 24)] == [2, 4, 8, 24]
    assert s["euler_maruyama x24"]["head_nfe_per_scale"][0] == 24 and s["rk4 x2"]["head_nfe_per_scale"][0] == 8
    assert s["dopri5"]["head_nfe"] > 0
    # a second run reuses both checkpoints and gives the same numbers
    mtimes = [c.stat().st_mtime_ns for c in cks]
    m2 = main(args)
    assert m2["flowar"] == m["flowar"] and m2["autoencoder"] == m["autoencoder"]
    assert [c.stat().st_mtime_ns for c in cks] == mtimes
    # another head is another model: a new keyed checkpoint, the old one untouched
    m3 = main(args + ["--head", "mlp"])
    assert m3["files"]["flowar"] != m["files"]["flowar"] and m3["files"]["autoencoder"] == m["files"]["autoencoder"]
    assert m3["configs"]["flowar"]["head"] == "mlp" and [c.stat().st_mtime_ns for c in cks] == mtimes
