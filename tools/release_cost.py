"""The sampling cost of the released configurations at their real sizes, with random weights.

    python tools/release_cost.py [--models var-d16,flowar-S] [--device cuda] [--precision bf16] [--cost-batches 1,64]

Each model is built from the release's key/shape listing (``tests/data/release_shapes.pt``, see
``tools/release_shapes.py``) through the loaders' config readers, so its sizes are the released file's,
with this project's initial weights instead of the trained ones (the cost of a sampling call does not
depend on the weights: VAR draws the same number of tokens, FlowAR takes the same Euler steps). It is
sampled with the release's preset and measured as ``python -m compare.released`` measures: ms/img and
images/s at each batch, head NFE, backbone forwards, GFLOPs per image, peak memory; device and dtype named.
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import asdict
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))


def build(name: str):
    """(model, preset) of ``var-d16`` .. ``var-d30`` or ``flowar-S`` / ``-L`` / ``-H`` at the release's size."""
    from test_release_shapes import meta_state

    from flowar import release as fr
    from flowar.autoencoder import ContinuousAE
    from flowar.model import FlowAR
    from var import release as vr
    from var.model import VAR
    from var.tokenizer import MultiScaleVQVAE

    family, size = name.split("-")
    if family == "var":
        vq = vr.vqvae_config_from_release(meta_state("vae"))
        model = VAR(vr.var_config_from_release(meta_state(f"var_{size}"), vq), MultiScaleVQVAE(vq))
        return model, asdict(vr.RELEASE_SAMPLING)
    ae = ContinuousAE(fr.vae_config_from_release(meta_state("kl16")))
    ae.scale_factor.fill_(fr.SCALE_FACTOR)
    return FlowAR(fr.flowar_config_from_release(meta_state(f"flowar_{size}"), ae.config), ae), dict(
        fr.RELEASE_SAMPLING[size])


def main() -> None:
    from compare.released import cost, device_line
    from nextscale.train import pick_device

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default="var-d16,flowar-S")
    p.add_argument("--device", default=None)
    p.add_argument("--precision", default="fp32", choices=("fp32", "bf16"))
    p.add_argument("--cost-batches", default="1,64")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    a.cost_batches = tuple(int(b) for b in a.cost_batches.split(","))
    dev = pick_device(a.device)
    torch.manual_seed(a.seed)
    print(f"{device_line(dev, a.precision)}\n")
    print("| model | params | " + " | ".join(f"ms/img, images/s, peak MB at batch {b}" for b in a.cost_batches)
          + " | head NFE | backbone forwards | GFLOPs/img |")
    print("|---" * (len(a.cost_batches) + 5) + "|")
    for name in a.models.split(","):
        model, kw = build(name)
        n = sum(p.numel() for k, p in model.named_parameters() if not k.startswith(("ae.", "tokenizer.")))
        c = cost(model.to(dev).eval(), kw, a, dev)
        per = " | ".join(f"{v['ms_per_image']:.1f}, {v['images_per_s']:.2f}, {v['peak_mem_mb']:.0f}"
                         for v in c["batches"].values())
        print(f"| {name} | {n / 1e6:.1f}M | {per} | {c['head_nfe']} | {c['backbone_forwards']} | "
              f"{c['gflops_per_image']:.1f} |", flush=True)
        del model


if __name__ == "__main__":
    main()
