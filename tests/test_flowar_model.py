"""flowar.model: config checks, training loss, KV-cache equivalence, exact NFE, CFG, seeds, inpainting."""
from dataclasses import replace

import pytest
import torch
from einops import rearrange

from nextscale.autoencoder import ConvAEConfig
from nextscale.backbone import BackboneConfig
from nextscale.data import load_digits
from nextscale.train import TrainConfig, train

from flowar.autoencoder import AEConfig, ContinuousAE
from flowar.model import FlowAR, FlowARConfig
from flowar.pipeline import flow_losses

AE = AEConfig(ConvAEConfig(image_channels=1, image_side=8, latent_channels=4, hidden=8, down=1))
BB = BackboneConfig(schedule=(1, 2, 4), in_dim=4, num_classes=10, width=32, depth=2, heads=2)
CFG = FlowARConfig(ae=AE, backbone=BB, head_width=32, head_depth=2)


@pytest.fixture(scope="module")
def digits():
    return load_digits(side=8, seed=0)


def make(cfg=CFG, seed=0, x=None):
    torch.manual_seed(seed)
    ae = ContinuousAE(cfg.ae)
    if x is not None:
        ae.calibrate(x)
    model = FlowAR(cfg, ae)
    # the heads are zero-initialised (adaLN-Zero); perturb them so sampling paths are non-trivial
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.05 * torch.randn_like(p))
    return model.eval()


# ----------------------------------------------------------------------------- config and training

def test_config_checks_against_the_autoencoder():
    with pytest.raises(ValueError, match=r"backbone.in_dim \(8\) must equal the autoencoder's latent channels \(4\)"):
        FlowARConfig(ae=AE, backbone=replace(BB, in_dim=8))
    with pytest.raises(ValueError, match=r"must end at the autoencoder's latent side 4"):
        FlowARConfig(ae=AE, backbone=replace(BB, schedule=(1, 2, 3)))
    with pytest.raises(ValueError, match=r"path must be one of \('noise', 'prev_noise'\)"):
        replace(CFG, path="data")
    with pytest.raises(ValueError, match=r"t_sampling must be one of \('uniform', 'logit_normal'\)"):
        replace(CFG, t_sampling="cosine")
    with pytest.raises(ValueError, match=r"loss_weight must be one of"):
        replace(CFG, loss_weight="area")
    with pytest.raises(ValueError, match="head_width"):
        replace(CFG, head_width=0)
    with pytest.raises(ValueError, match=r"head must be one of \('transformer', 'transformer_cross', 'mlp'\), got 'unet'"):
        replace(CFG, head="unet")
    with pytest.raises(ValueError, match=r"head_depth must lie in \[1, inf\), got 0"):
        replace(CFG, head_depth=0)
    with pytest.raises(ValueError, match=r"t_per must be one of \('scale', 'token'\), got 'image'"):
        replace(CFG, t_per="image")
    with pytest.raises(ValueError, match=r"input_resize must be one of \('via_full', 'direct'\)"):
        replace(CFG, input_resize="nearest")
    with pytest.raises(ValueError, match=r"head_width \(30\) must be head_heads \(1\) times a multiple of 4"):
        replace(CFG, head_width=30)
    with pytest.raises(ValueError, match=r"head_time must be one of \('continuous', 'index'\), got 'int'"):
        replace(CFG, head_time="int")
    with pytest.raises(ValueError, match=r"head_time must be one of \('continuous',\), got 'index'"):
        replace(CFG, head="mlp", head_time="index")  # MAR's head has no release time index
    # heads default to the release's head dim 64 (at least one)
    assert replace(CFG, head_width=256, head_heads=None).head_heads == 4 and CFG.head_heads == 1
    with pytest.raises(ValueError, match=r"drop_path must lie in \[0, 1\), got -0.1"):
        replace(CFG, backbone=replace(BB, drop_path=-0.1))
    assert CFG.head == "transformer" and CFG.t_per == "scale" and CFG.t_sampling == "uniform"
    assert replace(CFG, head_width=None).head_width == BB.width  # None: the backbone's width
    other = ContinuousAE(replace(AE, kind="ae"))
    with pytest.raises(ValueError, match="built from config.ae"):
        FlowAR(CFG, other)


