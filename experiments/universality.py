"""Experiment: universality of single-head, single-layer VAR transformers, measured.

Fits :class:`experiments.universal_model.UniversalVAR` (one up-interpolation layer, one single-head
attention layer, token-wise FFNs) and its flow-based variant to known Lipschitz image-to-image maps
of real digits (input: the digit area-downsampled to the first side of the schedule; output: the
map of its bicubic upsampling, or a random smooth map), through the shared training loop. Reports
test error vs width, vs the Lipschitz constant of a random smooth map, and the largest attention
logit the fitted models use against sqrt(log L) and log L (Alman and Song's threshold: fast
attention exists for logits o(log L), none under SETH at Theta(log L)).

    python -m experiments.universality --out runs/universality [--quick]
"""
from __future__ import annotations

import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

from nextscale.data import load_digits
from nextscale.train import TrainConfig, train
from experiments.universal_model import MAPS, FitConfig, MapConfig, MapFit, UniversalConfig

from .common import base_parser, loglog_slope, machine, pyplot, setup, write_json


def fit_one(data, schedule, width: int, flow: bool, target: MapConfig, args, ckpt_dir: Path | None,
            sweep: str) -> dict:
    cfg = FitConfig(UniversalConfig(schedule=schedule, width=width, ffn_ratio=args.ffn_ratio, flow=flow), target)
    torch.manual_seed(args.seed)
    model = MapFit(cfg)
    tc = TrainConfig(steps=args.steps, batch_size=args.batch_size, lr=args.lr, warmup_steps=min(20, args.steps),
                     weight_decay=0.0, seed=args.seed, progress=False)
    name = f"{'flow' if flow else 'var'}_{target.name}_lip{target.lipschitz:g}_w{width}.pt"
    res = train(model, data.x_train, data.y_train, tc, ckpt_path=None if ckpt_dir is None else ckpt_dir / name,
                device="cpu")
    test = model.evaluate(data.x_test, seed=args.seed)
    tr = model.evaluate(data.x_train, seed=args.seed)
    return {"sweep": sweep, "variant": "flow" if flow else "var", "map": target.name,
            "lipschitz": target.lipschitz if target.name == "random" else None,
            "lipschitz_bound": model.target.lipschitz_bound(), "width": width,
            "params": sum(p.numel() for p in model.model.parameters()),
            "test_mse": test["mse"], "test_relative_mse": test["relative_mse"],
            "train_relative_mse": tr["relative_mse"], "max_logit": test["max_logit"], "B": test["B"],
            "num_tokens": test["num_tokens"], "final_loss": float(np.mean(res.losses[-20:])) if res.losses else None,
            "seconds": res.seconds}


def run(args) -> dict:
    out = setup(args)
    ckpt_dir = Path(args.ckpt_dir) if args.ckpt_dir else None
    if args.quick:
        args.widths, args.maps, args.flow_maps, args.flow_widths = [4, 16], ["blur"], ["blur"], [4]
        args.lipschitz, args.lip_width, args.steps = [1.0, 4.0], 4, min(args.steps, 40)
    data = load_digits(side=args.image_side, seed=args.seed)
    schedule = tuple(args.schedule)
    mk = lambda name, lip=args.random_lipschitz: MapConfig(name=name, in_side=schedule[0], out_side=schedule[-1],
                                         lipschitz=lip, seed=args.seed)
    runs = []
    t0 = time.perf_counter()
    for flow, maps, widths in ((False, args.maps, args.widths), (True, args.flow_maps, args.flow_widths)):
        for name in maps:
            for w in widths:
                runs.append(fit_one(data, schedule, w, flow, mk(name), args, ckpt_dir, "width"))
                r = runs[-1]
                print(f"{r['variant']:4s} {name:7s} width {w:3d}: test rel. MSE {r['test_relative_mse']:.4f} "
                      f"(train {r['train_relative_mse']:.4f}), max logit {r['max_logit']:.2f} [{r['seconds']:.0f} s]",
                      flush=True)
    for lip in args.lipschitz:
        done = [r for r in runs if r["variant"] == "var" and r["map"] == "random" and r["lipschitz"] == lip
                and r["width"] == args.lip_width]
        if done:  # already fitted in the width sweep
            continue
        runs.append(fit_one(data, schedule, args.lip_width, False, mk("random", lip), args, ckpt_dir, "lipschitz"))
        r = runs[-1]
        print(f"var  random  lambda {lip:g}: test rel. MSE {r['test_relative_mse']:.4f}", flush=True)

    L = runs[0]["num_tokens"]
    width_curves = {}
    for variant in ("var", "flow"):
        for name in MAPS:
            pts = sorted((r["width"], r["test_relative_mse"]) for r in runs
                         if r["variant"] == variant and r["map"] == name and r["sweep"] == "width")
            if pts:
                width_curves[f"{variant}/{name}"] = {
                    "widths": [p[0] for p in pts], "test_relative_mse": [p[1] for p in pts],
                    "slope_vs_width": loglog_slope(*zip(*pts)) if len(pts) > 1 else None}
    lip_pts = sorted((r["lipschitz"], r["test_relative_mse"]) for r in runs
                     if r["variant"] == "var" and r["map"] == "random" and r["width"] == args.lip_width)
    logits = [r["max_logit"] for r in runs]
    summary = {
        "schedule": schedule, "image_side": args.image_side, "num_tokens": L, "log_L": math.log(L),
        "sqrt_log_L": math.sqrt(math.log(L)), "steps": args.steps, "batch_size": args.batch_size, "lr": args.lr,
        "ffn_ratio": args.ffn_ratio, "runs": runs, "width_curves": width_curves,
        "lipschitz_curve": {"lipschitz": [p[0] for p in lip_pts], "test_relative_mse": [p[1] for p in lip_pts],
                            "width": args.lip_width},
        "logits": {"max": max(logits), "median": float(np.median(logits)),
                   "fraction_above_sqrt_log_L": float(np.mean([x > math.sqrt(math.log(L)) for x in logits])),
                   "fraction_above_log_L": float(np.mean([x > math.log(L) for x in logits]))},
        "seconds": time.perf_counter() - t0, "machine": machine(), "quick": args.quick, "seed": args.seed,
    }
    write_json(out / "universality.json", summary)
    plot(summary, out / "universality.png")
    return summary


