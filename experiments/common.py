"""Small helpers the experiment scripts share: output folder, JSON, thread count, a headless pyplot."""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
from pathlib import Path

import numpy as np
import torch

from nextscale.checkpoint import write_text
from nextscale.cli import out_folder


def base_parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--out", required=True, help="folder for the JSON and PNG outputs")
    p.add_argument("--quick", action="store_true", help="a small run (seconds), as used by the tests")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (1 makes timings comparable)")
    return p


def setup(args) -> Path:
    if args.seed < 0:
        raise SystemExit(f"--seed must be >= 0, got {args.seed}")
    if args.threads < 1:
        raise SystemExit(f"--threads must be >= 1, got {args.threads}")
    torch.set_num_threads(args.threads)
    try:  # the output folder checked and made before any work (nextscale.cli.out_folder)
        return out_folder(args.out)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None


def machine() -> dict:
    return {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "torch": torch.__version__, "threads": torch.get_num_threads(), "cpus": os.cpu_count()}


def _plain(x):
    if isinstance(x, dict):
        return {str(k): _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    if isinstance(x, (np.floating, np.integer)):
        x = x.item()
    if isinstance(x, torch.Tensor):
        return _plain(x.tolist())
    if isinstance(x, float) and not math.isfinite(x):
        return None  # JSON has no inf / nan
    return x


def write_json(path: Path, obj: dict) -> Path:
    write_text(path, json.dumps(_plain(obj), indent=2))
    return path


def pyplot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def loglog_slope(x, y) -> float:
    """Least-squares slope of log y against log x (the growth exponent)."""
    x, y = np.log(np.asarray(x, float)), np.log(np.asarray(y, float))
    return float(np.polyfit(x, y, 1)[0])


def crossing(x, y, level: float) -> float | None:
    """First x where y rises past ``level`` (log-linear interpolation between grid points); None if never."""
    for i in range(len(y)):
        if y[i] is None or y[i] > level:
            if i == 0:
                return float(x[0])
            if y[i] is None:
                return float(x[i])
            a, b = math.log(max(y[i - 1], 1e-300)), math.log(y[i])
            t = (math.log(level) - a) / (b - a) if b != a else 0.0
            return float(x[i - 1] + t * (x[i] - x[i - 1]))
    return None
