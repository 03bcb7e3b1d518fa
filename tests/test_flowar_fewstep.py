"""Few-step (shortcut) FlowAR: the step embedding, the self-consistency target, its training rows, the
shortcut sampler (exact NFE, CFG, seeds, KV cache, inpainting) and bad values."""
from dataclasses import replace

import pytest
import torch
import torch.nn as nn

from flowar.heads import StepEmbedding
from flowar.model import FlowAR
from flowar.solvers import SolverConfig, path_sample, shortcut_target, solve

from test_flowar_model import CFG, make

FEW = replace(CFG, few_step="shortcut")


@pytest.fixture(scope="module")
def model(digits8):
    return make(FEW, x=digits8.x_train)


@pytest.fixture(scope="module")
def digits8():
    from nextscale.data import load_digits
    return load_digits(side=8, seed=0)


# ----------------------------------------------------------------------------- the head at d = 0

def test_step_embedding_is_zero_at_zero_and_below_the_finest_step():
    emb = StepEmbedding(16, min_step=1 / 8)
    with torch.no_grad():
        for p in emb.parameters():
            p.normal_()
    assert torch.equal(emb(torch.zeros(3, 1)), torch.zeros(3, 1, 16))
    assert torch.equal(emb(torch.full((2, 1), 1 / 16)), torch.zeros(2, 1, 16))  # finer than 1/8: a flow step
    assert emb(torch.full((1, 1), 1 / 8)).abs().sum() > 0


@pytest.mark.parametrize("head", ["transformer", "transformer_cross", "mlp"])
def test_d_zero_is_the_plain_flow_velocity(digits8, head):
    """At d = 0 the few-step head computes the flow velocity of the shared path (the same function as
    without a step), and a nonzero d changes it."""
    m = make(replace(FEW, head=head), x=digits8.x_train)
    h, x, t = torch.randn(3, 4, 32), torch.randn(3, 4, 4), torch.rand(3, 1)
    c = m.head.condition(h, 1)
    plain = m.head.velocity(x, t, c, 1)
    assert torch.equal(m.head.velocity(x, t, c, 1, torch.zeros(3, 1)), plain)
    assert not torch.allclose(m.head.velocity(x, t, c, 1, torch.full((3, 1), 0.5)), plain, atol=1e-4)
    # a flow-only head refuses a nonzero step
    flow = make(replace(CFG, head=head), x=digits8.x_train)
    assert torch.equal(flow.head.velocity(x, t, flow.head.condition(h, 1), 1, torch.zeros(3, 1)),
                       flow.head.velocity(x, t, flow.head.condition(h, 1), 1))
    with pytest.raises(ValueError, match="no step embedding"):
        flow.head.velocity(x, t, c, 1, torch.full((3, 1), 0.5))


# ----------------------------------------------------------------------------- the target

def test_shortcut_target_is_two_half_steps_of_the_model():
    def field(x, t, d):  # a toy field that depends on x, t and d ((B, 1) each, as the model's)
        return torch.sin(3 * x) * (1 + t[..., None]) - 2 * d[..., None] * x

    x, t, d = torch.randn(5, 7, 3), torch.rand(5, 1), torch.rand(5, 1) / 2
    target = shortcut_target(field, x, t, d)
    x_half = x + d[..., None] * field(x, t, d)
    x_two = x_half + d[..., None] * field(x_half, t + d, d)
    assert torch.allclose(x + 2 * d[..., None] * target, x_two, atol=1e-6)


