"""flowar.solvers: the path, time grids, exact NFE, [0, 1] pinning, convergence order, errors."""
import math

import pytest
import torch
from torchdiffeq import odeint

from flowar.solvers import (METHODS, TOL_MIN, SolverConfig, path_sample, sample_t, solve, time_grid)


def field(fn):
    """A velocity field ignoring the rows argument."""
    return lambda t, x, rows: fn(t, x)


# ----------------------------------------------------------------------------- path and grids

def test_path_closed_form_t0_noise_t1_data():
    g = torch.Generator().manual_seed(0)
    x0, x1 = torch.randn(5, 3, generator=g), torch.randn(5, 3, generator=g)
    t = torch.tensor([0.0, 1.0, 0.25, 0.5, 0.9])
    xt, target = path_sample(x0, x1, t)
    assert torch.equal(xt[0], x0[0]) and torch.equal(xt[1], x1[1])           # t=0 noise, t=1 data
    assert torch.allclose(xt[2], 0.25 * x1[2] + 0.75 * x0[2])
    assert torch.equal(target, x1 - x0)
    # the target is the time derivative of the path (finite difference)
    eps = 1e-3
    xp, _ = path_sample(x0.double(), x1.double(), t.double() + eps)
    xm, _ = path_sample(x0.double(), x1.double(), t.double() - eps)
    assert torch.allclose((xp - xm) / (2 * eps), target.double(), atol=1e-6)
    # broadcastable per-position times
    tt = torch.rand(5, 3)
    xt2, _ = path_sample(x0, x1, tt)
    assert torch.allclose(xt2, tt * x1 + (1 - tt) * x0)


def test_sample_t_in_unit_interval():
    for kind in ("uniform", "logit_normal"):
        t = sample_t(10_000, kind, generator=torch.Generator().manual_seed(0))
        assert t.min() > 0 and t.max() < 1 and abs(float(t.mean()) - 0.5) < 0.02
    with pytest.raises(ValueError, match="uniform"):
        sample_t(3, "beta")


def test_time_grids():
    for steps in (1, 2, 3, 7):
        g = time_grid(steps)
        assert len(g) == steps + 1 and g[0] == 0 and g[-1] == 1 and (g.diff() > 0).all()
    for steps in (2, 3, 4, 9):
        g = time_grid(steps, "two_segment")
        assert len(g) == steps + 1 and g[0] == 0 and g[-1] == 1 and (g.diff() > 0).all()
    # FlowAR's grid (t=1 noise): cat(linspace(1, .3, n//2), linspace(.25, 0, n//2+1)), mirrored
    flowar = torch.cat([torch.linspace(1, 0.3, 4), torch.linspace(0.25, 0, 5)])
    assert torch.allclose(time_grid(8, "two_segment"), 1 - flowar)
    with pytest.raises(ValueError, match="steps >= 2"):
        time_grid(1, "two_segment")


# ----------------------------------------------------------------------------- NFE

def test_torchdiffeq_fixed_grid_on_0_1_takes_one_step():
    """The fact that forces explicit grids: t=[0, 1] with no step_size is a single euler step."""
    n = []
    odeint(lambda t, y: (n.append(1), -y)[1], torch.ones(2), torch.tensor([0.0, 1.0]), method="euler")
    assert len(n) == 1


@pytest.mark.parametrize("method,per_step", [("euler", 1), ("midpoint", 2), ("rk4", 4)])
@pytest.mark.parametrize("steps", [1, 2, 3, 5])
def test_fixed_step_nfe_is_exact(method, per_step, steps):
    x0 = torch.randn(4, 3)
    for grid in ("uniform", "two_segment") if steps >= 2 else ("uniform",):
        cfg = SolverConfig(method, steps, grid)
        sol = solve(field(lambda t, x: -x), x0, cfg)
        assert sol.nfe == [steps * per_step] * 4 == [cfg.fixed_nfe] * 4
        assert len(sol.times) == steps * per_step
        # a cost function weights each call (a guided call costs 2)
        sol2 = solve(field(lambda t, x: -x), x0, cfg, cost=lambda t: 2)
        assert sol2.nfe == [2 * steps * per_step] * 4


# ----------------------------------------------------------------------------- adaptive pinning

def test_torchdiffeq_adaptive_leaves_unit_interval_without_pinning():
    """The fact we work around: dopri5 overshoots t=1, and its first-step probe can jump far."""
    ts = []
    odeint(lambda t, y: (ts.append(float(t)), -y)[1], torch.ones(3), torch.tensor([0.0, 1.0]),
           method="dopri5", rtol=1e-3, atol=1e-3)
    assert max(ts) > 1
    ts.clear()
    odeint(lambda t, y: (ts.append(float(t)), 1e-3 * torch.ones_like(y))[1], 100 * torch.ones(3),
           torch.tensor([0.0, 1.0]), method="dopri5", rtol=1e-3, atol=1e-3, options={"step_t": [1.0]})
    assert max(ts) > 1


