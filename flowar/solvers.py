"""The ODE side of flow matching: the probability path, time grids, and integration with torchdiffeq.

Time convention (the ONE used everywhere in ``flowar``, as in Meta's flow_matching and TorchCFM):
**t = 0 is noise, t = 1 is data.** The linear (rectified) path is

    x_t = t * x1 + (1 - t) * x0,        dx_t/dt = x1 - x0 (the velocity target),

with x0 the source sample (Gaussian noise, or FlowAR's upsampled previous scale plus noise) and x1
the data. Sampling integrates dx/dt = v(t, x) from t = 0 to t = 1. (The FlowAR release uses the
reverse, t = 1 noise; its time grids are mirrored here as s = 1 - t.)

torchdiffeq 0.2.5 facts this module works around (each checked by ``tests/test_flowar_solvers.py``):

- fixed-grid methods (euler, midpoint, rk4) step between the points of ``t`` only, so ``t=[0, 1]``
  is ONE step: we always pass an explicit grid (:func:`time_grid`);
- adaptive methods (dopri5, bosh3) overshoot the end point and interpolate back, and their
  first-step probe evaluates the field at ``t0 + h0`` with ``h0 = 0.01 |y0| / |f0|`` (unbounded):
  we pin the end point with ``options={"step_t": [t1]}`` and always pass ``first_step``, so the
  field is never evaluated outside [t0, t1];
- the adaptive step size is shared across the batch: one stiff sample shrinks everybody's steps,
  which changes its neighbours' results and the NFE. ``per_sample=True`` integrates every row on
  its own (slower) so each sample's result and NFE do not depend on the rest of the batch;
- a field the solver cannot resolve ends in ``AssertionError('underflow in dt ...')``: we raise a
  ``FloatingPointError`` saying what to change (``min_step > 0`` accepts any step >= min_step);
- there is no ``tsit5``.

Euler–Maruyama (``euler_maruyama``, FlowAR's release ships one beside Euler) is ours, not torchdiffeq's.
It integrates the SDE with the same marginals p_t as the flow (Song et al. 2021; SiT, Ma et al. 2024):

    dx = [v + (g^2 / 2) s] dt + g dW,   s(x, t) = grad log p_t(x) = -(x - t v) / (1 - t),
    g(t)^2 = 2 eps (1 - t)   =>   dx = [v - eps (x - t v)] dt + sqrt(2 eps (1 - t)) dW,

(the score follows from the velocity for the linear path with x0 ~ N(0, I): E[x0 | x_t] = x - t v).
``eps`` is ``SolverConfig.sde_noise`` (0: plain Euler); the noise vanishes at the data end, and the
last step is a plain Euler step (no noise), so one step is Euler. One evaluation per step.

``shortcut`` is the sampler of a few-step (shortcut) head (Frans et al. 2024, "One Step Diffusion via
Shortcut Models"): the field also takes the step size d and returns the average velocity over
[t, t + d], so each step is x <- x + d s(x, t, d), one evaluation per step, on any fixed grid. It is
trained with :func:`shortcut_target`. With d = 0 passed for every step it would be Euler.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch
from torchdiffeq import odeint

from nextscale.config import check_choice, check_float, check_int

TIME_GRIDS = ("uniform", "two_segment")
# The smallest rtol / atol of the adaptive solvers: float32's machine epsilon (the models sample in float32;
# below it the error estimate is rounding noise and the steps shrink towards max_num_steps at every scale:
# rtol = atol = 1e-13 sampled for hours).
TOL_MIN = float(torch.finfo(torch.float32).eps)
# FlowAR's two-segment grid (mirrored to t = 0 noise): half the steps on [0, 0.7], the rest on [0.75, 1];
# built on the release's clock s = 1 - t from its own literals (s from 1 to 0.3, then from 0.25 to 0).
TWO_SEGMENT_KNEE = (0.7, 0.75)
_TWO_SEGMENT_KNEE_S = (0.3, 0.25)


# ----------------------------------------------------------------------------- the path

def path_sample(x0: torch.Tensor, x1: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The linear path at times ``t``: returns (x_t, target velocity x1 - x0).

    ``t`` is one time per row, shape (B,), or any shape that broadcasts against x (e.g. (B, L, 1))."""
    if t.dim() == 1 and x0.dim() > 1:
        t = t.reshape(-1, *([1] * (x0.dim() - 1)))
    t = t.to(x0.dtype)
    return t * x1 + (1 - t) * x0, x1 - x0


