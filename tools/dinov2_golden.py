"""Make tests/data/dinov2_golden.pt from DINOv2's released code (run by hand, not by the tests).

    PYTHONPATH=PATH/TO/dinov2 python tools/dinov2_golden.py [--out tests/data/dinov2_golden.pt]

PATH/TO/dinov2 is a checkout of github.com/facebookresearch/dinov2 (made at commit b8931f7b, e.g.
``git clone https://github.com/facebookresearch/dinov2 && git -C dinov2 checkout b8931f7b``); its
``dinov2`` package needs only torch for the model (without xformers its attention falls back to plain
torch). The script builds the
release's ``DinoVisionTransformer`` as its hub builds ``dinov2_vitl14`` (LayerScale init 1, MLP FFN, no
block chunks, no registers, interpolation offset 0.1, no antialias) at a tiny size (patch 14, width
32, 2 blocks, 2 heads, a 56-pixel position grid of 4 x 4), gives every parameter random values, and
records its output (the hub model's: the normalised class token) on normalised images of 56 pixels
(the stored grid) and 112 pixels (interpolated to 8 x 8), with the state dict in the release's names,
and the names and shapes of the full ViT-L/14. The model runs in float64 and the outputs are float64 (the
weights and inputs are stored as float32 values, exact in float64); the one float32 piece is the release's
own: it interpolates the position grid in float32 whatever the model's dtype.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch

TINY = dict(img_size=56, patch_size=14, embed_dim=32, depth=2, num_heads=2, mlp_ratio=4.0, init_values=1.0,
            ffn_layer="mlp", block_chunks=0, num_register_tokens=0, interpolate_antialias=False,
            interpolate_offset=0.1)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="tests/data/dinov2_golden.pt")
    a = p.parse_args()
    from dinov2.models.vision_transformer import DinoVisionTransformer

    torch.manual_seed(0)
    model = DinoVisionTransformer(**TINY).eval()
    with torch.no_grad():
        for name, q in model.named_parameters():
            if name.endswith(("norm1.weight", "norm2.weight", "norm.weight")):
                q.uniform_(0.5, 1.5)
            elif name.endswith("gamma"):
                q.uniform_(0.2, 1.2)
            else:
                q.normal_(0, 0.3 if q.ndim > 1 else 0.1)
        state = {k: v.clone() for k, v in model.state_dict().items()}  # float32 values, exact in float64
        model.double()
        inputs = {side: torch.randn(2 if side == 56 else 1, 3, side, side) for side in (56, 112)}  # stored float32
        outputs = {side: model(x.double()) for side, x in inputs.items()}
    with torch.device("meta"):  # the full ViT-L/14 as the hub builds it: names and shapes only
        big = DinoVisionTransformer(**{**TINY, "img_size": 518, "embed_dim": 1024, "depth": 24, "num_heads": 16})
    vitl14 = {k: list(v.shape) for k, v in big.state_dict().items()}
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"config": TINY, "state": state, "inputs": inputs, "outputs": outputs, "vitl14_shapes": vitl14}, out)
    print(f"wrote {out} ({out.stat().st_size / 1e3:.0f} kB): outputs " +
          ", ".join(f"{s}px {tuple(o.shape)}" for s, o in outputs.items()))


if __name__ == "__main__":
    main()
