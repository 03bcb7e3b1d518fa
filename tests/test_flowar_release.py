"""FlowAR's head equals the release's with ported weights, in float64.

``tests/data/flowar_release_golden.pt`` was made by ``tools/flowar_golden.py`` from the release's own
code (``SimpleTransformerAdaLN`` with both block types, ``euler_sampler``) at a tiny size with random
int8-grid weights, run in float64 (its time index in float32, as the release always takes it). Ours runs
in float64 here and every comparison goes through ``golden.close`` (1e-9 relative) or ``golden.equal``.
"""
from __future__ import annotations

import pytest
import torch

from flowar.heads import TransformerHead, release_index
from flowar.release import RELEASE_SAMPLING, head_config_from_release, head_state_from_release
from flowar.sampling import FlowSampling
from flowar.solvers import grid_times, solve, time_grid
from nextscale.guidance import guide
from golden import close, equal, fixture, release_state

GOLDEN = fixture("flowar_release_golden")


def ported(name: str, time_input: str = "index", dtype=torch.float64) -> TransformerHead:
    entry = GOLDEN[name]
    state = release_state(entry["state"])
    cfg = head_config_from_release(state)
    assert (cfg["head_width"], cfg["head_depth"], cfg["head"] == "transformer_cross") == \
        (entry["width"], 1, entry["cross"])
    head = TransformerHead(GOLDEN["channels"], GOLDEN["cond_width"], cfg["head_width"], cfg["head_depth"],
                           cfg["head_heads"], GOLDEN["schedule"], cross=entry["cross"], time_input=time_input)
    head.to(dtype).load_state_dict(head_state_from_release(state))  # strict: every parameter placed, none left over
    return head.eval()


def ours_t(t_release: torch.Tensor) -> torch.Tensor:
    return (1 - t_release)[:, None]  # (B, 1): one time per image, t = 0 noise here, float64


def evaluate(head, case, t=None) -> torch.Tensor:
    with torch.no_grad():
        return head(case["x"].double(), ours_t(case["t_release"]) if t is None else t, case["h"].double(), case["k"])


@pytest.mark.parametrize("name", ["s", "cross"])
def test_head_equals_the_release_with_ported_weights(name):
    head = ported(name)
    for case in GOLDEN[name]["cases"]:  # scales of side 4 and 8; release times on its integer grid, off it, below it
        # the release's velocity points from data to noise, ours from noise to data
        close(evaluate(head, case), -case["v_release"])


@pytest.mark.parametrize("name", ["s", "cross"])
def test_time_index_is_the_releases_just_below_the_grid(name):
    """Release times just below i / 1000 (the float32 s < i / 1000 nearest it whose float32 1000 s is below i):
    the release's index is i - 1, ours too; the rounding we had, floor(1000 s + 1e-3), gave i there."""
    head, below = ported(name), [c for c in GOLDEN[name]["cases"] if c["times"] == "below"]
    assert below
    for case in GOLDEN[name]["cases"]:
        equal(release_index(ours_t(case["t_release"])).flatten(), case["index_release"])
    for case in below:
        i = torch.tensor([1000, 700, 300, 250])
        equal(case["index_release"], i - 1)
        equal(torch.floor(1000 * case["t_release"] + 1e-3).long(), i)  # the fixture tells the two apart
        close(evaluate(head, case), -case["v_release"])


def test_release_time_index_is_what_makes_it_equal():
    """The continuous time input embeds 1000 s: it equals the release where its index is 1000 s (on the
    integer grid) and nowhere else; elsewhere it equals the release at the time of the release's index."""
    head = ported("s", time_input="continuous")
    for case in GOLDEN["s"]["cases"]:
        v = evaluate(head, case)
        if case["times"] == "on":
            close(v, -case["v_release"])
        else:  # off the grid by up to one index step: far outside any rounding
            assert float((v + case["v_release"]).abs().max()) > 1e-3
            # the continuous input at s = index / 1000: the release exactly
            close(evaluate(head, case, ours_t(case["index_release"].double() / 1000)), -case["v_release"])


def _preset(run) -> FlowSampling:
    """The release's run in our settings: its preset (S: num_steps 25; H: num_steps 50) at the run's cfg,
    constant over the one scale solved; the release's guidance g is our interval start 1 - g."""
    preset = {25: "S", 50: "H"}[run["num_steps"]]
    sampling = FlowSampling(**{**RELEASE_SAMPLING[preset], "cfg_scale": run["cfg"] - 1, "cfg_schedule": "constant"})
    assert sampling.cfg_interval == (pytest.approx(1 - run["guidance"]), 1.0)
    return sampling


def _solve(head, run, dtype):
    """Our Euler solve of the run's scale as :meth:`FlowAR.generate_latents` does it: guided with
    w = cfg - 1 where the float64 grid time is in the interval; returns (solution, guided steps)."""
    sampling = _preset(run)
    (sc,), (w,) = sampling.plan(1, None)
    exact = grid_times(sc, dtype)
    B, k = len(run["x1_release"]), run["k"]
    with torch.no_grad():
        c = head.condition(run["h"].to(dtype), k)                          # (cond rows; uncond rows)

        def velocity(t, x, rows):
            t11 = torch.full((1, 1), exact[float(t)], dtype=torch.float64)
            if w > 0 and sampling.guided_at(exact[float(t)]):
                return guide(*head.velocity(torch.cat([x, x]), t11, c, k).chunk(2), w)
            return head.velocity(x, t11, c[:B], k)

        sol = solve(velocity, run["x0"][:B].to(dtype), sc,
                    cost=lambda t: 2 if w > 0 and sampling.guided_at(exact[t]) else 1)
    return sol, sc, sol.nfe[0] - sc.steps


@pytest.mark.parametrize("name", ["s", "cross"])
def test_release_sampler_grid_and_guidance_equal_ours(name):
    """The release's euler_sampler on one scale equals our Euler in float64: S (head "s"): num_steps 25, its
    two-segment grid, guidance 0.9, unguided and guided; H (head "cross"): num_steps 50, its uniform grid,
    guidance 0.7, guided; the same grid times, time indices and guided steps."""
    head = ported(name)
    for run in GOLDEN[name]["solves"]:
        sol, sc, guided = _solve(head, run, torch.float64)
        grid = time_grid(sc.steps, sc.time_grid, torch.float64)
        assert len(run["times_release"]) == sc.steps
        close(grid[:-1], 1 - torch.tensor(run["times_release"], dtype=torch.float64))  # torch.linspace: CPU-rounded
        equal(release_index(grid[:-1]), run["index_release"])
        assert guided == sum(run["guided_release"]) and (guided > 0) == (run["cfg"] > 1)
        close(sol.x, run["x1_release"])


def test_flowar_h_guides_from_its_interval_start_in_float32_too():
    """FlowAR-H (50 uniform steps, guidance from the release's s = 0.7): the release guides 35 of the 50 steps,
    t = 0.7 exactly on its float64 grid included; ours the same in float64 and in float32 (a float32 grid
    has 0.29999998 in our time, below the interval's start 0.3: it guided 34)."""
    (run,) = GOLDEN["cross"]["solves"]
    assert run["num_steps"] == 50 and run["guidance"] == 0.7
    assert sum(run["guided_release"]) == 35 and run["times_release"][15] == 0.7 and run["guided_release"][15]
    for dtype in (torch.float64, torch.float32):
        _, _, guided = _solve(ported("cross", dtype=dtype), run, dtype)
        assert guided == 35, dtype


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
