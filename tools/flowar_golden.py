"""Make tests/data/flowar_release_golden.pt from FlowAR's released code, in float64 (run by hand, not by the tests).

    python tools/flowar_golden.py --release PATH/TO/FlowAR [--out tests/data/flowar_release_golden.pt]

PATH/TO/FlowAR is a checkout of the release: FlowAR's code as released in 2024-12 (github.com/OliverRensu/FlowAR
now holds only a README; the fork github.com/wangqiang9/FlowAR holds that code, commit
5745a964df1d7320e56f0879c75e4f73e88d960f: ``git clone https://github.com/wangqiang9/FlowAR && git -C FlowAR
checkout 5745a96``). Run it in this project's venv (``. .venv/bin/activate``: torch, numpy, einops, scipy)
with timm added without its dependencies (``pip install --no-deps timm==1.0.11``: the release imports timm's
SwiGLU and DropPath; nextscale itself does not depend on timm). Where timm cannot be imported whole (it
imports torchvision, which the CPU torch wheel has no match for on PyPI), the script loads timm's own SwiGLU
and DropPath from timm's source files instead; where tqdm is missing (``models/flowar.py`` imports it for a
progress bar), a stand-in that returns its argument.

The script builds the release's flow head (``SimpleTransformerAdaLN``) at a tiny size with both block
types (``Block_v1``, FlowAR-S; ``Block_v2``, cross=True, FlowAR-L/H), gives every parameter random
values (biases and norm weights included, so nothing is left at an initial zero or one), rounds each
tensor to a grid of 2^-e whose integers fit in int8 (stored as those integers and e: the file stays small
and the values are exact in float32 and float64; ``state[name] = (q, e)`` is q * 2^-e), casts the modules
to float64 and runs them on float64 inputs.

**Computed in float64** (:class:`Float64`, :func:`float64`), but for the time index. The release computes
in float32 in four places whatever its input: ``RMSNorm`` (``x.float()``), ``TimestepEmbedder``'s
frequencies (``dtype=torch.float32``) and its ``t.float()``, and RoPE's frequency buffer (``.float()``, at
construction). While it records, a torch function mode takes ``Tensor.float`` and ``dtype=torch.float32`` as
float64 and raises if any torch operation yields a float tensor that is not float64; the default dtype is
float64 (RoPE's positions ``arange(n) / n``); the RoPE buffers are rebuilt with the release's formula in
float64 after the cast. **Kept float32: the time index** ``(t * 1000).long()`` of
``SimpleTransformerAdaLN.forward`` is taken with t in float32 (``t.float()``, the only float32 allowed), as
every use of the release takes it: its training draws t in float32 and its sampler casts its float64 grid
to the model's float32 before calling it. In float64 the index would be another function of t: the grid
time 0.6799999999999999 of its 50-step grid would give 679 where the release's float32 gives 680.

It records (inputs are float16 values, stored as float16; outputs float64):

- ``cases``: single head evaluations at two scales of different side (4 and 8 on the final 16 x 16 frame)
  for release times on its integer grid (i / 1000, including 1.0; ``times="on"``), off it (float64
  draws; ``"off"``) and just below it (the float32 times just below 1, 0.7, 0.3 and 0.25 whose float32
  1000 t is below the integer: the release's index is i - 1 there; ``"below"``), with the release's
  integer index of each (``index_release``);
- ``solves``: whole-scale solves with the release's ``euler_sampler`` at k = 3: on the S head, num_steps 25
  (its two-segment grid), guidance 0.9, unguided (cfg 1) and guided (cfg 2.5); on the cross head,
  FlowAR-H's setting, num_steps 50 (its uniform grid), guidance 0.7, cfg 2.5; with the times it evaluated
  at, its index there and whether the step was guided (``guided_release``).
"""
from __future__ import annotations

import argparse
import ast
import importlib.util
import sys
import types
from collections import Counter
from contextlib import contextmanager
from pathlib import Path

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_leaves

SCHEDULE = (1, 2, 4, 8, 16)  # the release's RoPE frame is hard-coded to 16: the fixture's last side
CHANNELS, COND_WIDTH = 4, 32
BELOW = (1000, 700, 300, 250)  # release times just below i / 1000