def test_forward_per_scale_losses_weighted_by_tokens(digits):
    model = make(x=digits.x_train).train()
    x, y = digits.x_train[:16], digits.y_train[:16]
    torch.manual_seed(0)
    out = model(x, y)
    assert set(out) == {"loss", "flow_s1", "flow_s2", "flow_s3"}
    per = torch.stack([out["flow_s1"], out["flow_s2"], out["flow_s3"]])
    # scale k weighted n_k / n_K: the release's l_k / 16^2 * side_k^2
    assert torch.allclose(out["loss"], (per * torch.tensor([1, 4, 16]) / 16).sum())
    model_u = FlowAR(replace(CFG, loss_weight="uniform"), model.ae)
    model_u.load_state_dict(model.state_dict())
    torch.manual_seed(0)
    out_u = model_u.train()(x, y)
    assert torch.allclose(out_u["loss"], per.mean(), atol=1e-6)


def test_autoencoder_is_frozen(digits):
    model = make(x=digits.x_train)
    model.train()
    assert not model.ae.training and model.backbone.training
    assert all(not p.requires_grad for p in model.ae.parameters())
    model(digits.x_train[:8], digits.y_train[:8])["loss"].backward()
    assert all(p.grad is None for p in model.ae.parameters())
    assert any(p.grad is not None for p in model.head.parameters())


@pytest.mark.parametrize("head,path,t_per,t_sampling", [("transformer", "noise", "scale", "uniform"),
                                                         ("mlp", "noise", "token", "logit_normal"),
                                                         ("transformer", "prev_noise", "token", "uniform")])
def test_loss_decreases_on_a_fixed_batch(digits, head, path, t_per, t_sampling):
    cfg = replace(CFG, head=head, path=path, t_per=t_per, t_sampling=t_sampling)
    torch.manual_seed(0)
    ae = ContinuousAE(AE)
    ae.calibrate(digits.x_train)
    model = FlowAR(cfg, ae)
    x, y = digits.x_train[:32], digits.y_train[:32]
    before = flow_losses(model, x, y, seed=0)
    train(model, x, y, TrainConfig(steps=40, batch_size=32, lr=3e-3, warmup_steps=5, progress=False))
    after = flow_losses(model, x, y, seed=0)
    assert after["loss"] < 0.8 * before["loss"], (before, after)
    assert all(after[f"flow_s{k}"] < before[f"flow_s{k}"] for k in (1, 2, 3))


@pytest.mark.parametrize("head", ["transformer", "transformer_cross", "mlp"])
def test_token_coupling(digits, head):
    """FlowAR's head mixes the tokens of a scale; MAR's per-token head does not, exactly."""
    model = make(cfg=replace(CFG, head=head), x=digits.x_train)
    torch.manual_seed(0)
    x, h, t = torch.randn(2, 16, 4), torch.randn(2, 16, 32), torch.full((2, 1), 0.3)
    x2 = x.clone()
    x2[:, 5] += 1.0                                   # change the noisy input at one position
    with torch.no_grad():
        v, v2 = model.head(x, t, h, 2), model.head(x2, t, h, 2)
    others = [i for i in range(16) if i != 5]
    moved = (v2 - v)[:, others].abs().max()
    if head != "mlp":
        assert moved > 1e-4, moved
    else:
        assert torch.equal(v2[:, others], v[:, others])
    assert (v2 - v)[:, 5].abs().max() > 1e-4


def test_t_per_scale_draws_one_time_per_image_and_scale(digits, monkeypatch):
    model = make(x=digits.x_train).train()
    seen = []
    real = model.head.velocity
    monkeypatch.setattr(model.head, "velocity", lambda x, t, c, k, d=None: seen.append(t.shape) or real(x, t, c, k, d))
    model(digits.x_train[:4], digits.y_train[:4])
    assert seen == [(4, 1)] * 3
    tok = make(cfg=replace(CFG, t_per="token"), x=digits.x_train).train()
    seen.clear()
    real_tok = tok.head.velocity
    monkeypatch.setattr(tok.head, "velocity", lambda x, t, c, k, d=None: seen.append(t.shape) or real_tok(x, t, c, k, d))
    tok(digits.x_train[:4], digits.y_train[:4])
    assert seen == [(4, 1), (4, 4), (4, 16)]


