import pytest
import torch

from nextscale.autoencoder import ConvAEConfig
from nextscale.scales import maps_to_seq, num_tokens, resize
from nextscale.train import TrainConfig, train
from var.tokenizer import MultiScaleVQVAE, VQConfig, phi_index

SCHEDULES = [  # (image side, down, schedule)
    (16, 1, (1, 2, 3, 4, 6, 8)),
    (16, 2, (1, 2, 4)),
    (10, 1, (2, 3, 5)),
]


def tiny(side=16, down=1, schedule=(1, 2, 3, 4, 6, 8), seed=0, **kw) -> MultiScaleVQVAE:
    torch.manual_seed(seed)
    ae = ConvAEConfig(image_side=side, latent_channels=4, hidden=16, down=down)
    return MultiScaleVQVAE(VQConfig(ae=ae, schedule=schedule, vocab_size=kw.pop("vocab_size", 32), **kw)).eval()


def images(B=4, side=16, seed=1):
    return torch.rand(B, 1, side, side, generator=torch.Generator().manual_seed(seed)) * 2 - 1


@pytest.mark.parametrize("bad, field", [
    (dict(schedule=(1, 2, 4)), "latent side"), (dict(schedule=(1, 3, 2, 8)), "increasing"),
    (dict(vocab_size=1), "vocab_size"), (dict(beta=-1.0), "beta"), (dict(phi_convs=0), "phi_convs"),
    (dict(phi_residual_ratio=1.5), "phi_residual_ratio"), (dict(codebook="kmeans"), "codebook"),
    (dict(ema_decay=1.0), "ema_decay"), (dict(restart_every=-1), "restart_every"),
    (dict(upsample="nearest"), "upsample"), (dict(ae="big"), "ae"),
])
def test_config_validation(bad, field):
    with pytest.raises(ValueError, match=field):
        VQConfig(**bad)


def test_phi_choice_follows_scale_position():
    assert [phi_index(k, 6, 4) for k in range(6)] == [0, 0, 1, 2, 3, 3]  # VAR's PhiPartiallyShared ticks
    assert [phi_index(k, 3, 1) for k in range(3)] == [0, 0, 0]
    assert phi_index(0, 1, 4) == 0


@pytest.mark.parametrize("side, down, schedule", SCHEDULES)
def test_shapes(side, down, schedule):
    m, x = tiny(side, down, schedule), images(3, side)
    tokens = m.encode(x)
    assert [tuple(t.shape) for t in tokens] == [(3, s, s) for s in schedule]
    assert all(t.dtype == torch.long and 0 <= t.min() and t.max() < 32 for t in tokens)
    assert m.teacher_inputs(tokens).shape == (3, num_tokens(schedule) - schedule[0] ** 2, 4)
    assert m.decode_tokens(tokens).shape == x.shape
    out = m(x, None)
    assert set(out) == {"loss", "recon_mse", "vq_loss", "usage", "perplexity"}
    assert all(v.ndim == 0 and torch.isfinite(v) for v in out.values())


@pytest.mark.parametrize("side, down, schedule", SCHEDULES)
def test_quantizer_round_trip(side, down, schedule):
    """encode -> decode of the quantized latent equals summing the per-scale contributions."""
    m, x = tiny(side, down, schedule, seed=3), images(3, side)
    with torch.no_grad():
        f = m.encoder(x)
        f_hat, tokens, _, _ = m.quantize(f)
        assert all(torch.equal(a, b) for a, b in zip(tokens, m.encode(x)))
        parts = [m.contribution(k, t) for k, t in enumerate(tokens)]
        torch.testing.assert_close(f_hat, sum(parts), rtol=0, atol=1e-6)
        torch.testing.assert_close(m.tokens_to_latent(tokens), f_hat, rtol=0, atol=1e-6)
        torch.testing.assert_close(m.decode_tokens(tokens), m.decoder(f_hat), rtol=0, atol=1e-5)
        # each scale quantized what the earlier ones left: its tokens are the nearest codes to the residual
        for k, s in enumerate(schedule):
            rest = f - sum(parts[:k]) if k else f
            r = resize(rest, s).permute(0, 2, 3, 1).reshape(-1, f.shape[1])
            assert torch.equal(m.nearest(r).view(-1, s, s), tokens[k])