def plot(s: dict, path):
    plt = pyplot()
    fig, (a1, a2, a3) = plt.subplots(1, 3, figsize=(16, 4.5))
    for key, c in s["width_curves"].items():
        a1.loglog(c["widths"], c["test_relative_mse"], "--o" if key.startswith("flow") else "-o", ms=4,
                  label=f"{key} (slope {c['slope_vs_width']:.2f})" if c["slope_vs_width"] is not None else key)
    a1.set_xlabel("width (single head)")
    a1.set_ylabel("test MSE / target variance")
    a1.set_title("single-layer VAR transformer: error vs width")
    a1.legend(fontsize=7)
    lc = s["lipschitz_curve"]
    a2.semilogx(lc["lipschitz"], lc["test_relative_mse"], "-o")
    a2.set_xlabel("Lipschitz bound lambda of the random smooth map")
    a2.set_ylabel("test MSE / target variance")
    a2.set_title(f"error vs Lipschitz constant (width {lc['width']})")
    for variant, marker in (("var", "o"), ("flow", "^")):
        rs = [r for r in s["runs"] if r["variant"] == variant]
        a3.scatter([r["width"] for r in rs], [r["max_logit"] for r in rs], marker=marker, label=variant, alpha=0.7)
    a3.axhline(s["sqrt_log_L"], color="k", ls=":", label=f"sqrt(log L) = {s['sqrt_log_L']:.2f}")
    a3.axhline(s["log_L"], color="r", ls="--", label=f"log L = {s['log_L']:.2f}")
    a3.set_xscale("log")
    a3.set_xlabel("width")
    a3.set_ylabel("largest |logit| on test inputs")
    a3.set_title(f"attention logits of the fitted models (L = {s['num_tokens']})")
    a3.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict:
    p = base_parser(__doc__.splitlines()[0])
    p.add_argument("--schedule", type=int, nargs="+", default=[4, 6, 8], help="input side first, output side last")
    p.add_argument("--image-side", type=int, default=8, help="side the digits are loaded at")
    p.add_argument("--widths", type=int, nargs="+", default=[4, 8, 16, 32, 64])
    p.add_argument("--maps", nargs="+", default=["blur", "shift", "edge", "random"], choices=MAPS)
    p.add_argument("--flow-maps", nargs="+", default=["blur", "random"], choices=MAPS)
    p.add_argument("--flow-widths", type=int, nargs="+", default=[4, 16, 64])
    p.add_argument("--random-lipschitz", type=float, default=4.0, help="lambda of the random map in the width sweep")
    p.add_argument("--lipschitz", type=float, nargs="+", default=[1.0, 2.0, 4.0, 8.0, 16.0])
    p.add_argument("--lip-width", type=int, default=32)
    p.add_argument("--steps", type=int, default=400)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=1e-2)
    p.add_argument("--ffn-ratio", type=float, default=2.0)
    p.add_argument("--ckpt-dir", default=None, help="keep checkpoints here (a rerun then trains nothing)")
    args = p.parse_args(argv)
    if min(args.widths + args.flow_widths + [args.lip_width, args.steps, args.batch_size, args.image_side]) < 1:
        raise SystemExit("widths, --lip-width, --steps, --batch-size and --image-side must be >= 1")
    s = run(args)
    for key, c in s["width_curves"].items():
        print(f"{key:14s} test rel. MSE vs width {c['widths']}: {[round(x, 4) for x in c['test_relative_mse']]}")
    print(f"largest logit {s['logits']['max']:.2f} (median {s['logits']['median']:.2f}); sqrt(log L) = "
          f"{s['sqrt_log_L']:.2f}, log L = {s['log_L']:.2f}")
    print(f"wrote {args.out}/universality.json and .png ({s['seconds']:.0f} s)")
    return s


if __name__ == "__main__":
    main(sys.argv[1:])
