"""Experiment: scaling of test loss with model size, VAR vs FlowAR on the same backbone sizes.

Both heads are trained at every backbone width (same depth, head dim 16, same data, same steps and
batch: the same token budget) on top of one shared tokenizer / autoencoder each; FlowAR's velocity
head is as wide as the backbone, so both models grow together. Test loss: VAR's
cross-entropy (nats per token), FlowAR's flow-matching loss. Fits ``L(N) = a N^-b + c`` with
scipy (N = trained parameters: backbone + head) and the pure power law ``log L = log a - b log N``,
reporting the exponents and the correlation of log L with log N. A benchmark, not a test: the full
run trains 2 x (number of widths) models (about 10-20 minutes on 2 busy CPU cores).

    python -m experiments.scaling --out runs/scaling [--quick] [--widths 32 48 64 96 128] [--steps 300]
"""
from __future__ import annotations

import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

from nextscale.backbone import BackboneConfig
from nextscale.data import load_digits
from nextscale.train import TrainConfig

from . import heads
from .common import base_parser, machine, pyplot, setup, write_json


def fit_power_law(N, L) -> dict:
    """``L = a N^-b + c`` (scipy curve_fit, c in [0, min L]) and the pure power law fitted in log space."""
    from scipy.optimize import curve_fit
    from scipy.stats import pearsonr

    N, L = np.asarray(N, float), np.asarray(L, float)
    slope, icpt = np.polyfit(np.log(N), np.log(L), 1)
    r = float(pearsonr(np.log(N), np.log(L))[0]) if len(N) > 2 else float(np.sign(-slope))
    out = {"power_law": {"a": float(math.exp(icpt)), "b": float(-slope), "r_logN_logL": r}}
    try:
        n0 = N / N.min()  # fit in units of the smallest model for conditioning
        f = lambda n, a, b, c: a * n ** -b + c
        (a, b, c), _ = curve_fit(f, n0, L, p0=(L.max() - 0.5 * L.min(), 0.5, 0.5 * L.min()),
                                 bounds=([0, 0, 0], [np.inf, 5, L.min()]), maxfev=20000)
        pred = f(n0, a, b, c)
        ss = float(((L - pred) ** 2).sum())
        out["with_offset"] = {"a": float(a * N.min() ** b), "b": float(b), "c": float(c),
                              "r2": 1 - ss / max(float(((L - L.mean()) ** 2).sum()), 1e-30)}
    except (RuntimeError, ValueError) as e:  # too few points or no convergence
        out["with_offset"] = {"error": str(e)}
    return out