def test_next_input_via_full_is_the_release_resize(digits):
    """Scale k's backbone input: bicubic up to the full latent side, then area down (the release);
    ``direct`` goes bicubic straight to side_k."""
    F = torch.nn.functional
    bb = replace(BB, schedule=(1, 2, 3, 4))
    via, direct = make(cfg=replace(CFG, backbone=bb)), make(cfg=replace(CFG, backbone=bb, input_resize="direct"))
    z = torch.randn(2, 4, 2, 2)
    full = F.interpolate(z, size=4, mode="bicubic", align_corners=False)
    want_via = F.interpolate(full, size=3, mode="area")
    want_direct = F.interpolate(z, size=3, mode="bicubic", align_corners=False)
    seq = lambda m: rearrange(m, "B C H W -> B (H W) C")
    assert torch.allclose(via.next_input(z, 2), seq(want_via))
    assert torch.allclose(direct.next_input(z, 2), seq(want_direct))
    assert not torch.allclose(want_via, want_direct, atol=1e-3)


# ----------------------------------------------------------------------------- sampling

@pytest.mark.parametrize("head", ["transformer", "transformer_cross", "mlp"])
@pytest.mark.parametrize("schedule", [(1, 2, 4), (1, 2, 3, 4)])
def test_kv_cache_equivalence(digits, head, schedule):
    model = make(cfg=replace(CFG, head=head, backbone=replace(BB, schedule=schedule)), x=digits.x_train)
    y = torch.arange(6)
    for kw in (dict(), dict(cfg_scale=2.0, solver="midpoint", steps=2), dict(solver="euler_maruyama", steps=3)):
        a, sa = model.sample(y, seed=3, use_cache=True, **kw)
        b, sb = model.sample(y, seed=3, use_cache=False, **kw)
        assert torch.allclose(a, b, atol=1e-5), (a - b).abs().max()
        assert sa["head_nfe"] == sb["head_nfe"] and sa["backbone_forwards"] == sb["backbone_forwards"] == len(schedule)


def test_kv_cache_matches_teacher_forced_backbone(digits):
    """The cached per-scale steps give the same h as one teacher-forced pass over the same inputs."""
    model = make(x=digits.x_train)
    bb = model.backbone
    y = digits.y_train[:4]
    ins = torch.randn(4, 2 * 2 + 4 * 4, 4)
    full = bb(ins, y)
    cache, cond = bb.new_cache(), bb.class_emb(y)
    steps = [bb.step(None, cond, cache), bb.step(ins[:, :4], cond, cache), bb.step(ins[:, 4:], cond, cache)]
    assert torch.allclose(torch.cat(steps, 1), full, atol=1e-5)


