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


def best_row(rows: list[dict], model: str) -> dict:
    """The row of ``model`` with the lowest mean FID."""
    return min((r for r in rows if r["model"] == model), key=lambda r: r["fid"]["mean"])


def _pair(a: dict, b: dict, keys: tuple[str, ...]) -> dict:
    """Rows ``a`` and ``b`` named, and their ``keys`` differences (a - b) paired over seeds."""
    return {"a": {"model": a["model"], "sampler": a["sampler"]}, "b": {"model": b["model"], "sampler": b["sampler"]},
            **{f"{k}_diff": paired_difference(a[k]["values"], b[k]["values"]) for k in keys}}


def attribution(rows: list[dict], factors, total: tuple[str, str]) -> list[dict]:
    """The ``total`` difference (arm A - arm B) and each factor's (name, arm A, arm B) whose arms both ran:
    FID and recall differences paired over seeds, at each arm's best row and at matched cost (A's best row
    against B's row nearest it in ms/img, under ``"matched"``)."""
    ran = {r["model"] for r in rows}
    out = []
    for what, a, b in ((f"total: {total[0]} - {total[1]}", *total), *factors):
        if a in ran and b in ran:
            best_a = best_row(rows, a)
            out.append({"factor": what, **_pair(best_a, best_row(rows, b), ("fid", "recall")),
                        "matched": _pair(best_a, nearest_row(rows, b, best_a, "ms_per_image"), ("fid", "recall"))})
    return out


def nearest_row(rows: list[dict], model: str, to: dict, key: str) -> dict:
    """The row of ``model`` whose mean ``key`` is nearest (in ratio) to row ``to``'s."""
    mine = [r for r in rows if r["model"] == model]
    return min(mine, key=lambda r: abs(math.log(r[key]["mean"] / to[key]["mean"])))


def paired_comparisons(rows: list[dict], anchor: str) -> list[dict]:
    """FID, recall and ms/img differences, paired over seeds: every model's best row against every other
    model's best row, and the ``anchor`` model's best row against each other model's row nearest to it in
    head NFE and in ms/img."""
    models = list(dict.fromkeys(r["model"] for r in rows))
    best = {m: best_row(rows, m) for m in models}
    pairs = [("best vs best", best[a], best[b]) for i, a in enumerate(models) for b in models[i + 1:]]
    if anchor in best:
        v = best[anchor]
        for m in models:
            if m == anchor:
                continue
            near = {what: nearest_row(rows, m, v, key)
                    for key, what in (("head_nfe", "matched head NFE"), ("ms_per_image", "matched ms/img"))}
            if near["matched head NFE"] is near["matched ms/img"]:
                pairs.append(("matched head NFE and ms/img", v, near["matched head NFE"]))
            else:
                pairs += [(what, v, r) for what, r in near.items()]
    return [{"what": what, **_pair(a, b, ("fid", "recall", "ms_per_image"))} for what, a, b in pairs]
