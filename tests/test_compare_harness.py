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
    assert {r["model"] for r in res["rows"]} == {"var", "flowar", "flowar-mlp"}
    for r in res["rows"]:
        for key in ("fid", "kid", "precision", "recall", "class_acc", "head_nfe", "backbone_forwards",
                    "flops_per_image", "ms_per_image"):
            assert _finite(r[key]), (r["sampler"], key, r[key])
        assert r["flops_per_image"] > 0 and r["head_nfe"] >= 1
        assert (out / r["grid"]).stat().st_size > 0
    assert _finite(res["floor"]["fid"]) and res["floor"]["test_class_acc"] > 0.5
    # the same backbone config (width, depth, heads) drives every arm; the FlowAR arms share it exactly
    m = res["models"]
    assert m["flowar"]["params_backbone"] == m["flowar-mlp"]["params_backbone"]
    assert m["flowar"]["schedule"] == m["flowar-mlp"]["schedule"] == [1, 2, 4, 8]
    assert m["var"]["schedule"] == [1, 2, 3, 4, 6, 8]
    assert m["flowar"]["checkpoints"][0] == m["flowar-mlp"]["checkpoints"][0]  # one autoencoder for both
    # fixed-step FlowAR NFE is exact: 1 per step, 2 where guided (scale k > 1 and t >= 0.1)
    for arm in ("flowar", "flowar-mlp"):
        nfe = {r["sampler"]: r for r in res["rows"] if r["model"] == arm}
        for label, steps in (("euler x2", 2), ("euler_maruyama x8", 8)):
            per_scale = [sum(2 if w > 0 and i / steps >= 0.1 else 1 for i in range(steps))
                         for w in nfe[label]["cfg_per_scale"]]
            assert nfe[label]["head_nfe_per_scale"] == per_scale, (arm, label)
            assert nfe[label]["head_nfe"] == sum(per_scale)
    assert res["versions"]["torch"] and res["seed"] == 0
    assert not any(m["reused_checkpoints"] for m in res["models"].values())

    main(["--quick", "--out", str(out), "--seed", "0"])
    again = json.loads((out / "results.json").read_text())
    assert all(m["reused_checkpoints"] for m in again["models"].values())
    assert again["rows"][0]["fid"] == pytest.approx(res["rows"][0]["fid"])  # same seed, same weights, same samples