def sample_t(n: int, kind: str = "uniform", mean: float = 0.0, std: float = 1.0,
             device=None, generator: torch.Generator | None = None) -> torch.Tensor:
    """Training times in (0, 1): ``uniform``, or ``logit_normal`` (sigmoid of N(mean, std^2), as in SD3)."""
    check_choice("t_sampling", kind, ("uniform", "logit_normal"))
    if kind == "uniform":
        return torch.rand(n, device=device, generator=generator)
    return torch.sigmoid(mean + std * torch.randn(n, device=device, generator=generator))


def shortcut_target(velocity: Callable, x: torch.Tensor, t: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
    """Self-consistency target of one step of size 2d (Frans et al. 2024): the average of the field's
    two steps of size d, ``(s(x, t, d) + s(x + d s(x, t, d), t + d, d)) / 2``, so that one step of 2d
    lands where two steps of d do. ``velocity(x, t, d)``; ``t`` and ``d`` broadcast against ``x`` when
    given one trailing dimension (e.g. (B, 1) for x of shape (B, n, C)). Call it without gradients."""
    d_x = d[..., None] if d.dim() == x.dim() - 1 else d
    s1 = velocity(x, t, d)
    s2 = velocity(x + d_x * s1, t + d, d)
    return (s1 + s2) / 2


# ----------------------------------------------------------------------------- time grids

def time_grid(steps: int, kind: str = "uniform", dtype=torch.float32, device=None) -> torch.Tensor:
    """``steps + 1`` increasing times from 0 to 1 (exactly) for a fixed-step solver.

    ``two_segment`` is FlowAR's grid: ``steps // 2`` points spread over [0, 0.7] (coarse, near the
    noise) then ``steps - steps // 2 + 1`` points over [0.75, 1] (fine, near the data); steps >= 2.
    Built as the FlowAR release builds its grids (``models/sampler.py``): in float64 on its clock
    s = 1 - t (``linspace(1, 0, steps + 1)``; ``linspace(1, 0.3, n1)`` then ``linspace(0.25, 0, ...)``),
    then t = 1 - s cast to ``dtype``: a grid time of its (s = 0.7 of FlowAR-H's 50 steps) is t =
    0.30000000000000004 here, not the float32 linspace's 0.29999998 (its guidance interval starts there)."""
    check_int("steps", steps, 1)
    check_choice("time_grid", kind, TIME_GRIDS)
    f64 = torch.float64
    if kind == "uniform":
        s = torch.linspace(1, 0, steps + 1, dtype=f64)
    else:
        if steps < 2:
            raise ValueError(f"the two_segment time grid needs steps >= 2, got {steps}")
        a, b = _TWO_SEGMENT_KNEE_S
        n1 = steps // 2
        s = torch.cat([torch.linspace(1, a, n1, dtype=f64), torch.linspace(b, 0, steps - n1 + 1, dtype=f64)])
    return (1 - s).to(device=device, dtype=dtype)


def grid_times(cfg: SolverConfig, dtype: torch.dtype) -> dict[float, float]:
    """A fixed-step solve's grid times as its field sees them (in the state's ``dtype``, as the solvers
    hand them) -> the same times in float64, as :func:`time_grid` builds them; empty for an adaptive
    solver. FlowAR's release tests its guidance interval and takes its time index on its float64 grid:
    a field that does the same looks its time up here (:class:`flowar.field.ScaleField`)."""
    if cfg.adaptive:
        return {}
    return {float(g.to(dtype)): float(g) for g in time_grid(cfg.steps, cfg.time_grid, torch.float64)}


# ----------------------------------------------------------------------------- solver settings

@dataclass(frozen=True)
class SolverConfig:
    """How to integrate one ODE from t = 0 to t = 1.

    Fixed-step methods use ``steps`` and ``time_grid`` (``euler_maruyama`` also ``sde_noise``,
    eps in the module doc); adaptive ones ``rtol``, ``atol``,
    ``first_step`` (always passed, see the module doc), ``min_step`` (0: none; > 0 accepts any
    step that small, so integration cannot underflow) and ``max_num_steps``."""
    method: str = "euler"
    steps: int = 4
    time_grid: str = "uniform"
    rtol: float = 1e-3
    atol: float = 1e-3
    first_step: float = 0.05
    min_step: float = 0.0
    max_num_steps: int = 10_000
    sde_noise: float = 1.0

    def __post_init__(self):
        check_choice("solver", self.method, tuple(SOLVERS))
        check_int("max_num_steps", self.max_num_steps, 1)
        check_int("steps", self.steps, 1, self.max_num_steps)  # the adaptive solvers' bound holds for all
        check_choice("time_grid", self.time_grid, TIME_GRIDS)
        if self.time_grid == "two_segment" and self.steps < 2:
            raise ValueError(f"the two_segment time grid needs steps >= 2, got {self.steps}")
        for name in ("rtol", "atol"):
            check_float(name, getattr(self, name), 0, lo_open=True)
            if getattr(self, name) < TOL_MIN:
                raise ValueError(f"{name} must lie in [{TOL_MIN:.3g}, inf), got {getattr(self, name)!r}: float32's "
                                 f"resolution; a smaller tolerance cannot be met, and the adaptive solver would "
                                 f"shrink its steps until max_num_steps")
        check_float("first_step", self.first_step, 0, 1, lo_open=True)
        check_float("min_step", self.min_step, 0, 1, hi_open=True)
        check_float("sde_noise", self.sde_noise, 0)

    @property
    def adaptive(self) -> bool:
        return SOLVERS[self.method].evals_per_step is None

    @property
    def fixed_nfe(self) -> int | None:
        """Field evaluations of one fixed-step solve (None for adaptive methods)."""
        return None if self.adaptive else self.steps * SOLVERS[self.method].evals_per_step


# ----------------------------------------------------------------------------- integration

# A velocity field: v(t (0-d tensor), x (b, ...), rows (the batch rows x holds)) -> (b, ...); for a
# STEP_AWARE method v(t, x, rows, d (0-d tensor, the step size)) -> the average velocity over [t, t + d].
Velocity = Callable[..., torch.Tensor]
# Standard normal noise for the SDE: noise(rows) -> a tensor shaped like x[rows]; called once per step.
Noise = Callable[[slice], torch.Tensor]


@dataclass
class Solution:
    x: torch.Tensor                  # the state at the end (t = 1; t = 0 when reversed)
    nfe: list[int]                   # evaluations seen by each row (cost-weighted, see ``solve``)
    times: list[float] = field(default_factory=list)  # every t the field was evaluated at


class _Counted:
    """Calls ``velocity(t, x, rows[, d])`` and counts ``cost(t[, d])`` per call (e.g. 2 for a guided call)."""

    def __init__(self, velocity: Velocity, rows: slice, cost: Callable[..., int], times: list[float]):
        self.velocity, self.rows, self.cost, self.times = velocity, rows, cost, times
        self.nfe = 0

    def __call__(self, t: torch.Tensor, x: torch.Tensor, *d: torch.Tensor) -> torch.Tensor:
        tf = float(t)
        self.times.append(tf)
        self.nfe += self.cost(tf, *map(float, d))
        return self.velocity(t, x, self.rows, *d)


def _one_eval_per_step(fn: _Counted, x: torch.Tensor, cfg: SolverConfig, reverse: bool,
                       noise: Noise | None) -> torch.Tensor:
    """Euler–Maruyama and shortcut steps on the fixed grid (see the module doc)."""
    if reverse:
        raise ValueError(f"{cfg.method} integrates noise -> data only; use an ODE solver with reverse=True")
    grid = time_grid(cfg.steps, cfg.time_grid, x.dtype, x.device)
    method = SOLVERS[cfg.method]
    eps, step_aware = (cfg.sde_noise if method.stochastic else 0.0), method.step_aware
    for i in range(cfg.steps):
        t, dt = grid[i], grid[i + 1] - grid[i]
        v = fn(t, x, dt) if step_aware else fn(t, x)
        if i == cfg.steps - 1 or eps == 0:
            x = x + dt * v
            continue
        xi = torch.randn_like(x) if noise is None else noise(fn.rows)
        x = x + dt * (v - eps * (x - t * v)) + torch.sqrt(2 * eps * (1 - t) * dt) * xi
    return x


def _torchdiffeq_fixed(fn: _Counted, x_start: torch.Tensor, cfg: SolverConfig, reverse: bool,
                       noise: Noise | None = None) -> torch.Tensor:
    grid = time_grid(cfg.steps, cfg.time_grid, x_start.dtype, x_start.device)
    return odeint(fn, x_start, grid.flip(0) if reverse else grid, method=cfg.method)[-1]


def _torchdiffeq_adaptive(fn: _Counted, x_start: torch.Tensor, cfg: SolverConfig, reverse: bool,
                          noise: Noise | None = None) -> torch.Tensor:
    t = torch.tensor([1.0, 0.0] if reverse else [0.0, 1.0], dtype=x_start.dtype, device=x_start.device)
    options = {"step_t": [float(t[1])], "first_step": cfg.first_step, "min_step": cfg.min_step,
               "max_num_steps": cfg.max_num_steps}
    try:
        return odeint(fn, x_start, t, method=cfg.method, rtol=cfg.rtol, atol=cfg.atol, options=options)[-1]
    except AssertionError as e:  # torchdiffeq signals failures by assert
        msg = str(e)
        if "underflow in dt" in msg:
            raise FloatingPointError(f"{cfg.method}: step size underflowed ({msg}); loosen rtol/atol "
                                     f"(now {cfg.rtol}/{cfg.atol}) or set min_step > 0") from None
        if "max_num_steps" in msg:
            raise FloatingPointError(f"{cfg.method}: {msg}; loosen rtol/atol or raise max_num_steps") from None
        raise


@dataclass(frozen=True)
class Method:
    """One solver: field evaluations per fixed step (None: adaptive), ``run(fn, x_start, cfg, reverse,
    noise) -> x_end``, and its traits: ``step_aware``, the field takes the step size d (a few-step head);
    ``stochastic``, it adds noise (scaled by ``SolverConfig.sde_noise``); ``two_segment``, FlowAR's release
    integrates it on its two-segment grid (the grid ``python -m flowar`` gives it from 2 steps on)."""
    evals_per_step: int | None
    run: Callable[..., torch.Tensor]
    step_aware: bool = False
    stochastic: bool = False
    two_segment: bool = False


# a solver is one entry (as torchdiffeq's SOLVERS): the model, the CLIs and the harness read this table
SOLVERS = {
    "euler": Method(1, _torchdiffeq_fixed, two_segment=True),
    "midpoint": Method(2, _torchdiffeq_fixed),
    "rk4": Method(4, _torchdiffeq_fixed),
    "euler_maruyama": Method(1, _one_eval_per_step, stochastic=True, two_segment=True),
    "shortcut": Method(1, _one_eval_per_step, step_aware=True),
    "dopri5": Method(None, _torchdiffeq_adaptive),
    "bosh3": Method(None, _torchdiffeq_adaptive),
}
METHODS = tuple(SOLVERS)
FIXED_METHODS = tuple(m for m, s in SOLVERS.items() if s.evals_per_step)
ADAPTIVE_METHODS = tuple(m for m, s in SOLVERS.items() if not s.evals_per_step)
STEP_AWARE = tuple(m for m, s in SOLVERS.items() if s.step_aware)  # fields that take the step size d


def _odeint(fn: _Counted, x_start: torch.Tensor, cfg: SolverConfig, reverse: bool,
            noise: Noise | None = None) -> torch.Tensor:
    return SOLVERS[cfg.method].run(fn, x_start, cfg, reverse, noise)


def solve(velocity: Velocity, x_start: torch.Tensor, cfg: SolverConfig, *, per_sample: bool = False,
          cost: Callable[..., int] = lambda t, d=0.0: 1, reverse: bool = False, noise: Noise | None = None
          ) -> Solution:
    """Integrate dx/dt = velocity(t, x, rows) from x(0) = x_start to t = 1 (``reverse``: from
    x(1) = x_start back to t = 0, e.g. data -> noise; the same grid, walked backwards).

    Batched (default): one solve for the whole batch, every row sees the same evaluations, so each
    row's NFE is the total count (adaptive: the step is shared, see the module doc). ``per_sample``:
    one solve per row (``rows = slice(i, i + 1)``), each with its own step sizes and NFE.
    ``cost(t)`` (``cost(t, d)`` for ``shortcut``) is what one evaluation counts, e.g. 2 when guided.
    ``noise`` feeds ``euler_maruyama`` (default: ``torch.randn_like``, the global generator)."""
    if not isinstance(cfg, SolverConfig):
        raise ValueError(f"cfg must be a SolverConfig, got {type(cfg).__name__}")
    times: list[float] = []
    if not per_sample:
        fn = _Counted(velocity, slice(None), cost, times)
        x_end = _odeint(fn, x_start, cfg, reverse, noise)
        return Solution(x_end, [fn.nfe] * len(x_start), times)
    outs, nfe = [], []
    for i in range(len(x_start)):
        fn = _Counted(velocity, slice(i, i + 1), cost, times)
        outs.append(_odeint(fn, x_start[i:i + 1], cfg, reverse, noise))
        nfe.append(fn.nfe)
    return Solution(torch.cat(outs), nfe, times)
