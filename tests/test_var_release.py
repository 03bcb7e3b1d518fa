"""VAR's released VQVAE and VAR load through ``var.release`` and compute what the release computes.

``tests/data/var_release_golden.pt`` was made by ``tools/var_golden.py`` from the release's own code
(VQVAE with its ldm Encoder/Decoder, ``VectorQuantizer2``, ``VAR``) at a tiny size with random weights, on
the release's ten-scale schedule. Tolerances: latents, teacher inputs and logits within 1e-5 (float32 on
another CPU, other kernels: a few ulps); images within 1e-4 (a deeper conv stack); both relative to the
largest magnitude where it exceeds 1; token maps equal.
"""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from var.release import RELEASE_SAMPLING, SCHEDULE, from_release_states, load
from var.tokenizer import phi_index
from golden import close, release_state

GOLDEN = torch.load(Path(__file__).parent / "data" / "var_release_golden.pt", weights_only=True)


@pytest.fixture(scope="module")
def model():
    return from_release_states(release_state(GOLDEN["vae"]), release_state(GOLDEN["var"]))


def test_sizes_are_read_from_the_shapes(model):
    tc, bb = model.tokenizer.config, model.config.backbone
    assert (tc.ae.ch, tc.ae.ch_mult, tc.ae.res_blocks, tc.ae.z_channels, tc.ae.quant_kernel) == (32, (1, 2), 1, 8, 3)
    assert (tc.vocab_size, tc.phi_convs, tc.schedule, tc.ae.image_side) == (GOLDEN["vocab_size"], 4, SCHEDULE, 32)
    assert (bb.width, bb.depth, bb.heads, bb.qk_norm, bb.num_classes) == (64, 2, 2, True, GOLDEN["num_classes"])


def test_tokenizer_equals_the_release(model):
    tok, x = model.tokenizer, GOLDEN["x"]
    with torch.no_grad():
        f = tok.latent(x)
        close(f, GOLDEN["latent"], 1e-5)
        tokens = tok.encode(x)
        assert [t.flatten(1).tolist() for t in tokens] == [t.tolist() for t in GOLDEN["tokens"]]
        close(tok.teacher_inputs(tokens), GOLDEN["teacher_input"], 1e-5)
        close(tok.decode_latent(f), GOLDEN["decoded"], 1e-4)
        close(tok.reconstruct(x).clamp(-1, 1), GOLDEN["reconstruction"], 1e-4)


def test_phi_ticks_break_ties_as_the_release():
    """At ten scales and four phis, scales 3 and 8 sit exactly between two ticks; the release takes the first."""
    assert [phi_index(k, 10, 4) for k in range(10)] == [0, 0, 1, 1, 1, 2, 2, 3, 3, 3]
    assert [phi_index(k, 6, 5) for k in range(6)] == [0, 0, 1, 2, 3, 4]  # n != 4: ticks from 1/(2n)


def test_teacher_forced_logits_equal_the_release(model):
    tokens = [t.view(-1, s, s) for t, s in zip(GOLDEN["tokens"], SCHEDULE)]
    with torch.no_grad():
        _, h = model.token_loss(tokens, GOLDEN["labels"], return_hidden=True)
        logits = model.head(h)
    close(logits, GOLDEN["logits"], 1e-5)


def test_release_rng_draws_the_release_tokens_and_images(model):
    s = GOLDEN["sampling"]
    images, stats, tokens = model.sample(GOLDEN["labels"], cfg_scale=s["cfg"], top_k=s["top_k"], top_p=s["top_p"],
                                         rng="release", seed=s["g_seed"], return_tokens=True)
    assert [t.flatten(1).tolist() for t in tokens] == [t.tolist() for t in GOLDEN["sampled_tokens"]]
    close((images + 1) / 2, GOLDEN["sampled_images"], 1e-4)  # the release returns [0, 1]
    assert stats["head_nfe"] == 2 * len(SCHEDULE)


def test_release_sampling_preset():
    assert (RELEASE_SAMPLING.cfg_scale, RELEASE_SAMPLING.cfg_schedule, RELEASE_SAMPLING.top_k,
            RELEASE_SAMPLING.top_p) == (1.5, "linear", 900, 0.96)


def _write(tmp_path, name, state):
    path = tmp_path / name
    torch.save(state, path)
    return path


def test_load_reads_release_files_and_refuses_ones_that_do_not_fit(tmp_path):
    vae, var = release_state(GOLDEN["vae"]), release_state(GOLDEN["var"])
    vae_path, var_path = _write(tmp_path, "vae.pth", vae), _write(tmp_path, "var.pth", var)
    m = load(vae_path, var_path)
    torch.testing.assert_close(m.head.weight, var["head.weight"])
    bad = dict(var, **{"blocks.1.ffn.fc2.weight": var["blocks.1.ffn.fc2.weight"][:, :-1]})
    with pytest.raises(ValueError, match=r"'blocks\.1\.ffn\.fc2\.weight' \(here .*\) has shape \(64, 255\), expected"):
        load(vae_path, _write(tmp_path, "bad.pth", bad))
    v_bias = var["blocks.0.attn.v_bias"].clone()
    v_bias[3] = float("nan")
    nan = dict(var, **{"blocks.0.attn.v_bias": v_bias})
    with pytest.raises(ValueError, match=r"VAR file holds NaN or inf values in key 'blocks\.0\.attn\.q_bias'"):
        load(vae_path, _write(tmp_path, "nan.pth", nan))  # the qkv bias is placed from q_bias and v_bias
    extra = dict(var, **{"blocks.0.attn.rope.freqs": torch.ones(4)})
    with pytest.raises(ValueError, match=r"key 'blocks\.0\.attn\.rope\.freqs' of shape \(4,\) has no place"):
        load(vae_path, _write(tmp_path, "extra.pth", extra))
    missing = {k: v for k, v in vae.items() if k != "decoder.conv_out.bias"}
    with pytest.raises(ValueError, match=r"VQVAE file does not fit: it lacks key 'decoder\.conv_out\.bias'"):
        load(_write(tmp_path, "missing.pth", missing), var_path)
    with pytest.raises(ValueError, match="not a VAR state dict: it has no key 'class_emb.weight'"):
        load(vae_path, vae_path)
    with pytest.raises(ValueError, match="var_path: no file at"):
        load(vae_path, tmp_path / "nowhere.pth")
    (tmp_path / "junk.pth").write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="vae_path: .* is not a readable state dict file"):
        load(tmp_path / "junk.pth", var_path)
