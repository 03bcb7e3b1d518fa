
import pytest
import torch

from nextscale.backbone import FLOWAR_RELEASE, Backbone, BackboneConfig
from nextscale.cost import count_flops, count_params


def randomized(cfg: BackboneConfig, seed=0) -> Backbone:
    """A backbone whose adaLN gates are not zero, so every block really mixes tokens."""
    torch.manual_seed(seed)
    m = Backbone(cfg).eval()
    with torch.no_grad():
        for p in m.parameters():
            p.normal_(0, 0.2)
    return m


# FlowAR's release options in three stacks; a class token needs a schedule that starts at side 1
RELEASE_OPTIONS = dict(FLOWAR_RELEASE, stacks=3)


def release_options(schedule):
    return RELEASE_OPTIONS if schedule[0] == 1 else dict(RELEASE_OPTIONS, start="pos_start")


def inputs(cfg, B=3, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, cfg.seq_len - cfg.first_len, cfg.in_dim, generator=g)


@pytest.mark.parametrize("bad, field", [
    (dict(width=30, heads=4), "divisible"), (dict(depth=0), "depth"), (dict(dropout=1.0), "dropout"),
    (dict(class_dropout=-0.1), "class_dropout"), (dict(schedule=(1, 3, 2)), "schedule"),
    (dict(attn_kind="magic"), "attn_kind"), (dict(in_dim=0), "in_dim"), (dict(mlp_ratio=0), "mlp_ratio"),
    (dict(drop_path=-0.1), r"drop_path must lie in \[0, 1\)"), (dict(qk_norm="yes"), "qk_norm must be True or False"),
])
def test_config_validation(bad, field):
    with pytest.raises(ValueError, match=field):
        BackboneConfig(**bad)


@pytest.mark.parametrize("schedule", [(1, 2, 3, 4, 6, 8), (1, 2, 4, 8, 16), (2, 3, 5)])
@pytest.mark.parametrize("release", [False, True])
def test_block_causal_no_leak_from_later_scales(schedule, release):
    options = dict(release_options(schedule), stacks=2) if release else {}
    cfg = BackboneConfig(schedule=schedule, in_dim=3, width=32, depth=2, heads=2, **options)
    m = randomized(cfg)
    x, y = inputs(cfg), torch.tensor([0, 3, 10])
    h = m(x, y)
    lens = [s * s for s in schedule]
    for k in range(1, len(schedule)):
        x2 = x.clone()
        start = sum(lens[:k]) - cfg.first_len  # first input position of scale k (0-based)
        x2[:, start:] += torch.randn_like(x2[:, start:])
        h2 = m(x2, y)
        seen = sum(lens[:k])
        assert torch.equal(h[:, :seen], h2[:, :seen]), f"scale {k} leaked into earlier scales"
        assert not torch.allclose(h[:, seen:], h2[:, seen:]), "later positions must depend on their inputs"


@pytest.mark.parametrize("schedule", [(1, 2, 3, 4, 6, 8), (1, 2, 4, 8, 16), (2, 3, 5)])
@pytest.mark.parametrize("options", [dict(), dict(qk_norm=True, drop_path=0.3), "release"])
def test_kv_cache_matches_teacher_forced_pass(schedule, options):
    """Also with FlowAR's release options (RoPE rotates each scale's keys before they are cached; the
    cache holds the blocks of every stack)."""
    options = release_options(schedule) if options == "release" else options
    cfg = BackboneConfig(schedule=schedule, in_dim=4, width=64, depth=3, heads=4, **options)
    m = randomized(cfg)
    x, y = inputs(cfg), torch.tensor([1, 7, 10])
    with torch.no_grad():
        full = m(x, y)
        cache, cond, outs = m.new_cache(), m.condition(y), []
        for k, sl in enumerate(m.slices):
            xi = None if k == 0 else x[:, sl.start - cfg.first_len:sl.stop - cfg.first_len]
            outs.append(m.step(xi, cond, cache))
    assert (torch.cat(outs, 1) - full).abs().max().item() <= 1e-5
    with pytest.raises(ValueError, match="already fed"):
        m.step(x[:, :1], cond, cache)


def test_steps_project_the_class_embedding_once_per_pyramid():
    cfg = BackboneConfig(schedule=(1, 2, 3), in_dim=4, width=32, depth=2, heads=2)
    m = randomized(cfg)
    calls = []
    for mod in [b.ada for b in m.blocks] + [m.ada_out]:
        mod.register_forward_hook(lambda *_: calls.append(1))
    x, y = inputs(cfg), torch.tensor([1, 2, 3])

    def fed_two_scales(cond):
        cache = m.new_cache()
        for xi in (None, x[:, :4]):
            m.step(xi, cond, cache)
        return cache
    with torch.no_grad():
        cond, other = m.condition(y), m.condition(torch.tensor([4, 5, 6]))
        cache = fed_two_scales(cond)
        assert len(calls) == 3  # once per block and once for the output norm, not once per scale
        h_other = m.step(x[:, 4:], other, cache)  # another class embedding is projected anew
        assert len(calls) == 6
        h_same = m.step(x[:, 4:], cond, fed_two_scales(cond))
    assert not torch.allclose(h_other, h_same)


def test_step_checks_its_input():
    cfg = BackboneConfig(schedule=(1, 2), in_dim=4, width=32, depth=1, heads=2)
    m = Backbone(cfg).eval()
    cache, cond = m.new_cache(), m.condition(torch.tensor([0]))
    with pytest.raises(ValueError, match="scale 1 takes no input"):
        m.step(torch.zeros(1, 1, 4), cond, cache)
    m.step(None, cond, cache)
    with pytest.raises(ValueError, match=r"\(B, 4, 4\)"):
        m.step(torch.zeros(1, 3, 4), cond, cache)