@pytest.mark.parametrize("method", ["dopri5", "bosh3"])
@pytest.mark.parametrize("reverse", [False, True])
def test_adaptive_never_leaves_unit_interval(method, reverse):
    fields = [lambda t, x: -x,                                 # overshoots without step_t
              lambda t, x: 1e-3 * torch.ones_like(x),          # probe escapes without first_step
              lambda t, x: torch.sin(8 * math.pi * t) * x + t]  # oscillating, many steps
    for fn, scale in zip(fields, (1.0, 100.0, 1.0)):
        for rtol in (1e-2, 1e-5):
            sol = solve(field(fn), scale * torch.ones(3, 2), SolverConfig(method, rtol=rtol, atol=rtol),
                        reverse=reverse)
            assert 0.0 <= min(sol.times) and max(sol.times) <= 1.0
            assert sol.nfe[0] == len(sol.times) > 2


def test_adaptive_is_accurate_and_batch_shared():
    x0 = torch.tensor([[1.0], [2.0]], dtype=torch.float64)
    sol = solve(field(lambda t, x: torch.cos(t) * x), x0, SolverConfig("dopri5", rtol=TOL_MIN, atol=TOL_MIN))
    assert torch.allclose(sol.x, x0 * math.exp(math.sin(1.0)), rtol=1e-6)
    assert sol.nfe[0] == sol.nfe[1]


def test_per_sample_nfe_does_not_depend_on_neighbours():
    """Batch-shared adaptive steps: a stiff row inflates the calm row's NFE; per_sample does not."""
    def v(t, x, rows):
        k = torch.tensor([[1.0], [60.0]])[rows]  # row 1 oscillates fast
        return torch.cos(k * t) * k * 0.1 + 0 * x
    x0 = torch.zeros(2, 1)
    cfg = SolverConfig("dopri5", rtol=1e-5, atol=1e-5)
    def v_row0(t, x, rows):
        return v(t, x, slice(0, 1))
    alone = solve(v_row0, x0[:1], cfg).nfe[0]
    batched = solve(v, x0, cfg)
    per = solve(v, x0, cfg, per_sample=True)
    assert per.nfe[0] == alone < per.nfe[1]
    assert batched.nfe[0] == batched.nfe[1] > alone
    # each row solved alone gives the same numbers as per_sample
    assert torch.equal(per.x[:1], solve(v_row0, x0[:1], cfg).x)


def test_underflow_raises_clear_error_and_min_step_avoids_it():
    singular = field(lambda t, x: torch.ones_like(x) / (0.5 - t).abs().clamp_min(1e-30) ** 2)
    with pytest.raises(FloatingPointError, match="min_step"):
        solve(singular, torch.ones(3), SolverConfig("dopri5"))
    sol = solve(singular, torch.ones(3), SolverConfig("dopri5", min_step=1e-3))
    assert max(sol.times) <= 1.0


# ----------------------------------------------------------------------------- accuracy

def _error(method, steps):
    x0 = torch.tensor([0.7, -1.3], dtype=torch.float64)
    sol = solve(field(lambda t, x: torch.cos(t) * x), x0, SolverConfig(method, steps))
    return float((sol.x - x0 * math.exp(math.sin(1.0))).abs().max())


@pytest.mark.parametrize("method,order,steps", [("euler", 1, 32), ("midpoint", 2, 16), ("rk4", 4, 32)])
def test_convergence_order(method, order, steps):
    ratio = _error(method, steps) / _error(method, 2 * steps)
    assert 0.8 * 2 ** order < ratio < 1.2 * 2 ** order, ratio


@pytest.mark.parametrize("method", [m for m in METHODS if m not in ("euler_maruyama", "shortcut")])
def test_zero_noise_path_round_trip(method):
    """With a point source (no noise) the path's velocity x1 - x0 is constant: every solver carries
    x0 to x1 exactly (one step suffices), and integrating back returns x0."""
    g = torch.Generator().manual_seed(1)
    x0, x1 = torch.randn(3, 4, generator=g), torch.randn(3, 4, generator=g)
    _, target = path_sample(x0, x1, torch.zeros(3))
    v = field(lambda t, x: target)
    for steps in (1, 3):
        fwd = solve(v, x0, SolverConfig(method, steps))
        assert torch.allclose(fwd.x, x1, atol=1e-5)
        back = solve(v, fwd.x, SolverConfig(method, steps), reverse=True)
        assert torch.allclose(back.x, x0, atol=1e-5)
    # and for a non-trivial field, forward then backward with rk4 returns the start
    w = field(lambda t, x: torch.sin(x) * (1 + t))
    there = solve(w, x0.double(), SolverConfig("rk4", 64))
    assert torch.allclose(solve(w, there.x, SolverConfig("rk4", 64), reverse=True).x, x0.double(), atol=1e-7)


# ----------------------------------------------------------------------------- validation

