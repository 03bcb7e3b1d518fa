"""Approximate block-causal attention (polynomial method, Performer) against exact attention."""
import math

import pytest
import torch
import torch.nn.functional as F

from nextscale.attention import KINDS, attention, check_options
from nextscale.backbone import Backbone, BackboneConfig
from nextscale.fastattn import _monomials, degree_needed, exp_poly, feature_rank, monomial_features
from nextscale.scales import level_ids, num_tokens

from experiments.theory import crossover_side, entry_bound, halving_sides, pyramid_attention_flops

SCHEDULE = (1, 2, 4, 8)
LV = level_ids(SCHEDULE)
L = len(LV)


def bounded_qkv(B_entry, d=4, batch=2, heads=2, seed=0, dtype=torch.float32):
    """q, k with entries of q d^{-1/4} and k d^{-1/4} uniform in [-B, B]; v standard normal."""
    g = torch.Generator().manual_seed(seed)
    q, k = ((torch.rand(2, batch, heads, L, d, generator=g, dtype=dtype) * 2 - 1) * B_entry * d ** 0.25).unbind(0)
    return q, k, torch.randn(batch, heads, L, d, generator=g, dtype=dtype)


def err(out, ref, v):
    return float((out.double() - ref.double()).abs().max() / v.abs().max())


def test_exact_kind_is_unchanged():
    q, k, v = bounded_qkv(1.0)
    mask = LV[None, :] <= LV[:, None]
    ref = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    assert torch.equal(attention(q, k, v, LV, LV), ref)
    assert torch.equal(attention(q, k, v, LV, LV, kind="exact", dropout_p=0.0), ref)
    assert torch.equal(attention(q, k, v), F.scaled_dot_product_attention(q, k, v))
    manual = torch.softmax((q @ k.transpose(-1, -2) / 2).masked_fill(~mask, -math.inf), -1) @ v
    torch.testing.assert_close(ref, manual, atol=1e-5, rtol=1e-5)


def test_monomial_features_expand_powers_of_dot_product():
    d, g = 3, 4
    x, y = torch.randn(2, 5, d, dtype=torch.float64).unbind(0)
    _, deg, mult = _monomials(d, g)
    fx, fy = monomial_features(x, g), monomial_features(y, g)
    assert fx.shape[-1] == feature_rank(d, g) == math.comb(d + g, g)
    for j in range(g + 1):
        sel = deg == j
        torch.testing.assert_close((fx[:, sel] * mult[sel] * fy[:, sel]).sum(-1), (x * y).sum(-1) ** j)


@pytest.mark.parametrize("fit", ["relative", "taylor"])
def test_error_shrinks_as_degree_grows(fit):
    q, k, v = bounded_qkv(0.5, d=4, dtype=torch.float64)
    ref = attention(q, k, v, LV, LV)
    errors = [err(attention(q, k, v, LV, LV, kind="poly", degree=g, fit=fit), ref, v) for g in (2, 4, 6, 8)]
    assert all(b < a / 5 for a, b in zip(errors, errors[1:])), errors
    assert errors[-1] < 1e-8


def test_exp_fit_relative_error_falls_with_degree_and_beats_taylor():
    for beta in (0.5, 2.0, 4.0):
        rel = [exp_poly(beta, g).rel_error for g in (2, 4, 6, 8)]
        assert all(b < a for a, b in zip(rel, rel[1:]))
        for g in (2, 4, 6, 8):
            assert exp_poly(beta, g).rel_error <= exp_poly(beta, g, "taylor").rel_error
            if exp_poly(beta, g).rel_error < 1:
                assert exp_poly(beta, g).min_value > 0
    assert exp_poly(2.0, 4, "taylor").min_value > 0  # even Taylor stays positive even when it is poor


