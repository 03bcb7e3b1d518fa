"""Make tests/data/flowar_ar_golden.pt from FlowAR's released AR transformer, in float64 (run by hand, not by
the tests).

    python tools/flowar_ar_golden.py --release PATH/TO/FlowAR [--out tests/data/flowar_ar_golden.pt]

The companion of ``tools/flowar_golden.py`` (the flow head's fixture), whose helpers it uses: the same
release checkout (github.com/wangqiang9/FlowAR at commit 5745a964df1d7320e56f0879c75e4f73e88d960f, the
2024-12 release of github.com/OliverRensu/FlowAR) and venv (this project's, with ``pip install --no-deps
timm==1.0.11``; ``models/flowar.py`` also imports numpy, scipy, einops and tqdm, for which a stand-in is
used where it is missing).

The script builds the release's ``FlowAR`` (``models/flowar.py``) at a tiny size: width 32, 2 heads
(head dim 16), 2 encoder + 2 decoder blocks, 8 latent channels, the release's schedule 1, 2, 4, 8, 16 with
img_size 256 and vae_stride 16 (its RoPE frame is hard-coded to 16), and a flow head of width 64 and one
block (present only because the release's state dict holds it: the port must skip it). Every parameter gets
random values rounded to an int8 grid (``tools/flowar_golden.py``'s ``_randomize``: ``state[name] = (q, e)``
is q * 2^-e); the attention mask buffer is stored as the bool ``mask == 0`` (it holds 0 and -inf), RoPE
frequency buffers as they are (float64, rebuilt so by ``to_float64``). Width 32 keeps the file under 1 MB
(the mask and outputs are most of it).

**Everything is computed in float64**, as ``tools/flowar_golden.py`` says (its :class:`Float64` mode, the
RoPE buffers rebuilt in float64): the modules are cast to float64 after their weights are drawn, the input
(float16 values, stored as float16) is fed in float64, and the release's float32 casts (its ``RMSNorm``'s
``x.float()``) are taken as float64. Nothing of the AR transformer had to stay in float32.

It records (float64), for two labels (a class and the null class 1000) and one fixed input per scale 2..5:

- ``h_teacher``: the teacher-forced backbone output: the release in train() mode (its block-causal mask,
  RoPE per scale) through ``forward_mae_encoder`` and ``forward_mae_decoder`` on
  [class_emb(y), z_proj(x)], read at ``decoder_norm`` (before it adds ``diffusion_pos_embed_learned``,
  which the flow head owns here);
- ``h_cached``: the same inputs fed scale by scale in eval() mode, as ``sample_tokens`` feeds them (its
  per-block k/v cache), concatenated over the scales.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch

from flowar_golden import _int8_grid, _randomize, _release, float64, report, to_float64

SCHEDULE = (1, 2, 4, 8, 16)  # the release's RoPE frame is hard-coded to 16: the fixture's last side
CHANNELS, WIDTH, HEADS, DEPTH_PER_STACK = 8, 32, 2, 2
LABELS = (3, 1000)  # a class and the release's null class


def _release_ar(path: Path):
    _release(path)  # timm shim, RoPE's .cuda() made a no-op, the release on sys.path
    from models.flowar import FlowAR
    torch.manual_seed(0)
    return FlowAR(img_size=256, vae_stride=16, patch_size=1, encoder_embed_dim=WIDTH, encoder_depth=DEPTH_PER_STACK,
                  encoder_num_heads=HEADS, decoder_embed_dim=WIDTH, decoder_depth=DEPTH_PER_STACK,
                  decoder_num_heads=HEADS, mlp_ratio=4., vae_embed_dim=CHANNELS, diffloss_d=1, diffloss_w=64,
                  scale=SCHEDULE)


def _recording(model) -> list[torch.Tensor]:
    """Outputs of ``decoder_norm``, appended as the release computes them."""
    seen: list[torch.Tensor] = []
    model.decoder_norm.register_forward_hook(lambda mod, args, out: seen.append(out.detach().clone()))
    return seen


@torch.no_grad()
def _teacher_forced(model, x_in, y, seen) -> torch.Tensor:
    model.train()  # the release's training path: the whole sequence under its block-causal mask
    x_in = x_in.double()
    cls = model.class_emb(y)
    x = torch.cat([cls[:, None], model.z_proj(x_in)], dim=1)  # its forward(): the class token, then z_proj(x)
    model.forward_mae_decoder(model.forward_mae_encoder(x, cls, model.mask), cls, model.mask)
    return seen.pop()


@torch.no_grad()
def _cached(model, x_in, y, seen) -> torch.Tensor:
    model.eval()  # the release's sampling path: one scale per call, keys and values cached per block
    x_in = x_in.double()
    for blk in list(model.encoder_blocks) + list(model.decoder_blocks):
        blk.attn.clear_cache()
    cls, start = model.class_emb(y), 0
    for k, side in enumerate(SCHEDULE):
        end = start + side * side
        x = cls[:, None] if k == 0 else model.z_proj(x_in[:, start - 1:end - 1])
        model.forward_mae_decoder(model.forward_mae_encoder(x, cls, None, start, end), cls, None, start, end)
        start = end
    out = torch.cat(seen, dim=1)
    seen.clear()
    return out


def _stored(name: str, value: torch.Tensor):
    if name == "mask":  # 0 where allowed, -inf elsewhere: stored as the bool of where it is 0
        return value == 0
    return value if name.endswith("rope.freqs") else _int8_grid(value)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--release", type=Path, required=True, help="a checkout of FlowAR's release")
    p.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "tests/data/flowar_ar_golden.pt")
    a = p.parse_args()
    model = _release_ar(a.release)
    gen = torch.Generator().manual_seed(0)
    _randomize(model, gen)
    to_float64(model)
    L = sum(s * s for s in SCHEDULE)
    x_in = torch.randn(len(LABELS), L - 1, CHANNELS, generator=gen).half()  # exact in any dtype
    y = torch.tensor(LABELS)
    seen = _recording(model)
    with float64():
        h_teacher = _teacher_forced(model, x_in, y, seen)
        h_cached = _cached(model, x_in, y, seen)
    report()
    print(f"release: cached vs teacher-forced max |diff| {(h_cached - h_teacher).abs().max():.2e}")
    fixture = {"schedule": SCHEDULE, "channels": CHANNELS, "width": WIDTH, "heads": HEADS,
               "depth_per_stack": DEPTH_PER_STACK, "labels": y, "x_in": x_in,
               "h_teacher": h_teacher, "h_cached": h_cached,
               "state": {k: _stored(k, v) for k, v in model.state_dict().items()}}
    a.out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(fixture, a.out)
    print(f"wrote {a.out} ({a.out.stat().st_size / 1e6:.2f} MB)")


if __name__ == "__main__":
    main()