@pytest.mark.parametrize("solver,per_step", [("euler", 1), ("midpoint", 2), ("rk4", 4), ("euler_maruyama", 1)])
def test_sample_nfe_is_exact(digits, solver, per_step):
    model = make(x=digits.x_train)
    y = torch.arange(3)
    for steps in (1, 3):
        img, st = model.sample(y, solver=solver, steps=steps, seed=0, cfg_scale=0.0)
        assert img.shape == (3, 1, 8, 8)
        assert st["head_nfe_per_scale"] == [steps * per_step] * 3
        assert st["head_nfe"] == 3 * steps * per_step and st["backbone_forwards"] == 3 and not st["guided"]
    _, st = model.sample(y, solver=solver, steps=(4, 2, 1), seed=0, cfg_scale=0.0)
    assert st["head_nfe_per_scale"] == [4 * per_step, 2 * per_step, per_step]
    _, st = model.sample(y, solver=solver, steps=4, time_grid="two_segment", seed=0, cfg_scale=0.0)
    assert st["head_nfe_per_scale"] == [4 * per_step] * 3
    # CFG: constant guidance doubles every evaluation; linear has w = 0 at scale 1
    _, st = model.sample(y, solver=solver, steps=2, cfg_scale=1.5, cfg_schedule="constant", seed=0)
    assert st["head_nfe_per_scale"] == [4 * per_step] * 3 and st["guided"]
    _, st = model.sample(y, solver=solver, steps=2, cfg_scale=1.5, cfg_schedule="linear", seed=0)
    assert st["head_nfe_per_scale"] == [2 * per_step, 4 * per_step, 4 * per_step]
    assert st["cfg_per_scale"] == [0.0, 0.75, 1.5]
    # CFG off at scale 3
    _, st = model.sample(y, solver=solver, steps=2, cfg_scale=1.5, cfg_schedule="constant", cfg_max_scale=2, seed=0)
    assert st["head_nfe_per_scale"] == [4 * per_step, 4 * per_step, 2 * per_step]


def test_cross_head_samples_guides_inpaints_and_reloads(digits, tmp_path):
    """FlowAR-L/H's head (with the release's time index) through everything the model does: exact NFE
    per solver, CFG and its interval, inpainting, a saved and reloaded state."""
    cfg = replace(CFG, head="transformer_cross", head_time="index")
    model = make(cfg=cfg, x=digits.x_train)
    y = torch.arange(3)
    for solver, per_step in (("euler", 1), ("rk4", 4), ("euler_maruyama", 1)):
        _, st = model.sample(y, solver=solver, steps=3, seed=0, cfg_scale=0.0)
        assert st["head_nfe_per_scale"] == [3 * per_step] * 3
    _, st = model.sample(y, steps=4, cfg_scale=1.0, cfg_schedule="constant", cfg_interval=(0.3, 0.8), seed=0)
    assert st["head_nfe_per_scale"] == [6, 6, 6]
    mask = torch.zeros(3, 1, 8, 8, dtype=torch.bool)
    mask[..., :, :4] = True
    img, _ = model.inpaint(digits.x_test[:3], mask, y, seed=0)
    assert torch.equal(img[mask.expand_as(img)], digits.x_test[:3][mask.expand_as(img)])
    torch.save(model.state_dict(), tmp_path / "m.pt")
    again = FlowAR(cfg, model.ae)
    again.load_state_dict(torch.load(tmp_path / "m.pt"))
    assert torch.equal(again.eval().sample(y, seed=1)[0], model.sample(y, seed=1)[0])


def test_guidance_interval_counts_only_guided_evaluations(digits):
    model = make(x=digits.x_train)
    # euler, 4 steps: evaluations at t = 0, .25, .5, .75; guidance on for t in [0.3, 0.8] -> 2 of them
    _, st = model.sample(torch.arange(2), steps=4, cfg_scale=1.0, cfg_schedule="constant",
                         cfg_interval=(0.3, 0.8), seed=0)
    assert st["head_nfe_per_scale"] == [6, 6, 6]


