"""The ldm coder family: its config's checks, the released tokenizers' sizes, plain-data round trips, the
harness's --coder switch, and that it trains (the releases' equality is in test_var_release.py and
test_flowar_release_model.py)."""
from __future__ import annotations

import pytest
import torch

from compare.arms import arm_configs
from compare.config import CompareConfig
from crossfamily.latent import latent_vq_config
from flowar.autoencoder import AEConfig, ContinuousAE
from nextscale.autoencoder import ConvAEConfig, coder_config, ldm_coder_for, make_coder, with_coder
from nextscale.backbone import BackboneConfig
from nextscale.config import config_from_dict, config_to_dict
from nextscale.ldm import LDMConfig, mar_kl16_coder, var_vqvae_coder
from nextscale.train import TrainConfig, train
from var.tokenizer import MultiScaleVQVAE, VQConfig

TINY = LDMConfig(image_channels=1, image_side=16, latent_channels=4, z_channels=4, ch=32, ch_mult=(1, 2), res_blocks=1)


@pytest.mark.parametrize("bad, match", [
    (dict(ch=16), "ch must lie in"), (dict(ch_mult=()), "ch_mult must be a non-empty tuple"),
    (dict(ch=48, ch_mult=(1, 1)), "multiples of 32"), (dict(quant_kernel=2), r"quant_kernel must be one of \(1, 3\)"),
    (dict(image_side=20, ch_mult=(1, 2, 2, 2)), r"image_side \(20\) must be divisible by the stride 8"),
    (dict(encoder_level_attn="yes"), "encoder_level_attn"), (dict(dropout=1.0), "dropout"),
])
def test_config_refuses_bad_values(bad, match):
    with pytest.raises(ValueError, match=match):
        LDMConfig(**bad)


def test_the_released_coders_sizes():
    var, mar = var_vqvae_coder(), mar_kl16_coder()
    assert (var.stride, var.latent_side, var.latent_channels, var.ch) == (16, 16, 32, 160)
    assert (mar.stride, mar.latent_side, mar.latent_channels, mar.decoder_level_attn, mar.quant_kernel) == \
        (16, 16, 16, False, 1)
    with torch.device("meta"):
        enc, dec = make_coder(var)
        kl_enc, _ = make_coder(mar, out_channels=32)
    assert enc.conv_out.weight.shape == (32, 640, 3, 3) and len(enc.down[4].attn) == 2 and len(dec.up[4].attn) == 3
    assert kl_enc.conv_out.weight.shape == (32, 512, 3, 3) and kl_enc.quant_conv.weight.shape == (32, 32, 1, 1)
    with pytest.raises(ValueError, match="out_channels must be latent_channels or twice it"):
        make_coder(TINY, out_channels=12)


def test_shapes_and_plain_data_round_trips():
    enc, dec = make_coder(TINY)
    z = enc(torch.zeros(2, 1, 16, 16))
    assert z.shape == (2, 4, 8, 8) and dec(z).shape == (2, 1, 16, 16)
    vq = VQConfig(ae=TINY, schedule=(1, 2, 4, 8), vocab_size=16)
    assert config_from_dict(VQConfig, config_to_dict(vq)) == vq
    ae = AEConfig(ae=TINY)
    assert AEConfig(**config_to_dict(ae)) == ae
    assert coder_config(config_to_dict(ConvAEConfig())) == ConvAEConfig()


def test_with_coder_swaps_every_conv_coder_at_once():
    conv = ConvAEConfig(image_side=16, latent_channels=4, down=1)
    frozen = AEConfig(ae=conv)
    lat = latent_vq_config(frozen, VQConfig(ae=conv, schedule=(1, 2, 4, 8), vocab_size=16))
    swapped = with_coder(lat, ldm_coder_for)  # ae and frozen_ae.ae must change together (their check)
    assert swapped.ae == swapped.frozen_ae.ae == ldm_coder_for(conv) and swapped.ae.ch_mult == (1, 1)
    assert with_coder(frozen, lambda c: c) is frozen


def test_the_harness_coder_switch(digits):
    bb = BackboneConfig.for_images(16, 10, 8)
    for name in ("var", "flowar", "var-flowae"):
        ae_cfg, gen_cfg = arm_configs(name, digits, bb, CompareConfig(coder="ldm"))
        assert isinstance(ae_cfg.ae, LDMConfig) and getattr(gen_cfg, "ae", ae_cfg).ae == ae_cfg.ae
        assert isinstance(arm_configs(name, digits, bb, CompareConfig())[0].ae, ConvAEConfig)  # the default
    with pytest.raises(ValueError, match=r"coder must be one of \('conv', 'ldm'\)"):
        CompareConfig(coder="vqgan")


def test_the_ldm_tokenizers_train(digits):
    """VAR's quantizer and a KL autoencoder on the ldm coder learn: reconstruction error falls."""
    torch.manual_seed(0)
    x, y = digits.x_train[:256], digits.y_train[:256]
    tc = TrainConfig(steps=30, batch_size=16, lr=2e-3, warmup_steps=3, log_every=1, progress=False)
    for model in (MultiScaleVQVAE(VQConfig(ae=TINY, schedule=(1, 2, 4, 8), vocab_size=32)),
                  ContinuousAE(AEConfig(ae=TINY, kind="vae"))):
        hist = train(model, x, y, tc).history
        first, last = hist[0]["recon_mse"], min(h["recon_mse"] for h in hist[-5:])
        assert last < 0.6 * first, (type(model).__name__, first, last)