def test_bad_arguments_list_allowed_values():
    with pytest.raises(ValueError, match=r"solver must be one of \('euler', 'midpoint', 'rk4', 'euler_maruyama', 'shortcut', 'dopri5', 'bosh3'\)"):
        SolverConfig("tsit5")
    with pytest.raises(ValueError, match=r"steps must lie in \[1, 10000\]"):
        SolverConfig("euler", 0)
    with pytest.raises(ValueError, match=r"steps must be an int"):
        SolverConfig("euler", 2.5)
    with pytest.raises(ValueError, match=r"rtol must lie in \(0, inf\)"):
        SolverConfig("dopri5", rtol=0.0)
    with pytest.raises(ValueError, match=r"atol must lie in \(0, inf\)"):
        SolverConfig("dopri5", atol=-1e-3)
    with pytest.raises(ValueError, match=r"time_grid must be one of \('uniform', 'two_segment'\)"):
        SolverConfig("euler", time_grid="cosine")
    with pytest.raises(ValueError, match="steps >= 2"):
        SolverConfig("euler", 1, "two_segment")
    with pytest.raises(ValueError, match="SolverConfig"):
        solve(field(lambda t, x: x), torch.ones(1), {"method": "euler"})


# ----------------------------------------------------------------------------- Euler–Maruyama

def gaussian_velocity(m: float, s: float):
    """The exact flow velocity for data N(m, s^2) and noise N(0, 1) on the linear path:
    v(x, t) = E[x1 - x0 | x_t = x] = m + (t s^2 - (1 - t)) / (t^2 s^2 + (1 - t)^2) (x - t m)."""
    def v(t, x, rows):
        return m + (t * s * s - (1 - t)) / (t * t * s * s + (1 - t) ** 2) * (x - t * m)
    return v


@pytest.mark.parametrize("eps", [0.5, 1.0, 2.0])
def test_euler_maruyama_keeps_the_flow_marginals(eps):
    """From N(0, 1) the SDE with the flow's marginals ends at the data distribution N(m, s^2), for
    every noise scale (a wrong sign in the score or the noise term moves mean or spread)."""
    torch.manual_seed(0)
    m, s = 1.5, 0.4
    x = solve(gaussian_velocity(m, s), torch.randn(40_000, 1),
              SolverConfig("euler_maruyama", 400, sde_noise=eps)).x
    assert abs(float(x.mean()) - m) < 0.02 and abs(float(x.std()) - s) < 0.02, (float(x.mean()), float(x.std()))


def test_euler_maruyama_zero_noise_is_euler_and_counts_one_eval_per_step():
    torch.manual_seed(0)
    x0, v = torch.randn(8, 3), gaussian_velocity(0.3, 0.7)
    em = solve(v, x0, SolverConfig("euler_maruyama", 6, sde_noise=0.0))
    eu = solve(v, x0, SolverConfig("euler", 6))
    assert torch.allclose(em.x, eu.x, atol=1e-6) and em.nfe == eu.nfe == [6] * 8
    one = solve(v, x0, SolverConfig("euler_maruyama", 1))          # a single step is a plain Euler step
    assert torch.allclose(one.x, solve(v, x0, SolverConfig("euler", 1)).x)
    guided = solve(v, x0, SolverConfig("euler_maruyama", 5, time_grid="two_segment"), cost=lambda t: 2)
    assert guided.nfe == [10] * 8 and len(guided.times) == 5


def test_euler_maruyama_noise_is_the_callers_and_reverse_is_refused():
    x0, v = torch.zeros(2, 3), gaussian_velocity(0.0, 1.0)
    a = solve(v, x0, SolverConfig("euler_maruyama", 4), noise=lambda rows: torch.ones(2, 3))
    b = solve(v, x0, SolverConfig("euler_maruyama", 4), noise=lambda rows: torch.ones(2, 3))
    c = solve(v, x0, SolverConfig("euler_maruyama", 4), noise=lambda rows: -torch.ones(2, 3))
    assert torch.equal(a.x, b.x) and not torch.allclose(a.x, c.x)
    with pytest.raises(ValueError, match="noise -> data only"):
        solve(v, x0, SolverConfig("euler_maruyama", 4), reverse=True)
    with pytest.raises(ValueError, match=r"sde_noise must lie in \[0, inf\)"):
        SolverConfig("euler_maruyama", 4, sde_noise=-1.0)


def test_a_solver_is_one_registry_entry(monkeypatch):
    """Heun (an explicit trapezoid, 2 evaluations per step) added as one entry of ``SOLVERS`` is
    validated, run and counted like the built-in ones."""
    from flowar.solvers import SOLVERS, Method

    def heun(fn, x, cfg, reverse, noise=None):
        grid = time_grid(cfg.steps, cfg.time_grid, x.dtype)
        for t0, t1 in zip(grid[:-1], grid[1:]):
            v0 = fn(t0, x)
            x = x + (t1 - t0) / 2 * (v0 + fn(t1, x + (t1 - t0) * v0))
        return x

    with pytest.raises(ValueError, match="solver must be one of"):
        SolverConfig("heun", steps=4)
    monkeypatch.setitem(SOLVERS, "heun", Method(2, heun))
    cfg = SolverConfig("heun", steps=8)
    x0 = torch.ones(3, 2)
    sol = solve(lambda t, x, rows: -x, x0, cfg)  # dx/dt = -x: x(1) = e^-1
    assert cfg.fixed_nfe == 16 and sol.nfe == [16] * 3
    assert torch.allclose(sol.x, x0 * math.exp(-1), atol=2e-3)