@pytest.mark.parametrize("head,atol", [("mlp", 1e-4), ("transformer", 0.1)])
def test_adaptive_sampling_stats(digits, head, atol):
    """With per_sample, an image's NFE does not depend on its neighbours and its result matches to the
    solver's tolerance (the batch size changes float rounding in h, which moves the adaptive steps:
    visible with the transformer head, whose output mixes all tokens; rtol 1e-3 per scale compounds
    over three scales, each feeding the next: images of other seeds differ by about 0.5)."""
    model = make(cfg=replace(CFG, head=head), x=digits.x_train)
    with torch.no_grad():  # a gentler field (the released head starts with no zero layer): fewer steps
        model.head.out.weight.mul_(0.2)
    y = torch.arange(4)
    img, st = model.sample(y, solver="dopri5", rtol=1e-3, atol=1e-3, seed=0)
    assert st["head_nfe"] == sum(st["head_nfe_per_scale"]) and all(n >= 7 for n in st["head_nfe_per_scale"])
    assert st["head_nfe_per_image"] == [st["head_nfe"]] * 4  # batch-shared step: every image sees them all
    img2, st2 = model.sample(y, solver="dopri5", rtol=1e-3, atol=1e-3, seed=0, per_sample=True)
    assert len(st2["head_nfe_per_image"]) == 4 and st2["head_nfe"] == max(st2["head_nfe_per_image"])
    # per-sample: an image's result and NFE do not depend on its batch neighbours
    one, st3 = model.sample(y[:1], solver="dopri5", rtol=1e-3, atol=1e-3, seed=0, per_sample=True)
    n1, n4 = st3["head_nfe_per_image"][0], st2["head_nfe_per_image"][0]
    if head == "mlp":  # per token: exactly the same steps
        assert n1 == n4
    else:  # h rounds differently at batch 1 and 4, and the adaptive steps follow it
        assert abs(n1 - n4) <= 0.1 * n4, (n1, n4)
    assert torch.allclose(one[0], img2[0], atol=atol)


@pytest.mark.parametrize("solver", ["euler", "euler_maruyama"])
def test_same_seed_same_images(digits, solver):
    model = make(x=digits.x_train)
    y = torch.tensor([1, 7, 7])
    a, _ = model.sample(y, seed=5, cfg_scale=1.0, solver=solver)
    b, _ = model.sample(y, seed=5, cfg_scale=1.0, solver=solver)
    c, _ = model.sample(y, seed=6, cfg_scale=1.0, solver=solver)
    assert torch.equal(a, b) and not torch.allclose(a, c)
    assert not torch.allclose(a[1], a[2])  # same class, different noise
    # an image's noise (start and SDE) depends on (seed, its index), not on the batch size
    d, _ = model.sample(y[:2], seed=5, cfg_scale=1.0, solver=solver)
    assert torch.allclose(d, a[:2], atol=1e-4)
    if solver == "euler_maruyama":  # the SDE noise matters: zero noise is the Euler sampler
        e, _ = model.sample(y, seed=5, cfg_scale=1.0, solver=solver, sde_noise=0.0)
        f, _ = model.sample(y, seed=5, cfg_scale=1.0, solver="euler")
        assert torch.allclose(e, f, atol=1e-5) and not torch.allclose(a, f, atol=1e-3)


def test_cfg_zero_equals_conditional(digits):
    model = make(x=digits.x_train)
    y = torch.arange(5)
    cond, st = model.sample(y, seed=1, cfg_scale=0.0)
    assert not st["guided"]
    off, st_off = model.sample(y, seed=1, cfg_scale=4.0, cfg_max_scale=0)  # guidance switched off everywhere
    assert torch.equal(cond, off) and not st_off["guided"]
    # the guided code path (doubled batch, v_c + w (v_c - v_u)) at vanishing w gives the conditional model
    tiny, st_tiny = model.sample(y, seed=1, cfg_scale=1e-9, cfg_schedule="constant")
    assert st_tiny["guided"] and torch.allclose(tiny, cond, atol=1e-5)
    strong, _ = model.sample(y, seed=1, cfg_scale=3.0, cfg_schedule="constant")
    assert not torch.allclose(strong, cond, atol=1e-3)


@pytest.mark.parametrize("region", ["inpaint", "outpaint"])
def test_inpainting_keeps_the_kept_region(digits, region):
    model = make(x=digits.x_train)
    x, y = digits.x_test[:4], digits.y_test[:4]
    mask = torch.zeros(4, 1, 8, 8, dtype=torch.bool)
    if region == "inpaint":
        mask[..., :, :4] = True           # keep the left half, regenerate the right half
    else:
        mask[..., 2:6, 2:6] = True        # keep the centre, regenerate the border
    known = model.ae.encode(x)
    keep_lat = torch.nn.functional.interpolate(mask.float(), size=4, mode="area") >= 1
    for kw in (dict(), dict(solver="dopri5"), dict(cfg_scale=2.0, solver="rk4", steps=2),
               dict(solver="euler_maruyama", steps=4)):
        z, st = model.generate_latents(y, known_BCHW=known, keep_B1HW=keep_lat, seed=0, **kw)
        kept = keep_lat.expand_as(z)
        assert torch.equal(z[kept], known[kept])              # kept latents exact
        assert not torch.allclose(z[~kept], known[~kept], atol=1e-2)  # the rest is generated
        img, _ = model.inpaint(x, mask, y, seed=0, **kw)
        assert torch.equal(img[mask.expand_as(img)], x[mask.expand_as(x)])  # kept pixels pasted back
        raw, _ = model.inpaint(x, mask, y, seed=0, paste=False, **kw)
        assert torch.allclose(raw, model.ae.decode(z), atol=1e-5)


