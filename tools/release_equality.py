"""How far this project is from the saved outputs of the releases (and of its own earlier backbone), under
three CPU kernels' rounding, and the parameter counts of the released sizes as loaded here.

    python tools/release_equality.py                    # runs the saved-file tests three times (~1.5 min)
    python tools/release_equality.py --logs default=A.tsv compatible=B.tsv avx2=C.tsv   # tables from logs

It runs ``pytest -m golden`` (every test that reads ``tests/data/``) with ``NEXTSCALE_GOLDEN_LOG`` set
(``tests/golden.py`` logs each comparison) under the default kernels, ``MKL_CBWR=COMPATIBLE
ATEN_CPU_CAPABILITY=default`` and ``MKL_CBWR=AVX2 ATEN_CPU_CAPABILITY=avx2``, and prints per test the
largest difference seen under each (relative to the saved values' largest magnitude where it exceeds 1),
its tolerance and the margin. ``.ci/run`` makes the same logs and prints the table with ``--logs``.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
KERNELS = {"default": {}, "compatible": {"MKL_CBWR": "COMPATIBLE", "ATEN_CPU_CAPABILITY": "default"},
           "avx2": {"MKL_CBWR": "AVX2", "ATEN_CPU_CAPABILITY": "avx2"}}


def read(path: str) -> dict[str, tuple[float, float]]:
    """test -> (largest difference, its tolerance), the comparison nearest its tolerance."""
    worst: dict[str, tuple[float, float]] = {}
    for line in Path(path).read_text().splitlines():
        test, diff, tol = line.split("\t")
        d, t = float(diff), float(tol)
        if test not in worst or d / t > worst[test][0] / worst[test][1]:
            worst[test] = (d, t)
    return worst


def margins(runs: dict[str, dict[str, tuple[float, float]]]) -> list[str]:
    """The Markdown table: one row per test, its largest difference per kernel setting, tolerance, margin."""
    lines = ["| test | " + " | ".join(runs) + " | tolerance | margin |", "|---" * (len(runs) + 3) + "|"]
    for test in sorted({t for r in runs.values() for t in r}):
        seen = {n: r[test] for n, r in runs.items() if test in r}
        worst, tol = max(d for d, _ in seen.values()), min(t for _, t in seen.values())
        cells = [f"{seen[n][0]:.1e}" if n in seen else "-" for n in runs]
        name = test.split("::", 1)[-1] if "::" in test else test
        lines.append(f"| {Path(test.split('::')[0]).stem}::{name} | " + " | ".join(cells) +
                     f" | {tol:.0e} | {'exact' if worst == 0 else f'{tol / worst:.0e}x'} |")
    return lines


def run_logs(folder: Path) -> dict[str, str]:
    """Run the saved-file tests under each kernel setting; the log of each."""
    logs = {}
    for name, env in KERNELS.items():
        logs[name] = str(folder / f"{name}.tsv")
        cmd = [sys.executable, "-m", "pytest", "-q", "-m", "golden", "-p", "no:cacheprovider"]
        done = subprocess.run(cmd, cwd=ROOT, env={**os.environ, **env, "NEXTSCALE_GOLDEN_LOG": logs[name]},
                              capture_output=True, text=True)
        print(f"{name}: {done.stdout.strip().splitlines()[-1] if done.stdout.strip() else done.stderr[-300:]}")
        if done.returncode:
            sys.exit(f"error: the saved-file tests failed under {name} kernels")
    return logs


@torch.no_grad()
def size_rows() -> list[str]:
    """The real sizes, built on the meta device from the releases' key/shape listings (tools/release_shapes.py)."""
    sys.path.insert(0, str(ROOT / "tests"))
    from test_release_shapes import meta_state, params
    from flowar.release import from_release_states as flowar_from
    from var.release import from_release_states as var_from
    out = []
    for depth in (16, 20, 24, 30):
        vae, var = meta_state("vae"), meta_state(f"var_d{depth}")  # RoPE buffers real: outside the meta device
        with torch.device("meta"):
            m = var_from(vae, var)
        out.append(f"VAR-d{depth} {params(m, 'tokenizer.') / 1e6:.1f}M")
    out.append(f"its VQVAE {params(m.tokenizer) / 1e6:.1f}M")
    for size in "SLH":
        fl, vae = meta_state(f"flowar_{size}"), meta_state("kl16")
        with torch.device("meta"):
            m = flowar_from(fl, vae)
        out.append(f"FlowAR-{size} {params(m, 'ae.') / 1e6:.1f}M")
    return out + [f"MAR's KL-16 {params(m.ae) / 1e6:.1f}M"]


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--logs", nargs="+", metavar="NAME=LOG", help="print the tables from these logs, run nothing")
    a = p.parse_args(argv)
    if a.logs and any("=" not in s for s in a.logs):
        p.error("--logs takes NAME=LOG pairs")
    with tempfile.TemporaryDirectory() as tmp:
        logs = dict(s.split("=", 1) for s in a.logs) if a.logs else run_logs(Path(tmp))
        print("\n".join(margins({n: read(f) for n, f in logs.items()})))
    print("\nParameters as loaded here (VAE apart): " + ", ".join(size_rows()))


if __name__ == "__main__":
    main()
