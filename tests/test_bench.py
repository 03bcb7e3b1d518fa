"""compare.bench --quick: runs, prints a table, every number finite (no time is asserted)."""
import math

import pytest

from compare.bench import main


def _finite(v):
    return isinstance(v, (int, float)) and math.isfinite(v) and v > 0


@pytest.mark.slow  # 10 s: the bench's --quick run
def test_bench_quick_prints_finite_numbers(capsys):
    rows = main(["--quick", "--repeats", "1", "--batch", "8"])
    assert [r["arm"] for r in rows] == ["var", "flowar", "flowar-mlp"]
    for r in rows:
        for key in ("forward_ms", "sample_ms", "ratio", "forward_x2_ms", "sample_cfg_ms", "ratio_cfg",
                    "ratio_no_decode", "decode_ms", "backbone_ms", "steps_ms", "steps_ratio", "steps_ratio_cfg",
                    "rest_ms", "head_share", "head_share_cfg", "train_img_per_s"):
            assert _finite(r[key]), (r["arm"], key, r[key])
        assert all(_finite(v) for v in r["ms_per_img"].values()) and set(r["ms_per_img"]) == {1, 50, 256}
        assert 0 < r["head_share"] < 1
        assert r["steps_ms"] < r["sample_ms"]  # the steps are inside every sampling call: so is their median
    for r in rows[1:]:
        assert _finite(r["head_eval_in_sampling_ms"]) and _finite(r["head_eval_alone_ms"])
    out = capsys.readouterr().out
    assert out.count("\n| ") >= 3 and "ratio" in out


def test_bench_measures_only_the_arms_asked_for(capsys):
    rows = main(["--quick", "--repeats", "1", "--batch", "4", "--arms", "var"])
    assert [r["arm"] for r in rows] == ["var"] and _finite(rows[0]["ratio"])
    assert capsys.readouterr().out.count("\n| var ") == 1


def test_call_timer_counts_calls_and_restores_the_method():
    import torch

    from compare.bench import CallTimer
    lin = torch.nn.Linear(2, 2)
    timer = CallTimer(lin, "forward", torch.device("cpu"))
    with timer.active():
        lin(torch.zeros(1, 2))
        lin(torch.zeros(1, 2))
    assert timer.calls == 2 and timer.seconds > 0
    assert "forward" not in vars(lin)  # the class's method again, not an instance attribute
    with timer.active():
        pass
    assert timer.calls == 0  # reset on entry