def test_labels_and_input_shape_are_checked():
    cfg = BackboneConfig(schedule=(1, 2), in_dim=4, width=32, depth=1, heads=2, num_classes=5)
    m = Backbone(cfg)
    with pytest.raises(ValueError, match=r"class ids must lie in \[0, 5\]"):
        m(torch.zeros(1, 4, 4), torch.tensor([6]))
    with pytest.raises(ValueError, match="backbone input must have shape"):
        m(torch.zeros(1, 5, 4), torch.tensor([0]))


def test_class_dropout_uses_the_null_class():
    cfg = BackboneConfig(schedule=(1, 2, 4), in_dim=2, width=32, depth=1, heads=2, class_dropout=1.0)
    m = randomized(cfg)
    x, y = inputs(cfg, B=2), torch.tensor([2, 4])
    m.train()
    dropped = m(x, y)
    m.eval()
    assert torch.allclose(dropped, m(x, torch.full_like(y, m.null_class)))
    assert not torch.allclose(dropped, m(x, y))


def test_class_conditioning_changes_outputs():
    cfg = BackboneConfig(schedule=(1, 2, 4), in_dim=2, width=32, depth=1, heads=2)
    m = randomized(cfg)
    x = inputs(cfg, B=1)
    assert not torch.allclose(m(x, torch.tensor([0])), m(x, torch.tensor([1])))


def test_param_and_flop_counts():
    cfg = BackboneConfig(schedule=(1, 2, 4), in_dim=2, width=32, depth=2, heads=2, mlp_ratio=4)
    m = Backbone(cfg)
    C, L, D = 32, 21, 2
    per_block = (C * 3 * C + 3 * C) + (C * C + C) + (C * 4 * C + 4 * C) + (4 * C * C + C) + (C * 6 * C + 6 * C)
    expected = 11 * C + 1 * C + D * C + C + L * C + 3 * C + 2 * per_block + (C * 2 * C + 2 * C)
    assert count_params(m) == expected
    B = 2
    flops = count_flops(m, inputs(cfg, B=B), torch.tensor([0, 1]))
    # matmuls: word embedding, per block qkv/proj/mlp on L tokens + adaLN on B vectors, attention QK^T and AV
    mm = 2 * B * ((L - 1) * D * C + 2 * (L * C * 3 * C + L * C * C + 2 * L * C * 4 * C + C * 6 * C
                                        + 2 * L * L * C) + C * 2 * C)
    assert flops == mm


def test_qk_norm_and_drop_path_do_what_they_say():
    cfg = BackboneConfig(schedule=(1, 2, 4), in_dim=3, width=32, depth=3, heads=2, class_dropout=0.0,
                         qk_norm=True, drop_path=0.5)
    m = randomized(cfg)
    assert [b.drop_path for b in m.blocks] == [0.0, 0.25, 0.5]  # linear over depth, as VAR
    assert m.blocks[0].qk_log_scale.shape == (1, 2, 1, 1)
    x, y = inputs(cfg), torch.tensor([1, 2, 3])
    ev = m.eval()(x, y)
    m.train()
    torch.manual_seed(0)
    a = m(x, y)
    torch.manual_seed(0)
    assert torch.equal(a, m(x, y)) and not torch.allclose(a, ev)   # seeded, and branches were dropped
    # the logit scale is a learned parameter: changing it changes the output
    with torch.no_grad():
        m.eval().blocks[1].qk_log_scale.add_(1.0)
    assert not torch.allclose(m(x, y), ev)
    # with q, k normalised, rescaling the qkv weights of q and k leaves attention unchanged
    m2 = randomized(BackboneConfig(schedule=(1, 2, 4), in_dim=3, width=32, depth=1, heads=2, qk_norm=True))
    h = m2(x, y)
    with torch.no_grad():
        m2.blocks[0].qkv.weight[:64] *= 3.0
        m2.blocks[0].qkv.bias[:64] *= 3.0
    assert torch.allclose(m2(x, y), h, atol=1e-5)


def test_qk_norm_scales_each_head_by_its_own_factor():
    """The block against attention written out by hand in (B, H, L, d): head h's logits are
    s_h cos(q, k), with s_h = exp(qk_log_scale[h]) (a per-head scale put on the wrong head fails)."""
    import torch.nn.functional as F

    from nextscale.backbone import ada_terms
    cfg = BackboneConfig(schedule=(1, 2), in_dim=3, width=32, depth=1, heads=2, qk_norm=True)
    blk = randomized(cfg).blocks[0]
    s_1H11 = torch.tensor([0.5, 6.0]).view(1, 2, 1, 1)
    with torch.no_grad():
        blk.qk_log_scale.copy_(s_1H11.log())
        x, cond = torch.randn(3, 5, 32), torch.randn(3, 32)
        ada = ada_terms(blk.ada(cond), 6)
        sh1, sc1, g1, sh2, sc2, g2 = ada
        q, k, v = blk.qkv(blk.norm1(x) * sc1 + sh1).view(3, 5, 3, 2, 16).permute(2, 0, 3, 1, 4)
        logits = s_1H11 * F.normalize(q, dim=-1) @ F.normalize(k, dim=-1).transpose(-1, -2)
        a = (logits.softmax(-1) @ v).transpose(1, 2).reshape(3, 5, 32)
        h = x + g1 * blk.proj(a)
        h = h + g2 * blk.mlp(blk.norm2(h) * sc2 + sh2)
        assert torch.allclose(blk(x, ada, None, None), h, atol=1e-5)