def run(args) -> dict:
    out = setup(args)
    ckpt_dir = Path(args.ckpt_dir) if args.ckpt_dir else out / "checkpoints"
    if args.quick:
        args.widths, args.depth, args.steps, args.tokenizer_steps, args.ae_steps = [8, 16, 24, 32], 1, 10, 5, 5
    data = load_digits(side=16, seed=args.seed)
    base = dict(schedule=tuple(args.schedule), in_dim=8, num_classes=data.num_classes, depth=args.depth)
    t0 = time.perf_counter()
    tc = TrainConfig(steps=args.steps, batch_size=args.batch_size, lr=args.lr, warmup_steps=min(50, args.steps),
                     seed=args.seed, progress=False)
    rows = {"var": [], "flowar": []}
    for w in args.widths:
        bb = BackboneConfig(width=w, heads=max(1, w // args.head_dim), **base)
        tic = time.perf_counter()
        var_model = heads.train_var(data, bb, args.tokenizer_steps, args.seed, tc, ckpt_dir)
        rows["var"].append({"width": w, "params": heads.trainable_params(var_model),
                            "test_loss": heads.var_test_ce(var_model, data), "seconds": time.perf_counter() - tic})
        tic = time.perf_counter()
        fl = heads.train_flowar(data, bb, args.ae_steps, args.seed, tc, ckpt_dir, head_width=w)
        rows["flowar"].append({"width": w, "params": heads.trainable_params(fl),
                               "test_loss": heads.flowar_test_loss(fl, data, args.seed),
                               "seconds": time.perf_counter() - tic})
        print(f"width {w:4d}: VAR N={rows['var'][-1]['params']:8d} test CE {rows['var'][-1]['test_loss']:.4f} | "
              f"FlowAR N={rows['flowar'][-1]['params']:8d} test loss {rows['flowar'][-1]['test_loss']:.4f}",
              flush=True)
    fits = {h: fit_power_law([r["params"] for r in rs], [r["test_loss"] for r in rs]) for h, rs in rows.items()}
    summary = {"widths": args.widths, "depth": args.depth, "head_dim": args.head_dim, "schedule": base["schedule"],
               "train": {"steps": args.steps, "batch_size": args.batch_size, "lr": args.lr,
                         "images_seen": args.steps * args.batch_size},
               "tokenizer_steps": args.tokenizer_steps, "ae_steps": args.ae_steps, "results": rows, "fits": fits,
               "seconds": time.perf_counter() - t0, "machine": machine(), "quick": args.quick, "seed": args.seed}
    write_json(out / "scaling.json", summary)
    plot(summary, out / "scaling.png")
    return summary


def plot(s: dict, path):
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, (h, label) in zip(axes, (("var", "VAR test CE (nats/token)"), ("flowar", "FlowAR test flow loss"))):
        N = np.array([r["params"] for r in s["results"][h]], float)
        L = np.array([r["test_loss"] for r in s["results"][h]], float)
        ax.loglog(N, L, "o", label="measured")
        grid = np.geomspace(N.min(), N.max(), 100)
        pl = s["fits"][h]["power_law"]
        ax.loglog(grid, pl["a"] * grid ** -pl["b"], "--", label=f"a N^-b: b={pl['b']:.3f}, r={pl['r_logN_logL']:.3f}")
        wo = s["fits"][h].get("with_offset", {})
        if "b" in wo:
            ax.loglog(grid, wo["a"] * grid ** -wo["b"] + wo["c"], "-",
                      label=f"a N^-b + c: b={wo['b']:.3f}, c={wo['c']:.3g}")
        ax.set_xlabel("trained parameters N (backbone + head)")
        ax.set_ylabel(label)
        ax.set_title(f"{h}: {s['train']['images_seen']} training images seen")
        ax.legend(fontsize=7)
        ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict:
    p = base_parser(__doc__.splitlines()[0])
    p.add_argument("--widths", type=int, nargs="+", default=[32, 48, 64, 96, 128])
    p.add_argument("--depth", type=int, default=2)
    p.add_argument("--head-dim", type=int, default=16)
    p.add_argument("--schedule", type=int, nargs="+", default=[1, 2, 3, 4, 6, 8])
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--tokenizer-steps", type=int, default=300)
    p.add_argument("--ae-steps", type=int, default=300)
    p.add_argument("--ckpt-dir", default=None, help="checkpoints (default: OUT/checkpoints; a rerun reuses them)")
    args = p.parse_args(argv)
    if len(args.widths) < 3 and not args.quick:
        raise SystemExit("--widths needs at least 3 sizes to fit a scaling law")
    if min(args.widths + [args.depth, args.head_dim, args.steps, args.batch_size]) < 1:
        raise SystemExit("widths, --depth, --head-dim, --steps and --batch-size must be >= 1")
    torch.manual_seed(args.seed)
    s = run(args)
    for h, f in s["fits"].items():
        wo = f["with_offset"]
        extra = f", with offset: b = {wo['b']:.3f}, c = {wo['c']:.4g}" if "b" in wo else ""
        print(f"{h:6s} L ~ N^-{f['power_law']['b']:.3f} (r = {f['power_law']['r_logN_logL']:.3f}){extra}")
    print(f"wrote {args.out}/scaling.json and .png ({s['seconds']:.0f} s)")
    return s


if __name__ == "__main__":
    main(sys.argv[1:])
