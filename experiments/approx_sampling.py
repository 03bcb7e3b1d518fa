"""Experiment (iii): VAR and FlowAR sampled with approximate attention swapped into a trained backbone.

Trains (or reuses) a tokenizer + VAR and an autoencoder + FlowAR on digits, measures the entry bound
of each trained backbone on real test inputs (``experiments.theory.entry_bound``), then for every
attention setting (exact, polynomial method, Performer) swaps it in with ``Backbone.set_attention``
and reports: the teacher-forced test loss, and for class-balanced seeded samples the wall time
(speedup vs exact), class accuracy and FID in the feature space of the comparison's domain
classifier, and the mean pixel change against the exact samples drawn with the same seed. A setting
whose normaliser cannot be made safe on the trained model's logit range is reported as failed,
with the reason (the polynomial method raises rather than return garbage).

    python -m experiments.approx_sampling --out runs/approx_sampling [--quick]
"""
from __future__ import annotations

import math
import re
import sys
import time
from pathlib import Path

import torch

from nextscale.backbone import BackboneConfig
from nextscale.data import load_digits
from nextscale.fastattn import ApproximationRefused, feature_rank
from nextscale.train import TrainConfig

from . import heads
from .common import base_parser, machine, pyplot, setup, write_json
from .theory import entry_bound


def settings(head_dim: int, quick: bool) -> dict[str, dict]:
    s = {"exact": {"kind": "exact"},
         f"poly-relative g=2 (r={feature_rank(head_dim, 2)})": {"kind": "poly", "degree": 2, "fit": "relative"},
         f"poly-taylor g=2 (r={feature_rank(head_dim, 2)})": {"kind": "poly", "degree": 2, "fit": "taylor"},
         "performer m=64": {"kind": "performer", "num_features": 64}}
    if not quick:
        s["performer m=256"] = {"kind": "performer", "num_features": 256}
    return s


def bound_summary(model, data, n: int, seed: int) -> dict:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        eb = entry_bound(model, data.x_test[:n], data.y_test[:n])
    d = eb.to_dict()
    d.pop("layers")
    try:
        d["degree_needed_1e-2"] = eb.degree_needed(1e-2)
        d["rank_needed_1e-2"] = feature_rank(eb.head_dim, d["degree_needed_1e-2"])
    except ValueError:
        d["degree_needed_1e-2"] = d["rank_needed_1e-2"] = None  # no degree <= MAX_DEGREE: past the threshold
    return d


def evaluate_setting(model, head: str, opts: dict, data, labels, classifier, real_feats, ref_images, args) -> dict:
    from compare.metrics.classifier import class_accuracy
    from compare.metrics.fid import fid_from_features

    model.backbone.set_attention(**opts)
    row: dict = {}
    try:
        row["test_loss"] = (heads.var_test_ce(model, data) if head == "var"
                            else heads.flowar_test_loss(model, data, args.seed))
        imgs, secs = [], 0.0
        for i, y in enumerate(torch.split(labels, args.sample_batch)):
            tic = time.perf_counter()
            out, _ = model.sample(y, seed=args.seed + i)
            secs += time.perf_counter() - tic
            imgs.append(out.float())
        imgs = torch.cat(imgs)
        row.update(seconds=secs, accuracy=class_accuracy(classifier, imgs, labels),
                   fid=fid_from_features(classifier.features(imgs).numpy(), real_feats))
        row["pixel_change_vs_exact"] = None if ref_images is None else float((imgs - ref_images).abs().mean())
        row["images"] = imgs
    except (FloatingPointError, ApproximationRefused) as e:  # the approximation's own refusals; bugs propagate
        row["failed"] = f"{type(e).__name__}: {e}"
    finally:
        model.backbone.set_attention("exact")
    return row


