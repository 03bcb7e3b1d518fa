"""The backbone with FlowAR's release options equals the release's AR transformer with ported weights.

``tests/data/flowar_ar_golden.pt`` was made by ``tools/flowar_ar_golden.py`` from the release's own code
(``FlowAR`` of ``models/flowar.py``: width 32, 2 heads, 2 encoder + 2 decoder blocks, 8 latent channels,
schedule 1, 2, 4, 8, 16) with random int8-grid weights, in float64: the output of its ``decoder_norm``
teacher-forced (train mode, its mask) and scale by scale (eval mode, its k/v cache). Ours runs in float64;
every comparison goes through ``golden.close`` (1e-9 relative).
"""
from __future__ import annotations

import pytest
import torch

from flowar.release import RELEASE_SIZES, backbone_config_from_release, backbone_state_from_release
from nextscale.backbone import FLOWAR_RELEASE, Backbone, BackboneConfig
from golden import close, fixture, release_state

GOLDEN = fixture("flowar_ar_golden")
X_IN = GOLDEN["x_in"].double()  # float16 values


def ported(state=None) -> Backbone:
    state = release_state(GOLDEN["state"]) if state is None else state
    m = Backbone(backbone_config_from_release(state, GOLDEN["schedule"], heads=GOLDEN["heads"])).double()
    m.load_state_dict(backbone_state_from_release(state))  # strict: every parameter placed, none left over
    return m.eval()


def stepped(m: Backbone, x_in, y) -> torch.Tensor:
    cache, cond, outs = m.new_cache(), m.condition(y), []
    for k, sl in enumerate(m.slices):  # scale 1 is the class token: no input
        outs.append(m.step(None if k == 0 else x_in[:, sl.start - 1:sl.stop - 1], cond, cache))
    return torch.cat(outs, 1)


def test_config_read_from_the_release():
    cfg = backbone_config_from_release(release_state(GOLDEN["state"]), GOLDEN["schedule"], heads=GOLDEN["heads"])
    assert (cfg.width, cfg.depth, cfg.heads, cfg.in_dim, cfg.num_classes) == \
        (GOLDEN["width"], 2 * GOLDEN["depth_per_stack"], GOLDEN["heads"], GOLDEN["channels"], 1000)
    assert cfg == BackboneConfig.flowar_release(GOLDEN["schedule"], GOLDEN["channels"], GOLDEN["width"],
                                                2 * GOLDEN["depth_per_stack"], GOLDEN["heads"])
    assert all(getattr(cfg, k) == v for k, v in FLOWAR_RELEASE.items())
    # the release's heads per size: they cannot be read from shapes
    assert [RELEASE_SIZES[s]["backbone_heads"] for s in "SLH"] == [12, 16, 16]
    with pytest.raises(ValueError, match="heads: a width of 32 is none of the release's sizes"):
        backbone_config_from_release(release_state(GOLDEN["state"]), GOLDEN["schedule"])


def test_backbone_equals_the_release_teacher_forced():
    m = ported()
    with torch.no_grad():
        h = m(X_IN, GOLDEN["labels"])
    close(h, GOLDEN["h_teacher"])


def test_backbone_equals_the_release_scale_by_scale():
    m = ported()
    with torch.no_grad():
        h = stepped(m, X_IN, GOLDEN["labels"])
        full = m(X_IN, GOLDEN["labels"])
    close(h, GOLDEN["h_cached"])
    close(h, full)  # our cached steps equal our teacher-forced pass


