"""``python -m compare``: train VAR, FlowAR and FlowAR with an MLP head on the same backbone config and data,
over several training seeds, and write the report (means with 95% intervals, paired differences)."""
from __future__ import annotations

import argparse
import sys

from nextscale.cli import run_or_exit

from .harness import ARMS, CompareConfig, run


def parse(argv=None) -> CompareConfig:
    d = CompareConfig()
    p = argparse.ArgumentParser(prog="python -m compare", description=__doc__)
    p.add_argument("--data", default=d.dataset, help="'digits' (embedded default), an .npz file or an image folder")
    p.add_argument("--out", default=d.out, help="output folder (results.json, report.md, plots, checkpoints)")
    p.add_argument("--seed", type=int, default=d.seed, help="first training seed (seed i is seed + i)")
    p.add_argument("--seeds", type=int, default=None,
                   help=f"training seeds per arm (default {d.seeds}; --quick: 2)")
    p.add_argument("--split-seed", type=int, default=d.split_seed,
                   help="seed of the train/test split and of the feature network (the same for every seed)")
    p.add_argument("--arms", default=",".join(d.arms),
                   help="comma-separated arms to train and compare, from " + ", ".join(ARMS) + f" (default: %(default)s)")
    p.add_argument("--head-width", type=int, default=None,
                   help="width of the FlowAR arms' velocity heads (default: the backbone's; smaller matches parameters)")
    p.add_argument("--samples", type=int, default=None, help=f"samples per model and sampler (default {d.samples})")
    p.add_argument("--steps", type=int, default=None,
                   help=f"training steps of each generator (default {d.var_steps}); autoencoders get half")
    p.add_argument("--side", type=int, default=None, help="image side to resize to")
    p.add_argument("--inception", default=None, metavar="PATH",
                   help="pytorch-fid's InceptionV3 weights (pt_inception-2015-12-05-6726825d.pth): adds FID/KID/"
                        "precision/recall in Inception pool3 space beside the classifier's (default: off)")
    p.add_argument("--reference", default=d.reference, choices=("test", "train"),
                   help="real split the samples are scored against (default: %(default)s; CIFAR-10 papers use train)")
    p.add_argument("--reference-stats", default=None, metavar="NPZ",
                   help="precomputed Inception statistics (.npz with mu, sigma, pytorch-fid's format) for the "
                        "Inception FID (default: computed from the reference split and written to --out)")
    p.add_argument("--precision", default=d.precision, choices=("fp32", "bf16"),
                   help="bf16: autocast for sampling and feature extraction, metrics in float32 (default: %(default)s)")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile the backbone step and the head for sampling (slow to start; default: off)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: CUDA when available)")
    p.add_argument("--quick", action="store_true", help="the reduced run the tests use (< 3 minutes on 2 cores)")
    a = p.parse_args(argv)
    kw = dict(dataset=a.data, out=a.out, seed=a.seed, split_seed=a.split_seed, side=a.side, device=a.device,
              head_width=a.head_width, inception=a.inception, reference=a.reference,
              reference_stats=a.reference_stats, precision=a.precision, compile=a.compile, arms=tuple(x.strip() for x in a.arms.split(",") if x.strip()))
    if a.seeds is not None:
        kw["seeds"] = a.seeds
    if a.samples is not None:
        kw["samples"] = a.samples
    if a.steps is not None:
        kw.update(var_steps=a.steps, flowar_steps=a.steps, tokenizer_steps=max(1, a.steps // 2),
                  ae_steps=max(1, a.steps // 2))
    return run_or_exit(lambda: CompareConfig.quick_config(**kw) if a.quick else CompareConfig(**kw))


def main(argv=None) -> None:
    cfg = parse(argv)
    res = run_or_exit(run, cfg)  # bad data or options are found before any training (see harness.run)
    from .report import main_table
    print(main_table(res))
    print(f"\nreport: {cfg.out}/report.md  ({res['timings_s']['total']:.0f} s)", file=sys.stderr)


if __name__ == "__main__":
    main()