def run(args) -> dict:
    out = setup(args)
    ckpt_dir = Path(args.ckpt_dir) if args.ckpt_dir else out / "checkpoints"
    if args.quick:
        args.width, args.depth, args.heads, args.steps, args.aux_steps = 32, 1, 2, 20, 10
        args.samples_per_class, args.classifier_steps = 2, 30
    data = load_digits(side=16, seed=args.seed)
    bb = BackboneConfig(num_classes=data.num_classes, width=args.width, depth=args.depth, heads=args.heads)
    d = args.width // args.heads
    t0 = time.perf_counter()
    from compare.metrics.classifier import train_classifier

    classifier = train_classifier(data, seed=args.seed, cache_dir=ckpt_dir, steps=args.classifier_steps,
                                  device="cpu", progress=False)
    real_feats = classifier.features(data.x_test).numpy()
    tc = TrainConfig(steps=args.steps, batch_size=32, lr=1e-3, warmup_steps=min(50, args.steps), seed=args.seed,
                     progress=False)
    models = {"var": heads.train_var(data, bb, args.aux_steps, args.seed, tc, ckpt_dir),
              "flowar": heads.train_flowar(data, bb, args.aux_steps, args.seed, tc, ckpt_dir)}
    labels = torch.arange(data.num_classes).repeat_interleave(args.samples_per_class)
    results, images = {}, {}
    for head, model in models.items():
        res = {"entry_bound": bound_summary(model, data, 256, args.seed), "settings": {}}
        ref = None
        for name, opts in settings(d, args.quick).items():
            row = evaluate_setting(model, head, opts, data, labels, classifier, real_feats, ref, args)
            imgs = row.pop("images", None)
            if name == "exact":
                ref = imgs
            images[(head, name)] = imgs
            res["settings"][name] = row
            msg = row.get("failed") or (f"loss {row['test_loss']:.4f}, {row['seconds']:.2f} s, acc "
                                        f"{row['accuracy']:.3f}, FID {row['fid']:.2f}")
            print(f"{head:6s} {name:28s} {msg[:160]}", flush=True)
        ex = res["settings"]["exact"]
        for name, row in res["settings"].items():
            if "seconds" in row and "seconds" in ex:
                row["speedup"] = ex["seconds"] / row["seconds"]
                row["accuracy_change"] = row["accuracy"] - ex["accuracy"]
                row["fid_change"] = row["fid"] - ex["fid"]
        results[head] = res
    summary = {"backbone": {"width": args.width, "depth": args.depth, "heads": args.heads, "head_dim": d,
                            "schedule": bb.schedule, "L": bb.seq_len},
               "train_steps": args.steps, "samples": len(labels), "results": results,
               "seconds": time.perf_counter() - t0, "machine": machine(), "quick": args.quick, "seed": args.seed}
    write_json(out / "approx_sampling.json", summary)
    plot(summary, out / "approx_sampling.png")
    from nextscale.viz import save_grid

    for (head, name), imgs in images.items():
        if imgs is not None:  # one row per class
            slug = re.sub(r"[^\w.-]+", "_", name.split(" (")[0])
            save_grid(imgs, out / f"samples_{head}_{slug}.png", nrow=args.samples_per_class)
    return summary


def plot(s: dict, path):
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.3))
    names = list(s["results"]["var"]["settings"])
    colors = {n: f"C{i}" for i, n in enumerate(names)}
    for ax, metric in zip(axes, ("accuracy", "fid")):
        for head, marker in (("var", "o"), ("flowar", "^")):
            for name, row in s["results"][head]["settings"].items():
                if "speedup" in row:
                    ax.scatter(row["speedup"], row[metric], marker=marker, color=colors[name], s=40,
                               label=f"{head}: {name}")
        ax.legend(fontsize=6)
        ax.axvline(1.0, color="k", ls=":", lw=1)
        ax.set_xscale("log")
        ax.set_xlabel("sampling speedup vs exact attention")
        ax.set_ylabel("class accuracy of samples" if metric == "accuracy" else "FID (classifier features)")
    eb = {h: s["results"][h]["entry_bound"] for h in s["results"]}
    fig.suptitle("approximate attention in trained backbones (L={}, d={}); max logit VAR {:.1f}, FlowAR {:.1f}, "
                 "log L = {:.2f}".format(s["backbone"]["L"], s["backbone"]["head_dim"], eb["var"]["max_logit"],
                                         eb["flowar"]["max_logit"], math.log(s["backbone"]["L"])), fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict:
    p = base_parser(__doc__.splitlines()[0])
    p.add_argument("--width", type=int, default=64)
    p.add_argument("--depth", type=int, default=2)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--steps", type=int, default=500, help="VAR / FlowAR training steps")
    p.add_argument("--aux-steps", type=int, default=300, help="tokenizer / autoencoder training steps")
    p.add_argument("--classifier-steps", type=int, default=400)
    p.add_argument("--samples-per-class", type=int, default=20)
    p.add_argument("--sample-batch", type=int, default=100)
    p.add_argument("--ckpt-dir", default=None, help="checkpoints (default: OUT/checkpoints; a rerun reuses them)")
    args = p.parse_args(argv)
    if min(args.width, args.depth, args.heads, args.steps, args.aux_steps, args.classifier_steps,
           args.samples_per_class, args.sample_batch) < 1:
        raise SystemExit("sizes, steps and sample counts must be >= 1")
    if args.width % args.heads:
        raise SystemExit(f"--width ({args.width}) must be divisible by --heads ({args.heads})")
    s = run(args)
    for head, r in s["results"].items():
        eb = r["entry_bound"]
        print(f"{head}: entry bound B = {eb['B']:.2f}, max logit {eb['max_logit']:.2f} (log L = "
              f"{math.log(eb['num_tokens']):.2f}), degree needed for 1e-2: {eb['degree_needed_1e-2']}")
    print(f"wrote {args.out}/approx_sampling.json and .png ({s['seconds']:.0f} s)")
    return s


if __name__ == "__main__":
    main(sys.argv[1:])