class Float64(TorchFunctionMode):
    """The release's float32 casts (``Tensor.float``) and allocations (``dtype=torch.float32``) taken as
    float64; an operation whose result holds a float tensor of another dtype raises, except inside
    :meth:`float32` (the time index). ``redirected`` counts what was taken as float64, by operation."""

    def __init__(self):
        super().__init__()
        self.redirected: Counter = Counter()
        self.kept: Counter = Counter()
        self._keep = 0

    @contextmanager
    def float32(self, what: str):
        self._keep += 1
        self.kept[what] += 1
        try:
            yield
        finally:
            self._keep -= 1

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if self._keep:
            return func(*args, **kwargs)
        name = getattr(func, "__qualname__", getattr(func, "__name__", str(func)))
        if func is torch.Tensor.float:
            self.redirected[name] += 1
            return args[0].double()
        if kwargs.get("dtype") == torch.float32:
            self.redirected[f"{name}(dtype=torch.float32)"] += 1
            kwargs = {**kwargs, "dtype": torch.float64}
        out = func(*args, **kwargs)
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor) and t.is_floating_point() and t.dtype != torch.float64:
                raise TypeError(f"the release computed {name} in {t.dtype}")
        return out


MODE = Float64()


@contextmanager
def float64():
    """Record in float64: the default dtype float64 and :data:`MODE` (:func:`report` says what it redirected)."""
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        with MODE:
            yield
    finally:
        torch.set_default_dtype(default)


def report() -> None:
    print(f"taken as float64: {dict(MODE.redirected)}; kept float32: {dict(MODE.kept)}")


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


def _index_in_float32(self, x, t, condition):
    """``SimpleTransformerAdaLN.forward`` of the release, its time index taken with t in float32."""
    with MODE.float32("SimpleTransformerAdaLN time index (t.float() * 1000).long()"):
        t = (t.float() * 1000).long()
    x = self.input_proj(x)
    t = self.time_embed(t).unsqueeze(1)
    c = self.cond_embed(condition)
    for block in self.res_blocks:
        x = block(x, t, c, condition)
    return self.final_layer(x, c + t)


def _release(path: Path):
    _timm_shim()
    if importlib.util.find_spec("tqdm") is None:  # models/flowar.py's progress bar
        stand_in = types.ModuleType("tqdm")
        stand_in.tqdm = lambda it, *a, **k: it
        sys.modules["tqdm"] = stand_in
    torch.Tensor.cuda = lambda self, *a, **k: self  # the release's RoPE moves its positions to CUDA
    sys.path.insert(0, str(path))
    from models.flowmodel import SimpleTransformerAdaLN
    from models import sampler
    SimpleTransformerAdaLN.forward = _index_in_float32
    return SimpleTransformerAdaLN, sampler


