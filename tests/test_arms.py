"""The arm registry (compare.arms): an arm is one entry. A tiny arm added to the registry in the test
is accepted by the config, written into the run spec, and trained, sampled, scored and reported by the
harness like a built-in one; the built-in entries are consistent."""
import json
from dataclasses import replace

import pytest

from compare import arms
from compare.arms import ARMS, FLOWAR_FAMILY, Arm, arm_configs, sampler_rows
from compare.config import CompareConfig
from compare.harness import run
from compare.spec import default_spec_text, load_spec, spec_to_config_kwargs
from flowar.pipeline import flowar_paper_configs


def tiny_recipe(data, backbone):
    """FlowAR's recipe with a one-block head, Euler on the plain uniform grid."""
    ae, gen = flowar_paper_configs(data, backbone, head="mlp")
    return ae, replace(gen, head_depth=1)


TINY = Arm("flowar-tiny", "FlowAR with a one-block MLP head (a test arm)", "FlowAR, tiny head", "tab:purple",
           FLOWAR_FAMILY, tiny_recipe, (("euler x1", dict(solver="euler", steps=1)),
                                        ("euler x2", dict(solver="euler", steps=2))), ("euler x1",), default=False)


@pytest.fixture
def tiny_arm(monkeypatch):
    monkeypatch.setitem(ARMS, TINY.name, TINY)
    return TINY


def test_builtin_arms_are_consistent(digits):
    from nextscale.backbone import BackboneConfig

    bb = BackboneConfig(schedule=(1, 2, 3, 4, 6, 8), in_dim=8, num_classes=10, width=32, depth=1, heads=2)
    assert arms.ANCHOR in ARMS and set(arms.DEFAULT_ARMS) <= set(ARMS)
    for name, arm in ARMS.items():
        ae, gen = arm_configs(name, digits, bb, CompareConfig())
        assert isinstance(gen, arm.family.config)
        model = arm.family.build(ae, gen)
        assert callable(arm.family.head_eval(model))
        rows = sampler_rows(name, CompareConfig(quick=True))
        assert [lbl for lbl, _ in rows] == list(arm.quick)
    with pytest.raises(ValueError, match="quick rows among them"):
        replace(TINY, quick=("euler x3",))


def test_a_new_arm_is_one_registry_entry(tiny_arm, tmp_path, digits):
    from nextscale.backbone import BackboneConfig

    bb = BackboneConfig(schedule=(1, 2, 4, 8), in_dim=8, num_classes=10, width=32, depth=1, heads=2)
    cfg = CompareConfig(arms=("var", tiny_arm.name))  # the config accepts it
    assert [lbl for lbl, _ in sampler_rows(tiny_arm.name, replace(cfg, quick=True))] == ["euler x1"]
    text = default_spec_text()  # the run spec writes its table, with its doc, off by default
    assert f"[arms.{tiny_arm.name}]" in text and tiny_arm.doc in text
    on = load_spec(text.replace(f"[arms.{tiny_arm.name}]\n# true: train and compare this arm\nenabled = false",
                                f"[arms.{tiny_arm.name}]\n# true: train and compare this arm\nenabled = true"))
    assert tiny_arm.name in spec_to_config_kwargs(on)["arms"]
    with pytest.raises(ValueError, match="head_dept"):
        arm_configs(tiny_arm.name, digits, bb, CompareConfig(arm_overrides={tiny_arm.name: {"head_dept": 1}}))

    res = run(CompareConfig.quick_config(arms=(tiny_arm.name,), seeds=1, samples=20,
                                         train_steps={"flowar": {"autoencoder": 4, "generator": 4}},
                                         classifier_steps=4, sample_batch=20, cost_batch=4, throughput_batch=4,
                                         out=str(tmp_path)))
    assert [(r["model"], r["sampler"]) for r in res["rows"]] == [(tiny_arm.name, "euler x1")]
    assert res["rows"][0]["head_nfe"]["mean"] > 0 and res["models"][tiny_arm.name]["config"]["head_depth"] == 1
    assert json.loads((tmp_path / "results.json").read_text())["rows"][0]["model"] == tiny_arm.name
    assert tiny_arm.doc in (tmp_path / "report.md").read_text()
