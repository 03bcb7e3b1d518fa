"""VAR's released VQVAE and VAR load through ``var.release`` and compute what the release computes.

``tests/data/var_release_golden.pt`` was made by ``tools/var_golden.py`` from the release's own code
(VQVAE with its ldm Encoder/Decoder, ``VectorQuantizer2``, ``VAR``) at a tiny size with random weights on an
int8 grid, on the release's ten-scale schedule, all in float64 (nothing of the release had to stay in
float32). Float64 policy (``tests/golden.py``): ours runs in float64 too (``.double()``) and every value
is compared by :func:`golden.close` within ``FLOAT64_TOL`` (1e-9) relative to the largest saved magnitude
where it exceeds 1, far above float64 rounding (~1e-13 on any CPU) and far below a porting error; token
maps and copied weights are :func:`golden.equal`.
"""
from __future__ import annotations

import pytest
import torch

from var.release import RELEASE_SAMPLING, SCHEDULE, from_release_states, load
from var.tokenizer import phi_index
from golden import close, equal, fixture, release_state

GOLDEN = fixture("var_release_golden")


@pytest.fixture(scope="module")
def model():
    return from_release_states(release_state(GOLDEN["vae"]), release_state(GOLDEN["var"])).double()


def _equal_maps(ours: list[torch.Tensor], release: list[torch.Tensor]) -> None:
    assert len(ours) == len(release)
    for t, r in zip(ours, release):
        equal(t.flatten(1), r)


def _teacher_forced_logits(model) -> torch.Tensor:
    tokens = [t.view(-1, s, s) for t, s in zip(GOLDEN["tokens"], SCHEDULE)]
    with torch.no_grad():
        _, h = model.token_loss(tokens, GOLDEN["labels"], return_hidden=True)
        return model.head(h)


def test_sizes_are_read_from_the_shapes(model):
    tc, bb = model.tokenizer.config, model.config.backbone
    assert (tc.ae.ch, tc.ae.ch_mult, tc.ae.res_blocks, tc.ae.z_channels, tc.ae.quant_kernel) == (32, (1, 2), 1, 8, 3)
    assert (tc.vocab_size, tc.phi_convs, tc.schedule, tc.ae.image_side) == (GOLDEN["vocab_size"], 4, SCHEDULE, 32)
    assert (bb.width, bb.depth, bb.heads, bb.qk_norm, bb.num_classes) == (64, 2, 2, True, GOLDEN["num_classes"])
    assert bb.attn_scale == 1.0  # with qk-norm the release's scale is 1 (ours: the learned scale times sqrt(d))


def test_tokenizer_equals_the_release(model):
    tok, x = model.tokenizer, GOLDEN["x"]
    with torch.no_grad():
        f = tok.latent(x)
        close(f, GOLDEN["latent"])
        tokens = tok.encode(x)
        _equal_maps(tokens, GOLDEN["tokens"])
        close(tok.teacher_inputs(tokens), GOLDEN["teacher_input"])
        close(tok.decode_latent(f), GOLDEN["decoded"])
        close(tok.reconstruct(x).clamp(-1, 1), GOLDEN["reconstruction"])


def test_phi_ticks_break_ties_as_the_release():
    """At ten scales and four phis, scales 3 and 8 sit exactly between two ticks; the release takes the first."""
    assert [phi_index(k, 10, 4) for k in range(10)] == [0, 0, 1, 1, 1, 2, 2, 3, 3, 3]
    assert [phi_index(k, 6, 5) for k in range(6)] == [0, 0, 1, 2, 3, 4]  # n != 4: ticks from 1/(2n)


def test_teacher_forced_logits_equal_the_release(model):
    close(_teacher_forced_logits(model), GOLDEN["logits"])


def test_a_var_without_qk_norm_loads_with_heads_and_equals_the_release():
    """Trained with ``attn_l2_norm=False``: 4 heads at width 64 (not width / 64), logits scaled by
    0.25 / sqrt(head_dim) as the release's; the shapes do not tell the heads, so ``heads=`` must."""
    entry = GOLDEN["no_qk_norm"]
    vae, var = release_state(GOLDEN["vae"]), release_state(entry["var"])
    m = from_release_states(vae, var, heads=entry["heads"]).double()
    bb = m.config.backbone
    assert (bb.width, bb.depth, bb.heads, bb.qk_norm, bb.attn_scale) == (64, 2, 4, False, 0.25)
    close(_teacher_forced_logits(m), entry["logits"])
    with pytest.raises(ValueError, match=r"heads: this VAR file was trained without attn_l2_norm .* give heads="):
        from_release_states(vae, var)


def test_release_rng_draws_the_release_tokens_and_images(model):
    s = GOLDEN["sampling"]
    images, stats, tokens = model.sample(GOLDEN["labels"], cfg_scale=s["cfg"], top_k=s["top_k"], top_p=s["top_p"],
                                         rng="release", seed=s["g_seed"], return_tokens=True)
    _equal_maps(tokens, GOLDEN["sampled_tokens"])
    close((images + 1) / 2, GOLDEN["sampled_images"])  # the release returns [0, 1]
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
    equal(m.head.weight, var["head.weight"])
    equal(load(vae_path, var_path, heads=2).head.weight, var["head.weight"])  # the file's own heads
    with pytest.raises(ValueError, match=r"heads=3 disagrees with the VAR file: its blocks\.0\.attn\.scale_mul_1H11 "
                                         r"has shape \(1, 2, 1, 1\), 2 heads"):
        load(vae_path, var_path, heads=3)
    plain = _write(tmp_path, "plain.pth", release_state(GOLDEN["no_qk_norm"]["var"]))
    with pytest.raises(ValueError, match=r"heads: .* no blocks\.0\.attn\.scale_mul_1H11.* give heads="):
        load(vae_path, plain)
    equal(load(vae_path, plain, heads=4).head.weight, release_state(GOLDEN["no_qk_norm"]["var"])["head.weight"])
    with pytest.raises(ValueError, match=r"width \(64\) must be divisible by heads \(3\)"):
        load(vae_path, plain, heads=3)
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
