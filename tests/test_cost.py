import math

import pytest
import torch

from compare.cost import SAMPLER_STATS, measure_cost

D_IN, D_OUT = 64, 256  # toy "sampler": noise (n, 64) @ W (64, 256) -> n grey 16x16 images
BUF = 2**20            # plus a 4 MB float32 scratch buffer per image, to see in the peak memory


class ToySampler:
    def __init__(self):
        self.W = torch.randn(D_IN, D_OUT, generator=torch.Generator().manual_seed(0)) / 8
        self.calls = 0

    def __call__(self, n):
        self.calls += 1
        scratch = torch.ones(n, BUF)
        x = torch.randn(n, D_IN) @ self.W + scratch.sum(1, keepdim=True) * 0
        images = x.tanh().reshape(n, 1, 16, 16)
        return images, {"backbone_forwards": 4, "head_nfe": 8, "head_nfe_per_scale": [2, 2, 2, 2],
                        "guided": False}


def test_toy_sampler_cost():
    fn = ToySampler()
    cost = measure_cost(fn, batch_size=8, repeats=3, warmup=1)
    assert fn.calls == 1 + 1 + 3  # flop count, warm-up, timed repeats
    assert cost["flops_per_image"] == 2 * D_IN * D_OUT  # one multiply-add = 2 FLOPs
    for key in ("batch_size", "device", "flops_per_image", "ms_per_image", "ms_per_image_repeats",
                "peak_mem_bytes", "peak_mem_method", *SAMPLER_STATS):
        assert key in cost, key
    assert cost["batch_size"] == 8 and cost["device"] == "cpu"
    assert math.isfinite(cost["ms_per_image"]) and cost["ms_per_image"] > 0
    assert len(cost["ms_per_image_repeats"]) == 3
    assert cost["ms_per_image"] == sorted(cost["ms_per_image_repeats"])[1]
    # the 8 x 4 MB scratch buffer is resident during every call
    if cost["peak_mem_method"].startswith(("rss", "cuda")):
        assert 0.75 * 8 * BUF * 4 <= cost["peak_mem_bytes"] < 20 * 8 * BUF * 4
    assert cost["backbone_forwards"] == 4 and cost["head_nfe"] == 8
    assert cost["head_nfe_per_scale"] == [2, 2, 2, 2] and cost["guided"] is False


def test_seeded_calls_and_caller_rng_untouched():
    seen = []

    def fn(n):
        x = torch.randn(n, 1, 2, 2)
        seen.append(x)
        return x, dict.fromkeys(SAMPLER_STATS, 0)

    torch.manual_seed(123)
    expected_next = torch.rand(1)
    torch.manual_seed(123)
    measure_cost(fn, batch_size=2, repeats=2, warmup=1, seed=5)
    assert torch.equal(torch.rand(1), expected_next)
    assert all(torch.equal(s, seen[0]) for s in seen)  # each call sampled with the same seed


def test_bad_sampler_output_raises():
    with pytest.raises(ValueError, match=r"\(images, stats\)"):
        measure_cost(lambda n: torch.zeros(n, 1, 2, 2), batch_size=2)
    with pytest.raises(ValueError, match="lack"):
        measure_cost(lambda n: (torch.zeros(n, 1, 2, 2), {"head_nfe": 1}), batch_size=2)
    with pytest.raises(ValueError, match="must return 2 images"):
        measure_cost(lambda n: (torch.zeros(1, 1, 2, 2), dict.fromkeys(SAMPLER_STATS, 0)), batch_size=2)
    with pytest.raises(ValueError, match="reserved"):
        measure_cost(lambda n: (torch.zeros(n, 1, 2, 2), {**dict.fromkeys(SAMPLER_STATS, 0), "ms_per_image": 1}),
                     batch_size=2)
    with pytest.raises(ValueError, match="repeats"):
        measure_cost(lambda n: None, batch_size=2, repeats=0)


def test_measure_cost_can_skip_the_flop_count():
    fn = ToySampler()
    cost = measure_cost(fn, batch_size=4, repeats=1, warmup=0, device="cpu", flops=False)
    assert fn.calls == 1 and cost["flops_per_image"] is None and cost["ms_per_image"] > 0


def test_training_flops_match_the_hand_formula():
    """Forward 2 B i o per linear layer; backward: the weight gradient (2 B i o) always, the input
    gradient (2 B i o) only where something upstream needs it (not for the first layer)."""
    from nextscale.cost import count_train_flops

    B, i, h, o = 8, 12, 20, 5
    net = torch.nn.Sequential(torch.nn.Linear(i, h), torch.nn.ReLU(), torch.nn.Linear(h, o))
    x = torch.randn(B, i)
    fwd = 2 * B * (i * h + h * o)
    bwd = 2 * B * i * h + 2 * (2 * B * h * o)
    assert count_train_flops(lambda: net(x).pow(2).mean()) == fwd + bwd
    assert net[0].weight.grad is not None


def test_transformer_head_parameters_match_the_hand_formula():
    from flowar.heads import MLPHead, TransformerHead

    C, Wc, W, depth, heads, sch = 4, 48, 32, 2, 2, (1, 2, 4)
    L, H = sum(s * s for s in sch), int(W * 4.0 * 2 / 3)  # GEGLU hidden width at mlp_ratio 4 (the release's)
    attn = 3 * W * W + (W * W + W)                        # qkv without bias, proj with
    mlp = (W * 2 * H + 2 * H) + (H * W + W)
    block = attn + mlp + (W * 6 * W + 6 * W)
    cross = attn + (W * W + Wc * 2 * W + W * W + W) + (W + Wc) + mlp + 2 * (W * 3 * W + 3 * W)
    shared = (C * W + W) + (Wc * W + W) + (256 * W + W + W * W + W) + (W * 2 * W + 2 * W) + (W * C + C)
    head = TransformerHead(C, Wc, W, depth, heads, sch)
    assert sum(p.numel() for p in head.parameters()) == shared + L * Wc + depth * block  # pos_emb: backbone width
    head = TransformerHead(C, Wc, W, depth, heads, sch, cross=True)
    assert sum(p.numel() for p in head.parameters()) == shared + L * Wc + depth * cross
    mlp_block = 2 * (W * W + W) + (W * 3 * W + 3 * W)
    assert sum(p.numel() for p in MLPHead(C, Wc, W, depth).parameters()) == shared + depth * mlp_block
