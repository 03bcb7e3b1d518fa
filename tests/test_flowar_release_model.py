"""FlowAR's released model (AR transformer, flow head) and MAR's KL VAE load through ``flowar.release.load``
and compute what the release computes.

``tests/data/flowar_model_golden.pt`` was made by ``tools/flowar_model_golden.py`` from the release's own
code at a tiny size with random int8-grid weights, in float64: MAR's ``AutoencoderKL`` and the release's
``FlowAR`` run through its training pass, the loss replaced by a recorder of the head's velocity at fixed
inputs at every scale. Ours runs in float64 (``from_release_states(..., dtype=torch.float64)``); every
comparison goes through ``golden.close`` (1e-9 relative) or ``golden.equal``.
"""
from __future__ import annotations

import argparse

import pytest
import torch

from flowar.release import RELEASE_SAMPLING, SCALE_FACTOR, from_release_states, load, release_size, sampling_for
from nextscale.scales import pyramid, scale_slices
from golden import close, equal, fixture, release_state

GOLDEN = fixture("flowar_model_golden")


def flowar_state():
    state = release_state(GOLDEN["flowar"])
    state.pop("mask")  # stored as its shape only; the loader checks a real one (tests/test_backbone_release.py)
    return state


@pytest.fixture(scope="module")
def model():
    return from_release_states(flowar_state(), release_state(GOLDEN["vae"]["model"]), heads=GOLDEN["heads"],
                               dtype=torch.float64)


def test_sizes_are_read_from_the_shapes(model):
    c = model.config
    assert (c.ae.ae.ch, c.ae.ae.ch_mult, c.ae.ae.latent_channels, c.ae.kind) == (32, (1, 2), GOLDEN["channels"], "vae")
    assert (c.ae.ae.encoder_level_attn, c.ae.ae.decoder_level_attn, c.ae.ae.quant_kernel) == (True, False, 1)
    assert (c.backbone.width, c.backbone.depth, c.backbone.schedule) == (GOLDEN["width"], 2, GOLDEN["schedule"])
    assert (c.head, c.head_depth, c.head_width, c.head_time) == ("transformer", 1, 64, "index")
    assert float(model.ae.scale_factor) == SCALE_FACTOR == GOLDEN["scale_factor"]  # exactly, in float64
    assert model.dtype == torch.float64
    assert release_size(model) is None and sampling_for(model) == RELEASE_SAMPLING["S"]


def test_vae_equals_the_release(model):
    with torch.no_grad():
        close(model.ae.encode(GOLDEN["x"].double()), GOLDEN["latent"])  # the posterior mean x 0.2325
        close(model.ae.decode(GOLDEN["latent"]), GOLDEN["decoded"])


def test_velocities_of_the_teacher_forced_pass_equal_the_release(model):
    """The release's training pass over the latent: its pyramid, next-scale inputs, AR transformer and head."""
    maps = pyramid(GOLDEN["latent"], model.schedule)
    ups = [model.next_input(m, k + 1) for k, m in enumerate(maps[:-1])]
    with torch.no_grad():
        h = model.backbone(torch.cat(ups, 1), GOLDEN["labels"])
        for k, (case, sl) in enumerate(zip(GOLDEN["cases"], scale_slices(model.schedule))):
            assert case["side"] == model.schedule[k]
            close(h[:, sl] + model.head.pos_emb[:, sl], case["cond_release"])
            t = (1 - case["t_release"])[:, None]  # t = 0 is noise here, data there
            close(model.head(case["x_release"].double(), t, h[:, sl], k), -case["v_release"])


def _release_guided_steps(num_steps: int, guidance: float) -> int:
    """Steps the release's euler_sampler guides (``models/sampler.py``: its float64 grid, t_cur <= guidance)."""
    t_steps = torch.cat([torch.linspace(1, 0.3, num_steps // 2, dtype=torch.float64),
                         torch.linspace(0.25, 0, num_steps // 2 + 1, dtype=torch.float64)])
    if num_steps == 50:
        t_steps = torch.linspace(1, 0, num_steps + 1, dtype=torch.float64)
    return int((t_steps[:-1] <= guidance).sum())


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("size, num_steps, guidance", [("S", 25, 0.9), ("H", 50, 0.7)])
def test_release_preset_samples(model, size, num_steps, guidance, dtype):
    """The release's S and H settings: our sampler guides the steps the release's does, at every scale but the
    first (cfg grows linearly from 1 there), in float64 and float32 (H: 35 of 50, from t = 0.3 on)."""
    m = model if dtype == torch.float64 else \
        from_release_states(flowar_state(), release_state(GOLDEN["vae"]["model"]), heads=GOLDEN["heads"])
    sampling = RELEASE_SAMPLING[size]
    assert sampling["steps"] == (num_steps if num_steps == 50 else num_steps - 1)  # the release's grid: its points - 1
    images, stats = m.sample(GOLDEN["labels"], seed=0, **sampling)
    assert images.shape == GOLDEN["x"].shape and images.dtype == dtype and torch.isfinite(images).all()
    steps, guided = sampling["steps"], _release_guided_steps(num_steps, guidance)
    assert guided == {"S": 22, "H": 35}[size]
    assert stats["head_nfe_per_scale"] == [steps] + [steps + guided] * (len(m.schedule) - 1)


def _write(tmp_path, name, state):
    torch.save(state, tmp_path / name)
    return tmp_path / name


def test_load_reads_release_files_and_refuses_ones_that_do_not_fit(tmp_path):
    fl, vae = flowar_state(), release_state(GOLDEN["vae"]["model"])
    fl_path, vae_path = _write(tmp_path, "flowar.pth", fl), _write(tmp_path, "kl16.ckpt", {"model": vae})
    m = load(fl_path, vae_path, heads=2)
    equal(m.backbone.class_emb.weight, fl["class_emb.weight"])
    # a training checkpoint of the release (misc.save_model): its EMA weights, the ones its eval.py samples
    ema = {k: v + 1 if k == "class_emb.weight" else v for k, v in fl.items()}
    ck = {"model": fl, "model_ema": ema, "optimizer": {}, "epoch": 3, "args": argparse.Namespace(cfg=4.3)}
    m = load(_write(tmp_path, "checkpoint-last.pth", ck), vae_path, heads=2)
    equal(m.backbone.class_emb.weight, ema["class_emb.weight"])
    bad = dict(vae, **{"encoder.mid.attn_1.k.weight": vae["encoder.mid.attn_1.k.weight"][:-1]})
    with pytest.raises(ValueError, match=r"VAE file does not fit: .*attn_1\.q\.weight.* has shape"):
        load(fl_path, _write(tmp_path, "bad_vae.ckpt", {"model": bad}), heads=2)
    with pytest.raises(ValueError, match=r"the VAE file does not fit: key 'quantize\.embedding\.weight'"):
        vq = dict(vae, **{"quantize.embedding.weight": torch.zeros(8, 4)})
        load(fl_path, _write(tmp_path, "vq.ckpt", vq), heads=2)
    short = {k: v for k, v in fl.items() if k != "decoder_blocks.0.mlp.fc2.bias"}
    with pytest.raises(ValueError, match=r"'decoder_blocks\.0\.mlp\.fc2\.bias' is missing"):
        load(_write(tmp_path, "short.pth", short), vae_path, heads=2)
    with pytest.raises(ValueError, match="not a MAR KL VAE state dict: it has no key 'encoder.conv_in.weight'"):
        load(fl_path, fl_path, heads=2)
    with pytest.raises(ValueError, match="flowar_path: no file at"):
        load(tmp_path / "nowhere.pth", vae_path, heads=2)
