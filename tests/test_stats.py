"""compare.stats: t-intervals over seeds and paired differences."""
import math

import pytest
from scipy import stats

from compare.stats import fmt_interval, paired_difference, t_interval


def test_t_interval_matches_the_t_formula():
    vals = [1.0, 2.0, 4.0, 7.0]
    s = t_interval(vals)
    mean, sd = sum(vals) / 4, math.sqrt(sum((v - 3.5) ** 2 for v in vals) / 3)
    assert s["mean"] == pytest.approx(mean) and s["std"] == pytest.approx(sd)
    assert s["half"] == pytest.approx(stats.t.ppf(0.975, 3) * sd / 2)   # t_{0.975, 3} = 3.182
    assert s["half"] == pytest.approx(3.1824 * sd / 2, rel=1e-4)
    assert s["lo"] == pytest.approx(mean - s["half"]) and s["hi"] == pytest.approx(mean + s["half"])


def test_t_interval_covers_the_true_mean_95_percent_of_the_time():
    import random
    rng = random.Random(0)
    hits = 0
    for _ in range(4000):
        s = t_interval([rng.gauss(5.0, 2.0) for _ in range(3)])
        hits += s["lo"] <= 5.0 <= s["hi"]
    assert 0.935 < hits / 4000 < 0.965


def test_constant_metric_has_zero_width_and_one_seed_has_none():
    s = t_interval([0.3, 0.3, 0.3])
    assert s["std"] == 0 and s["half"] == 0
    one = t_interval([0.7])
    assert one["half"] is None and one["mean"] == 0.7 and fmt_interval(one) == "0.7"
    with pytest.raises(ValueError, match="at least one"):
        t_interval([])
    with pytest.raises(ValueError, match="finite"):
        t_interval([1.0, float("nan")])


def test_paired_difference():
    a = [2.0, 3.5, 1.0]
    same = paired_difference(a, a)
    assert same["mean"] == 0 and same["half"] == 0 and not same["resolved"]
    shifted = paired_difference([v + 0.5 for v in a], a)   # a shifted copy: exactly the shift, resolved
    assert shifted["mean"] == pytest.approx(0.5) and shifted["half"] == pytest.approx(0, abs=1e-12)
    assert shifted["resolved"]
    noisy = paired_difference([1.0, 2.0, 3.0], [1.5, 1.0, 3.2])   # mean 0.1, spread straddles 0
    assert noisy["lo"] < 0 < noisy["hi"] and not noisy["resolved"]
    # pairing removes what the seeds share: unpaired intervals overlap, the paired one resolves
    base = [10.0, 14.0, 6.0]
    paired = paired_difference([b + 1.0 + e for b, e in zip(base, (0.1, -0.1, 0.0))], base)
    assert paired["resolved"] and paired["lo"] > 0
    with pytest.raises(ValueError, match="same seeds"):
        paired_difference([1.0], [1.0, 2.0])
    assert fmt_interval(noisy).startswith("0.1 ± ")