def test_output_error_obeys_the_relative_error_bound():
    """|out - exact| <= 2 eps / (1 - eps) max|v| where eps is the fit's relative error on the range."""
    for B_entry, g in [(0.5, 2), (0.8, 4), (1.0, 6)]:
        q, k, v = bounded_qkv(B_entry, d=4, dtype=torch.float64, seed=3)
        beta = float(q.norm(dim=-1).max() * k.norm(dim=-1).max() / 2)
        eps = exp_poly(beta, g).rel_error
        assert eps < 1
        e = err(attention(q, k, v, LV, LV, kind="poly", degree=g), attention(q, k, v, LV, LV), v)
        assert e <= 2 * eps / (1 - eps), (B_entry, g, e, eps)


def test_small_entries_match_exact():
    """Stated tolerances at entry bound B = 0.1 (d = 4): poly degree 4 within 1e-6, Performer
    (1024 features) within 5e-3 of max|v|."""
    q, k, v = bounded_qkv(0.1, d=4)
    ref = attention(q, k, v, LV, LV)
    assert err(attention(q, k, v, LV, LV, kind="poly", degree=4), ref, v) < 1e-6
    assert err(attention(q, k, v, LV, LV, kind="poly", degree=4, fit="taylor"), ref, v) < 1e-6
    assert err(attention(q, k, v, LV, LV, kind="performer", num_features=1024), ref, v) < 5e-3


def test_performer_converges_with_features_and_is_seeded():
    q, k, v = bounded_qkv(0.2, d=4, dtype=torch.float64)
    ref = attention(q, k, v, LV, LV)
    errs = [sum(err(attention(q, k, v, LV, LV, kind="performer", num_features=m, seed=s), ref, v)
                for s in range(3)) for m in (16, 256, 4096)]
    assert errs[0] > errs[1] > errs[2], errs
    a = attention(q, k, v, LV, LV, kind="performer", seed=7)
    assert torch.equal(a, attention(q, k, v, LV, LV, kind="performer", seed=7))
    assert not torch.equal(a, attention(q, k, v, LV, LV, kind="performer", seed=8))


@pytest.mark.parametrize("opts", [dict(kind="poly", degree=4), dict(kind="poly", degree=2, fit="taylor"),
                                  dict(kind="poly", degree=3, beta=2.0), dict(kind="performer", num_features=64)])
def test_no_leakage_from_later_scales(opts):
    q, k, v = bounded_qkv(0.7, d=4)
    out = attention(q, k, v, LV, LV, **opts)
    first_of_last = L - SCHEDULE[-1] ** 2
    for cut in (first_of_last, 1):  # perturb the last scale, then every scale after the first
        q2, k2, v2 = q.clone(), k.clone(), v.clone()
        k2[:, :, cut:] *= 3.0
        v2[:, :, cut:] += 5.0
        q2[:, :, cut:] *= -2.0
        out2 = attention(q2, k2, v2, LV, LV, **opts)
        assert torch.equal(out[:, :, :cut], out2[:, :, :cut])
        assert not torch.equal(out[:, :, cut:], out2[:, :, cut:])


@pytest.mark.parametrize("opts", [dict(kind="poly", degree=4), dict(kind="performer", num_features=64)])
def test_teacher_forced_matches_scale_by_scale(opts):
    """Block-causal over the whole sequence == each scale against the keys of scales <= it (the KV cache)."""
    q, k, v = bounded_qkv(0.7, d=4, dtype=torch.float64)
    full = attention(q, k, v, LV, LV, **opts)
    start = 0
    for s in SCHEDULE:
        stop = start + s * s
        step = attention(q[:, :, start:stop], k[:, :, :stop], v[:, :, :stop], **opts)
        torch.testing.assert_close(full[:, :, start:stop], step, atol=1e-10, rtol=1e-8)
        start = stop


