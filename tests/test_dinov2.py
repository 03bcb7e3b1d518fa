"""compare.metrics.dinov2 equals DINOv2's released ViT (tests/data/dinov2_golden.pt, made by tools/dinov2_golden.py
from the release's code at a tiny size): same names, same outputs with the release's weights, on the
stored position grid and interpolated to another; the ViT-L/14 names and shapes; loading refusals."""
import pytest
import torch

from compare.metrics.dinov2 import VIT_L14, DINOv2, load_dinov2
from golden import close, fixture


@pytest.fixture(scope="module")
def golden():
    return fixture("dinov2_golden")


def tiny(golden) -> DINOv2:
    c = golden["config"]
    m = DINOv2(dim=c["embed_dim"], depth=c["depth"], heads=c["num_heads"], patch=c["patch_size"],
               grid=c["img_size"] // c["patch_size"])
    m.load_state_dict(golden["state"])  # strict: the release's names, every one
    return m


@pytest.mark.parametrize("side", [56, 112])
def test_equals_the_release_with_its_weights(golden, side):
    """At 56 px the stored 4 x 4 position grid is used as is; at 112 it is interpolated to 8 x 8 (the
    release's bicubic with its 0.1 offset). Both in float64, but for that interpolation, which the release
    (and so ours) computes in float32 whatever the model's dtype: there 1e-5, else float64's tolerance."""
    m = tiny(golden).double()
    with torch.no_grad():
        out = m.tokens_to_features(golden["inputs"][side].double())
    if side == 56:
        close(out, golden["outputs"][side])
    else:
        close(out, golden["outputs"][side], 1e-5, float32="the release interpolates its position grid in float32")


def test_vit_l14_has_the_release_names_and_shapes(golden):
    """Every name and shape of the release's dinov2_vitl14 (so its pretrained file loads strictly)."""
    with torch.device("meta"):
        m = DINOv2(**VIT_L14)
    assert {k: list(v.shape) for k, v in m.state_dict().items()} == golden["vitl14_shapes"]


def test_features_take_images_in_minus_one_one(golden, tmp_path):
    path = tmp_path / "w.pth"
    torch.save(golden["state"], path)
    c = golden["config"]
    m = load_dinov2(path, "cpu", dim=c["embed_dim"], depth=c["depth"], heads=c["num_heads"], grid=4)
    x = torch.rand(3, 1, 16, 16) * 2 - 1
    f = m.features(x)
    assert f.shape == (3, 32) and torch.isfinite(f).all()
    rgb = torch.nn.functional.interpolate((x.expand(-1, 3, -1, -1) + 1) / 2, size=(224, 224), mode="bicubic",
                                          antialias=True)
    mean, std = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1), torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    close(f, m.tokens_to_features((rgb - mean) / std), 1e-6)  # in-process: the same maths, other batching


def test_bad_weight_files_are_refused_naming_them(golden, tmp_path):
    with pytest.raises(ValueError, match="no DINOv2 weights at .*dinov2_vitl14_pretrain.pth"):
        load_dinov2(tmp_path / "missing.pth")
    bad = dict(golden["state"])
    bad["blocks.1.ls1.gamma"] = bad["blocks.1.ls1.gamma"].clone().fill_(float("nan"))
    torch.save(bad, tmp_path / "nan.pth")
    with pytest.raises(ValueError, match=r"nan\.pth holds NaN/inf weights in 1 tensor\(s\), e\.g\. blocks\.1\.ls1\.gamma"):
        load_dinov2(tmp_path / "nan.pth", dim=32, depth=2, heads=2, grid=4)
    with pytest.raises(ValueError, match=r"does not match the DINOv2 ViT state dict; wrong shapes: pos_embed"):
        load_dinov2(tmp_path / "nan.pth", dim=32, depth=2, heads=2, grid=5)
