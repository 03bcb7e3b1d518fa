"""VAR's quantizer on FlowAR's frozen autoencoder (crossfamily.latent) and the HART hybrid (crossfamily.hybrid)."""
from dataclasses import replace

import pytest
import torch

from crossfamily.hybrid import HybridConfig, HybridSampling, HybridVAR
from crossfamily.latent import LatentVQ, LatentVQConfig, latent_vq_config, train_latent_tokenizer
from flowar.autoencoder import AEConfig, ContinuousAE
from flowar.pipeline import flowar_paper_configs, train_autoencoder
from nextscale.autoencoder import ConvAEConfig
from nextscale.backbone import BackboneConfig
from nextscale.config import config_as
from nextscale.data import load_dataset
from nextscale.scales import resize
from nextscale.train import TrainConfig
from var.model import VAR, VARConfig
from var.pipeline import default_configs, train_var
from var.tokenizer import MultiScaleVQVAE, VQConfig


def tiny_configs(schedule=(1, 2, 4)):
    ae = AEConfig(ae=ConvAEConfig(image_side=8, latent_channels=4, hidden=16, down=1))
    vq = latent_vq_config(ae, VQConfig(ae=ae.ae, schedule=schedule, vocab_size=16))
    bb = BackboneConfig(schedule=schedule, in_dim=4, width=32, depth=1, heads=2, num_classes=3)
    return ae, vq, bb


def test_the_quantizer_decodes_through_the_autoencoders_own_decoder_which_training_never_moves():
    ae_cfg, vq_cfg, _ = tiny_configs()
    torch.manual_seed(0)
    ae = ContinuousAE(ae_cfg)
    ae.scale_factor.fill_(0.7)
    vq = LatentVQ(vq_cfg).load_autoencoder(ae)
    f = torch.randn(2, 4, 4, 4)
    assert torch.equal(vq.decode_latent(f), ae.decode(f))  # same weights, same scale factor
    x = torch.rand(6, 1, 8, 8) * 2 - 1
    assert torch.equal(vq.latent(x), ae.encode(x))
    before = {k: v.clone() for k, v in vq.autoencoder.state_dict().items()}
    opt = torch.optim.SGD([p for p in vq.parameters() if p.requires_grad], lr=0.5)
    vq.train()
    vq(x)["loss"].backward()
    opt.step()
    assert all(torch.equal(before[k], v) for k, v in vq.autoencoder.state_dict().items())
    assert vq.codebook.weight.grad is not None and all(not p.requires_grad for p in vq.autoencoder.parameters())


def test_configs_and_pairs_are_checked():
    ae_cfg, vq_cfg, bb = tiny_configs()
    with pytest.raises(ValueError, match="ae must equal frozen_ae.ae"):
        replace(vq_cfg, ae=ConvAEConfig(image_side=8, latent_channels=4, hidden=24, down=1))
    with pytest.raises(ValueError, match="LatentVQConfig"):
        LatentVQ(VQConfig(ae=ae_cfg.ae, schedule=(1, 2, 4)))
    with pytest.raises(ValueError, match="ContinuousAE of config.frozen_ae"):
        LatentVQ(vq_cfg).load_autoencoder(ContinuousAE(replace(ae_cfg, kind="ae")))
    plain = MultiScaleVQVAE(VQConfig(ae=ae_cfg.ae, schedule=(1, 2, 4), vocab_size=16))
    with pytest.raises(ValueError, match="tokenizer must be a LatentVQ"):
        HybridVAR(HybridConfig(backbone=bb, vocab_size=16), plain)
    with pytest.raises(ValueError, match="residual_steps"):
        HybridSampling(residual_steps=0)
    with pytest.raises(ValueError, match="residual_depth"):
        HybridConfig(residual_depth=0)
    with pytest.raises(ValueError, match="train_latent_tokenizer needs"):
        train_latent_tokenizer(None, vq_cfg, TrainConfig(steps=1), base=None)
    assert LatentVQConfig(**{**vq_cfg.__dict__, "frozen_ae": {"ae": ae_cfg.ae.__dict__, "kind": "vae"}}) == vq_cfg


