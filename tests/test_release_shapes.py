"""The released files at their real sizes load: every key of the releases' state dicts (listed with their
shapes by ``tools/release_shapes.py`` from the releases' own models) is placed at its shape, on the meta
device (no weights), and the sizes read from the shapes give the parameter counts the releases publish."""
from __future__ import annotations

import pytest
import torch

from flowar.release import RELEASE_SAMPLING, from_release_states as flowar_from, release_size, sampling_for
from nextscale.layers import rope_freqs
from var.release import from_release_states as var_from
from golden import fixture

SHAPES = fixture("release_shapes")


def meta_state(name: str) -> dict[str, torch.Tensor]:
    """Meta tensors of the listed shapes; RoPE frequencies (checked by value) real. The attention mask, also
    checked by value, is left out: the fixture tests check it (test_backbone_release.py)."""
    return {k: rope_freqs(4 * s[0]) if k.endswith("rope.freqs") else torch.empty(s, device="meta")
            for k, s in SHAPES[name].items() if k != "mask"}


BUFFERS = ("mask", "rope.freqs", "lvl_1L", "attn_bias_for_masking", "zero_k_bias", "ema_vocab_hit_SV")


def params(model, skip: str | None = None) -> int:
    return sum(p.numel() for n, p in model.named_parameters() if not (skip and n.startswith(skip)))


def release_params(name: str) -> int:
    """The release model's parameter count: its state dict without the buffers it derives."""
    return sum(torch.Size(s).numel() for k, s in SHAPES[name].items() if not k.endswith(BUFFERS))


@pytest.mark.parametrize("depth, published", [(16, 310), (20, 600), (24, 1000), (30, 2000)])  # VAR's README
def test_var_d16_to_d30_load_at_their_sizes(depth, published):
    vae, var = meta_state("vae"), meta_state(f"var_d{depth}")
    with torch.device("meta"):
        m = var_from(vae, var)
    bb = m.config.backbone
    assert (bb.width, bb.depth, bb.heads, bb.qk_norm, bb.num_classes, m.config.vocab_size) == \
        (64 * depth, depth, depth, True, 1000, 4096)
    # every parameter placed; ours adds the key bias the release fixes at 0 (softmax ignores it: one per block)
    assert params(m, "tokenizer.") == release_params(f"var_d{depth}") + depth * bb.width
    assert abs(params(m, "tokenizer.") / 1e6 / published - 1) < 0.05  # the README rounds: 1.0B, 2.0B
    tc = m.tokenizer.config
    assert (tc.ae.ch, tc.ae.ch_mult, tc.latent_channels, tc.phi_convs, tc.ae.image_side) == \
        (160, (1, 1, 2, 2, 4), 32, 4, 256)
    assert params(m.tokenizer) == release_params("vae")


@pytest.mark.parametrize("size, published", [("S", 170), ("L", 589), ("H", 1900)])  # FlowAR's paper and README
def test_flowar_s_l_h_load_at_their_sizes(size, published):
    fl, vae = meta_state(f"flowar_{size}"), meta_state("kl16")
    with torch.device("meta"):
        m = flowar_from(fl, vae)
    assert release_size(m) == size and sampling_for(m) == RELEASE_SAMPLING[size]
    assert params(m, "ae.") == release_params(f"flowar_{size}")
    assert abs(params(m, "ae.") / 1e6 / published - 1) < 0.015  # L: 586.9M in the release's code
    assert params(m.ae) == release_params("kl16")
    ae = m.config.ae.ae
    assert (ae.ch, ae.ch_mult, ae.latent_channels, ae.encoder_level_attn, ae.decoder_level_attn) == \
        (128, (1, 1, 2, 2, 4), 16, True, False)
