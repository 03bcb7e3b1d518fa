"""Spread over training seeds: means, 95% t-intervals and paired differences.

Every seed is one full repetition (train every arm, sample, score against the same real test set),
so per-seed values are independent draws and the interval of a mean is the Student t-interval
    mean +- t_{0.975, n-1} * std / sqrt(n)        (std with ddof = 1).
Two arms measured on the same seeds are compared by the paired differences d_i = a_i - b_i (same
seed index, same real set), whose t-interval says whether the difference is resolved (excludes 0).
With one seed there is no interval (half-width None).
"""
from __future__ import annotations

import math
from typing import Sequence

from scipy import stats as _st

LEVEL = 0.95


def t_interval(values: Sequence[float], level: float = LEVEL) -> dict:
    """{"mean", "std", "half", "lo", "hi", "n", "values"} of per-seed ``values`` (half None when n < 2)."""
    vals = [float(v) for v in values]
    if not vals:
        raise ValueError("t_interval needs at least one value, got none")
    if not all(math.isfinite(v) for v in vals):
        raise ValueError(f"t_interval needs finite values, got {vals}")
    n = len(vals)
    mean = sum(vals) / n
    if n < 2:
        return {"mean": mean, "std": 0.0, "half": None, "lo": None, "hi": None, "n": n, "values": vals}
    std = math.sqrt(sum((v - mean) ** 2 for v in vals) / (n - 1))
    half = float(_st.t.ppf(0.5 + level / 2, n - 1)) * std / math.sqrt(n)
    return {"mean": mean, "std": std, "half": half, "lo": mean - half, "hi": mean + half, "n": n, "values": vals}


def paired_difference(a: Sequence[float], b: Sequence[float], level: float = LEVEL) -> dict:
    """Interval of mean(a - b) over paired seeds; ``resolved`` when the interval excludes 0."""
    if len(a) != len(b):
        raise ValueError(f"paired values need the same seeds, got {len(a)} and {len(b)} values")
    d = t_interval([x - y for x, y in zip(a, b)], level)
    d["resolved"] = d["half"] is not None and (d["lo"] > 0 or d["hi"] < 0)
    return d


def fmt_interval(s: dict, digits: int = 3, scale: float = 1.0) -> str:
    """``mean ± half`` (or just the mean with one seed)."""
    def f(v):
        v = v * scale
        return f"{v:.{digits}g}" if abs(v) < 1e4 else f"{v:.3e}"
    return f(s["mean"]) if s["half"] is None else f"{f(s['mean'])} ± {f(s['half'])}"