def test_normaliser_safety_raises_or_falls_back():
    q, k, v = bounded_qkv(3.0, d=4, seed=1)
    ref = attention(q, k, v, LV, LV)
    # degree 2 cannot fit exp on this range: relative error >= 1, the fit may be negative
    with pytest.raises(FloatingPointError, match="degree"):
        attention(q, k, v, LV, LV, kind="poly", degree=2)
    out = attention(q, k, v, LV, LV, kind="poly", degree=2, fallback="exact")
    assert torch.isfinite(out).all()  # the last scale has the widest range: its rows were recomputed exactly
    torch.testing.assert_close(out[:, :, -64:], ref[:, :, -64:], atol=1e-5, rtol=1e-5)
    # a range fixed far too small: logits land where the linear fit is negative
    with pytest.raises(FloatingPointError, match="normaliser"):
        attention(q, k, v, LV, LV, kind="poly", degree=1, beta=0.1)
    out = attention(q, k, v, LV, LV, kind="poly", degree=1, beta=0.1, fallback="exact")
    assert torch.isfinite(out).all()
    # Performer features stay positive: enormous entries still give finite rows
    big_q, big_k = q * 20, k * 20
    out = attention(big_q, big_k, v, LV, LV, kind="performer", fallback="exact")
    assert torch.isfinite(out).all()


def test_input_validation():
    q, k, v = bounded_qkv(0.5)
    with pytest.raises(ValueError, match="sorted"):
        attention(q, k, v, LV.flip(0), LV.flip(0), kind="poly")
    with pytest.raises(ValueError, match="dropout"):
        attention(q, k, v, LV, LV, kind="performer", dropout_p=0.1)
    with pytest.raises(ValueError, match="even"):
        attention(q, k, v, LV, LV, kind="poly", degree=3, fit="taylor")
    with pytest.raises(ValueError, match="performer options"):
        attention(q, k, v, LV, LV, kind="poly", num_features=8)
    with pytest.raises(ValueError, match="takes options"):
        attention(q, k, v, LV, LV, degree=2)
    with pytest.raises(ValueError, match="kind"):
        attention(q, k, v, LV, LV, kind="linear")
    with pytest.raises(ValueError, match="degree"):
        check_options("poly", degree=0)
    with pytest.raises(ValueError, match="num_features"):
        check_options("performer", num_features=-1)
    with pytest.raises(ValueError, match="see no key"):
        attention(q[:, :, :1], k[:, :, 1:], v[:, :, 1:], LV[:1], LV[1:], kind="poly")
    assert KINDS == ("exact", "poly", "performer")


def test_degree_needed():
    gs = [degree_needed(B, 1e-2) for B in (0.3, 0.7, 1.0, 1.5, 2.0)]
    assert gs == sorted(gs) and gs[0] < gs[-1]
    for B in (0.5, 1.5):
        g = degree_needed(B, 1e-2)
        eps = exp_poly(B * B, g).rel_error
        assert 2 * eps / (1 - eps) <= 1e-2
        assert g == 1 or 2 * exp_poly(B * B, g - 1).rel_error / (1 - exp_poly(B * B, g - 1).rel_error) > 1e-2
    assert degree_needed(0.5, 1e-2, head_dim=4) == degree_needed(1.0, 1e-2)  # range head_dim * B^2
    assert degree_needed(1.0, 1e-2, fit="taylor") % 2 == 0
    with pytest.raises(ValueError, match="no degree"):
        degree_needed(10.0, 1e-6)


