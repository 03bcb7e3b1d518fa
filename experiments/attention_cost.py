"""Experiment (ii): wall time and FLOPs of block-causal attention over the pyramid vs latent side n.

One head of attention over the doubling pyramid of an n x n latent (sides 1, 2, 4, ..., n; L ~ 4n^2/3)
with small entries (B = 0.3, where the approximations are accurate), timed on this machine:

* ``exact (masked)``: the library call ``attention(q, k, v, levels, levels)``, a dense L x L masked
  kernel (what a teacher-forced forward pass runs), skipped once L^2 gets too large for memory;
* ``exact (per scale)``: scale k against the keys of scales <= k, the KV-cached way sampling runs it
  (timed up to ``--max-exact-side``);
* ``poly g``: the polynomial method with prefix sums (rank C(d+g, g));
* ``performer m``: FAVOR+ with m features.

Reports the growth exponent of time and FLOPs in n (exact ~ n^4, approximate ~ n^2), the speedups
and the crossover n where each approximation gets faster than exact.

    python -m experiments.attention_cost --out runs/attention_cost [--quick]
"""
from __future__ import annotations

import math
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

from nextscale.attention import attention
from nextscale.cost import count_flops
from nextscale.fastattn import feature_rank
from nextscale.scales import level_ids, num_tokens, scale_slices

from .common import base_parser, loglog_slope, machine, pyplot, setup, write_json
from .theory import halving_sides, pyramid_attention_flops

MAX_DENSE_TOKENS = 6000  # the masked dense kernel holds a few L x L float tensors


def per_scale_exact(q, k, v, schedule):
    """Exact block-causal attention one scale at a time (no mask: scale k sees the prefix of keys)."""
    outs = []
    for sl in scale_slices(schedule):
        outs.append(F.scaled_dot_product_attention(q[:, :, sl], k[:, :, :sl.stop], v[:, :, :sl.stop]))
    return torch.cat(outs, 2)


def timed(fn, repeats: int) -> float:
    fn()  # warm up (allocations, caches of fits and features)
    best = math.inf
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def run(args) -> dict:
    out = setup(args)
    d = args.head_dim
    sides = [8, 16, 32] if args.quick else args.sides
    repeats = 2 if args.quick else 3
    g = args.degree
    meths = {"exact (masked)": "exact_dense", "exact (per scale)": "exact",
             f"poly g={g} (r={feature_rank(d, g)})": "poly", f"performer m={args.features}": "performer"}
    rows = {name: {"seconds": [], "flops_counted": [], "flops_model": [], "error": []} for name in meths}
    gen = torch.Generator().manual_seed(args.seed)
    t0 = time.perf_counter()
    for n in sides:
        sch = halving_sides(n)
        L = num_tokens(sch)
        lv = level_ids(sch)
        q, k = ((torch.rand(2, 1, 1, L, d, generator=gen) * 2 - 1) * args.entry_bound * d ** 0.25).unbind(0)
        v = torch.randn(1, 1, L, d, generator=gen)
        calls = {
            "exact (masked)": lambda: attention(q, k, v, lv, lv),
            "exact (per scale)": lambda: per_scale_exact(q, k, v, sch),
            f"poly g={g} (r={feature_rank(d, g)})": lambda: attention(q, k, v, lv, lv, kind="poly", degree=g),
            f"performer m={args.features}": lambda: attention(q, k, v, lv, lv, kind="performer",
                                                               num_features=args.features, seed=args.seed),
        }
        ref = None
        for name, fn in calls.items():
            kind = meths[name]
            model = pyramid_attention_flops(sch, d, kind, degree=g, num_features=args.features)
            if (name == "exact (masked)" and L > MAX_DENSE_TOKENS) or (kind == "exact" and n > args.max_exact_side):
                rows[name]["seconds"].append(None)
                rows[name]["flops_counted"].append(None)
                rows[name]["flops_model"].append(model)
                rows[name]["error"].append(None)
                continue
            with torch.no_grad():
                o = fn()
                if ref is None and kind.startswith("exact"):
                    ref = o
                rows[name]["error"].append(None if ref is None else float((o - ref).abs().max() / v.abs().max()))
                rows[name]["seconds"].append(timed(fn, repeats))
            rows[name]["flops_counted"].append(count_flops(fn))
            rows[name]["flops_model"].append(model)
        print(f"n={n:4d} L={L:6d} " + "  ".join(f"{nm.split(' (')[0]}: {r['seconds'][-1] * 1e3:.1f} ms"
                                                 if r["seconds"][-1] is not None else f"{nm.split(' (')[0]}: -"
                                                 for nm, r in rows.items()), flush=True)
    summary = {"sides": sides, "L": [num_tokens(halving_sides(n)) for n in sides], "head_dim": d,
               "degree": g, "rank": feature_rank(d, g), "num_features": args.features,
               "entry_bound": args.entry_bound, "methods": rows, "repeats": repeats}
    fit_from = max(0, len(sides) - 3)  # growth exponents over the largest three sides (timed ones for time)
    for name, r in rows.items():
        pts = [(n, s) for n, s in zip(sides, r["seconds"]) if s is not None][-3:]
        r["time_exponent"] = loglog_slope(*zip(*pts)) if len(pts) >= 2 else None
        r["flops_exponent"] = loglog_slope(sides[fit_from:], r["flops_model"][fit_from:])
    exact = rows["exact (per scale)"]
    for name, r in rows.items():
        if not name.startswith("exact"):
            r["speedup_vs_exact_per_scale"] = [None if e is None else e / s for e, s in zip(exact["seconds"], r["seconds"])]
            r["speedup_vs_exact_masked"] = [None if e is None else e / s
                                            for e, s in zip(rows["exact (masked)"]["seconds"], r["seconds"])]
            r["crossover_n_time"] = next((n for n, x in zip(sides, r["speedup_vs_exact_per_scale"])
                                          if x is not None and x > 1), None)
            r["crossover_n_flops"] = next((n for n, a, b in zip(sides, r["flops_model"], exact["flops_model"])
                                           if a < b), None)
    summary.update(seconds=time.perf_counter() - t0, machine=machine(), quick=args.quick, seed=args.seed)
    write_json(out / "attention_cost.json", summary)
    plot(summary, out / "attention_cost.png")
    return summary