@pytest.mark.parametrize("side, down, schedule", SCHEDULES)
def test_teacher_inputs_are_downsampled_running_reconstructions(side, down, schedule):
    m, x = tiny(side, down, schedule, seed=4), images(2, side)
    with torch.no_grad():
        tokens = m.encode(x)
        parts = [m.contribution(k, t) for k, t in enumerate(tokens)]
        want = maps_to_seq([resize(sum(parts[:k]), s) for k, s in enumerate(schedule) if k > 0])
        torch.testing.assert_close(m.teacher_inputs(tokens), want, rtol=0, atol=1e-6)
        # a prefix of the token maps gives the prefix of the inputs (what sampling sees)
        n = schedule[1] ** 2
        torch.testing.assert_close(m.teacher_inputs(tokens[:1]), want[:, :n], rtol=0, atol=1e-6)


def test_bad_inputs_raise():
    m = tiny()
    with pytest.raises(ValueError, match="shape"):
        m.encode(torch.zeros(2, 1, 12, 12))
    with pytest.raises(ValueError, match="shape"):
        m.encode(torch.zeros(2, 3, 16, 16))
    with pytest.raises(ValueError, match="float"):
        m.encode(torch.zeros(2, 1, 16, 16, dtype=torch.long))
    tokens = m.encode(images(2))
    with pytest.raises(ValueError, match="token maps"):
        m.decode_tokens(tokens[:-1])
    bad = [t.clone() for t in tokens]
    bad[2][0, 0, 0] = 32
    with pytest.raises(ValueError, match=r"tokens\[2\] ids"):
        m.decode_tokens(bad)
    bad = [t.clone() for t in tokens]
    bad[1] = bad[1][:, :1]
    with pytest.raises(ValueError, match=r"tokens\[1\]"):
        m.teacher_inputs(bad)


@pytest.mark.parametrize("codebook", ["grad", "ema"])
def test_loss_decreases_on_fixed_batch(codebook, digits):
    m, x, y = tiny(codebook=codebook, restart_every=5), digits.x_train[:16], digits.y_train[:16]
    cfg = TrainConfig(steps=40, batch_size=16, lr=3e-3, warmup_steps=5, progress=False)
    res = train(m, x, y, cfg)
    first, last = res.history[0], res.history[-1]
    assert last["loss"] < 0.5 * first["loss"]
    assert last["recon_mse"] < first["recon_mse"]
    trainable = {n for n, p in m.named_parameters() if p.requires_grad}
    assert ("codebook.weight" in trainable) == (codebook == "grad")


def test_dead_code_restart_revives_codes():
    """The codebook starts tiny (VAR's init), so few codes are nearest to anything; restarts fix that."""
    x = images(32, seed=2)
    with_restart, without = tiny(restart_every=1, vocab_size=64), tiny(restart_every=0, vocab_size=64)
    before, _ = without.codebook_usage(x)
    for m in (with_restart, without):
        m.train()
        torch.manual_seed(0)
        with torch.no_grad():
            for _ in range(3):
                m(x)
        m.eval()
    after, ppl = with_restart.codebook_usage(x)
    assert without.codebook_usage(x)[0] == before
    assert after > 2 * before and ppl > 1
    assert int(with_restart.train_steps) == 3


def test_eval_forward_does_not_touch_the_codebook():
    m, x = tiny(restart_every=1), images(4)
    w = m.codebook.weight.clone()
    m(x)
    assert torch.equal(w, m.codebook.weight) and int(m.train_steps) == 0


def test_codebook_usage_counts_all_scales():
    m, x = tiny(vocab_size=16), images(8)
    tokens = m.encode(x)
    used = torch.unique(torch.cat([t.flatten() for t in tokens]))
    frac, ppl = m.codebook_usage(x, batch_size=3)
    assert frac == pytest.approx(len(used) / 16)
    assert 1 <= ppl <= len(used) + 1e-6


def test_config_round_trips_through_plain_data():
    from nextscale.config import config_from_dict, config_to_dict
    from var.model import VARConfig
    cfg = VQConfig(ae=ConvAEConfig(image_side=16, latent_channels=4, hidden=16, down=2), schedule=(1, 2, 4))
    assert config_from_dict(VQConfig, config_to_dict(cfg)) == cfg
    var = VARConfig(vocab_size=64)
    assert config_from_dict(VARConfig, config_to_dict(var)) == var
