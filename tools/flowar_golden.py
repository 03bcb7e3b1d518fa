"""Make tests/data/flowar_release_golden.pt from FlowAR's released code (run by hand, not by the tests).

    python tools/flowar_golden.py --release PATH/TO/FlowAR [--out tests/data/flowar_release_golden.pt]

PATH/TO/FlowAR is a checkout of the release (github.com/OliverRensu/FlowAR, or a fork that holds its
2024-12 commits, e.g. wangqiang9/FlowAR). Run it in a separate venv with torch and timm (the release
imports timm's SwiGLU and DropPath): ``pip install torch numpy einops && pip install --no-deps timm``;
nextscale itself does not depend on timm. Where timm cannot be imported whole (it imports torchvision,
which the CPU torch wheel has no match for on PyPI), the script loads timm's own SwiGLU and DropPath
from timm's source files instead.

The script builds the release's flow head (``SimpleTransformerAdaLN``) at a tiny size with both block
types (``Block_v1``, FlowAR-S; ``Block_v2``, cross=True, FlowAR-L/H), gives every parameter random
values (biases and norm weights included, so nothing is left at an initial zero or one), rounds each
tensor to a grid of 2^-e whose integers fit in int8 (stored as those integers and e: the file stays small
and the values are exact; ``state[name] = (q, e)`` is q * 2^-e), and records:

- single head evaluations at two scales of different side (4 and 8 on the final 16 x 16 frame) for
  release times on its integer grid (i / 1000, including 1.0) and off it;
- whole-scale solves with the release's ``euler_sampler`` (num_steps 25, guidance 0.9), unguided (cfg 1)
  and guided (cfg 2.5), with the times it evaluated at.
"""
from __future__ import annotations

import argparse
import ast
import importlib.util
import sys
import types
from pathlib import Path

import torch

SCHEDULE = (1, 2, 4, 8, 16)  # the release's RoPE frame is hard-coded to 16: the fixture's last side
CHANNELS, COND_WIDTH = 4, 32


def _timm_shim() -> None:
    """Provide timm.layers.SwiGLU and timm.models.vision_transformer.DropPath from timm's own source."""
    try:
        import timm.layers  # noqa: F401
        return
    except Exception:  # timm present but its package import needs torchvision
        pass
    root = Path(importlib.util.find_spec("timm").submodule_search_locations[0])
    ns: dict = {}
    exec(compile("from typing import *\nimport torch\nfrom torch import nn\nimport torch.nn.functional as F\n"
                 "from itertools import repeat\nimport collections.abc", "shim", "exec"), ns)
    for rel, names in (("layers/helpers.py", ("_ntuple",)), ("layers/mlp.py", ("SwiGLU",)),
                       ("layers/drop.py", ("drop_path", "DropPath"))):
        tree = ast.parse((root / rel).read_text())
        nodes = [n for n in tree.body if getattr(n, "name", None) in names]
        exec(compile(ast.Module(body=nodes, type_ignores=[]), str(root / rel), "exec"), ns)
        if rel.endswith("helpers.py"):
            ns["to_2tuple"] = ns["_ntuple"](2)
    timm = types.ModuleType("timm")
    layers, models, vit = (types.ModuleType(n) for n in ("timm.layers", "timm.models",
                                                         "timm.models.vision_transformer"))
    layers.SwiGLU, vit.DropPath = ns["SwiGLU"], ns["DropPath"]
    timm.layers, timm.models, models.vision_transformer = layers, models, vit
    sys.modules.update({"timm": timm, "timm.layers": layers, "timm.models": models,
                        "timm.models.vision_transformer": vit})


def _release(path: Path):
    _timm_shim()
    torch.Tensor.cuda = lambda self, *a, **k: self  # the release's RoPE moves its positions to CUDA
    sys.path.insert(0, str(path))
    from models.flowmodel import SimpleTransformerAdaLN
    from models import sampler
    return SimpleTransformerAdaLN, sampler


