"""Print, for each saved-file comparison, the largest difference seen under each CPU-kernel setting and its
tolerance (the margin), from the logs that ``NEXTSCALE_GOLDEN_LOG`` makes (see tests/golden.py).

    python tools/golden_margins.py default=A.tsv compatible=B.tsv avx2=C.tsv

``.ci/run`` writes these logs (the suite, then the saved-file tests under ``MKL_CBWR=COMPATIBLE
ATEN_CPU_CAPABILITY=default`` and ``MKL_CBWR=AVX2 ATEN_CPU_CAPABILITY=avx2``) and prints this table.
Differences are relative to the saved values' largest magnitude where it exceeds 1.
"""
from __future__ import annotations

import sys
from collections import defaultdict


def read(path: str) -> dict[str, tuple[float, float]]:
    """test -> (largest difference, tolerance) over that test's comparisons."""
    worst: dict[str, tuple[float, float]] = {}
    with open(path) as f:
        for line in f:
            test, diff, tol = line.rstrip("\n").split("\t")
            d, t = float(diff), float(tol)
            if test not in worst or d / t > worst[test][0] / worst[test][1]:
                worst[test] = (d, t)
    return worst


def main(argv: list[str]) -> None:
    if not argv or any("=" not in a for a in argv):
        sys.exit("usage: golden_margins.py NAME=LOG [NAME=LOG ...]")
    runs = {name: read(path) for name, path in (a.split("=", 1) for a in argv)}
    tests = sorted({t for r in runs.values() for t in r})
    table: dict[str, dict[str, tuple[float, float]]] = defaultdict(dict)
    for name, r in runs.items():
        for t, v in r.items():
            table[t][name] = v
    print("| test | " + " | ".join(runs) + " | tolerance | margin |")
    print("|---" * (len(runs) + 3) + "|")
    for t in tests:
        seen = table[t]
        worst = max(d for d, _ in seen.values())
        tol = min(tl for _, tl in seen.values())
        cells = [f"{seen[n][0]:.1e}" if n in seen else "-" for n in runs]
        margin = f"{tol / worst:.0e}x" if worst > 0 else "exact"
        print(f"| {t.split('::', 1)[-1]} | " + " | ".join(cells) + f" | {tol:.0e} | {margin} |")


if __name__ == "__main__":
    main(sys.argv[1:])
