"""Make tests/data/flowar_model_golden.pt from FlowAR's released code, in float64 (run by hand, not by the tests).

    python tools/flowar_model_golden.py --release PATH/TO/FlowAR [--out tests/data/flowar_model_golden.pt]

Same release checkout (github.com/wangqiang9/FlowAR at commit 5745a964df1d7320e56f0879c75e4f73e88d960f) and
venv (this project's, with ``pip install --no-deps timm==1.0.11``) as ``tools/flowar_golden.py``. The script
builds, at a tiny size with random int8-grid weights (see ``tools/flowar_golden.py``), the release's whole
model: MAR's ``AutoencoderKL`` (its own ``Encoder``/``Decoder`` classes at ch 32, ch_mult (1, 2), one block
per level, encoder attention at the last level as ``attn_resolutions=(16,)`` gives at 256 px; 4 latent
channels, 32 px images) and ``FlowAR`` (one encoder and one decoder block of width 64, 2 heads, a
one-block ``Block_v1`` flow head; schedule (1, 2, 4, 8, 16)). It records on two fixed images:

- the posterior mean, the latent the release trains on (x 0.2325, the mean instead of a draw) and the
  image the release decodes from it (``vae.decode(latent / 0.2325)``);
- the release's own training pass over that latent (``FlowAR.forward``, label dropout off), with its loss
  function replaced by a recorder: at every scale, the flow head's velocity at a fixed noisy input and
  fixed times, given the condition the release built for that scale.

**Computed in float64** as ``tools/flowar_golden.py`` says (the modules cast to float64 after their weights
are drawn, the RoPE buffers rebuilt in float64, the release's float32 casts taken as float64 by its
:class:`Float64` mode, the images fed in float64); the one piece kept float32 is the head's time index,
taken with t in float32 as the release always takes it. The images and the noisy inputs are float16
values, stored as float16; the recorded outputs are float64.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from flowar_golden import _half, _randomize, _release, float64, report, to_float64  # noqa: E402
from var_golden import _grid_state  # noqa: E402

SCHEDULE = (1, 2, 4, 8, 16)
CHANNELS, WIDTH, IMAGE, SCALE_FACTOR = 4, 64, 32, 0.2325


def _build(path: Path, gen: torch.Generator):
    _release(path)  # timm shim, .cuda() as a no-op, the checkout on sys.path
    from models.flowar import FlowAR
    from models.vae import AutoencoderKL, Decoder, Encoder
    torch.manual_seed(0)
    vae = AutoencoderKL(embed_dim=CHANNELS, ch_mult=(1, 2))
    dd = dict(ch=32, ch_mult=(1, 2), num_res_blocks=1, resolution=IMAGE, z_channels=CHANNELS)
    vae.encoder, vae.decoder = Encoder(attn_resolutions=(16,), **dd), Decoder(attn_resolutions=(), **dd)
    model = FlowAR(img_size=IMAGE, vae_stride=IMAGE // SCHEDULE[-1], encoder_embed_dim=WIDTH, encoder_depth=1,
                   encoder_num_heads=2, decoder_embed_dim=WIDTH, decoder_depth=1, decoder_num_heads=2,
                   vae_embed_dim=CHANNELS, label_drop_prob=0.0, class_num=1000, diffloss_d=1, diffloss_w=64,
                   scale=SCHEDULE)
    for m in (vae, model):
        m.eval()
        _randomize(m, gen)
        to_float64(m)
    return vae, model


def _record(vae, model, gen) -> dict:
    x = (torch.rand(2, 3, IMAGE, IMAGE, generator=gen) * 2 - 1).half()  # exact in any dtype
    labels = torch.tensor([3, 999])
    noisy = [_half((len(x), s * s, CHANNELS), gen) for s in SCHEDULE]  # the head's inputs, one per scale
    cases = []

    def recorder(net, target, cond):  # the release calls it once per scale, coarse to fine
        n = target.shape[1]
        xt = noisy[len(cases)]
        t = torch.tensor([0.25, 0.936], dtype=torch.float64)  # on the release's 1/1000 grid (its index)
        cases.append(dict(side=round(n ** 0.5), x_release=xt, t_release=t, cond_release=cond,
                          v_release=net(xt.double(), t, cond)))
        return torch.zeros(target.shape[0])

    with torch.no_grad(), float64():
        posterior = vae.encode(x.double())
        latent = posterior.mean * SCALE_FACTOR
        decoded = vae.decode(latent / SCALE_FACTOR)
        model.flow_loss_fn = recorder
        model.train()  # the teacher-forced path: block-causal mask, per-scale RoPE
        model(latent, labels)
    report()
    return dict(x=x, labels=labels, posterior_mean=posterior.mean, latent=latent, decoded=decoded, cases=cases)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--release", type=Path, required=True, help="a checkout of FlowAR's release")
    p.add_argument("--out", type=Path,
                   default=Path(__file__).resolve().parents[1] / "tests/data/flowar_model_golden.pt")
    a = p.parse_args()
    gen = torch.Generator().manual_seed(0)
    vae, model = _build(a.release, gen)
    fixture = {"schedule": SCHEDULE, "channels": CHANNELS, "width": WIDTH, "heads": 2, "image_side": IMAGE,
               "scale_factor": SCALE_FACTOR, "vae": {"model": _grid_state(vae)}, "flowar": _grid_state(model),
               **_record(vae, model, gen)}
    a.out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(fixture, a.out)
    print(f"wrote {a.out} ({a.out.stat().st_size / 1e6:.2f} MB)")


if __name__ == "__main__":
    main()
