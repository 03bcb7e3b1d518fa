import pytest
import torch

from nextscale.autoencoder import ConvAEConfig
from nextscale.backbone import BackboneConfig
from nextscale.guidance import cfg_weights
from nextscale.train import TrainConfig, train
from var.model import VAR, VARConfig, filter_logits, keep_masks, sample_tokens
from var.tokenizer import MultiScaleVQVAE, VQConfig

SCHEDULES = [(16, 1, (1, 2, 3, 4, 6, 8)), (16, 2, (1, 2, 4)), (10, 1, (2, 3, 5))]


def tokenizer(side=16, down=1, schedule=(1, 2, 3, 4, 6, 8), V=32, seed=0):
    torch.manual_seed(seed)
    ae = ConvAEConfig(image_side=side, latent_channels=4, hidden=16, down=down)
    return MultiScaleVQVAE(VQConfig(ae=ae, schedule=schedule, vocab_size=V))


def model(side=16, down=1, schedule=(1, 2, 3, 4, 6, 8), V=32, seed=0, randomize=True, **bb) -> VAR:
    """A tiny VAR; randomize=True draws every backbone/head weight (non-zero adaLN gates, so every
    block really mixes tokens and the class matters) and spreads the codebook so codes differ."""
    tok = tokenizer(side, down, schedule, V, seed)
    cfg = VARConfig(BackboneConfig(schedule=schedule, in_dim=4, width=32, depth=2, heads=2, **bb), vocab_size=V)
    m = VAR(cfg, tok).eval()
    if randomize:
        with torch.no_grad():
            for p in list(m.backbone.parameters()) + list(m.head.parameters()):
                p.normal_(0, 0.2)
            tok.codebook.weight.normal_(0, 1)
    return m