def to_float64(module: torch.nn.Module) -> torch.nn.Module:
    """``module.double()``, its RoPE frequency buffers rebuilt in float64 with the release's formula
    (``models/rope.py``: 1 / theta^(arange(0, dim, 2) / dim), theta 10000; built in float32 there)."""
    module.double()
    for m in module.modules():
        if type(m).__name__ == "VisionRotaryEmbeddingFast":
            dim = 2 * len(m.freqs)
            m.freqs = 1.0 / (10000 ** (torch.arange(0, dim, 2)[:dim // 2].double() / dim))
    return module


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


def _half(shape, gen: torch.Generator) -> torch.Tensor:
    """Standard normal values rounded to float16 (exact in float32 and float64), stored as float16."""
    return torch.randn(shape, generator=gen).half()


def _indices(net) -> list[torch.Tensor]:
    """The release's integer time index of every call of ``net``, appended as it computes them."""
    seen: list[torch.Tensor] = []
    net.time_embed.register_forward_pre_hook(lambda mod, args: seen.append(args[0].clone()))
    return seen


def below_grid() -> torch.Tensor:
    """For each i of ``BELOW``, the largest float32 time s < i / 1000 whose float32 1000 s is below i (the
    release's index: i - 1), as float64."""
    out = []
    for i in BELOW:
        s = torch.tensor(i / 1000, dtype=torch.float32)
        while int((s * 1000).long()) >= i:
            s = torch.nextafter(s, torch.tensor(0.0))
        out.append(float(s))
    return torch.tensor(out, dtype=torch.float64)


def _case(net, pos, k: int, times: str, t_rel: torch.Tensor, gen: torch.Generator, seen: list) -> dict:
    side, start = SCHEDULE[k], sum(s * s for s in SCHEDULE[:k])
    n, B = side * side, len(t_rel)
    x, h = _half((B, n, CHANNELS), gen), _half((B, n, COND_WIDTH), gen)
    with torch.no_grad(), float64():
        v = net(x.double(), t_rel, h.double() + pos[:, start:start + n])
    return dict(k=k, times=times, x=x, h=h, t_release=t_rel, v_release=v, index_release=seen.pop())


def _solve(net, pos, sampler, k: int, num_steps: int, guidance: float, cfg: float, gen: torch.Generator,
           seen: list) -> dict:
    side, start = SCHEDULE[k], sum(s * s for s in SCHEDULE[:k])
    n, B = side * side, 2
    h = _half((2 * B, n, COND_WIDTH), gen)  # (cond rows; uncond rows)
    x0 = _half((2 * B, n, CHANNELS), gen)
    times, guided = [], []

    def recording(x, t, z):
        times.append(float(t[0]))
        guided.append(bool(torch.equal(x[:B], x[B:])))  # guided: the cond rows twice; else cond and uncond rows
        return net(x, t, z)

    seen.clear()
    with torch.no_grad(), float64():
        out = sampler.euler_sampler(recording, x0.double(), h.double() + pos[:, start:start + n],
                                    num_steps=num_steps, cfg_scale=cfg, guidance_high=guidance)
    return dict(k=k, num_steps=num_steps, cfg=cfg, guidance=guidance, x0=x0, h=h, x1_release=out[:B],
                times_release=times, guided_release=guided, index_release=torch.cat(seen)[::2 * B].clone())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--release", type=Path, required=True, help="a checkout of FlowAR's release")
    p.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "tests/data/flowar_release_golden.pt")
    a = p.parse_args()
    Head, sampler = _release(a.release)
    gen = torch.Generator().manual_seed(0)
    L = sum(s * s for s in SCHEDULE)
    on_grid = torch.tensor([1.0, 0.3, 0.25, 0.936], dtype=torch.float64)
    off_grid = torch.rand(4, generator=gen, dtype=torch.float64) * 0.98 + 0.01
    times = {"on": on_grid, "off": off_grid, "below": below_grid()}
    fixture = {"schedule": SCHEDULE, "channels": CHANNELS, "cond_width": COND_WIDTH}
    for name, width, cross in (("s", 128, False), ("cross", 64, True)):
        torch.manual_seed(0)
        net = Head(CHANNELS, width, CHANNELS, COND_WIDTH, num_res_blocks=1, cross=cross).eval()
        _randomize(net, gen)
        to_float64(net)
        seen = _indices(net)
        q, e = _int8_grid(0.5 * torch.randn(1, L, COND_WIDTH, generator=gen))
        pos = q.double() * 2.0 ** -e
        state = {f"flownet.{k}": v for k, v in net.state_dict().items()}
        state["diffusion_pos_embed_learned"] = pos
        entry = {"width": width, "cross": cross,
                 "state": {k: (_int8_grid(v) if "rope" not in k else v) for k, v in state.items()},
                 "cases": [_case(net, pos, k, kind, t, gen, seen) for k in (2, 3) for kind, t in times.items()]}
        runs = [(25, 0.9, 1.0), (25, 0.9, 2.5)] if not cross else [(50, 0.7, 2.5)]  # S's; H's (a cross head)
        entry["solves"] = [_solve(net, pos, sampler, 3, *run, gen, seen) for run in runs]
        fixture[name] = entry
    a.out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(fixture, a.out)
    report()
    print(f"wrote {a.out} ({a.out.stat().st_size / 1e6:.2f} MB)")


if __name__ == "__main__":
    main()