def test_name_map_refuses_what_it_cannot_place():
    state, schedule = release_state(GOLDEN["state"]), GOLDEN["schedule"]
    renamed = {k.replace("decoder_blocks.1.attn.qkv.", "decoder_blocks.1.attn.qkv_w."): v for k, v in state.items()}
    with pytest.raises(ValueError, match=r"'decoder_blocks.1.attn.qkv_w.weight' \(shape \(96, 32\)\) has no place"):
        backbone_state_from_release(renamed)
    with pytest.raises(ValueError, match="'z_proj_ln.weight' is missing"):
        backbone_state_from_release({k: v for k, v in state.items() if k != "z_proj_ln.weight"})
    with pytest.raises(ValueError, match="same number of blocks.*got 2 and 1"):
        backbone_state_from_release({k: v for k, v in state.items() if not k.startswith("decoder_blocks.1.")})
    wrong = {**state, "decoder_embed.bias": state["decoder_embed.bias"][:-1]}
    with pytest.raises(ValueError, match=r"'decoder_embed.bias' has shape \(31,\).*needs \(32,\)"):
        backbone_config_from_release(wrong, schedule, heads=2)
    wrong = {**state, "encoder_blocks.0.mlp.fc1_x.weight": state["encoder_blocks.0.mlp.fc1_x.weight"][:, :-1]}
    with pytest.raises(ValueError, match="'encoder_blocks.0.mlp.fc1_x.weight' has shape"):
        backbone_config_from_release(wrong, schedule, heads=2)
    with pytest.raises(ValueError, match="'encoder_pos_embed_learned' has shape"):  # another schedule's positions
        backbone_config_from_release({k: v for k, v in state.items() if k != "mask"}, (1, 2, 4, 8), heads=2)
    with pytest.raises(ValueError, match="'mask'.*not the block-causal mask"):
        backbone_config_from_release({**state, "mask": torch.zeros_like(state["mask"])}, schedule, heads=2)
    rope = "decoder_blocks.0.attn.rope.freqs"
    with pytest.raises(ValueError, match="RoPE frequencies"):
        backbone_state_from_release({**state, rope: state[rope] * 2})
    # the flow head's keys and the mask are skipped: without them the same state comes out
    bare = {k: v for k, v in state.items() if not k.startswith(("flownet.", "diffusion_pos", "mask"))}
    assert backbone_state_from_release(bare).keys() == backbone_state_from_release(state).keys()


@pytest.mark.parametrize("bad, message", [
    (dict(norm="batch"), "norm must be one of"), (dict(mlp="relu"), "mlp must be one of"),
    (dict(rope="yes"), "rope must be true or false"), (dict(width=24, heads=4, rope=True), "rope needs a head dim"),
    (dict(level_emb=1), "level_emb must be true or false"), (dict(start="cls"), "start must be one of"),
    (dict(start="class_token", schedule=(2, 3)), "start='class_token' needs a schedule starting at side 1"),
    (dict(in_norm=None), "in_norm must be true or false"), (dict(stacks=0), "stacks must lie in"),
    (dict(stacks=1.5), "stacks must be an int"), (dict(depth=3, stacks=2), "must be divisible by stacks"),
    (dict(final_adaln="no"), "final_adaln must be true or false"),
])
def test_release_options_refuse_bad_values(bad, message):
    with pytest.raises(ValueError, match=message):
        BackboneConfig(**bad)


def test_release_options_build_the_release_parameters_only():
    """The preset has no VAR-only parameters (start positions, level embedding, output adaLN); the defaults
    have none of the release's (a default checkpoint's keys are unchanged)."""
    keys = set(Backbone(BackboneConfig.flowar_release((1, 2, 4), 4, 32, 4, 2, num_classes=10)).state_dict())
    assert not {"pos_start", "level_emb.weight", "ada_out.1.weight", "ada_out.1.bias"} & keys
    assert {"in_norm.weight", "stack_norm.0.weight", "stack_join.0.weight", "stack_pos.0", "norm_out.weight",
            "blocks.3.mlp.gate_up.weight"} <= keys
    default = set(Backbone(BackboneConfig(schedule=(1, 2, 4), in_dim=4, width=32, depth=4, heads=2)).state_dict())
    assert not {k for k in default if k.startswith(("in_norm", "stack_", "blocks.0.mlp.gate_up"))}
    assert {"pos_start", "level_emb.weight", "ada_out.1.weight"} <= default
