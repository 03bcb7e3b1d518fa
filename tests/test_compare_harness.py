"""The main job end to end, in its reduced --quick form, and its checkpoint reuse."""
import json
import math

import pytest

from compare.__main__ import main, parse
from compare.harness import CompareConfig


def test_cli_validates_options():
    with pytest.raises(SystemExit):
        parse(["--samples", "1"])
    with pytest.raises(ValueError, match="samples"):
        CompareConfig(samples=0)
    assert parse(["--quick", "--seed", "3"]).quick and parse(["--quick", "--seed", "3"]).seed == 3


def _finite(v):
    return isinstance(v, (int, float)) and math.isfinite(v)


@pytest.mark.slow
def test_quick_run_writes_every_output_and_reuses_checkpoints(tmp_path):
    out = tmp_path / "cmp"
    main(["--quick", "--out", str(out), "--seed", "0"])
    res = json.loads((out / "results.json").read_text())
    for f in ("report.md", "fid_vs_nfe.png", "fid_vs_time.png", "per_scale_cost.png"):
        assert (out / f).stat().st_size > 0, f
    assert {r["model"] for r in res["rows"]} == {"var", "flowar"}
    for r in res["rows"]:
        for key in ("fid", "kid", "precision", "recall", "class_acc", "head_nfe", "backbone_forwards",
                    "flops_per_image", "ms_per_image"):
            assert _finite(r[key]), (r["sampler"], key, r[key])
        assert r["flops_per_image"] > 0 and r["head_nfe"] >= 1
        assert (out / r["grid"]).stat().st_size > 0
    assert _finite(res["floor"]["fid"]) and res["floor"]["test_class_acc"] > 0.5
    # the same backbone config drives both heads
    assert res["models"]["var"]["params_backbone"] == res["models"]["flowar"]["params_backbone"]
    # fixed-step FlowAR NFE is exact: euler x1 -> 1 per scale, rk4 x2 -> 8 per scale, x2 where guided
    nfe = {r["sampler"]: r for r in res["rows"] if r["model"] == "flowar"}
    guided = [2 if w > 0 else 1 for w in nfe["euler x1"]["cfg_per_scale"]]
    assert nfe["euler x1"]["head_nfe_per_scale"] == guided
    assert nfe["rk4 x2"]["head_nfe_per_scale"] == [8 * g for g in guided]
    assert nfe["rk4 x2"]["head_nfe"] == sum(nfe["rk4 x2"]["head_nfe_per_scale"])
    assert res["versions"]["torch"] and res["seed"] == 0
    assert not any(m["reused_checkpoints"] for m in res["models"].values())

    main(["--quick", "--out", str(out), "--seed", "0"])
    again = json.loads((out / "results.json").read_text())
    assert all(m["reused_checkpoints"] for m in again["models"].values())
    assert again["rows"][0]["fid"] == pytest.approx(res["rows"][0]["fid"])  # same seed, same weights, same samples
