"""Sub-quadratic approximations of block-causal softmax attention (the entry bound that decides them
is measured by ``experiments.theory.entry_bound``).

Softmax attention is ``D^{-1} A V`` with ``A = exp(Q K^T / sqrt(d))`` and ``D = diag(A 1)``. Write
``A ~ U1 U2^T`` with ``r`` columns; then the output is ``U1 (U2^T V)`` divided row-wise by
``U1 (U2^T 1)``, in O(L r d) instead of O(L^2 d). Over the scale pyramid the mask is block-causal
(query i sees key j iff level(j) <= level(i)), so keys are summed per scale and the sums are
accumulated coarse to fine: query block k reads ``S_k = sum_{j: level <= k} phi(k_j) v_j^T`` and
``z_k = sum_{j: level <= k} phi(k_j)``. This needs the levels sorted (non-decreasing) along the
sequence, which the concatenated pyramid is.

Two factorisations:

* ``poly_attention`` (Alman and Song, "Fast attention requires bounded entries"). Approximate
  ``exp`` on the logit range ``[-beta, beta]`` by a degree-g polynomial ``P`` with small RELATIVE
  error, then ``P(q.k / sqrt(d))`` expands into monomials: with ``k_hat = (k, 1)`` in R^{d+1},

      (q.k)^j = sum_{|alpha| = j} (j! / alpha!) q^alpha k^alpha,

  so ``U2 = phi_K(K)`` holds every monomial ``k^alpha`` of degree <= g (the multisets of size g
  over the d+1 symbols of ``k_hat``: rank ``r = C(d + g, g)``, the compact monomial form, not the
  ``d^g`` tensor-power form), and ``U1 = phi_Q(Q)`` holds ``c_|alpha| (|alpha|! / alpha!) q^alpha``.
  The key features do not depend on the polynomial, so each query scale gets its own polynomial,
  fitted on its own causal range ``beta_k = max_{i in k} |q_i| max_{level(j) <= k} |k_j| / sqrt(d)``
  (Cauchy-Schwarz, per batch item and head): later scales never change earlier outputs.
  Two fits, both positive on the range: ``"relative"`` (weighted least squares for relative error
  refined by Lawson's iteration towards the minimax fit; it raises if the relative error reaches 1)
  and ``"taylor"`` (even degree only: an even-degree Taylor polynomial of exp is positive on R).
  Past beta ~ 15 no polynomial evaluated in floating point keeps a small relative error (its values
  span e^{2 beta}, more than float64 resolves): the relative fit then reports error >= 1 and raises.
  If every ``P`` on the range has relative error <= eps, every output lies within
  ``2 eps / (1 - eps) * max |v|`` of exact attention (each row of ``D^{-1} A`` is a probability
  vector and every weight moves by a factor in [(1-eps)/(1+eps), (1+eps)/(1-eps)]).

* ``performer_attention`` (Choromanski et al., FAVOR+): positive orthogonal random features
  ``phi(x) = exp(w.x - |x|^2 / 2)`` with ``x = q d^{-1/4}``, an unbiased estimate of
  ``exp(q.k / sqrt(d))``; seeded, so one seed gives one feature draw.

Where the method wins: a feature map of rank r costs about ``4 L r d`` FLOPs against about
``4 d sum_k h_k^2 L_k`` for exact block-causal attention (L_k = tokens of scales <= k), i.e. the
polynomial method is cheaper only once the pyramid is longer than ~ r. Rank and the smallest
pyramid of sides 1, 2, 4, ..., n where it wins on FLOPs (``experiments.theory.crossover_side``):

    head dim d   degree g   rank C(d+g, g)   crossover n (L)
    8            2          45               8 (85)
    8            4          495              32 (1365)
    8            6          3003             128 (21845)
    16           2          153              16 (341)
    16           4          4845             128 (21845)
    32 (default) 2          561              32 (1365)
    32 (default) 4          58905            256 (87381)

Performer with 256 features crosses over at n = 32 for d = 8, 16 and 32. The default backbone
(width 128, 4 heads, head dim 32; latent side 16 here) is below every crossover: degree 2 wins
only from n = 32 on, and degree 2 keeps the output error under 1e-2 only for logit ranges up to
about 0.5 (see ``degree_needed``).

Normalisation is checked, never clamped: a denominator that is not finite or falls below half of
what the polynomial's minimum on the range guarantees (roundoff or a logit outside the range)
raises ``FloatingPointError``, or with ``fallback="exact"`` those rows are recomputed exactly.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from itertools import combinations_with_replacement

import numpy as np
import torch
import torch.nn.functional as F

from .config import check_choice, check_float, check_int, check_seed

FITS = ("relative", "taylor")
FALLBACKS = ("raise", "exact")


class ApproximationRefused(ValueError):
    """A setting the approximation cannot serve at this size (e.g. too many features); a bad argument is
    a plain ``ValueError`` and an unsafe normaliser a ``FloatingPointError``."""
MAX_DEGREE = 40
# Largest gathered feature tensor (B * H * L * rank * degree elements) poly attention will build.
MAX_FEATURE_ELEMENTS = 2 ** 30
# The fitted range is rounded up onto this geometric grid so fits can be cached (a fit on a larger
# range is still valid on the smaller one).
_BETA_GRID = 1.02
_BETA_MIN = 1e-3


# ----------------------------------------------------------------------------- polynomial of exp

@dataclass(frozen=True)
class ExpPoly:
    """``p(u) = sum_j coeffs[j] u^j ~ exp(beta u)`` on u in [-1, 1], i.e. ``P(x) = p(x / beta) ~ exp(x)``."""
    beta: float
    degree: int
    fit: str
    coeffs: tuple[float, ...]
    rel_error: float   # max |P(x) / exp(x) - 1| on [-beta, beta] (dense grid)
    min_value: float   # min P(x) on [-beta, beta]


def _check_fit(degree: int, fit: str) -> None:
    check_int("degree", degree, 1, MAX_DEGREE)
    check_choice("fit", fit, FITS)
    if fit == "taylor" and degree % 2:
        raise ValueError(f"degree must be even for fit='taylor' (odd Taylor polynomials of exp go negative), "
                         f"got {degree}")


@lru_cache(maxsize=4096)
def _exp_poly_cached(beta: float, degree: int, fit: str) -> ExpPoly:
    u = np.cos(np.linspace(0, np.pi, 2001))                        # dense check grid, Chebyshev-spaced
    if fit == "taylor":
        coeffs = np.array([beta ** j / math.factorial(j) for j in range(degree + 1)])
    else:
        # minimise max |p(u) exp(-beta u) - 1| over Chebyshev nodes: weighted least squares in the
        # Chebyshev basis, reweighted by Lawson's iteration (converges to the minimax fit).
        nodes = np.cos(np.pi * (np.arange(20 * (degree + 1)) + 0.5) / (20 * (degree + 1)))
        A = np.polynomial.chebyshev.chebvander(nodes, degree) * np.exp(-beta * nodes)[:, None]
        lam, best = np.full(len(nodes), 1.0 / len(nodes)), (np.inf, None)
        for _ in range(40):
            w = np.sqrt(lam)[:, None]
            c, *_ = np.linalg.lstsq(A * w, w[:, 0], rcond=None)
            res = np.abs(A @ c - 1)
            best = min(best, (res.max(), c), key=lambda t: t[0])
            if res.max() < 1e-12:  # at roundoff: reweighting would only chase noise
                break
            lam = np.maximum(lam * res, 1e-12 * (lam * res).max())
            lam /= lam.sum()
        coeffs = np.polynomial.chebyshev.cheb2poly(best[1])
    p = np.polynomial.polynomial.polyval(u, coeffs)
    rel = float(np.max(np.abs(p * np.exp(-beta * u) - 1)))
    return ExpPoly(beta, degree, fit, tuple(float(a) for a in coeffs), rel, float(p.min()))


def _grid_beta(beta: float) -> float:
    beta = max(float(beta), _BETA_MIN)
    return float(_BETA_GRID ** math.ceil(math.log(beta) / math.log(_BETA_GRID) - 1e-9))


def exp_poly(beta: float, degree: int, fit: str = "relative") -> ExpPoly:
    """Degree-``degree`` polynomial approximation of exp on ``[-beta, beta]`` (``beta`` rounded up by <= 2%)."""
    check_float("beta", beta, 0, lo_open=True)
    _check_fit(degree, fit)
    return _exp_poly_cached(_grid_beta(beta), degree, fit)


def degree_needed(B: float, target_error: float, *, head_dim: int = 1, fit: str = "relative") -> int:
    """Smallest degree whose fit of exp on the logit range ``[-head_dim B^2, head_dim B^2]`` keeps the
    attention output within ``target_error * max|v|`` of exact (relative error eps with
    ``2 eps / (1 - eps) <= target_error``).

    ``head_dim=1`` is Alman and Song's normalisation (logits ``QK^T / d``, entries <= B, logits in
    [-B^2, B^2]); for the entry bound of :func:`entry_bound` (entries of ``Q d^{-1/4}``) pass the head
    dim. Raises ``ValueError`` if no degree up to ``MAX_DEGREE`` suffices."""
    check_float("B", B, 0)
    check_float("target_error", target_error, 0, 2, lo_open=True, hi_open=True)
    check_int("head_dim", head_dim, 1)
    check_choice("fit", fit, FITS)
    eps = target_error / (2 + target_error)
    beta = head_dim * B * B
    for g in range(2 if fit == "taylor" else 1, MAX_DEGREE + 1, 2 if fit == "taylor" else 1):
        if exp_poly(max(beta, _BETA_MIN), g, fit).rel_error <= eps:
            return g
    raise ValueError(f"no degree <= {MAX_DEGREE} reaches output error {target_error} on logit range "
                     f"[-{beta:.3g}, {beta:.3g}] with fit={fit!r}")


def feature_rank(head_dim: int, degree: int) -> int:
    """Rank of the monomial feature map: C(d + g, g)."""
    return math.comb(head_dim + degree, degree)


@lru_cache(maxsize=64)
def _monomials(d: int, g: int):
    """Every multiset of size g over d+1 symbols (symbol d is the constant 1): index (r, g),
    degree (r,) and multinomial j!/alpha! (r,). r = C(d+g, g)."""
    idx, deg, mult = [], [], []
    for combo in combinations_with_replacement(range(d + 1), g):
        alpha = [c for c in combo if c < d]
        counts = np.bincount(alpha, minlength=1) if alpha else np.zeros(1, int)
        idx.append(combo)
        deg.append(len(alpha))
        mult.append(math.factorial(len(alpha)) / math.prod(math.factorial(int(c)) for c in counts))
    return torch.tensor(idx, dtype=torch.long), torch.tensor(deg, dtype=torch.long), torch.tensor(mult)


def monomial_features(x_BHLd: torch.Tensor, degree: int) -> torch.Tensor:
    """All monomials of degree <= g of the last axis, (..., C(d+g, g)); entry 0 is the constant 1."""
    idx_rg, _, _ = _monomials(x_BHLd.shape[-1], degree)
    x1 = torch.cat([x_BHLd, torch.ones_like(x_BHLd[..., :1])], -1)
    return x1[..., idx_rg.to(x1.device)].prod(-1)


# ----------------------------------------------------------------------------- block-causal core

def _check_qkv(q, k, v):
    if q.ndim != 4 or k.ndim != 4 or v.ndim != 4:
        raise ValueError(f"q, k, v must be (B, H, len, d), got shapes {tuple(q.shape)}, {tuple(k.shape)}, "
                         f"{tuple(v.shape)}")
    if q.shape[:2] != k.shape[:2] or k.shape[:3] != v.shape[:3] or q.shape[-1] != k.shape[-1]:
        raise ValueError(f"incompatible q, k, v shapes {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")


def _blocks(level: torch.Tensor | None, n: int, name: str) -> list[tuple[int, slice]]:
    """Runs of equal level as (level, slice); levels must be sorted non-decreasing."""
    if level is None:
        return [(0, slice(0, n))]
    if level.ndim != 1 or len(level) != n:
        raise ValueError(f"{name} must be 1-d with one entry per position ({n}), got shape {tuple(level.shape)}")
    if n and bool((level[1:] < level[:-1]).any()):
        raise ValueError(f"{name} must be sorted non-decreasing along the sequence for block-causal "
                         f"approximate attention (scales concatenated coarse to fine)")
    vals, counts = torch.unique_consecutive(level.cpu(), return_counts=True)
    out, start = [], 0
    for val, c in zip(vals.tolist(), counts.tolist()):
        out.append((val, slice(start, start + c)))
        start += c
    return out


def _visible(q_blocks, k_blocks) -> list[int]:
    """For each query block, how many key blocks it sees (a prefix, since levels are sorted)."""
    out = []
    for lv, _ in q_blocks:
        n = sum(1 for kl, _ in k_blocks if kl <= lv)
        if n == 0:
            raise ValueError(f"queries of level {lv} see no key (smallest key level {k_blocks[0][0]})")
        out.append(n)
    return out


def _prefix_sums(phik_BHSr, v_BHSd, k_blocks, log_offsets=None):
    """Cumulative (over key blocks) sums S = phi(K)^T V (B,H,r,d) and z = phi(K)^T 1 (B,H,r).

    With ``log_offsets`` (one (B,H) per block: block features were divided by exp(offset)), the sums
    are carried in units of the running maximum offset, like a streaming log-sum-exp."""
    S_cum, z_cum, run = [], [], None
    S, z = 0, 0
    for b, (_, sl) in enumerate(k_blocks):
        Sb = torch.einsum("bhsr,bhsd->bhrd", phik_BHSr[:, :, sl], v_BHSd[:, :, sl])
        zb = phik_BHSr[:, :, sl].sum(2)
        if log_offsets is None:
            S, z = S + Sb, z + zb
        elif run is None:                                     # first block: carried in its own units
            S, z, run = Sb, zb, log_offsets[b]
        else:
            new = torch.maximum(run, log_offsets[b])
            a_old, a_new = torch.exp(run - new)[..., None], torch.exp(log_offsets[b] - new)[..., None]
            S = a_old[..., None] * S + a_new[..., None] * Sb
            z = a_old * z + a_new * zb
            run = new
        S_cum.append(S)
        z_cum.append(z)
    return S_cum, z_cum


def _finish(num_BHld, den_BHl, floor_BHl, q, k, v, q_level, k_level, sl, fallback, what):
    """num / den for one query block, with the normaliser check (and the exact fallback)."""
    bad = ~torch.isfinite(den_BHl) | (den_BHl <= floor_BHl) | ~torch.isfinite(num_BHld).all(-1)
    if bool(bad.any()):
        if fallback == "raise":
            raise FloatingPointError(
                f"{what}: {int(bad.sum())} attention normaliser(s) are not safely positive (smallest "
                f"{float(den_BHl.min()):.3g}, floor {float(floor_BHl.max()):.3g}); the approximation does not "
                f"hold on this logit range. Raise the degree / features, or pass fallback='exact'")
        exact = _exact(q[:, :, sl], k, v, None if q_level is None else q_level[sl], k_level)
        den_BHl = torch.where(bad, torch.ones_like(den_BHl), den_BHl)
        return torch.where(bad[..., None], exact, num_BHld / den_BHl[..., None])
    return num_BHld / den_BHl[..., None]


def _exact(q, k, v, q_level, k_level):
    mask = None if q_level is None else k_level[None, :] <= q_level[:, None]
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


# ----------------------------------------------------------------------------- polynomial method

def poly_attention(q_BHLd: torch.Tensor, k_BHSd: torch.Tensor, v_BHSd: torch.Tensor,
                   q_level: torch.Tensor | None = None, k_level: torch.Tensor | None = None, *,
                   degree: int = 4, fit: str = "relative", beta: float | None = None,
                   fallback: str = "raise") -> torch.Tensor:
    """Block-causal attention through the polynomial method; returns (B, H, L, d_v) in q's dtype.

    ``beta`` fixes the logit range the polynomial is fitted on; None fits each (batch item, head,
    query scale) on its causal Cauchy-Schwarz range. Computes in float32 (float64 for float64 inputs)."""
    _check_qkv(q_BHLd, k_BHSd, v_BHSd)
    _check_fit(degree, fit)
    check_choice("fallback", fallback, FALLBACKS)
    if beta is not None:
        check_float("beta", beta, 0, lo_open=True)
    if (q_level is None) != (k_level is None):
        raise ValueError("give both q_level and k_level, or neither")
    B, H, L, d = q_BHLd.shape
    S = k_BHSd.shape[2]
    r = feature_rank(d, degree)
    if B * H * max(L, S) * r * degree > MAX_FEATURE_ELEMENTS:
        raise ApproximationRefused(f"poly attention with head dim {d} and degree {degree} has rank {r}: the features of "
                         f"{B}x{H}x{max(L, S)} positions exceed MAX_FEATURE_ELEMENTS={MAX_FEATURE_ELEMENTS}; "
                         f"lower the degree or use kind='performer'")
    q_blocks, k_blocks = _blocks(q_level, L, "q_level"), _blocks(k_level, S, "k_level")
    n_vis = _visible(q_blocks, k_blocks)
    dt = _compute_dtype(q_BHLd)
    q, k, v = q_BHLd.to(dt), k_BHSd.to(dt), v_BHSd.to(dt)
    _, deg_r, mult_r = _monomials(d, degree)
    deg_r, mult_r = deg_r.to(q.device), mult_r.to(q.device, dt)

    S_cum, z_cum = _prefix_sums(monomial_features(k, degree), v, k_blocks)
    knorm_blocks = torch.stack([k[:, :, sl].norm(dim=-1).amax(-1) for _, sl in k_blocks])  # (nk, B, H)
    knorm_prefix = torch.cummax(knorm_blocks, 0).values
    counts = torch.tensor([sl.stop - sl.start for _, sl in k_blocks], dtype=dt).cumsum(0)

    out = []
    for (_, sl), nv in zip(q_blocks, n_vis):
        qb = q[:, :, sl]
        if beta is None:
            beta_BH = (qb.norm(dim=-1).amax(-1) * knorm_prefix[nv - 1] / math.sqrt(d)).tolist()
        else:
            beta_BH = [[beta] * H for _ in range(B)]
        polys = [[exp_poly(max(bt, _BETA_MIN), degree, fit) for bt in row] for row in beta_BH]
        if fit == "relative":
            worst = max(p.rel_error for row in polys for p in row)
            if worst >= 1 and fallback == "raise":
                raise FloatingPointError(f"poly attention: degree {degree} cannot fit exp on logit range "
                                         f"[-{max(map(max, beta_BH)):.3g}, {max(map(max, beta_BH)):.3g}] "
                                         f"(relative error {worst:.3g} >= 1, the fit may be negative); "
                                         f"raise the degree or pass fallback='exact'")
        # coefficient of monomial alpha: a_|alpha| * exp(-beta) * mult(alpha) / (beta sqrt(d))^|alpha|;
        # the exp(-beta) shift is the same for a whole row, so it cancels and only prevents overflow.
        a_BHg = torch.tensor([[p.coeffs for p in row] for row in polys], dtype=torch.float64)
        bt_BH = torch.tensor([[p.beta for p in row] for row in polys], dtype=torch.float64)
        scale_BHg = (bt_BH[..., None] * math.sqrt(d)) ** -torch.arange(degree + 1, dtype=torch.float64)
        coef_BHg = a_BHg * scale_BHg * torch.exp(-bt_BH)[..., None]
        coef_BHr = coef_BHg.to(q.device, dt)[..., deg_r] * mult_r
        phiq = monomial_features(qb, degree) * coef_BHr[:, :, None]
        num = phiq @ S_cum[nv - 1]
        den = phiq @ z_cum[nv - 1][..., None]
        pmin = torch.tensor([[p.min_value * math.exp(-p.beta) for p in row] for row in polys], dtype=dt,
                            device=q.device)
        floor = (0.5 * counts[nv - 1] * pmin.clamp_min(0))[..., None].expand_as(den[..., 0])
        if fit == "relative":  # an invalid fit (rel. error >= 1) has no guaranteed positive floor
            bad_fit = torch.tensor([[p.rel_error >= 1 for p in row] for row in polys], device=q.device)
            floor = torch.where(bad_fit[..., None], torch.full_like(floor, math.inf), floor)
        out.append(_finish(num, den[..., 0], floor, q, k, v, q_level, k_level, sl, fallback, "poly attention"))
    return torch.cat(out, 2).to(q_BHLd.dtype)


# ----------------------------------------------------------------------------- Performer FAVOR+

@lru_cache(maxsize=64)
def random_features(head_dim: int, num_features: int, seed: int) -> torch.Tensor:
    """FAVOR+ projection (m, d): blocks of orthogonal rows, each row rescaled to a chi(d) norm (seeded)."""
    g = torch.Generator().manual_seed(seed)
    blocks = []
    for _ in range(-(-num_features // head_dim)):
        Q, R = torch.linalg.qr(torch.randn(head_dim, head_dim, generator=g, dtype=torch.float64))
        blocks.append((Q * torch.sign(torch.diagonal(R))).T)  # sign fix: Haar-uniform directions
    W = torch.cat(blocks)[:num_features]
    norms = torch.randn(num_features, head_dim, generator=g, dtype=torch.float64).norm(dim=1)
    return W * norms[:, None]


def performer_attention(q_BHLd: torch.Tensor, k_BHSd: torch.Tensor, v_BHSd: torch.Tensor,
                        q_level: torch.Tensor | None = None, k_level: torch.Tensor | None = None, *,
                        num_features: int = 256, seed: int = 0, fallback: str = "raise") -> torch.Tensor:
    """Block-causal attention with FAVOR+ positive random features; returns (B, H, L, d_v)."""
    _check_qkv(q_BHLd, k_BHSd, v_BHSd)
    check_int("num_features", num_features, 1)
    check_seed("seed", seed)
    check_choice("fallback", fallback, FALLBACKS)
    if (q_level is None) != (k_level is None):
        raise ValueError("give both q_level and k_level, or neither")
    B, H, L, d = q_BHLd.shape
    q_blocks, k_blocks = _blocks(q_level, L, "q_level"), _blocks(k_level, k_BHSd.shape[2], "k_level")
    n_vis = _visible(q_blocks, k_blocks)
    dt = _compute_dtype(q_BHLd)
    q, k, v = q_BHLd.to(dt), k_BHSd.to(dt), v_BHSd.to(dt)
    W = random_features(d, num_features, seed).to(q.device, dt)

    def log_phi(x):  # log of exp(w.x - |x|^2/2) with x scaled by d^{-1/4} (the 1/sqrt(m) cancels)
        x = x * d ** -0.25
        return x @ W.T - 0.5 * (x * x).sum(-1, keepdim=True)

    lk = log_phi(k)
    offsets = [lk[:, :, sl].amax((-2, -1)) for _, sl in k_blocks]              # (B, H) per key block
    phik = torch.cat([torch.exp(lk[:, :, sl] - o[..., None, None]) for (_, sl), o in zip(k_blocks, offsets)], 2)
    S_cum, z_cum = _prefix_sums(phik, v, k_blocks, offsets)
    lq = log_phi(q)
    phiq = torch.exp(lq - lq.amax(-1, keepdim=True))                          # per-row shift cancels
    out = []
    for (_, sl), nv in zip(q_blocks, n_vis):
        num = phiq[:, :, sl] @ S_cum[nv - 1]
        den = (phiq[:, :, sl] @ z_cum[nv - 1][..., None])[..., 0]
        floor = torch.full_like(den, torch.finfo(dt).tiny)
        out.append(_finish(num, den, floor, q, k, v, q_level, k_level, sl, fallback, "performer attention"))
    return torch.cat(out, 2).to(q_BHLd.dtype)
