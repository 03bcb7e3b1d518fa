"""Experiment (i): error of approximate block-causal attention vs exact as the entry bound B grows.

Q and K have entries of ``Q d^{-1/4}``, ``K d^{-1/4}`` drawn uniformly in [-B, B] (so B is exactly
the entry bound of :func:`experiments.theory.entry_bound`), V is standard normal, the mask is
block-causal over a doubling pyramid. For every B and approximation we report the max entrywise
error relative to max |V|, the B where it passes 1e-2, and for the polynomial method the degree
and rank it would need for 1e-2 on the realised logit range: once that rank exceeds the sequence
length L the method is slower than exact attention, which is the threshold behaviour of Alman and
Song (fast for logits o(log L), impossible under SETH at Theta(log L)).

    python -m experiments.attention_error --out runs/attention_error [--quick]
"""
from __future__ import annotations

import math
import sys
import time

import numpy as np
import torch

from nextscale.attention import attention
from nextscale.fastattn import degree_needed, feature_rank
from nextscale.scales import level_ids, num_tokens

from .common import base_parser, crossing, machine, pyplot, setup, write_json
from .theory import halving_sides

TARGET = 1e-2


def methods(head_dim: int, quick: bool) -> dict[str, dict]:
    m = {}
    for g in ((2, 4) if quick else (2, 4, 6)):
        m[f"poly-relative g={g} (r={feature_rank(head_dim, g)})"] = dict(kind="poly", degree=g, fit="relative")
        m[f"poly-taylor g={g} (r={feature_rank(head_dim, g)})"] = dict(kind="poly", degree=g, fit="taylor")
    r4 = feature_rank(head_dim, 4)
    for nf in ((r4,) if quick else (r4, 4 * r4)):
        m[f"performer m={nf}"] = dict(kind="performer", num_features=nf)
    return m


def draw(B_entry: float, L: int, d: int, heads: int, g: torch.Generator):
    q, k = ((torch.rand(2, 1, heads, L, d, generator=g, dtype=torch.float64) * 2 - 1) * B_entry * d ** 0.25).unbind(0)
    return q, k, torch.randn(1, heads, L, d, generator=g, dtype=torch.float64)


def run(args) -> dict:
    out = setup(args)
    d = args.head_dim
    schedule = halving_sides(8 if args.quick else args.side)
    L = num_tokens(schedule)
    lv = level_ids(schedule)
    grid = np.linspace(0.05, 1.6, 7 if args.quick else 24).round(4).tolist()
    meths = methods(d, args.quick)
    seeds = 1 if args.quick else args.seeds
    res = {name: {"max_error": [], "mean_error": []} for name in meths}
    realised = {"max_logit": [], "beta_cs": [], "degree_needed": [], "rank_needed": []}
    t0 = time.perf_counter()
    for bi, B in enumerate(grid):
        per = {name: ([], []) for name in meths}
        logit_max, beta_max = 0.0, 0.0
        for s in range(seeds):
            g = torch.Generator().manual_seed(args.seed * 10_007 + bi * 101 + s)
            q, k, v = draw(B, L, d, args.heads, g)
            mask = lv[None, :] <= lv[:, None]
            logits = (q @ k.transpose(-1, -2) / math.sqrt(d)).masked_fill(~mask, 0)
            logit_max = max(logit_max, float(logits.abs().max()))
            beta_max = max(beta_max, float(q.norm(dim=-1).max() * k.norm(dim=-1).max() / math.sqrt(d)))
            ref = attention(q, k, v, lv, lv)
            for name, opts in meths.items():
                opts = dict(opts, seed=args.seed + s) if opts["kind"] == "performer" else opts
                try:
                    e = (attention(q, k, v, lv, lv, **opts) - ref).abs()
                    per[name][0].append(float(e.max() / v.abs().max()))
                    per[name][1].append(float(e.mean() / v.abs().mean()))
                except FloatingPointError:  # no valid fit on this range: the method does not apply
                    per[name][0].append(math.inf)
                    per[name][1].append(math.inf)
        for name in meths:
            res[name]["max_error"].append(float(np.mean(per[name][0])))
            res[name]["mean_error"].append(float(np.mean(per[name][1])))
        realised["max_logit"].append(logit_max)
        realised["beta_cs"].append(beta_max)
        try:
            gn = degree_needed(math.sqrt(beta_max), TARGET)
            realised["degree_needed"].append(gn)
            realised["rank_needed"].append(feature_rank(d, gn))
        except ValueError:
            realised["degree_needed"].append(None)
            realised["rank_needed"].append(None)
    for name in meths:
        errs = [None if not math.isfinite(e) else e for e in res[name]["max_error"]]
        res[name]["threshold_B"] = crossing(grid, errs, TARGET)
    # measured: the smallest rank among the tested poly variants that stays within the target
    realised["rank_measured"] = [
        min((feature_rank(d, o["degree"]) for n, o in meths.items()
             if o["kind"] == "poly" and math.isfinite(res[n]["max_error"][i]) and res[n]["max_error"][i] <= TARGET),
            default=None) for i in range(len(grid))]
    rank_cross = next((B for B, r in zip(grid, realised["rank_needed"]) if r is None or r > L), None)
    # Alman-Song's threshold in these units: logits ~ log L. Where the realised max logit reaches log L:
    logit_cross = crossing(grid, realised["max_logit"], math.log(L))
    summary = {
        "schedule": schedule, "L": L, "head_dim": d, "heads": args.heads, "seeds": seeds, "target_error": TARGET,
        "B_grid": grid, "methods": res, "realised": realised,
        "B_where_rank_needed_exceeds_L": rank_cross, "B_where_max_logit_reaches_logL": logit_cross,
        "log_L": math.log(L), "sqrt_log_L": math.sqrt(math.log(L)),
        "worst_case_degree_needed": [degree_needed(B, TARGET, head_dim=d) if d * B * B < 8 else None for B in grid],
        "seconds": time.perf_counter() - t0, "machine": machine(), "quick": args.quick, "seed": args.seed,
    }
    write_json(out / "attention_error.json", summary)
    plot(summary, out / "attention_error.png")
    return summary