def test_shortcut_rows_of_a_training_batch(digits8, monkeypatch):
    """A quarter of the batch gets the self-consistency target: 2d a power-of-2 level down to
    1/max_steps, t on the grid of multiples of 2d, the target built from two steps of d with the
    same conditioning; the other rows keep the flow target at d = 0."""
    import flowar.model as fm

    m = make(replace(FEW, shortcut_max_steps=4), x=digits8.x_train).train()
    calls, preds = [], []
    real_target = fm.shortcut_target

    def spy(velocity, x, t, d):
        calls.append((x.shape, t.clone(), d.clone()))
        return real_target(velocity, x, t, d)

    real_velocity = m.head.velocity

    def spy_velocity(x, t, c, k, d=None):
        if torch.is_grad_enabled():
            preds.append((t.clone(), d.clone()))
        return real_velocity(x, t, c, k, d)

    monkeypatch.setattr(fm, "shortcut_target", spy)
    monkeypatch.setattr(m.head, "velocity", spy_velocity)
    torch.manual_seed(0)
    m(digits8.x_train[:16], digits8.y_train[:16])
    assert len(calls) == len(preds) == 3  # one per scale
    for (shape, t_sc, d_sc), (t, d) in zip(calls, preds):
        assert shape[0] == 4                                       # round(0.25 * 16) rows
        assert torch.equal(t[:4], t_sc) and torch.equal(d[:4], 2 * d_sc)  # predicted with the doubled step
        assert torch.equal(d[4:], torch.zeros(12, 1))                # flow rows
        assert set((1 / d[:4]).flatten().tolist()) <= {1.0, 2.0, 4.0}  # levels 1, 1/2, 1/4
        k = t[:4] / d[:4]
        assert torch.equal(k, k.round()) and bool((t[:4] + d[:4] <= 1).all())
    # the loss of those rows is against that target: a target moved by 10 adds about 100 x 4/16 rows
    monkeypatch.setattr(fm, "shortcut_target", lambda *a: real_target(*a) + 10)
    torch.manual_seed(0)
    with torch.no_grad():
        moved = float(m(digits8.x_train[:16], digits8.y_train[:16])["loss"])
    monkeypatch.setattr(fm, "shortcut_target", real_target)
    torch.manual_seed(0)
    with torch.no_grad():
        base = float(m(digits8.x_train[:16], digits8.y_train[:16])["loss"])
    assert 25 < moved - base < 40  # 100 x 4/16 rows x the scale weights' sum 21/16 = 32.8, give or take
    # and the loss trains: a few steps on one batch lower it
    opt = torch.optim.Adam([p for p in m.parameters() if p.requires_grad], lr=3e-3)
    monkeypatch.undo()
    losses = []
    for _ in range(30):
        torch.manual_seed(1)
        loss = m(digits8.x_train[:16], digits8.y_train[:16])["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.8 * losses[0]


def test_shortcut_learns_one_step_sampling_of_a_bimodal_toy():
    """The method on a 1-d toy (data = +-1, source N(0, 1)): one shortcut step lands near the modes,
    where one Euler step of the flow lands near their mean 0."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 64), nn.SiLU(), nn.Linear(64, 64), nn.SiLU(), nn.Linear(64, 1))

    def s(x, t, d):
        return net(torch.cat([x, t.expand_as(x), d.expand_as(x)], -1))

    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    for _ in range(1500):
        x1 = torch.randint(0, 2, (256, 1)).float() * 2 - 1
        x0 = torch.randn(256, 1)
        t = torch.rand(256, 1)
        d = torch.zeros(256, 1)
        n = 64  # self-consistency rows: 2d in {1, 1/2, 1/4, 1/8}, the finest from flow half-steps (d = 0)
        n_steps = 2 ** torch.randint(0, 4, (n, 1))
        t[:n] = torch.floor(torch.rand(n, 1) * n_steps) / n_steps
        d[:n] = 1 / n_steps
        x_t, target = path_sample(x0, x1, t)
        with torch.no_grad():
            half = d[:n] / 2
            target[:n] = shortcut_target(lambda x, tt, dd: s(x, tt, torch.where(dd >= 1 / 8, dd, 0.0)),
                                         x_t[:n], t[:n], half)
        loss = (s(x_t, t, d) - target).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    x0 = torch.randn(2000, 1)
    with torch.no_grad():
        one = solve(lambda t, x, rows, d: s(x, t.reshape(1, 1), d.reshape(1, 1)), x0, SolverConfig("shortcut", 1)).x
        euler = solve(lambda t, x, rows: s(x, t.reshape(1, 1), torch.zeros(1, 1)), x0, SolverConfig("euler", 1)).x
    assert (one.abs() - 1).abs().mean() < 0.25      # near the modes
    assert euler.abs().mean() < 0.3                  # the flow's one step: near the mean


# ----------------------------------------------------------------------------- the sampler

def test_shortcut_nfe_is_exact(model):
    y = torch.arange(3)
    for steps in (1, 2, 4):
        img, st = model.sample(y, solver="shortcut", steps=steps, seed=0, cfg_scale=0.0)
        assert img.shape == (3, 1, 8, 8) and st["head_nfe_per_scale"] == [steps] * 3 and not st["guided"]
        # FlowAR's guidance (linear ramp, off for t < 0.1): a step [t, t + d] is guided where it meets [0.1, 1]
        _, st = model.sample(y, solver="shortcut", steps=steps, seed=0, cfg_scale=1.0, cfg_interval=(0.1, 1.0))
        assert st["head_nfe_per_scale"] == [steps, 2 * steps, 2 * steps] and st["head_nfe"] == 5 * steps
    # 10 steps of 0.1 on [0, 1]: the first step [0, 0.1] does not meet [0.15, 1], the others do
    _, st = model.sample(y, solver="shortcut", steps=10, seed=0, cfg_scale=1.0, cfg_schedule="constant",
                         cfg_interval=(0.15, 1.0))
    assert st["head_nfe_per_scale"] == [19] * 3


def test_shortcut_steps_pass_their_size_and_finer_steps_are_euler(model):
    y = torch.arange(4)
    a, _ = model.sample(y, solver="shortcut", steps=2, seed=3, cfg_scale=1.0)
    b, _ = model.sample(y, solver="euler", steps=2, seed=3, cfg_scale=1.0)
    assert not torch.allclose(a, b, atol=1e-4)  # d = 1/2 is embedded
    # steps finer than the finest trained one (1/8) are flow steps: the sampler is then Euler exactly
    c, _ = model.sample(y, solver="shortcut", steps=16, seed=3, cfg_scale=1.0)
    e, _ = model.sample(y, solver="euler", steps=16, seed=3, cfg_scale=1.0)
    assert torch.allclose(c, e, atol=1e-5)


def test_shortcut_seeds_cache_and_inpainting(model, digits8):
    y = torch.tensor([1, 7, 7])
    kw = dict(solver="shortcut", steps=2, cfg_scale=1.0)
    a, _ = model.sample(y, seed=5, **kw)
    assert torch.equal(a, model.sample(y, seed=5, **kw)[0]) and not torch.allclose(a, model.sample(y, seed=6, **kw)[0])
    assert torch.allclose(model.sample(y, seed=5, use_cache=False, **kw)[0], a, atol=1e-5)
    x = digits8.x_test[:3]
    mask = torch.zeros(3, 1, 8, 8, dtype=torch.bool)
    mask[..., :, :4] = True
    keep = torch.nn.functional.interpolate(mask.float(), size=4, mode="area") >= 1
    known = model.ae.encode(x)
    z, _ = model.generate_latents(y, known_BCHW=known, keep_B1HW=keep, seed=0, **kw)
    kept = keep.expand_as(z)
    assert torch.equal(z[kept], known[kept]) and not torch.allclose(z[~kept], known[~kept], atol=1e-2)


def test_bad_few_step_values_name_the_field(digits8):
    with pytest.raises(ValueError, match=r"few_step must be one of \(None, 'shortcut'\), got 'meanflow'"):
        replace(CFG, few_step="meanflow")
    with pytest.raises(ValueError, match="shortcut_fraction"):
        replace(FEW, shortcut_fraction=1.0)
    with pytest.raises(ValueError, match="shortcut_max_steps must be a power of 2, got 6"):
        replace(FEW, shortcut_max_steps=6)
    with pytest.raises(ValueError, match="shortcut_max_steps"):
        replace(FEW, shortcut_max_steps=0)
    with pytest.raises(ValueError, match="needs t_per='scale'"):
        replace(FEW, t_per="token")
    flow = make(CFG, x=digits8.x_train)
    with pytest.raises(ValueError, match="solver='shortcut' needs a few-step head"):
        flow.sample(torch.arange(2), solver="shortcut")
    assert isinstance(flow, FlowAR)


def test_shortcut_solver_passes_each_steps_size():
    from flowar.solvers import time_grid

    seen = []

    def field(t, x, rows, d):
        seen.append((float(t), float(d)))
        return torch.ones_like(x)

    for steps, grid in ((4, "uniform"), (6, "two_segment")):
        seen.clear()
        sol = solve(field, torch.zeros(2, 3), SolverConfig("shortcut", steps, grid), cost=lambda t, d: 2)
        g = time_grid(steps, grid).tolist()
        assert torch.allclose(torch.tensor(seen), torch.tensor([(g[i], g[i + 1] - g[i]) for i in range(steps)]))
        assert sol.nfe == [2 * steps] * 2 and torch.allclose(sol.x, torch.ones(2, 3))
    with pytest.raises(ValueError, match="shortcut integrates noise -> data only"):
        solve(field, torch.zeros(2, 3), SolverConfig("shortcut", 2), reverse=True)
