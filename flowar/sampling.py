"""How FlowAR samples: one validated config, built once from the keywords a user gives.

:class:`FlowSampling` holds the solver (``flowar.solvers.SOLVERS``), its steps per scale and time
grid, the adaptive solvers' tolerances, and FlowAR's guidance (strength, schedule over scales,
interval in t); :meth:`FlowSampling.plan` turns it into one :class:`~flowar.solvers.SolverConfig` and
one guidance weight per scale of a model. t = 0 is noise here, so the release's ``guidance_high=0.9``
(t = 1 noise there) is ``cfg_interval=(0.1, 1.0)``.
"""
from __future__ import annotations

from dataclasses import dataclass

from nextscale.config import check_bool, check_choice, check_float, check_int
from nextscale.guidance import CFG_SCHEDULES, cfg_weights

from .solvers import SOLVERS, SolverConfig

# FlowAR's own sampler (Ren et al. 2025, release), written once and referenced by these names everywhere
# (the pipeline, the command, the harness's rows, the bench, the release's presets): the solver, Euler on
# the two-segment grid of the release's n = 25 time points, i.e. 24 steps per scale (our steps = its
# n - 1); the guidance, CFG ramping linearly from 0 at the first scale, off for the noisiest 10% of t
# (t < 0.1, t = 0 noise), at a strength the caller gives (the release's per size:
# flowar.release.RELEASE_SAMPLING).
PAPER_SOLVER = dict(solver="euler", steps=24, time_grid="two_segment")
PAPER_GUIDANCE = dict(cfg_schedule="linear", cfg_interval=(0.1, 1.0))
PAPER_SAMPLING = {**PAPER_SOLVER, **PAPER_GUIDANCE}


@dataclass(frozen=True)
class FlowSampling:
    """FlowAR's sampling settings; every value is checked here (``ValueError`` naming the allowed ones).

    ``solver`` one of euler/midpoint/rk4/euler_maruyama (fixed step; euler_maruyama samples the SDE
    with the flow's marginals, noise scale ``sde_noise``), shortcut (a few-step head's steps of size
    d, guided where [t, t + d] meets ``cfg_interval``) or dopri5/bosh3 (adaptive); ``steps`` per scale
    for fixed-step solvers, an int or one per scale; ``time_grid`` "uniform" or "two_segment"
    (FlowAR's); ``rtol``/``atol``, ``first_step``, ``min_step`` for adaptive ones; ``cfg_scale`` w >= 0
    (0: the conditional model, exactly), ``cfg_schedule`` "linear" (w_k = w (k-1)/(K-1)) or
    "constant", ``cfg_interval`` (t_lo, t_hi) where guidance is on, ``cfg_max_scale`` (guidance only
    at scales k <= it; 0 turns it off); ``per_sample`` integrates every image on its own (adaptive:
    reproducible per-image NFE); ``use_cache`` False recomputes the full backbone pass at every scale
    (for testing)."""
    solver: str = SolverConfig.method  # the solver's own defaults, stated once in SolverConfig
    steps: int | tuple[int, ...] = SolverConfig.steps
    time_grid: str = SolverConfig.time_grid
    rtol: float = SolverConfig.rtol
    atol: float = SolverConfig.atol
    first_step: float = SolverConfig.first_step
    min_step: float = SolverConfig.min_step
    sde_noise: float = SolverConfig.sde_noise
    cfg_scale: float = 1.0
    cfg_schedule: str = "linear"
    cfg_interval: tuple[float, float] = (0.0, 1.0)
    cfg_max_scale: int | None = None
    per_sample: bool = False
    use_cache: bool = True

    def __post_init__(self):
        if isinstance(self.steps, (list, tuple)) and self.steps:
            object.__setattr__(self, "steps", tuple(self.steps))
            for k, n in enumerate(self.steps):
                check_int(f"steps[{k}]", n, 1)
        elif not (isinstance(self.steps, int) and not isinstance(self.steps, bool)):
            raise ValueError(f"steps must be an int >= 1 or a sequence of ints (one per scale), got {self.steps!r}")
        for n in self._steps():
            self.solver_config(n)  # the solver's own checks (name, steps, grid, tolerances)
        check_float("cfg_scale", self.cfg_scale, 0)
        check_choice("cfg_schedule", self.cfg_schedule, CFG_SCHEDULES)
        if not (isinstance(self.cfg_interval, (tuple, list)) and len(self.cfg_interval) == 2):
            raise ValueError(f"cfg_interval must be a pair (t_lo, t_hi) with 0 <= t_lo <= t_hi <= 1, "
                             f"got {self.cfg_interval!r}")
        lo, hi = self.cfg_interval
        check_float("cfg_interval[0]", lo, 0, 1)
        check_float("cfg_interval[1]", hi, lo, 1)
        object.__setattr__(self, "cfg_interval", (float(lo), float(hi)))
        if self.cfg_max_scale is not None:
            check_int("cfg_max_scale", self.cfg_max_scale, 0)
        check_bool("per_sample", self.per_sample)
        check_bool("use_cache", self.use_cache)

    def guided_at(self, t: float, d: float = 0.0) -> bool:
        """Whether guidance is on at time t (a step [t, t + d] of a few-step head: where it meets the
        interval). FlowAR's release tests its s <= g on its float64 grid: with ``t`` from
        :func:`flowar.solvers.time_grid` in float64 this is that test (t = 1 - s >= 1 - g)."""
        t_lo, t_hi = self.cfg_interval
        return t_lo <= t <= t_hi if d == 0 else t < t_hi and t + d > t_lo

    def _steps(self) -> tuple[int, ...]:
        return self.steps if isinstance(self.steps, tuple) else (self.steps,)

    def solver_config(self, steps: int) -> SolverConfig:
        return SolverConfig(self.solver, steps, self.time_grid, self.rtol, self.atol, self.first_step, self.min_step,
                            sde_noise=self.sde_noise)

    def plan(self, num_scales: int, few_step: str | None) -> tuple[list[SolverConfig], list[float]]:
        """One SolverConfig and one guidance weight per scale of a model with ``num_scales`` scales
        (and a few-step head when ``few_step`` is not None)."""
        K = num_scales
        if SOLVERS[self.solver].step_aware and few_step is None:
            raise ValueError(f"solver={self.solver!r} needs a few-step head (FlowARConfig.few_step='shortcut'); "
                             f"this model samples with one of {tuple(m for m, s in SOLVERS.items() if not s.step_aware)}")
        if isinstance(self.steps, tuple) and len(self.steps) != K:
            raise ValueError(f"steps must be an int >= 1 or a sequence of {K} ints (one per scale), got {self.steps!r}")
        if self.cfg_max_scale is not None:
            check_int("cfg_max_scale", self.cfg_max_scale, 0, K)
        steps_k = self.steps if isinstance(self.steps, tuple) else (self.steps,) * K
        ws = [w if self.cfg_max_scale is None or k + 1 <= self.cfg_max_scale else 0.0
              for k, w in enumerate(cfg_weights(self.cfg_scale, self.cfg_schedule, K))]
        return [self.solver_config(n) for n in steps_k], ws