def test_cost_model_crossover():
    # the rank must be smaller than roughly the pyramid length for the method to pay off
    for d, g in [(8, 2), (16, 2), (32, 2), (8, 4)]:
        n = crossover_side(d, g)
        sch = halving_sides(n)
        assert pyramid_attention_flops(sch, d, "poly", degree=g) < pyramid_attention_flops(sch, d)
        small = halving_sides(n // 2)
        assert pyramid_attention_flops(small, d, "poly", degree=g) >= pyramid_attention_flops(small, d)
        assert num_tokens(sch) > feature_rank(d, g) / 2
    assert halving_sides(12) == (1, 2, 3, 6, 12)


def tiny_backbone(seed=0):
    torch.manual_seed(seed)
    bb = Backbone(BackboneConfig(schedule=SCHEDULE, in_dim=2, width=16, depth=2, heads=4, class_dropout=0.0))
    with torch.no_grad():  # break adaLN-Zero so attention matters
        for p in bb.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return bb.eval()


def test_backbone_set_attention_swaps_and_restores():
    bb = tiny_backbone()
    x = torch.randn(3, L - 1, 2)
    y = torch.tensor([0, 1, 2])
    with torch.no_grad():
        h_exact = bb(x, y)
        h_poly = bb.set_attention("poly", degree=6)(x, y)
        h_perf = bb.set_attention("performer", num_features=512)(x, y)
        h_back = bb.set_attention("exact")(x, y)
    assert bb.cfg.attn_kind == "exact"
    assert torch.equal(h_exact, h_back)
    assert (h_poly - h_exact).abs().max() < 1e-4
    assert 0 < (h_perf - h_exact).abs().max() < 0.2
    with pytest.raises(ValueError, match="kind"):
        bb.set_attention("bogus")
    with pytest.raises(ValueError, match="takes options"):
        bb.set_attention("poly", num_features=3)
    with pytest.raises(ValueError):
        bb.set_attention("poly", fit="cubic")
    assert BackboneConfig(attn_kind="poly").attn_kind == "poly"


def test_backbone_cached_steps_match_teacher_forced_with_poly():
    bb = tiny_backbone(1).set_attention("poly", degree=4)
    x = torch.randn(2, L - 1, 2, dtype=torch.float64)
    y = torch.tensor([3, 4])
    bb = bb.double()
    with torch.no_grad():
        full = bb(x, y)
        cache, cond, outs, start = bb.new_cache(), bb.condition(y), [], 0
        for i, s in enumerate(SCHEDULE):
            outs.append(bb.step(None if i == 0 else x[:, start:start + s * s], cond, cache))
            start += s * s if i else 0
    torch.testing.assert_close(torch.cat(outs, 1), full, atol=1e-9, rtol=1e-7)


def test_entry_bound_on_backbone():
    bb = tiny_backbone(2)
    x = torch.randn(4, L - 1, 2)
    y = torch.tensor([0, 1, 2, 3])
    eb = entry_bound(bb, x, y)
    assert len(eb.layers) == 2 and eb.head_dim == 4 and eb.num_tokens == L
    # recompute the first layer's B by hand
    with torch.no_grad():
        cond = bb.condition(y)
        h = bb.embed(x, cond)
        blk = bb.blocks[0]
        sh1, sc1, *_ = blk.ada(cond).chunk(6, dim=-1)
        q, k, _ = blk.qkv(blk.norm1(h) * (1 + sc1[:, None]) + sh1[:, None]).chunk(3, -1)
    assert eb.layers[0]["B_q"] == pytest.approx(float(q.abs().max() * 4 ** -0.25), rel=1e-5)
    assert eb.layers[0]["B_k"] == pytest.approx(float(k.abs().max() * 4 ** -0.25), rel=1e-5)
    assert eb.B >= max(eb.layers[0]["B_q"], eb.layers[0]["B_k"])
    assert 0 < eb.max_logit <= eb.beta * (1 + 1e-6) and eb.beta <= eb.logit_bound * (1 + 1e-6)
    assert eb.degree_needed(1e-2) >= 1
    assert eb.to_dict()["sqrt_log_L"] == pytest.approx(math.sqrt(math.log(L)))
    with pytest.raises(ValueError, match="no nextscale Backbone"):
        entry_bound(torch.nn.Linear(2, 2), torch.zeros(1, 2))


def test_entry_bound_measures_the_logits_a_qk_norm_model_uses():
    """With qk-norm, attention sees normalised q, k and a per-head logit scale, not the qkv output: doubling
    the scale doubles every logit, and the logits are cosines times the scale."""
    torch.manual_seed(0)
    bb = Backbone(BackboneConfig(schedule=SCHEDULE, in_dim=2, num_classes=4, width=16, depth=1, heads=2,
                                 qk_norm=True)).eval()
    x, y = torch.randn(4, L - 1, 2), torch.tensor([0, 1, 2, 3])
    one = entry_bound(bb, x, y)
    with torch.no_grad():
        bb.blocks[0].qk_log_scale.add_(math.log(2))
    two = entry_bound(bb, x, y)
    assert two.max_logit == pytest.approx(2 * one.max_logit, rel=1e-5)
    scale = float(bb.blocks[0].qk_log_scale.detach().exp().max())
    assert two.max_logit <= scale * (1 + 1e-5)  # |cos| <= 1
