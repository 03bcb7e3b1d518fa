"""The single-head, single-layer VAR transformer of the universality theorem, its flow variant and the target maps."""
import math

import pytest
import torch

from nextscale.data import load_digits
from nextscale.train import TrainConfig, train
from experiments.universal_model import (MAPS, FitConfig, LipschitzMap, MapConfig, MapFit, UniversalConfig,
                                    UniversalFlowAR, UniversalVAR, pyramid_up)


@pytest.fixture(scope="module")
def digits():
    return load_digits(side=8, seed=0)


def test_config_validation():
    with pytest.raises(ValueError, match="width"):
        UniversalConfig(width=0)
    with pytest.raises(ValueError, match="at least two sides"):
        UniversalConfig(schedule=(8,))
    with pytest.raises(ValueError, match="increasing"):
        UniversalConfig(schedule=(8, 4))
    with pytest.raises(ValueError, match="upsample"):
        UniversalConfig(upsample="nearest")
    with pytest.raises(ValueError, match="name"):
        MapConfig(name="rotate")
    with pytest.raises(ValueError, match="lipschitz"):
        MapConfig(name="random", lipschitz=0)
    with pytest.raises(ValueError, match="must match"):
        FitConfig(UniversalConfig(schedule=(4, 8)), MapConfig(in_side=4, out_side=16))
    with pytest.raises(ValueError, match="UniversalFlowAR"):
        UniversalVAR(UniversalConfig(flow=True))
    with pytest.raises(ValueError, match="UniversalVAR"):
        UniversalFlowAR(UniversalConfig(flow=False))
    with pytest.raises(ValueError, match="shape"):
        UniversalVAR().predict(torch.zeros(2, 1, 8, 8))


def test_interpolation_layer_is_fixed_and_linear():
    sch = (4, 6, 8)
    x, y = torch.randn(2, 3, 1, 4, 4).unbind(0)
    up = pyramid_up(x, sch)
    assert up.shape == (3, 16 + 36 + 64, 1)
    torch.testing.assert_close(pyramid_up(2 * x - 3 * y, sch), 2 * up - 3 * pyramid_up(y, sch), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(up[:, :16, 0], x.flatten(1))  # the first scale is the input itself


def test_model_has_the_theorem_shape():
    m = UniversalVAR(UniversalConfig(width=12))
    attn = [n for n, mod in m.named_modules() if n.split(".")[-1] in ("q", "k", "v", "o")]
    assert sorted(attn) == ["trunk.k", "trunk.o", "trunk.q", "trunk.v"]       # one attention layer
    assert m.trunk.q.out_features == 12                                          # one head of the full width
    assert m.trunk.pos_emb.shape == (1, 116, 12) and m.trunk.level_emb.num_embeddings == 3
    out = m.predict(torch.randn(5, 1, 4, 4))
    assert out.shape == (5, 1, 8, 8)
    # position embeddings make the map position-aware: permuting the input pixels does not permute the output
    x = torch.randn(1, 1, 4, 4)
    with torch.no_grad():
        a, b = m.predict(x), m.predict(x.flip(-1))
    assert not torch.allclose(a.flip(-1), b, atol=1e-4)


def test_logit_stats_match_a_direct_computation():
    torch.manual_seed(0)
    m = UniversalVAR(UniversalConfig(width=8))
    x = torch.randn(3, 1, 4, 4)
    st = m.trunk.logit_stats(x)
    with torch.no_grad():
        _, q, k = m.trunk.qk(x)
    assert st["max_logit"] == pytest.approx(float((q @ k.transpose(1, 2)).abs().max() / math.sqrt(8)), rel=1e-5)
    assert st["sqrt_log_L"] == pytest.approx(math.sqrt(math.log(116)))


@pytest.mark.parametrize("name", MAPS)
def test_maps_respect_their_lipschitz_bound(name, digits):
    f = LipschitzMap(MapConfig(name=name, lipschitz=3.0))
    x = torch.nn.functional.interpolate(digits.x_test[:64], size=(4, 4), mode="area")
    x2 = x + 0.3 * torch.randn_like(x)
    ratio = (f(x) - f(x2)).flatten(1).norm(dim=1) / (x - x2).flatten(1).norm(dim=1)
    bound = f.lipschitz_bound()
    assert 0 < float(ratio.max()) <= bound * (1 + 1e-4)
    if name in ("blur", "shift", "flip", "center"):
        torch.testing.assert_close(f(2.5 * x), 2.5 * f(x), atol=1e-5, rtol=1e-5)  # linear maps


def test_random_map_gets_rougher_with_lambda(digits):
    x = torch.nn.functional.interpolate(digits.x_test[:64], size=(4, 4), mode="area")
    x2 = x + 0.05 * torch.randn_like(x)
    ratios = []
    for lip in (0.5, 2.0, 8.0):
        f = LipschitzMap(MapConfig(name="random", lipschitz=lip, seed=1))
        ratios.append(float(((f(x) - f(x2)).flatten(1).norm(dim=1) / (x - x2).flatten(1).norm(dim=1)).mean()))
        assert ratios[-1] <= lip
    assert ratios[0] < ratios[1] < ratios[2]


def test_fitting_through_the_shared_loop_learns_and_reuses_checkpoints(digits, tmp_path):
    cfg = FitConfig(UniversalConfig(width=16, ffn_ratio=2.0), MapConfig(name="blur"))
    torch.manual_seed(0)
    model = MapFit(cfg)
    before = model.evaluate(digits.x_test)["relative_mse"]
    tc = TrainConfig(steps=80, batch_size=32, lr=1e-2, warmup_steps=10, weight_decay=0.0, progress=False)
    res = train(model, digits.x_train, digits.y_train, tc, ckpt_path=tmp_path / "fit.pt")
    after = model.evaluate(digits.x_test)
    assert res.steps_run == 80
    assert after["relative_mse"] < 0.25 * before and after["relative_mse"] < 0.5
    assert after["max_logit"] > 0 and after["B"] > 0
    torch.manual_seed(1)
    again = MapFit(cfg)
    res2 = train(again, digits.x_train, digits.y_train, tc, ckpt_path=tmp_path / "fit.pt")
    assert res2.steps_run == 0
    assert again.evaluate(digits.x_test)["relative_mse"] == pytest.approx(after["relative_mse"])


def test_flow_variant_trains_and_samples_deterministically(digits):
    cfg = FitConfig(UniversalConfig(width=16, ffn_ratio=2.0, flow=True, flow_steps=4), MapConfig(name="blur"))
    torch.manual_seed(0)
    model = MapFit(cfg)
    tc = TrainConfig(steps=100, batch_size=32, lr=3e-3, warmup_steps=10, weight_decay=0.0, progress=False)
    res = train(model, digits.x_train, digits.y_train, tc)
    assert sum(res.losses[-10:]) < 0.6 * sum(res.losses[:10])
    x = model.inputs(digits.x_test[:8])
    a, b, c = (model.model.predict(x, seed=s) for s in (3, 3, 4))
    assert a.shape == (8, 1, 8, 8) and torch.equal(a, b) and not torch.equal(a, c)
    assert model.evaluate(digits.x_test)["relative_mse"] < 1.0
