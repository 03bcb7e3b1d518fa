"""What FlowAR's sampler integrates at one scale: :class:`ScaleField`, the velocity head conditioned on the
scale's backbone output, with guidance, its interval, the inpainting constraint and the cost of each call;
and :class:`ImageNoise`, every image's own noise stream.

Time convention: t = 0 noise, t = 1 data (see ``flowar.solvers``).
"""
from __future__ import annotations

import torch

from nextscale.guidance import guide

from .sampling import FlowSampling
from .solvers import SolverConfig, grid_times


class ScaleField:
    """dx/dt = v(t, x | h_k) of scale ``k``, called by a solver as ``field(t, x, rows[, d])`` (``rows``: the
    batch rows ``x`` holds; ``d``: a few-step head's step size) and costed by it as ``field.cost(t[, d])``.

    ``hc`` is the head's condition of the scale's backbone output, the conditional rows first and, when
    the batch is guided, the unconditional rows after them. Guidance v_c + w (v_c - v_u) is on where
    ``sampling.guided_at`` says, tested on the grid time in float64 as the release's sampler has it (a
    float32 grid time can fall on the other side of the interval's end); a guided call costs 2 head
    evaluations, an unguided one 1. ``keep``/``known`` (B, n, 1) bool / (B, n, C): inpainting's kept
    positions, held on the known path x_t = t x1 + (1 - t) x0 inside the solve and set to x1 at its end."""

    def __init__(self, head, k: int, hc: torch.Tensor, w: float, sampling: FlowSampling, solver: SolverConfig,
                 x0: torch.Tensor, dtype: torch.dtype, keep: torch.Tensor | None = None,
                 known: torch.Tensor | None = None):
        self.head, self.k, self.hc, self.w, self.sampling = head, k, hc, w, sampling
        self.x0, self.B, self.keep, self.known = x0, len(x0), keep, known
        self.exact = grid_times(solver, dtype)  # a grid time as the solver hands it -> the same time in float64

    def guided(self, t: float, d: float = 0.0) -> bool:
        """Whether the call at t (a step [t, t + d]: where it meets the interval) is guided."""
        return self.w > 0 and self.sampling.guided_at(self.exact.get(t, t), d)

    def cost(self, t: float, d: float = 0.0) -> int:
        return 2 if self.guided(t, d) else 1

    def __call__(self, t: torch.Tensor, x: torch.Tensor, rows: slice, d: torch.Tensor | None = None) -> torch.Tensor:
        t_11 = torch.full((1, 1), self.exact.get(float(t), float(t)), dtype=torch.float64, device=x.device)
        d_11 = None if d is None else d.to(x.dtype).reshape(1, 1)
        if self.keep is not None:  # kept positions follow the known path exactly
            kp, x1k = self.keep[rows], self.known[rows]
            x = torch.where(kp, t * x1k + (1 - t) * self.x0[rows], x)
        hc, B = self.hc, self.B
        if self.guided(float(t), 0.0 if d is None else float(d)):
            # hc is (cond rows; uncond rows) already: a batched solve uses it as it is
            hc2 = hc if rows == slice(None) else torch.cat([hc[:B][rows], hc[B:][rows]])
            v_c, v_u = self.head.velocity(torch.cat([x, x]), t_11, hc2, self.k, d_11).chunk(2)
            v = guide(v_c, v_u, self.w)
        else:
            v = self.head.velocity(x, t_11, hc[:B][rows], self.k, d_11)
        if self.keep is not None:  # the known path's velocity is also its average velocity over any step
            v = torch.where(kp, x1k - self.x0[rows], v)
        return v

    def finish(self, x1: torch.Tensor) -> torch.Tensor:
        """The solve's end state with the kept positions at their known values."""
        return x1 if self.keep is None else torch.where(self.keep, self.known, x1)


class ImageNoise:
    """Image i's noise (all scales) from its own generator seeded by (seed, i), so it does not depend on the
    batch size or on its neighbours: ``start`` (B, L, C) the sources of every scale, then :meth:`draw`
    the SDE's noise in the order the solver asks for it."""

    def __init__(self, seed: int, B: int, L: int, C: int, device, dtype: torch.dtype):
        self.C, self.device, self.dtype = C, device, dtype
        self.gens = [torch.Generator(device).manual_seed((seed * 1_000_003 + i) % 2**63) for i in range(B)]
        self.start = torch.stack([self._randn(L, g) for g in self.gens])

    def _randn(self, n: int, gen: torch.Generator) -> torch.Tensor:
        return torch.randn(n, self.C, device=self.device, dtype=self.dtype, generator=gen)

    def draw(self, rows: slice, n: int) -> torch.Tensor:
        """(rows, n, C) standard normal noise of the images ``rows``."""
        return torch.stack([self._randn(n, self.gens[i]) for i in range(len(self.gens))[rows]])