def plot(s: dict, path):
    plt = pyplot()
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(12, 4.5))
    for name, r in s["methods"].items():
        y = [e if e is not None and math.isfinite(e) else np.nan for e in r["max_error"]]
        a1.semilogy(s["B_grid"], y, "-o" if "performer" in name else "-", ms=3, label=name)
    a1.axhline(s["target_error"], color="k", ls=":", lw=1)
    if s["B_where_max_logit_reaches_logL"] is not None:
        a1.axvline(s["B_where_max_logit_reaches_logL"], color="r", ls="--", lw=1, label="max logit = log L")
    a1.set_xlabel("entry bound B (entries of Q d^-1/4, K d^-1/4)")
    a1.set_ylabel("max |approx - exact| / max |V|")
    a1.set_title(f"block-causal attention, L={s['L']}, d={s['head_dim']}")
    a1.legend(fontsize=7)
    ranks = [r if r is not None else np.nan for r in s["realised"]["rank_needed"]]
    a2.semilogy(s["B_grid"], ranks, "-o", ms=3, label="rank C(d+g,g) the guarantee needs for 1e-2")
    measured = [r if r is not None else np.nan for r in s["realised"]["rank_measured"]]
    a2.semilogy(s["B_grid"], measured, "s", ms=5, label="smallest tested rank within 1e-2 (measured)")
    a2.axhline(s["L"], color="k", ls=":", label="sequence length L")
    a2b = a2.twinx()
    a2b.plot(s["B_grid"], s["realised"]["max_logit"], "g--", label="realised max logit")
    a2b.axhline(s["log_L"], color="g", ls=":", lw=1)
    a2b.set_ylabel("max |logit|", color="g")
    a2.set_xlabel("entry bound B")
    a2.set_ylabel("feature rank")
    a2.set_title("rank needed vs L: past the crossing exact attention is cheaper")
    a2.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict:
    p = base_parser(__doc__.splitlines()[0])
    p.add_argument("--head-dim", type=int, default=8)
    p.add_argument("--heads", type=int, default=4, help="independent draws per B (as heads)")
    p.add_argument("--side", type=int, default=16, help="latent side n of the doubling pyramid (full run)")
    p.add_argument("--seeds", type=int, default=3, help="repeats per B in the full run")
    args = p.parse_args(argv)
    for name in ("head_dim", "heads", "side", "seeds"):
        if getattr(args, name) < 1:
            raise SystemExit(f"--{name.replace('_', '-')} must be >= 1")
    s = run(args)
    for name, r in s["methods"].items():
        print(f"{name:34s} error passes {TARGET:g} at B = {r['threshold_B']}")
    print(f"rank needed exceeds L={s['L']} at B = {s['B_where_rank_needed_exceeds_L']}; "
          f"max logit reaches log L at B = {s['B_where_max_logit_reaches_logL']}")
    print(f"wrote {args.out}/attention_error.json and .png ({s['seconds']:.1f} s)")
    return s


if __name__ == "__main__":
    main(sys.argv[1:])