def _int8_grid(p: torch.Tensor) -> tuple[torch.Tensor, int]:
    """(q int8, e) with q * 2^-e the nearest such value to p, e as large as int8 allows."""
    e = int(torch.floor(torch.log2(127 / p.abs().max().clamp_min(1e-12))))
    return torch.round(p * 2.0 ** e).clamp(-127, 127).to(torch.int8), e


def _randomize(module: torch.nn.Module, gen: torch.Generator) -> None:
    with torch.no_grad():
        for name, p in module.named_parameters():
            if p.dim() >= 2:
                p.copy_(torch.randn(p.shape, generator=gen) / p.shape[1] ** 0.5)
            elif name.endswith("bias"):
                p.copy_(0.1 * torch.randn(p.shape, generator=gen))
            else:  # RMSNorm weights
                p.copy_(1 + 0.1 * torch.randn(p.shape, generator=gen))
            q, e = _int8_grid(p)
            p.copy_(q.float() * 2.0 ** -e)


def _case(net, pos, k: int, t_rel: torch.Tensor, gen: torch.Generator) -> dict:
    side, start = SCHEDULE[k], sum(s * s for s in SCHEDULE[:k])
    n, B = side * side, len(t_rel)
    x = torch.randn(B, n, CHANNELS, generator=gen).half().float()
    h = torch.randn(B, n, COND_WIDTH, generator=gen).half().float()
    with torch.no_grad():
        v = net(x, t_rel, h + pos[:, start:start + n])
    return dict(k=k, x=x, h=h, t_release=t_rel, v_release=v)


def _solve(net, pos, sampler, k: int, cfg: float, gen: torch.Generator) -> dict:
    side, start = SCHEDULE[k], sum(s * s for s in SCHEDULE[:k])
    n, B = side * side, 2
    h = torch.randn(2 * B, n, COND_WIDTH, generator=gen).half().float()  # (cond rows; uncond rows)
    x0 = torch.randn(2 * B, n, CHANNELS, generator=gen).half().float()
    seen = []

    def recording(x, t, z):
        seen.append(float(t[0]))
        return net(x, t, z)

    with torch.no_grad():
        out = sampler.euler_sampler(recording, x0, h + pos[:, start:start + n], num_steps=25, cfg_scale=cfg,
                                    guidance_high=0.9)
    return dict(k=k, cfg=cfg, guidance=0.9, x0=x0, h=h, x1_release=out[:B].float(), times_release=seen)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--release", type=Path, required=True, help="a checkout of FlowAR's release")
    p.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "tests/data/flowar_release_golden.pt")
    a = p.parse_args()
    Head, sampler = _release(a.release)
    gen = torch.Generator().manual_seed(0)
    L = sum(s * s for s in SCHEDULE)
    on_grid, off_grid = torch.tensor([1.0, 0.3, 0.25, 0.936]), torch.rand(4, generator=gen) * 0.98 + 0.01
    fixture = {"schedule": SCHEDULE, "channels": CHANNELS, "cond_width": COND_WIDTH}
    for name, width, cross in (("s", 128, False), ("cross", 64, True)):
        torch.manual_seed(0)
        net = Head(CHANNELS, width, CHANNELS, COND_WIDTH, num_res_blocks=1, cross=cross).eval()
        _randomize(net, gen)
        q, e = _int8_grid(0.5 * torch.randn(1, L, COND_WIDTH, generator=gen))
        pos = q.float() * 2.0 ** -e
        state = {f"flownet.{k}": v for k, v in net.state_dict().items()}
        state["diffusion_pos_embed_learned"] = pos
        entry = {"width": width, "cross": cross,
                 "state": {k: (_int8_grid(v) if "rope" not in k else v) for k, v in state.items()},
                 "cases": [_case(net, pos, k, t, gen) for k in (2, 3) for t in (on_grid, off_grid)]}
        if not cross:
            entry["solves"] = [_solve(net, pos, sampler, 3, cfg, gen) for cfg in (1.0, 2.5)]
        fixture[name] = entry
    a.out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(fixture, a.out)
    print(f"wrote {a.out} ({a.out.stat().st_size / 1e6:.2f} MB)")


if __name__ == "__main__":
    main()
