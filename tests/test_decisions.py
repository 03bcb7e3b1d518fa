"""The functions that decide the comparison's answer, on hand-built tables with known answers: which row is
an arm's best, which row is nearest in cost, which pairs are compared and their paired intervals, the
attribution's factors, the cost frontier, precision/recall's orientation and how a sampler row is merged."""
from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from compare import arms
from compare.metrics.evaluate import FeatureSpace, Protocol, space_metrics
from compare.metrics.fid import gaussian_stats
from compare.report import pareto
from compare.stats import attribution, best_row, nearest_row, paired_comparisons


def row(model: str, sampler: str, fid, recall=(0.5, 0.5, 0.5), ms=(10.0, 10.0, 10.0), nfe=(10, 10, 10)) -> dict:
    def s(values):
        return {"mean": sum(values) / len(values), "values": list(values)}
    return {"model": model, "sampler": sampler, "fid": s(fid), "recall": s(recall), "ms_per_image": s(ms),
            "head_nfe": s(nfe)}


# var: best row "b" (FID 5); flowar: best row "y" (FID 4), and rows at other costs
TABLE = [
    row("var", "a", (9, 10, 11), ms=(4, 4, 4), nfe=(10, 10, 10)),
    row("var", "b", (4, 5, 6), recall=(0.6, 0.7, 0.8), ms=(8, 8, 8), nfe=(20, 20, 20)),
    row("var", "c", (7, 8, 9), ms=(30, 30, 30), nfe=(40, 40, 40)),
    row("flowar", "x", (20, 21, 22), ms=(3, 3, 3), nfe=(24, 24, 24)),
    row("flowar", "y", (3, 4, 5), recall=(0.5, 0.5, 0.8), ms=(40, 40, 40), nfe=(100, 100, 100)),
    row("flowar", "z", (6, 8, 10), ms=(18, 18, 18), nfe=(48, 48, 48)),
]


def test_best_row_is_the_lowest_mean_fid_of_that_model():
    assert best_row(TABLE, "var")["sampler"] == "b"
    assert best_row(TABLE, "flowar")["sampler"] == "y"


def test_nearest_row_is_nearest_in_ratio_not_in_difference():
    """From 8 ms: 3 ms is 5 away and 2.7x; 18 ms is 10 away and 2.25x: the ratio picks 18."""
    assert nearest_row(TABLE, "flowar", best_row(TABLE, "var"), "ms_per_image")["sampler"] == "z"
    assert nearest_row(TABLE, "var", TABLE[4], "head_nfe")["sampler"] == "c"  # 100 NFE: 40 is nearest


def test_paired_comparisons_pair_the_right_rows_with_known_intervals():
    out = paired_comparisons(TABLE, "var")
    assert [(c["what"], c["a"]["sampler"], c["b"]["sampler"]) for c in out] == [
        ("best vs best", "b", "y"), ("matched head NFE", "b", "x"), ("matched ms/img", "b", "z")]
    d = out[0]["fid_diff"]  # b - y per seed: 1, 1, 1
    assert (d["mean"], d["half"], d["resolved"]) == (1.0, 0.0, True)
    r = out[0]["recall_diff"]  # 0.1, 0.2, 0.0: mean 0.1, std 0.1, half t(0.975, 2) * 0.1 / sqrt(3)
    assert r["mean"] == pytest.approx(0.1) and r["half"] == pytest.approx(4.302653 * 0.1 / math.sqrt(3), rel=1e-6)
    assert not r["resolved"]
    m = out[2]["fid_diff"]  # b - z per seed: -2, -3, -4
    assert m["mean"] == pytest.approx(-3.0) and m["hi"] < 0 and m["resolved"]
    assert out[2]["ms_per_image_diff"]["mean"] == pytest.approx(-10.0)
    # one row nearest in both: a single pair named for both
    both = paired_comparisons([TABLE[1], row("flowar", "w", (1, 2, 3), ms=(8, 8, 8), nfe=(20, 20, 20))], "var")
    assert [c["what"] for c in both] == ["best vs best", "matched head NFE and ms/img"]


def test_attribution_runs_the_factors_whose_arms_ran_at_best_and_matched_cost():
    factors = [("head", "var", "flowar"), ("missing arm", "var", "nowhere")]
    out = attribution(TABLE, factors, ("var", "flowar"))
    assert [o["factor"] for o in out] == ["total: var - flowar", "head"]
    assert (out[0]["a"]["sampler"], out[0]["b"]["sampler"]) == ("b", "y")
    assert out[0]["fid_diff"]["mean"] == pytest.approx(1.0)             # var's best minus flowar's best
    assert out[0]["matched"]["b"]["sampler"] == "z"                      # flowar's row nearest var's best in ms
    assert out[0]["matched"]["fid_diff"]["mean"] == pytest.approx(-3.0)  # at matched cost var is better


def test_pareto_keeps_the_points_nothing_beats_in_both():
    pts = [(10, 5.0), (4, 9.0), (30, 4.0), (20, 6.0), (4, 10.0), (40, 4.0)]
    assert pareto(pts) == [(4, 9.0), (10, 5.0), (30, 4.0)]
    assert pareto([]) == []


def test_precision_is_fidelity_and_recall_is_coverage():
    """A mode-collapsed sample set (every sample near one real point): precision high, recall low."""
    g = torch.Generator().manual_seed(0)
    real = torch.randn(400, 8, generator=g, dtype=torch.float64)
    fake = real[0] + 0.05 * torch.randn(200, 8, generator=g, dtype=torch.float64)
    mu, sigma = gaussian_stats(real)
    space = FeatureSpace("classifier", SimpleNamespace(dim=8, class_logits=lambda f: None), real, mu, sigma, "w")
    out = space_metrics(space, fake, seed=0, protocol=Protocol())
    assert out["precision"] > 0.9 and out["recall"] < 0.1
    assert out["coverage"] < 0.1 and np.isfinite(out["fid"])


def test_a_row_keeps_its_own_settings_over_the_family_defaults():
    """sampler_rows starts each row from the family's defaults and lays the row's own keywords on top."""
    cfg = SimpleNamespace(samplers=None, quick=False, flowar_cfg=2.0)
    name = next(n for n, a in arms.ARMS.items() if a.family is arms.FLOWAR_FAMILY
                and any("cfg_scale" in kw for _, kw in a.samplers))
    own = {lbl: kw for lbl, kw in arms.ARMS[name].samplers}
    base = arms.FLOWAR_FAMILY.row_defaults(cfg)
    assert base["cfg_scale"] == 2.0
    for lbl, kw in arms.sampler_rows(name, cfg):
        assert kw == {**base, **own[lbl]}
        if "cfg_scale" in own[lbl]:
            assert kw["cfg_scale"] == own[lbl]["cfg_scale"]
    # a run's own sweep for the arm replaces the built-in one whole, defaults not added
    mine = SimpleNamespace(samplers={name: [("only", {"steps": 3})]}, quick=False, flowar_cfg=2.0)
    assert arms.sampler_rows(name, mine) == [("only", {"steps": 3})]
