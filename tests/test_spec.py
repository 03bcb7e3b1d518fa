"""The run spec (compare.spec): default text round trip, defaults equal to CompareConfig's, one-line errors
with dotted paths, arm switches and overrides, command-line flags over the spec. No training."""
import dataclasses
import re

import pytest

from compare.arms import ARMS, DEFAULT_ARMS, arm_configs, sampler_rows
from compare.config import CompareConfig
from compare.spec import default_spec_text, dump_spec, keys as spec_keys, load_spec, merge_cli, spec_to_config_kwargs
from nextscale.backbone import BackboneConfig
from nextscale.config import config_to_dict
from nextscale.scales import default_schedule, latent_side_of


def config_of(text: str) -> CompareConfig:
    return CompareConfig(**spec_to_config_kwargs(load_spec(text)))


def error_of(text: str) -> str:
    with pytest.raises(ValueError) as e:
        load_spec(text)
    return str(e.value)


def test_print_load_print_is_identical(tmp_path):
    text = default_spec_text()
    assert dump_spec(load_spec(text)) == text
    path = tmp_path / "run.toml"
    path.write_text(text)
    assert dump_spec(load_spec(path)) == dump_spec(load_spec(str(path))) == text
    lines = text.splitlines()
    keys = [i for i, line in enumerate(lines) if re.match(r"[a-z0-9_]+ = ", line)]
    assert len(keys) == len(spec_keys()) + 3 * len(ARMS)  # every key, each under its comment
    assert all(lines[i - 1].startswith("# ") and len(lines[i - 1]) > 3 for i in keys)
    assert "cfg_interval = [0.1, 1.0]" in text and "side = 0" in text and 'device = "auto"' in text


def test_default_spec_is_the_default_config(digits):
    cfg, d = config_of(default_spec_text()), CompareConfig()
    skip = ("samplers", "arm_overrides")
    assert {k: v for k, v in dataclasses.asdict(cfg).items() if k not in skip} == \
        {k: v for k, v in dataclasses.asdict(d).items() if k not in skip}
    for arm in ARMS:  # the built-in sweeps, full and --quick
        assert sampler_rows(arm, cfg) == sampler_rows(arm, d)
        assert sampler_rows(arm, dataclasses.replace(cfg, quick=True)) == \
            sampler_rows(arm, dataclasses.replace(d, quick=True))
    # the same model configs, hence the same checkpoint keys, as no spec
    bb = BackboneConfig(schedule=default_schedule(latent_side_of(digits.side)), in_dim=d.latent_channels,
                        num_classes=digits.num_classes, width=d.width, depth=d.depth, heads=d.heads)
    for arm in ARMS:
        assert [config_to_dict(c) for c in arm_configs(arm, digits, bb, cfg)] == \
            [config_to_dict(c) for c in arm_configs(arm, digits, bb, d)]


def test_a_partial_spec_takes_the_defaults_for_the_rest():
    cfg = config_of('[train]\nvar_steps = 100\n[data]\nside = 32\n[run]\ninception = "w.pth"\ndevice = "cpu"\n')
    assert (cfg.train_steps["var"], cfg.side, cfg.networks, cfg.device) == \
        ({"autoencoder": 300, "generator": 100}, 32, {"inception": "w.pth"}, "cpu")
    assert dataclasses.replace(cfg, train_steps={}, side=None, networks={}, device=None) == CompareConfig()


@pytest.mark.parametrize("text, message", [
    ("[arms.flowar.overrides]\nhed_depth = 3\n",
     "unknown key arms.flowar.overrides.hed_depth (did you mean head_depth?)"),
    ("[arms.flowar]\nhed_depth = 3\n", "unknown key arms.flowar.hed_depth (did you mean overrides.head_depth?)"),
    ("[run]\nprecison = 'bf16'\n", "unknown key run.precison (did you mean precision?)"),
    ("[arms.flowarr]\nenabled = true\n", "unknown key arms.flowarr (did you mean flowar?)"),
    ("[dta]\nspec = 'x'\n", "unknown key dta (did you mean data?)"),
    ("[arms.var]\nsamplers = [{label = 'a', cfg_scal = 1.0}]\n",
     "unknown key arms.var.samplers[0].cfg_scal (did you mean cfg_scale?)"),
])
def test_unknown_key_names_its_path_and_the_likely_key(text, message):
    assert error_of(text) == message


def test_wrong_type_names_its_path():
    assert error_of("[train]\nvar_steps = 'x'\n") == "train.var_steps must be an int, got 'x'"
    assert error_of("[run]\ncompile = 1\n") == "run.compile must be true or false, got 1"
    assert error_of("[arms.var]\nenabled = 'yes'\n") == "arms.var.enabled must be true or false, got 'yes'"


