import json
import math

import pytest
import torch

from nextscale.backbone import BackboneConfig
from nextscale.data import load_digits
from nextscale.train import TrainConfig
from var.__main__ import main
from var.pipeline import default_configs, measure, train_tokenizer
from var.tokenizer import MultiScaleVQVAE


def test_default_configs(digits):
    vq, var = default_configs(digits)
    assert vq.latent_side == 8 and vq.ae.down == 1 and vq.schedule == var.backbone.schedule == (1, 2, 3, 4, 6, 8)
    assert vq.latent_channels == var.backbone.in_dim and vq.vocab_size == var.vocab_size
    vq, var = default_configs(digits, BackboneConfig(schedule=(1, 2, 4), in_dim=3), vocab_size=64)
    assert vq.ae.down == 2 and vq.latent_channels == 3 and var.vocab_size == 64
    with pytest.raises(ValueError, match="num_classes"):
        default_configs(digits, BackboneConfig(num_classes=7))
    with pytest.raises(ValueError, match="last side"):
        default_configs(digits, BackboneConfig(schedule=(1, 2, 3, 5)))


def test_trained_tokenizer_beats_the_mean_image():
    """100 steps of tokenizer training reconstruct the test split to below half the MSE of predicting the
    mean image (its per-pixel variance, 0.29 on 8x8 digits): the untrained tokenizer (0.70) and a decoder
    that outputs 0 (E[x^2] = 0.72) are far above it; trained, 0.09 here (60 steps reach the bound itself)."""
    d = load_digits(side=8, seed=0)
    bb = BackboneConfig(schedule=(1, 2, 4), in_dim=4, num_classes=10, width=32, depth=1, heads=2)
    vq, _ = default_configs(d, bb, vocab_size=64)
    bound = 0.5 * float((d.x_test - d.x_test.mean(0)).pow(2).mean())
    torch.manual_seed(0)
    assert measure(MultiScaleVQVAE(vq).eval(), None, d.x_test, d.y_test)["recon_mse"] > bound
    tok = train_tokenizer(d, vq, TrainConfig(steps=100, batch_size=64, lr=2e-3, warmup_steps=5, progress=False))
    assert measure(tok, None, d.x_test, d.y_test)["recon_mse"] < bound


@pytest.mark.slow  # ~20 s: two runs of the command, each evaluating on the whole data set
def test_command_end_to_end_and_checkpoint_reuse(tmp_path):
    args = ["--out", str(tmp_path), "--steps", "4", "--tokenizer-steps", "4", "--batch-size", "16",
            "--per-class", "2", "--width", "32", "--depth", "1", "--heads", "2", "--vocab-size", "64"]
    m1 = main(args)
    files = {p.name for p in tmp_path.iterdir()}
    assert {"checkpoints", "samples.png", "metrics.json"} <= files
    cks = [tmp_path / m1["files"]["tokenizer"], tmp_path / m1["files"]["var"]]
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert len(saved["var"]["ce_train_per_scale"]) == len(saved["var"]["ce_test_per_scale"]) == 6
    t = saved["tokenizer"]
    # 4 tokenizer steps reconstruct nothing yet: the quality bound is test_trained_tokenizer_beats_the_mean_image
    assert math.isfinite(t["recon_mse_test"]) and 0 < t["codebook_usage_train"] <= 1 and t["perplexity_train"] >= 1
    assert saved["sampling"]["num_images"] == 20 and saved["sampling"]["head_nfe"] == 12
    stamps = [c.stat().st_mtime_ns for c in cks]
    m2 = main(args)  # reuses both checkpoints: nothing retrained, same numbers, same samples
    assert [c.stat().st_mtime_ns for c in cks] == stamps
    assert m2["var"] == m1["var"] and m2["tokenizer"] == m1["tokenizer"]
    # more tokenizer steps: a new tokenizer, and a new VAR on it (its key names the tokenizer it was trained on)
    m3 = main(args + ["--tokenizer-steps", "8"])
    assert m3["files"]["tokenizer"] != m1["files"]["tokenizer"] and m3["files"]["var"] != m1["files"]["var"]
    assert m3["tokenizer"]["recon_mse_test"] != m1["tokenizer"]["recon_mse_test"]
    assert [c.stat().st_mtime_ns for c in cks] == stamps  # the old files are untouched
