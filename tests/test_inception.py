"""The FID InceptionV3: architecture, and loading a state dict with the standard key names (made here,
since the real weights are never downloaded)."""
import pytest
import torch
import torch.nn as nn

from compare.metrics.inception import FID_WEIGHTS_URL, InceptionV3FID, _avg_pool_3x3, load_inception
from nextscale.cost import count_params


def randomized(seed=0):
    """A model whose weights and BatchNorm statistics are random but keep activations alive."""
    torch.manual_seed(seed)
    m = InceptionV3FID()
    for mod in m.modules():
        if isinstance(mod, nn.Conv2d):
            nn.init.kaiming_normal_(mod.weight, nonlinearity="relu")
        elif isinstance(mod, nn.BatchNorm2d):
            mod.weight.uniform_(0.5, 1.5)
            mod.bias.normal_(0, 0.1)
            mod.running_mean.normal_(0, 0.1)
            mod.running_var.uniform_(0.5, 1.5)
    return m


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    model = randomized()
    path = tmp_path_factory.mktemp("inception") / "pt_inception-2015-12-05-6726825d.pth"
    # the standard file comes from an older torch: no BatchNorm step counters
    torch.save({k: v for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}, path)
    return model, path


def test_architecture_matches_the_standard_state_dict():
    m = InceptionV3FID()
    # torchvision's Inception3 without aux logits, with the FID file's 1008-way fc: 23,850,960 weights
    assert count_params(m) == 23_850_960
    sd = m.state_dict()
    assert sd["Conv2d_1a_3x3.conv.weight"].shape == (32, 3, 3, 3)
    assert sd["Mixed_6e.branch7x7dbl_5.conv.weight"].shape == (192, 192, 1, 7)
    assert sd["Mixed_7c.branch3x3dbl_3b.bn.running_var"].shape == (384,)
    assert sd["fc.weight"].shape == (1008, 2048)
    assert not any(k.startswith("AuxLogits") for k in sd)
    assert m.Mixed_7c.max_pool and not m.Mixed_7b.max_pool


def test_tf_average_pool_leaves_padding_out():
    out = _avg_pool_3x3(torch.ones(1, 1, 4, 4))
    assert torch.equal(out, torch.ones(1, 1, 4, 4))  # torch's default would give 4/9 in the corners


def test_load_and_features(saved):
    model, path = saved
    net = load_inception(path, device="cpu")
    assert net.dim == 2048 and net.name == "inception" and not net.training
    grey = torch.rand(3, 1, 16, 16, generator=torch.Generator().manual_seed(1)) * 2 - 1
    f = net.features(grey, batch_size=2)
    assert f.shape == (3, 2048) and f.dtype == torch.float32 and torch.isfinite(f).all()
    assert f.std() > 0 and (f[0] - f[1]).abs().max() > 0
    # the loaded weights are the saved ones; grey is repeated to RGB; batching changes nothing
    ref = model.features(grey.expand(-1, 3, -1, -1), batch_size=3)
    torch.testing.assert_close(f, ref, rtol=1e-4, atol=1e-5)


def test_missing_file_says_where_to_get_weights(tmp_path):
    with pytest.raises(FileNotFoundError, match="pytorch-fid/releases/download/fid_weights"):
        load_inception(tmp_path / "nothing.pth")


def test_mismatched_keys_raise_clear_error(saved, tmp_path):
    model, _ = saved
    sd = {k: v for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}
    missing = dict(sd)
    del missing["Mixed_6b.branch7x7_2.conv.weight"]
    renamed = {k.replace("Mixed_5b.", "Mixed5b."): v for k, v in sd.items()}
    imagenet_fc = {**sd, "fc.weight": torch.zeros(1000, 2048), "fc.bias": torch.zeros(1000)}
    cases = [(missing, "missing keys: Mixed_6b.branch7x7_2.conv.weight"),
             (renamed, "unexpected keys: Mixed5b."),
             (imagenet_fc, r"wrong shapes: fc.bias \(1000,\)")]
    for i, (state, msg) in enumerate(cases):
        p = tmp_path / f"bad{i}.pth"
        torch.save(state, p)
        with pytest.raises(ValueError, match=msg) as e:
            load_inception(p)
        assert FID_WEIGHTS_URL in str(e.value)
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a torch file")
    with pytest.raises(ValueError, match="cannot read"):
        load_inception(junk)


def test_bad_images_raise():
    net = InceptionV3FID()
    with pytest.raises(ValueError, match="1 or 3 channels"):
        net.features(torch.zeros(2, 2, 8, 8))
    with pytest.raises(ValueError, match=r"\[-1, 1\]"):
        net.features(torch.full((2, 3, 8, 8), 255.0))
