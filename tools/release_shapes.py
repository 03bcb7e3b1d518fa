"""Make tests/data/release_shapes.pt: the key -> shape listing of every released file (run by hand).

    python tools/release_shapes.py --var PATH/TO/VAR --flowar PATH/TO/FlowAR [--out tests/data/release_shapes.pt]

Builds the releases' own models at their real sizes (FlowAR's on the meta device; VAR's on the CPU, one at a
time, uninitialised: its constructor reads tensors, and VAR-d30 takes 8 GB) and records
each state dict's keys and shapes: VAR's VQVAE (``vae_ch160v4096z32.pth``) and VAR-d16/20/24/30
(``build_vae_var``), FlowAR-S/L/H (``flowar_small`` / ``flowar_large`` / ``flowar_huge``) and MAR's KL-16
VAE (``AutoencoderKL(16, (1, 1, 2, 2, 4))``). The tests check that the loaders place every key of these
layouts at its shape, so the real files load. Same venvs as ``tools/var_golden.py`` and
``tools/flowar_golden.py`` (the two releases both name their package ``models``: each is imported in
its own turn).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))


def _shapes(module: torch.nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in module.state_dict().items()}


def _forget_models() -> None:
    for name in [m for m in sys.modules if m == "models" or m.startswith("models.")]:
        del sys.modules[name]


def var_shapes(path: Path) -> dict:
    sys.path.insert(0, str(path))
    from models import build_vae_var
    from models.var import VAR
    VAR.init_weights = lambda self, **kw: None  # shapes only: skip initialising 2B parameters
    out = {}
    for depth in (16, 20, 24, 30):  # on the CPU (VAR's constructor reads tensors with .item()), one at a time
        vae, var = build_vae_var(device="cpu", depth=depth, flash_if_available=False, fused_if_available=False)
        out["vae"], out[f"var_d{depth}"] = _shapes(vae), _shapes(var)
        del vae, var
    sys.path.remove(str(path))
    _forget_models()
    return out


def flowar_shapes(path: Path) -> dict:
    from flowar_golden import _release
    _release(path)
    from models.flowar import flowar_huge, flowar_large, flowar_small
    from models.vae import AutoencoderKL
    out = {}
    with torch.device("meta"):
        for size, build in (("S", flowar_small), ("L", flowar_large), ("H", flowar_huge)):
            out[f"flowar_{size}"] = _shapes(build(img_size=256, vae_stride=16, vae_embed_dim=16, diffloss_d=
                                                  {"S": 2, "L": 12, "H": 12}[size],
                                                  diffloss_w={"S": 1024, "L": 1024, "H": 1536}[size]))
        out["kl16"] = _shapes(AutoencoderKL(embed_dim=16, ch_mult=(1, 1, 2, 2, 4)))
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--var", type=Path, required=True, help="a checkout of VAR's release")
    p.add_argument("--flowar", type=Path, required=True, help="a checkout of FlowAR's release")
    p.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "tests/data/release_shapes.pt")
    a = p.parse_args()
    shapes = {**var_shapes(a.var), **flowar_shapes(a.flowar)}
    torch.save(shapes, a.out)
    print(f"wrote {a.out} ({a.out.stat().st_size / 1e3:.0f} kB): "
          + ", ".join(f"{k} {len(v)} keys" for k, v in shapes.items()))


if __name__ == "__main__":
    main()