def test_bad_arguments_raise_with_allowed_values(digits):
    model = make(x=digits.x_train)
    y = torch.arange(2)
    cases = [
        (dict(y_B=torch.tensor([3, 10])), r"class ids must lie in \[0, 9\]"),
        (dict(y_B=torch.tensor([1.0])), "long tensor"),
        (dict(solver="tsit5"), r"solver must be one of \('euler', 'midpoint', 'rk4', 'euler_maruyama', 'shortcut', 'dopri5', 'bosh3'\)"),
        (dict(steps=0), r"steps must lie in \[1, 10000\]"),
        (dict(steps=(2, 2)), "one per scale"),
        (dict(steps=(2, 0, 2)), r"steps\[1\] must lie in \[1, inf\)"),
        (dict(solver="dopri5", rtol=0.0), r"rtol must lie in \(0, inf\)"),
        (dict(solver="dopri5", atol=-1.0), r"atol must lie in \(0, inf\)"),
        (dict(time_grid="cosine"), r"time_grid must be one of \('uniform', 'two_segment'\)"),
        (dict(cfg_scale=float("inf")), "cfg_scale must be a finite number"),
        (dict(solver="euler_maruyama", sde_noise=float("inf")), "sde_noise must be a finite number"),
        (dict(use_cache="no"), "use_cache must be true or false"), (dict(per_sample="yes"), "per_sample"),
        (dict(solvr="euler"), "unknown sampling keyword"),
        (dict(cfg_scale=-1.0), r"cfg_scale must lie in \[0, inf\)"),
        (dict(cfg_schedule="cosine"), r"cfg_schedule must be one of \('linear', 'constant'\)"),
        (dict(cfg_interval=(0.6, 0.2)), r"cfg_interval\[1\] must lie in \[0.6, 1\]"),
        (dict(cfg_interval=0.5), "pair"),
        (dict(cfg_max_scale=4), r"cfg_max_scale must lie in \[0, 3\]"),
        (dict(seed=-1), r"seed must lie in \[0, 2147483647\]"),
        (dict(time_grid="two_segment", steps=1), "steps >= 2"),
    ]
    for kw, msg in cases:
        kw = {"y_B": y, **kw}
        with pytest.raises(ValueError, match=msg):
            model.sample(**kw)
    with pytest.raises(ValueError, match="give both"):
        model.generate_latents(y, known_BCHW=torch.zeros(2, 4, 4, 4))
    with pytest.raises(ValueError, match=r"known_BCHW must have shape \(2, 4, 4, 4\)"):
        model.generate_latents(y, known_BCHW=torch.zeros(2, 4, 8, 8), keep_B1HW=torch.ones(2, 1, 4, 4).bool())
    x = digits.x_test[:2]
    with pytest.raises(ValueError, match=r"x must have shape \(B, 1, 8, 8\)"):
        model.inpaint(torch.zeros(2, 1, 16, 16), torch.ones(2, 1, 16, 16, dtype=torch.bool), y)
    bad = x.clone()
    bad[1, 0, 3, 5] = float("nan")
    with pytest.raises(ValueError, match=r"x holds 1 NaN/inf values, the first at index \(1, 0, 3, 5\)"):
        model.inpaint(bad, torch.ones(2, 1, 8, 8, dtype=torch.bool), y)
    with pytest.raises(ValueError, match=r"mask must be a bool tensor of shape \(2, 1, 8, 8\)"):
        model.inpaint(x, torch.ones(2, 1, 8, 8), y)
    with pytest.raises(ValueError, match="one label per image"):
        model.inpaint(x, torch.ones(2, 1, 8, 8, dtype=torch.bool), torch.arange(3))


