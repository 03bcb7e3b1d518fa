"""The comparison with the Inception and DINOv2 feature spaces, end to end on a tiny data set (its own file,
so pytest-xdist's per-file scheduling runs it beside the shared quick run)."""
import json
import math
from dataclasses import replace

import pytest

from compare.__main__ import main


def _finite(v):
    return isinstance(v, (int, float)) and math.isfinite(v)


@pytest.mark.slow
def test_inception_space_and_reference_statistics(tmp_path, capsys, monkeypatch):
    """--inception adds metrics in Inception pool3 space (weights of the right shapes made here: the real
    file cannot be fetched), --dinov2 in DINOv2's (a tiny ViT of the release's layout: FD-DINOv2); the
    reference statistics are written in pytorch-fid's format, and a run that brings them as
    --reference-stats gives the same Inception FID; bad files stop before training."""
    import numpy as np
    import torch

    from compare.metrics.inception import InceptionV3FID

    from nextscale.data import load_digits

    torch.manual_seed(0)
    weights = tmp_path / "inception.pth"
    torch.save(InceptionV3FID().state_dict(), weights)
    d = load_digits(side=16, seed=0)  # a small data set keeps the 299x299 Inception passes short on a CPU
    small = tmp_path / "small.npz"
    keep = d.y_train < 3
    np.savez(small, x=((d.x_train[keep][:50, 0] + 1) * 127.5).round().to(torch.uint8).numpy(),
             y=d.y_train[keep][:50].numpy())
    out = tmp_path / "inc"
    argv = ["--quick", "--seeds", "1", "--samples", "10", "--arms", "var", "--out", str(out), "--inception", str(weights),
            "--data", str(small)]
    for bad, msg in ((["--inception", str(tmp_path / "none.pth")], "error: inception: no InceptionV3 FID weights at"),
                     (["--reference-stats", str(tmp_path / "none.npz")], "error: no statistics file at")):
        with pytest.raises(SystemExit) as e:
            main(argv + bad)
        assert e.value.code == 2 and capsys.readouterr().err.strip().splitlines()[-1].startswith(msg)
        assert not (out / "checkpoints").exists()
    from compare.metrics import evaluate
    from compare.metrics.dinov2 import DINOv2, load_dinov2

    torch.save(DINOv2(dim=32, depth=2, heads=2, grid=4).state_dict(), tmp_path / "dinov2.pth")
    monkeypatch.setitem(evaluate.NETWORKS, "dinov2", replace(evaluate.NETWORKS["dinov2"], load=lambda path, device:
                        load_dinov2(path, device, dim=32, depth=2, heads=2, grid=4)))  # the ViT-L/14 file: 1.2 GB
    main(argv + ["--reference", "train", "--dinov2", str(tmp_path / "dinov2.pth")])
    res = json.loads((out / "results.json").read_text())
    assert [s["name"] for s in res["feature_spaces"]] == ["classifier", "inception", "dinov2"]
    for r in res["rows"]:
        assert all(_finite(r[f"{k}_dinov2"]["mean"]) for k in ("fid", "kid", "precision", "recall", "coverage"))
        assert _finite(r["is_inception"]["mean"]) and "is_dinov2" not in r
    assert res["config"]["reference"] == "train" and "train split" in res["feature_spaces"][1]["reference"]
    stats = out / f"reference_inception_train_{res['data']['fingerprint']}_{res['feature_spaces'][1]['weights']}.npz"
    with np.load(stats) as z:
        assert z["mu"].shape == (2048,) and z["sigma"].shape == (2048, 2048)
    for r in res["rows"]:
        for k in ("fid_inception", "kid_inception", "precision_inception", "recall_inception"):
            assert _finite(r[k]["mean"]), (r["sampler"], k)
    assert "FID (inception)" in (out / "report.md").read_text()
    main(argv + ["--reference", "train", "--reference-stats", str(stats)])
    again = json.loads((out / "results.json").read_text())
    for r, r2 in zip(res["rows"], again["rows"]):
        assert r2["fid_inception"]["mean"] == pytest.approx(r["fid_inception"]["mean"], rel=1e-6)
    per = again["feature_spaces"][1]["reference_per_metric"]  # the file feeds FID only
    assert per["fid"] == str(stats) and "train split" in per["kid"] and per["kid"] == per["precision_recall"]
    assert f"FID against {stats}, KID and precision/recall against train split" in (out / "report.md").read_text()