@pytest.fixture(scope="module")
def trained():
    """FlowAR's autoencoder, VAR's quantizer on its latent and a HART hybrid, trained briefly on digits at 8 px."""
    data = load_dataset("digits", side=8)
    bb = BackboneConfig.for_images(8, data.num_classes, 4, width=64, depth=2, heads=2)
    ae_cfg, _ = flowar_paper_configs(data, bb)
    vq_cfg, var_cfg = default_configs(data, bb, vocab_size=64)
    fast = dict(batch_size=64, lr=2e-3, warmup_steps=10, progress=False)
    ae = train_autoencoder(data, ae_cfg, TrainConfig(steps=150, **fast))
    vq = train_latent_tokenizer(data, latent_vq_config(ae_cfg, vq_cfg), TrainConfig(steps=100, **fast), base=ae)
    hart = train_var(data, vq, config_as(HybridConfig, var_cfg), TrainConfig(steps=250, **fast), model_cls=HybridVAR)
    return data, ae, vq, hart


@pytest.mark.slow
def test_the_latent_is_reconstructed_better_as_scales_are_added(trained):
    data, ae, vq, _ = trained
    x = data.x_test[:200]
    with torch.no_grad():
        f = vq.latent(x)
        tokens = vq.encode(x)
        f_hat, errs = torch.zeros_like(f), []
        for k, (t, s) in enumerate(zip(tokens, vq.config.schedule)):
            r = resize(f - f_hat, s)  # scale k quantizes what the coarser scales left (f - f_hat sums in
            idx = vq.nearest(r.permute(0, 2, 3, 1).reshape(-1, r.shape[1])).view(-1, s, s)  # another order: near-ties
            assert (idx == t).float().mean() > 0.99, k                                    # may flip a token)
            f_hat = f_hat + vq.contribution(k, t)
            errs.append(float((f - f_hat).pow(2).mean()))
    assert all(b < a for a, b in zip(errs, errs[1:])), errs
    assert errs[-1] < 0.5 * errs[0], errs  # the latent has unit variance: err_1 is about 1


@pytest.mark.slow
def test_the_hybrids_residual_head_beats_the_tokens_alone(trained):
    data, ae, vq, hart = trained
    x, y = data.x_test[:200], data.y_test[:200]
    tokens_only = float((vq.reconstruct(x) - x).pow(2).mean())
    ceiling = float((ae.reconstruct(x) - x).pow(2).mean())
    keep = torch.ones(len(x), 1, 8, 8, dtype=torch.bool)  # every token teacher-forced: only the residual is drawn
    with_residual = float((hart.inpaint(x, keep, y, cfg_scale=0.0, seed=0)[0] - x).pow(2).mean())
    # a drawn residual, not its mean: about 8% better than the tokens alone after this short training
    assert ceiling < with_residual < 0.97 * tokens_only, (ceiling, with_residual, tokens_only)
    assert torch.equal(hart.reconstruct(x), ae.reconstruct(x))


def test_the_hybrid_counts_its_residual_steps_as_head_evaluations():
    ae_cfg, vq_cfg, bb = tiny_configs()
    torch.manual_seed(0)
    hart = HybridVAR(HybridConfig(backbone=bb, vocab_size=16), LatentVQ(vq_cfg)).eval()
    y = torch.tensor([0, 1])
    _, st = hart.sample(y, cfg_scale=1.0, residual_steps=5, seed=0)
    assert st["head_nfe_per_scale"] == [2, 2, 2 + 10] and st["head_nfe"] == 16
    _, st = hart.sample(y, cfg_scale=0.0, residual_steps=3, seed=0)
    assert st["head_nfe"] == 3 + 3
    a, _ = hart.sample(y, cfg_scale=1.0, seed=3)
    b, _ = hart.sample(y, cfg_scale=1.0, seed=3)
    assert torch.equal(a, b)
    plain = VAR(VARConfig(backbone=bb, vocab_size=16), LatentVQ(vq_cfg)).eval()
    assert plain.sample(y, cfg_scale=0.0, seed=0)[1]["head_nfe"] == 3