def plot(s: dict, path):
    plt = pyplot()
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(12, 4.5))
    for name, r in s["methods"].items():
        t = [np.nan if x is None else x for x in r["seconds"]]
        lab = f"{name}: ~n^{r['time_exponent']:.2f}" if r["time_exponent"] is not None else name
        a1.loglog(s["sides"], t, "-o", ms=4, label=lab)
        a2.loglog(s["sides"], r["flops_model"], "-o", ms=4, label=f"{name}: ~n^{r['flops_exponent']:.2f}")
    a1.set_xlabel("latent side n")
    a1.set_ylabel("seconds (best of repeats, 1 head)")
    a1.set_title(f"wall time, head dim {s['head_dim']}, {s['machine']['threads']} thread(s)")
    a2.set_xlabel("latent side n")
    a2.set_ylabel("matmul FLOPs (cost model)")
    a2.set_title("FLOPs: exact counts visible pairs only")
    for a in (a1, a2):
        a.legend(fontsize=7)
        a.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict:
    p = base_parser(__doc__.splitlines()[0])
    p.add_argument("--head-dim", type=int, default=16)
    p.add_argument("--degree", type=int, default=2)
    p.add_argument("--features", type=int, default=256)
    p.add_argument("--entry-bound", type=float, default=0.3)
    p.add_argument("--sides", type=int, nargs="+", default=[8, 16, 32, 64, 128, 256])
    p.add_argument("--max-exact-side", type=int, default=128, help="largest n timed with exact attention")
    args = p.parse_args(argv)
    if args.head_dim < 1 or args.degree < 1 or args.features < 1 or not args.entry_bound > 0:
        raise SystemExit("--head-dim, --degree, --features must be >= 1 and --entry-bound > 0")
    if any(n < 1 for n in args.sides):
        raise SystemExit("--sides must be positive")
    s = run(args)
    for name, r in s["methods"].items():
        sp = [(n, x) for n, x in zip(s["sides"], r.get("speedup_vs_exact_per_scale", [])) if x is not None]
        extra = "" if name.startswith("exact") else (f", faster than exact (per scale) from n = {r['crossover_n_time']}"
                                                      f", speedup at n={sp[-1][0]}: {sp[-1][1]:.1f}x")
        print(f"{name:28s} time ~ n^{r['time_exponent']}, FLOPs ~ n^{r['flops_exponent']:.2f}{extra}")
    print(f"wrote {args.out}/attention_cost.json and .png ({s['seconds']:.1f} s)")
    return s


if __name__ == "__main__":
    main(sys.argv[1:])
