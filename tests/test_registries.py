"""Registries that own their whole surface: a new model family is one ARMS entry (with its module,
tests/toy_family.py) and a new feature network one NETWORKS entry; their budget, spec keys, flags and
config entries follow, and a run uses them, with nothing else edited."""
import math

import numpy as np
import pytest
import torch
import torch.nn as nn

import toy_family
from compare.__main__ import _parser, parse
from compare.arms import ARMS, budgets
from compare.config import CompareConfig
from compare.harness import run
from compare.metrics import evaluate
from compare.metrics.evaluate import NETWORKS, Network, network_files
from compare.metrics.features import FeatureNet
from compare.released import parser as released_parser
from compare.spec import default_spec_text, load_spec, spec_to_config_kwargs


def config_of(text: str) -> CompareConfig:
    return CompareConfig(**spec_to_config_kwargs(load_spec(text)))


@pytest.fixture
def toy(monkeypatch):
    monkeypatch.setitem(ARMS, toy_family.ARM.name, toy_family.ARM)
    toy_family.SEEN.clear()
    return toy_family.ARM


def test_a_new_family_brings_its_budget_keys_and_flag_values(toy):
    assert budgets()["toy"] is toy.family.budget
    assert CompareConfig().train_steps["toy"] == {"autoencoder": 30, "generator": 50}
    assert CompareConfig.quick_config().train_steps["toy"] == {"autoencoder": 3, "generator": 5}
    text = default_spec_text()
    assert "# training steps of the toy's coder\ncoder_steps = 30\n# training steps of the toy generator\n" \
           "toy_steps = 50\n" in text
    assert config_of("[train]\ncoder_steps = 7\n").train_steps["toy"] == {"autoencoder": 7, "generator": 50}
    with pytest.raises(ValueError, match=r"^train\.toy_steps must be >= 1, got 0$"):
        load_spec("[train]\ntoy_steps = 0\n")
    assert parse(["--train-steps", "8"]).train_steps["toy"] == {"autoencoder": 4, "generator": 8}
    assert parse(["--preset", "cifar32"]).train_steps["toy"] == {"autoencoder": 5000, "generator": 20000}
    assert "toy 50/30" in _parser().format_help().replace("\n", " ").replace("  ", " ")


def test_a_new_family_is_trained_on_its_budget(toy, tmp_path):
    res = run(CompareConfig.quick_config(arms=("toy",), seeds=1, samples=20, train_steps={"toy": {"generator": 6}},
                                         classifier_steps=4, sample_batch=20, cost_batch=4, throughput_batch=4,
                                         out=str(tmp_path)))
    assert toy_family.SEEN == [(3, 6)] and res["config"]["train_steps"]["toy"] == {"autoencoder": 3, "generator": 6}
    assert [r["sampler"] for r in res["rows"]] == ["cfg 0"] and res["rows"][0]["head_nfe"]["mean"] > 0
    assert [c.split("-")[0] for c in res["models"]["toy"]["per_seed"][0]["checkpoints"]] == ["toy", "toy"]


class TinyNet(FeatureNet):
    """4 features: the mean image, pooled to 2x2."""
    name, dim = "toynet", 4

    def __init__(self):
        super().__init__()
        self.gain = nn.Parameter(torch.ones(()))

    def embed(self, x_BCHW):
        return self.gain * nn.functional.adaptive_avg_pool2d(x_BCHW.mean(1, keepdim=True), 2).flatten(1)


def load_tiny(path, device=None):
    if not torch.load(path):
        raise FileNotFoundError(path)
    return TinyNet().to(device)


@pytest.fixture
def toynet(monkeypatch):
    monkeypatch.setitem(NETWORKS, "toynet", Network(load_tiny, "a toy network's weights (a test's): adds its "
                                                               "4-d space"))


def test_a_new_feature_network_is_one_entry(toynet, tmp_path, capsys):
    assert CompareConfig(networks={"toynet": "w.pt"}).networks == {"toynet": "w.pt"}
    assert '# a toy network\'s weights (a test\'s): adds its 4-d space (none: off); "" = none\ntoynet = ""\n' \
        in default_spec_text()
    assert config_of('[run]\ntoynet = "w.pt"\n').networks == {"toynet": "w.pt"}
    assert parse(["--toynet", "w.pt", "--inception", "i.pth"]).networks == {"inception": "i.pth", "toynet": "w.pt"}
    assert network_files(released_parser().parse_args(["--reference", "r", "--out", "o", "--toynet", "w.pt"])) == \
        {"toynet": "w.pt"}
    torch.save(True, tmp_path / "w.pt")
    rng = np.random.default_rng(0)
    for name in ("fake", "real"):
        np.savez(tmp_path / f"{name}.npz", arr_0=rng.integers(0, 256, (20, 8, 8, 3), dtype=np.uint8))
    res = evaluate.main([str(tmp_path / "fake.npz"), "--reference", str(tmp_path / "real.npz"),
                         "--toynet", str(tmp_path / "w.pt")])
    assert math.isfinite(res["metrics"]["fid_toynet"]) and "toynet" in res["protocol"]