def test_bad_value_names_its_path():
    assert error_of("[run]\nseeds = 0\n") == "run.seeds must lie in [1, 2147483648], got 0"
    assert error_of("[run]\nprecision = 'fp16'\n") == "run.precision must be one of ('fp32', 'bf16'), got 'fp16'"
    assert error_of("[backbone]\nwidth = 130\n").startswith("backbone.width ")
    # every key and type error at once, one line each
    assert error_of("[train]\nvar_steps = 'x'\nae_step = 3\n").splitlines() == [
        "train.var_steps must be an int, got 'x'", "unknown key train.ae_step (did you mean ae_steps?)"]


def test_override_is_checked_by_the_arm_config_and_applied(digits):
    assert error_of("[arms.flowar.overrides]\nhead_depth = 0\n") == \
        "arms.flowar.overrides.head_depth must be >= 1, got 0"
    assert error_of("[arms.var]\noverrides = { label_smoothing = 1.0 }\n").startswith(
        "arms.var.overrides.label_smoothing must lie in [0, 1)")
    cfg = config_of("[arms.flowar-mlp]\noverrides = { head_depth = 3 }\n")
    assert cfg.arm_overrides == {"flowar-mlp": {"head_depth": 3}}
    bb = BackboneConfig(schedule=default_schedule(latent_side_of(digits.side)), in_dim=cfg.latent_channels,
                        num_classes=digits.num_classes, width=cfg.width, depth=cfg.depth, heads=cfg.heads)
    assert arm_configs("flowar-mlp", digits, bb, cfg)[1].head_depth == 3
    assert arm_configs("flowar", digits, bb, cfg)[1].head_depth == 2


def test_arms_are_switched_on_and_off():
    assert config_of("[arms.flowar-mlp]\nenabled = false\n").arms == ("var", "flowar")
    assert config_of("[arms.flowar-fewstep]\nenabled = true\n").arms == DEFAULT_ARMS + ("flowar-fewstep",)
    off = "".join(f"[arms.{a}]\nenabled = false\n" for a in DEFAULT_ARMS)
    assert error_of(off).startswith("arms: no arm is enabled")


def test_custom_sampler_sweep_replaces_the_built_in_one():
    text = default_spec_text().replace('{ label = "cfg 3", cfg_scale = 3.0 },',
                                       '{ label = "cfg 2", cfg_scale = 2.0, top_k = 8 },', 1)  # var's, not var-doubling's
    spec = load_spec(text)
    assert dump_spec(spec) == text
    cfg = CompareConfig(**spec_to_config_kwargs(spec))
    assert list(cfg.samplers) == ["var"]  # the unchanged sweeps stay the harness's
    assert [lbl for lbl, _ in sampler_rows("var", cfg)] == \
        ["cfg 0", "cfg 1.5", "cfg 2", "cfg 1.5, top-k 64, top-p 0.95"]
    rows = spec_to_config_kwargs(load_spec(
        "[arms.flowar]\nsamplers = [{ label = 'e', solver = 'euler', steps = 3, cfg_interval = [0.2, 1.0] }]\n"))
    assert rows["samplers"] == {"flowar": (("e", {"solver": "euler", "steps": 3, "cfg_interval": (0.2, 1.0)}),)}
    assert error_of("[arms.var]\nsamplers = [{ label = 'a' }, { label = 'a' }]\n") == \
        "arms.var.samplers[1].label 'a' repeats an earlier row's label"


def test_flowars_guidance_strength_is_a_key_and_a_flag():
    from compare.__main__ import parse

    cfg = config_of("[eval]\nflowar_cfg = 2.0\n")
    assert cfg.flowar_cfg == 2.0 and parse(["--flowar-cfg", "0.5"]).flowar_cfg == 0.5
    assert all(kw["cfg_scale"] == 2.0 for _, kw in sampler_rows("flowar", cfg))
    assert error_of("[eval]\nflowar_cfg = -1\n").startswith("eval.flowar_cfg must be >= 0")


def test_command_line_flags_win_over_the_spec():
    spec = spec_to_config_kwargs(load_spec("[train]\nvar_steps = 100\nflowar_steps = 90\n[run]\nseeds = 2\n"
                                           "[arms.flowar.overrides]\nhead_width = 64\nhead_depth = 3\n"))
    cfg = CompareConfig(**merge_cli(spec, {"train_steps": {"var": {"generator": 7}}, "arms": ("var",)}))
    assert (cfg.train_steps["var"]["generator"], cfg.train_steps["flowar"]["generator"], cfg.seeds, cfg.arms) == \
        (7, 90, 2, ("var",))
    assert cfg.arm_overrides == {"flowar": {"head_width": 64, "head_depth": 3}}
    # --head-width beats the arms' head_width overrides, and only those
    assert merge_cli(spec, {"head_width": 32})["arm_overrides"] == {"flowar": {"head_depth": 3}}
    assert merge_cli(spec, {}) == spec
