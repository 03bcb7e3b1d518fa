import pytest
import torch

from nextscale.scales import (FLOWAR_SCHEDULE, VAR_SCHEDULE, block_causal_mask, level_ids, maps_to_seq,
                              num_tokens, pyramid, resize, scale_slices, seq_to_maps, validate_schedule)


@pytest.mark.parametrize("bad", [(), (2, 1, 4), (1, 1, 2), (0, 1, 2), (-1, 2), (1, 2.5, 4)])
def test_invalid_schedules_raise_naming_the_schedule(bad):
    with pytest.raises(ValueError, match="schedule"):
        validate_schedule(bad)


def test_schedule_must_end_at_latent_side():
    assert validate_schedule(VAR_SCHEDULE, latent_side=16) == VAR_SCHEDULE
    with pytest.raises(ValueError, match=r"\(1, 2, 4\).*latent side 8"):
        validate_schedule((1, 2, 4), latent_side=8)


def test_token_counts_and_slices():
    assert num_tokens(VAR_SCHEDULE) == 680  # VAR's 256x256 pyramid: 680 tokens (Tian et al. 2024)
    assert num_tokens(FLOWAR_SCHEDULE) == 1 + 4 + 16 + 64 + 256
    sl = scale_slices((1, 2, 3))
    assert [(s.start, s.stop) for s in sl] == [(0, 1), (1, 5), (5, 14)]
    assert level_ids((1, 2, 3)).tolist() == [0] + [1] * 4 + [2] * 9


def test_block_causal_mask_is_exactly_level_order():
    sch = (1, 2, 3)
    m, lv = block_causal_mask(sch), level_ids(sch)
    for i in range(len(lv)):
        for j in range(len(lv)):
            assert bool(m[i, j]) == (lv[j] <= lv[i])
    assert m[0].sum() == 1 and m[-1].all()  # the start token sees itself only; the last scale sees all


def test_area_downsampling_is_block_mean_and_upsampling_modes():
    x = torch.randn(2, 3, 8, 8)
    assert torch.allclose(resize(x, 4), x.reshape(2, 3, 4, 2, 4, 2).mean((3, 5)), atol=1e-6)
    up_c, up_l = resize(x, 16, "bicubic"), resize(x, 16, "bilinear")
    assert up_c.shape == up_l.shape == (2, 3, 16, 16) and not torch.allclose(up_c, up_l)
    assert resize(x, 8) is x
    # a constant map stays constant through every resize
    c = torch.full((1, 1, 5, 5), 0.3)
    for side in (1, 3, 7, 13):
        assert torch.allclose(resize(c, side), torch.full((1, 1, side, side), 0.3), atol=1e-6)
    with pytest.raises(ValueError, match="upsample mode"):
        resize(x, 16, "nearest")


def test_pyramid_sequence_round_trip():
    sch = (1, 2, 4, 8)
    maps = pyramid(torch.randn(2, 5, 8, 8), sch)
    assert [m.shape[-1] for m in maps] == list(sch)
    seq = maps_to_seq(maps)
    assert seq.shape == (2, num_tokens(sch), 5)
    for a, b in zip(seq_to_maps(seq, sch), maps):
        assert torch.equal(a, b)
    with pytest.raises(ValueError, match="sequence length"):
        seq_to_maps(seq[:, 1:], sch)


def test_default_schedule_and_guidance_ramp():
    from nextscale.guidance import cfg_weights, guide
    from nextscale.scales import default_schedule

    assert default_schedule(8) == (1, 2, 3, 4, 6, 8) and default_schedule(1) == (1,)
    assert default_schedule(10) == (1, 2, 3, 4, 6, 8, 10)
    assert cfg_weights(2.0, "linear", 3) == [0.0, 1.0, 2.0] and cfg_weights(2.0, "constant", 3) == [2.0] * 3
    with pytest.raises(ValueError, match="cfg_schedule"):
        cfg_weights(1.0, "cosine", 3)
    c, u = torch.tensor([1.0, 2.0]), torch.tensor([0.5, 3.0])
    assert torch.equal(guide(c, u, 0.0), c) and torch.allclose(guide(c, u, 1.0), 2 * c - u)
