"""FID's small-sample bias where users read it: FID between two independent samples of ONE distribution
(its true value is 0), at several n, and FID_inf from the same samples (Chong and Forsyth 2020).

    python tools/fid_bias.py [--dim 2048] [--n 500,1000,2000,5000] [--seed 0]

The distribution is a white Gaussian N(0, I) in ``--dim`` dimensions: every direction carries as much
variance as the largest, the worst case for the covariance term. Inception features have a decaying
spectrum, so their bias at the same n is smaller, but it falls the same way, like 1/n.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from compare.metrics.fid import fid_from_features, fid_infinity, gaussian_stats  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dim", type=int, default=2048)
    p.add_argument("--n", default="500,1000,2000,5000", help="comma-separated sample sizes")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    rng = np.random.default_rng(a.seed)
    print(f"two samples of N(0, I), {a.dim}-d (true FID 0)\n\n| n | FID | FID_inf |\n|---|---|---|")
    for n in (int(x) for x in a.n.split(",")):
        x, y = rng.normal(size=(n, a.dim)), rng.normal(size=(n, a.dim))
        print(f"| {n} | {fid_from_features(x, y):.1f} | {fid_infinity(*gaussian_stats(x), y, seed=a.seed):.1f} |",
              flush=True)


if __name__ == "__main__":
    main()