def test_kept_positions_follow_the_known_path(digits):
    """Inside each solve a kept position is on the known path x_t = t x1 + (1 - t) x0 (its own noise x0),
    so the head sees it as the training pass would; the other positions are the solver's."""
    from nextscale.scales import pyramid
    model = make(x=digits.x_train)
    x, y = digits.x_test[:2], digits.y_test[:2]
    known = model.ae.encode(x)
    keep_lat = torch.zeros(2, 1, 4, 4, dtype=torch.bool)
    keep_lat[..., :, :2] = True
    keeps = [rearrange(m >= 1 - 1e-6, "b c h w -> b (h w) c") for m in pyramid(keep_lat.float(), model.schedule)]
    knowns = [rearrange(m, "b c h w -> b (h w) c") for m in pyramid(known, model.schedule)]
    seen, velocity = [], model.head.velocity

    def recording(x_BnC, t, c, k, d=None):
        seen.append((k, float(t), x_BnC.clone()))
        return velocity(x_BnC, t, c, k, d)

    model.head.velocity = recording
    model.generate_latents(y, known_BCHW=known, keep_B1HW=keep_lat, seed=0, solver="euler", steps=4, cfg_scale=0.0)
    checked = 0
    for k in range(len(model.schedule)):
        calls = [(t, xt) for kk, t, xt in seen if kk == k]
        assert calls[0][0] == 0.0 and len(calls) == 4
        x0, kp = calls[0][1], keeps[k].expand_as(calls[0][1])
        if not kp.any():
            continue
        assert not torch.allclose(x0[kp], knowns[k][kp], atol=1e-2)  # a kept position starts from its noise
        for t, xt in calls[1:]:
            on_path = t * knowns[k] + (1 - t) * x0
            assert torch.allclose(xt[kp], on_path[kp], atol=1e-6), (k, t)
            checked += int(kp.sum())
    assert checked > 0


def test_scale_field_guides_on_the_float64_grid_holds_kept_positions_and_counts_cost():
    """One scale's velocity field on its own: guided calls cost 2, inside the interval tested on the float64
    grid time (FlowAR-H's 50 uniform steps with guidance from t = 0.3: the release guides 35); kept
    positions move along the known path and end at their known values."""
    from flowar.field import ScaleField
    from flowar.sampling import FlowSampling
    from flowar.solvers import SolverConfig, time_grid

    class Head:  # v = the condition's first channel
        def velocity(self, x, t, c, k, d=None):
            return c[..., :1].expand_as(x)

    sampling = FlowSampling(steps=50, time_grid="uniform", cfg_interval=(0.3, 1.0))
    hc = torch.cat([torch.ones(2, 3, 1), torch.zeros(2, 3, 1)])  # conditional rows, then unconditional ones
    x0, known = torch.zeros(2, 3, 1), torch.full((2, 3, 1), 5.0)
    keep = torch.tensor([True, False, False]).reshape(1, 3, 1).expand(2, 3, 1)
    field = ScaleField(Head(), 0, hc, 1.0, sampling, SolverConfig("euler", 50), x0, torch.float32, keep, known)
    grid = time_grid(50, "uniform", torch.float32)[:-1]
    assert sum(field.cost(float(t)) for t in grid) == 50 + 35
    v = field(grid[20], torch.zeros(2, 3, 1), slice(None))
    assert v[:, 0].eq(5).all() and v[:, 1:].eq(2).all()  # kept: x1 - x0; the rest guided, 1 + 1 (1 - 0)
    assert field(grid[0], torch.zeros(1, 3, 1), slice(1, 2))[:, 1:].eq(1).all()  # t = 0: unguided, row 1's own
    assert field.finish(torch.zeros(2, 3, 1))[:, 0].eq(5).all()
