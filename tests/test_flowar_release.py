"""FlowAR's head equals the release's with ported weights.

``tests/data/flowar_release_golden.pt`` was made by ``tools/flowar_golden.py`` from the release's own
code (``SimpleTransformerAdaLN`` with both block types, ``euler_sampler``) at a tiny size with random
weights. Tolerances: a single evaluation within 1e-5 (float32 on another CPU, other kernels: a few ulps
of values of size ~1-5); a 24-step solve within 1e-4 (the release steps in float64, we in float32).
"""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from flowar.heads import TransformerHead
from flowar.release import RELEASE_SAMPLING, head_config_from_release, head_state_from_release
from flowar.solvers import SolverConfig, solve, time_grid
from nextscale.guidance import guide
from golden import release_state

GOLDEN = torch.load(Path(__file__).parent / "data" / "flowar_release_golden.pt", weights_only=True)


def ported(name: str, time_input: str = "index") -> TransformerHead:
    entry = GOLDEN[name]
    state = release_state(entry["state"])
    cfg = head_config_from_release(state)
    assert (cfg["head_width"], cfg["head_depth"], cfg["head"] == "transformer_cross") == \
        (entry["width"], 1, entry["cross"])
    head = TransformerHead(GOLDEN["channels"], GOLDEN["cond_width"], cfg["head_width"], cfg["head_depth"],
                           cfg["head_heads"], GOLDEN["schedule"], cross=entry["cross"], time_input=time_input)
    head.load_state_dict(head_state_from_release(state))  # strict: every parameter placed, none left over
    return head.eval()


def ours_t(t_release: torch.Tensor) -> torch.Tensor:
    return (1 - t_release.double()).float()[:, None]       # (B, 1): one time per image, t = 0 noise here


@pytest.mark.parametrize("name", ["s", "cross"])
def test_head_equals_the_release_with_ported_weights(name):
    head = ported(name)
    for case in GOLDEN[name]["cases"]:  # scales of side 4 and 8; release times on its integer grid and off it
        with torch.no_grad():
            v = head(case["x"], ours_t(case["t_release"]), case["h"], case["k"])
        # the release's velocity points from data to noise, ours from noise to data
        torch.testing.assert_close(v, -case["v_release"], rtol=0, atol=1e-5)


def test_release_time_index_is_what_makes_it_equal():
    """The continuous time input is a different function of t (equal only where 1000 s is an integer)."""
    head = ported("s", time_input="continuous")
    case = GOLDEN["s"]["cases"][1]  # off the integer grid
    with torch.no_grad():
        v = head(case["x"], ours_t(case["t_release"]), case["h"], case["k"])
    assert (v + case["v_release"]).abs().max() > 1e-3


def test_release_sampler_grid_and_guidance_equal_ours():
    """The release's euler_sampler (num_steps 25, guidance 0.9) on one scale equals our Euler on the
    two-segment grid with 24 steps, guided with w = cfg - 1 where t >= 0.1, unguided and guided."""
    head = ported("s")
    for run in GOLDEN["s"]["solves"]:
        times = torch.tensor(run["times_release"], dtype=torch.float64)
        grid = time_grid(24, "two_segment", dtype=torch.float64)
        assert len(times) == 24 and torch.allclose(1 - times, grid[:-1], atol=1e-7)  # 25 points, 24 steps
        B, k, w = len(run["x1_release"]), run["k"], run["cfg"] - 1
        lo = 1 - run["guidance"]
        with torch.no_grad():
            c = head.condition(run["h"], k)                                      # (cond rows; uncond rows)

            def velocity(t, x, rows):
                t11 = t.reshape(1, 1)
                if w > 0 and float(t) >= lo:
                    return guide(*head.velocity(torch.cat([x, x]), t11, c, k).chunk(2), w)
                return head.velocity(x, t11, c[:B], k)

            sol = solve(velocity, run["x0"][:B], SolverConfig("euler", 24, "two_segment"))
        torch.testing.assert_close(sol.x, run["x1_release"], rtol=0, atol=1e-4)
        assert sol.nfe == [24] * B


def test_name_map_refuses_what_it_cannot_place():
    state = release_state(GOLDEN["s"]["state"])
    with pytest.raises(ValueError, match="diffusion_pos_embed_learned"):
        head_state_from_release({k: v for k, v in state.items() if k != "diffusion_pos_embed_learned"})
    with pytest.raises(ValueError, match="no place in the head: \\['res_blocks.0.extra.weight'\\]"):
        head_state_from_release({**state, "flownet.res_blocks.0.extra.weight": torch.zeros(1)})
    with pytest.raises(ValueError, match="fc1_g and fc1_x"):
        head_state_from_release({k: v for k, v in state.items() if "fc1_x" not in k})
    rope = next(k for k in state if k.endswith("rope.freqs"))
    with pytest.raises(ValueError, match="RoPE frequencies"):
        head_state_from_release({**state, rope: state[rope] * 2})
    # the AR transformer's keys of a whole FlowAR state dict are ignored
    assert head_state_from_release({**state, "encoder_blocks.0.attn.qkv.weight": torch.zeros(1)}).keys() == \
        head_state_from_release(state).keys()


def test_release_sampling_settings_translate_the_release_commands():
    # S: --cfg 4.3 --guidance 0.9 --num_step 25; L: --cfg 2.4 --guidance 0.9; H: --cfg 2.4 --guidance 0.7 --num_step 50
    assert [RELEASE_SAMPLING[s]["cfg_scale"] for s in "SLH"] == pytest.approx([3.3, 1.4, 1.4])
    assert [RELEASE_SAMPLING[s]["cfg_interval"][0] for s in "SLH"] == pytest.approx([0.1, 0.1, 0.3])
    assert [(RELEASE_SAMPLING[s]["steps"], RELEASE_SAMPLING[s]["time_grid"]) for s in "SLH"] == \
        [(24, "two_segment"), (24, "two_segment"), (50, "uniform")]