def images(B=4, side=16, seed=1):
    return torch.rand(B, 1, side, side, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def test_config_and_construction_checks():
    with pytest.raises(ValueError, match="vocab_size"):
        VARConfig(vocab_size=1)
    with pytest.raises(ValueError, match="label_smoothing"):
        VARConfig(label_smoothing=1.0)
    tok = tokenizer()
    with pytest.raises(ValueError, match="in_dim"):
        VAR(VARConfig(BackboneConfig(in_dim=8), vocab_size=32), tok)
    with pytest.raises(ValueError, match="schedule"):
        VAR(VARConfig(BackboneConfig(schedule=(1, 2, 4, 8), in_dim=4), vocab_size=32), tok)
    with pytest.raises(ValueError, match="vocab_size"):
        VAR(VARConfig(BackboneConfig(in_dim=4), vocab_size=64), tok)
    with pytest.raises(ValueError, match="MultiScaleVQVAE"):
        VAR(VARConfig(BackboneConfig(in_dim=4), vocab_size=32), None)


def test_tokenizer_is_frozen_and_stays_in_eval():
    m = model(randomize=False)
    m.train()
    assert not m.tokenizer.training and m.backbone.training
    assert not any(p.requires_grad for p in m.tokenizer.parameters())


@pytest.mark.parametrize("side, down, schedule", SCHEDULES)
def test_forward_and_sample_shapes(side, down, schedule):
    m = model(side, down, schedule)
    x, y = images(3, side), torch.tensor([0, 4, 9])
    out = m(x, y)
    K = len(schedule)
    assert list(out) == ["loss"] + [f"ce_s{k + 1}" for k in range(K)]
    sizes = torch.tensor([s * s for s in schedule], dtype=torch.float)
    per_scale = torch.stack([out[f"ce_s{k + 1}"] for k in range(K)])
    torch.testing.assert_close(out["loss"], (per_scale * sizes).sum() / sizes.sum())  # mean over ALL tokens
    imgs, stats, tokens = m.sample(y, seed=0, return_tokens=True)
    assert imgs.shape == (3, 1, side, side) and imgs.abs().max() <= 1
    assert [tuple(t.shape) for t in tokens] == [(3, s, s) for s in schedule]
    assert stats == {"backbone_forwards": K, "head_nfe": 2 * K, "head_nfe_per_scale": [2] * K, "guided": True}
    torch.testing.assert_close(imgs, m.tokenizer.decode_tokens(tokens).clamp(-1, 1))


def test_loss_decreases_on_fixed_batch(digits):
    m = model(randomize=False, class_dropout=0.0)
    x, y = digits.x_train[:16], digits.y_train[:16]
    res = train(m, x, y, TrainConfig(steps=30, batch_size=16, lr=3e-3, warmup_steps=3, progress=False))
    first, last = res.history[0], res.history[-1]
    assert last["loss"] < 0.6 * first["loss"]
    assert all(last[f"ce_s{k}"] < first[f"ce_s{k}"] for k in range(1, 7))


@pytest.mark.parametrize("side, down, schedule", SCHEDULES)
@pytest.mark.parametrize("cfg_scale", [0.0, 2.0])
def test_kv_cache_equivalence(side, down, schedule, cfg_scale):
    """Greedy tokens are identical with the KV cache and with the full teacher-forced pass."""
    m, y = model(side, down, schedule), torch.tensor([0, 3, 7, 9])
    _, s1, cached = m.sample(y, greedy=True, cfg_scale=cfg_scale, use_cache=True, return_tokens=True)
    _, s2, full = m.sample(y, greedy=True, cfg_scale=cfg_scale, use_cache=False, return_tokens=True)
    assert s1 == s2
    assert all(torch.equal(a, b) for a, b in zip(cached, full))
    assert len(torch.unique(torch.cat([t.flatten() for t in cached]))) > 3  # not a degenerate constant map


def teacher_forced_logits(m: VAR, tokens, y):
    with torch.no_grad():
        return m.head(m.backbone(m.tokenizer.teacher_inputs(tokens), y))


def test_cfg_zero_is_the_conditional_model():
    m, y = model(), torch.tensor([1, 5, 8])
    imgs, stats, tokens = m.sample(y, cfg_scale=0.0, greedy=True, return_tokens=True)
    K = m.num_scales
    assert stats == {"backbone_forwards": K, "head_nfe": K, "head_nfe_per_scale": [1] * K, "guided": False}
    cond = teacher_forced_logits(m, tokens, y)
    for sl, t in zip(m.slices, tokens):  # every greedy token is the argmax of the conditional logits
        assert torch.equal(cond[:, sl].argmax(-1), t.flatten(1))
    # and sampling at guidance 0 does not depend on the constant/linear choice
    a, _ = m.sample(y, cfg_scale=0.0, cfg_schedule="constant", seed=5)
    b, _ = m.sample(y, cfg_scale=0.0, cfg_schedule="linear", seed=5)
    assert torch.equal(a, b)


@pytest.mark.parametrize("schedule_kind", ["linear", "constant"])
def test_guided_tokens_follow_the_cfg_formula(schedule_kind):
    m, y = model(), torch.tensor([2, 6])
    _, stats, tokens = m.sample(y, cfg_scale=3.0, cfg_schedule=schedule_kind, greedy=True, return_tokens=True)
    assert stats["guided"] and stats["head_nfe"] == 2 * m.num_scales
    cond = teacher_forced_logits(m, tokens, y)
    uncond = teacher_forced_logits(m, tokens, torch.full_like(y, m.backbone.null_class))
    ws = cfg_weights(3.0, schedule_kind, m.num_scales)
    for k, (sl, t) in enumerate(zip(m.slices, tokens)):
        guided = (1 + ws[k]) * cond[:, sl] - ws[k] * uncond[:, sl]
        assert torch.equal(guided.argmax(-1), t.flatten(1))
    _, _, plain = m.sample(y, cfg_scale=0.0, greedy=True, return_tokens=True)
    assert any(not torch.equal(a, b) for a, b in zip(tokens, plain))  # guidance changed something


def test_cfg_weights():
    assert cfg_weights(1.5, "linear", 6) == pytest.approx([0.0, 0.3, 0.6, 0.9, 1.2, 1.5])
    assert cfg_weights(1.5, "constant", 3) == [1.5, 1.5, 1.5]
    assert cfg_weights(2.0, "linear", 1) == [2.0]


def test_same_seed_same_images_different_seed_different():
    m, y = model(), torch.arange(6)
    kw = dict(cfg_scale=1.0, top_k=10, top_p=0.9, temperature=1.2)
    a, _ = m.sample(y, seed=11, **kw)
    b, _ = m.sample(y, seed=11, **kw)
    c, _ = m.sample(y, seed=12, **kw)
    assert torch.equal(a, b) and not torch.equal(a, c)
    torch.manual_seed(3)
    d, _ = m.sample(y, **kw)  # seed=None draws the seed from the global RNG
    torch.manual_seed(3)
    e, _ = m.sample(y, **kw)
    assert torch.equal(d, e)


def test_filters():
    logits = torch.tensor([[0.0, 3.0, 1.0, 2.0]])
    assert torch.isinf(filter_logits(logits, top_k=2)).tolist() == [[True, False, True, False]]
    assert torch.equal(filter_logits(logits, top_k=None), logits) and torch.equal(filter_logits(logits, top_k=9), logits)
    p = logits.softmax(-1)[0]  # ~ [.03, .64, .09, .24]
    keep2 = ~torch.isinf(filter_logits(logits, top_p=float(p[1] + p[3]) - 1e-4))
    assert keep2.tolist() == [[False, True, False, True]]
    assert (~torch.isinf(filter_logits(logits, top_p=0.5))).tolist() == [[False, True, False, False]]
    assert torch.equal(filter_logits(logits, top_p=1.0), logits)
    g = torch.Generator().manual_seed(0)
    many = logits.expand(500, 4)
    assert set(sample_tokens(many, g, top_k=2).tolist()) == {1, 3}
    assert set(sample_tokens(many, g, top_p=0.5).tolist()) == {1}
    assert set(sample_tokens(many, g, temperature=100.0).tolist()) == {0, 1, 2, 3}
    assert torch.equal(sample_tokens(logits, g, greedy=True), torch.tensor([1]))


def test_top_k_one_and_tiny_top_p_are_greedy():
    m, y = model(), torch.tensor([0, 9])
    greedy, _ = m.sample(y, greedy=True, seed=0)
    assert torch.equal(m.sample(y, top_k=1, seed=1)[0], greedy)
    assert torch.equal(m.sample(y, top_p=1e-6, seed=2)[0], greedy)


def test_keep_masks_use_whole_footprints():
    mask = torch.zeros(1, 1, 16, 16, dtype=torch.bool)
    mask[..., :8] = True  # keep the left half
    m1, m2, m3, m4 = keep_masks(mask, (1, 2, 3, 4))
    assert not m1.any()
    assert m2[0].tolist() == [[True, False], [True, False]]
    assert m3[0, 0].tolist() == [True, False, False]  # the middle column's footprint (pixels 5..10) crosses
    assert m4[0, 0].tolist() == [True, True, False, False]


@pytest.mark.parametrize("kind", ["inpaint", "outpaint"])
def test_inpainting_keeps_the_kept_region(kind):
    m, x, y = model(), images(3), torch.tensor([1, 2, 3])
    mask = torch.ones(3, 1, 16, 16, dtype=torch.bool)
    mask[..., 4:12, 4:12] = False
    if kind == "outpaint":
        mask = ~mask
    original = m.tokenizer.encode(x)
    masks = keep_masks(mask, m.config.backbone.schedule)
    outs = []
    for seed in (0, 1):
        imgs, stats, tokens = m.inpaint(x, mask, y, seed=seed, return_tokens=True)
        assert imgs.shape == x.shape and stats["backbone_forwards"] == m.num_scales
        for t, o, keep in zip(tokens, original, masks):
            assert torch.equal(t[keep], o[keep])
        outs.append(tokens)
    assert sum(int(k.sum()) for k in masks) > 0 and sum(int((~k).sum()) for k in masks) > 0
    changed = [(~k) & (a != b) for a, b, k in zip(*outs, masks)]
    assert any(c.any() for c in changed)  # only masked tokens are sampled (they differ between seeds)
    full_keep = m.inpaint(x, torch.ones_like(mask), y, seed=0, return_tokens=True)[2]
    assert all(torch.equal(a, b) for a, b in zip(full_keep, original))


@pytest.mark.parametrize("kw, match", [
    (dict(top_k=-1), "top_k"), (dict(top_k=0), "top_k"), (dict(top_k=2.5), "top_k"), (dict(top_p=0.0), "top_p"), (dict(top_p=1.5), "top_p"),
    (dict(top_p=-0.2), "top_p"), (dict(temperature=0.0), "temperature"), (dict(temperature=-1.0), "temperature"),
    (dict(cfg_scale=-1.0), "cfg_scale"), (dict(cfg_schedule="cosine"), "cfg_schedule"),
    (dict(seed=-3), "seed"), (dict(greedy="yes"), "greedy"), (dict(y=torch.tensor([10])), r"class ids must lie in \[0, 9\]"),
    (dict(y=torch.tensor([-1])), "class ids must"), (dict(y=torch.tensor([1.0])), "labels must be a non-empty"),
    (dict(y=torch.zeros(0, dtype=torch.long)), "labels must be a non-empty"), (dict(top_kk=3), "unknown sampling keyword"),
    (dict(cfg_scale=float("inf")), "cfg_scale must be a finite number"), (dict(temperature=1e-45), "temperature"),
    (dict(cfg_scale=float("nan")), "cfg_scale"), (dict(use_cache="no"), "use_cache"),
])
def test_bad_sampling_arguments_raise(kw, match):
    m = model(randomize=False)
    y = kw.pop("y", torch.tensor([0, 1]))
    with pytest.raises(ValueError, match=match):
        m.sample(y, **kw)
    with pytest.raises(ValueError, match=match):
        m.inpaint(images(len(y)) if len(y) else images(1), torch.ones(max(len(y), 1), 1, 16, 16, dtype=torch.bool),
                  y, **kw)


def test_bad_images_and_masks_raise():
    m, y = model(randomize=False), torch.tensor([0, 1])
    with pytest.raises(ValueError, match="shape"):
        m(torch.zeros(2, 1, 8, 8), y)
    with pytest.raises(ValueError, match="x must have shape"):
        m.inpaint(torch.zeros(2, 1, 32, 32), torch.ones(2, 1, 32, 32, dtype=torch.bool), y)
    bad = images(2)
    bad[0, 0, 7, 2] = float("inf")
    with pytest.raises(ValueError, match=r"x holds 1 NaN/inf values, the first at index \(0, 0, 7, 2\)"):
        m.inpaint(bad, torch.ones(2, 1, 16, 16, dtype=torch.bool), y)
    with pytest.raises(ValueError, match="mask"):
        m.inpaint(images(2), torch.ones(2, 1, 8, 8, dtype=torch.bool), y)
    with pytest.raises(ValueError, match="mask"):
        m.inpaint(images(2), torch.ones(2, 1, 16, 16), y)
    with pytest.raises(ValueError, match="one class id per image"):
        m.inpaint(images(2), torch.ones(2, 1, 16, 16, dtype=torch.bool), torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match="class ids"):
        m(images(2), torch.tensor([0, 11]))


def test_label_smoothing_loss():
    m = model()
    smooth = VAR(VARConfig(m.config.backbone, vocab_size=32, label_smoothing=0.1), m.tokenizer).eval()
    smooth.load_state_dict(m.state_dict())
    x, y = images(2), torch.tensor([3, 4])
    plain, ls = m(x, y), smooth(x, y)
    tokens = m.tokenizer.encode(x)
    logits = teacher_forced_logits(m, tokens, y)
    target = torch.cat([t.flatten(1) for t in tokens], 1)
    want = torch.nn.functional.cross_entropy(logits.flatten(0, 1), target.flatten(), label_smoothing=0.1)
    torch.testing.assert_close(ls["loss"], want)
    torch.testing.assert_close(plain["loss"], torch.nn.functional.cross_entropy(logits.flatten(0, 1), target.flatten()))
    assert all(torch.equal(plain[k], ls[k]) for k in plain if k != "loss")  # logged CE stays plain


@pytest.mark.parametrize("kw", [dict(), dict(temperature=0.7), dict(top_k=5), dict(top_p=0.8)])
def test_sample_tokens_frequencies_match_the_filtered_softmax(kw):
    """Chi-square goodness of fit of 40,000 draws against the filtered, tempered softmax (p > 1e-3),
    and filtered-out tokens never drawn."""
    from scipy.stats import chisquare

    logits = torch.tensor([[0.3, 2.0, -1.0, 1.2, 0.0, -3.0, 0.8, 1.9]])
    N = 40_000
    g = torch.Generator().manual_seed(0)
    draws = sample_tokens(logits.expand(N, -1), g, **kw)
    counts = torch.bincount(draws, minlength=8).double()
    probs = filter_logits(logits / kw.get("temperature", 1.0), kw.get("top_k"), kw.get("top_p", 1.0)).double().softmax(-1)[0]
    kept = probs > 0
    assert counts[~kept].sum() == 0
    expected = N * probs[kept] / probs[kept].sum()
    p = chisquare(counts[kept].numpy(), expected.numpy()).pvalue
    assert p > 1e-3, (counts, N * probs)


def test_sample_tokens_is_seeded_and_never_draws_a_zero_probability_token():
    logits = torch.tensor([[-float("inf"), 5.0, -float("inf"), -float("inf")]]).expand(1000, -1)
    assert set(sample_tokens(logits, torch.Generator().manual_seed(1)).tolist()) == {1}
    logits = torch.randn(64, 16, generator=torch.Generator().manual_seed(9))
    a, b = (sample_tokens(logits, torch.Generator().manual_seed(3)) for _ in range(2))
    c = sample_tokens(logits, torch.Generator().manual_seed(4))
    assert a.shape == (64,) and torch.equal(a, b) and not torch.equal(a, c)
