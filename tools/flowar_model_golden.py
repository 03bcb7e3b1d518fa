"""Make tests/data/flowar_model_golden.pt from FlowAR's released code (run by hand, not by the tests).

    python tools/flowar_model_golden.py --release PATH/TO/FlowAR [--out tests/data/flowar_model_golden.pt]

Same release checkout and venv as ``tools/flowar_golden.py`` (torch, numpy, scipy, einops, timm). The script
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
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from flowar_golden import _randomize, _release  # noqa: E402
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
    return vae, model


def _record(vae, model, gen) -> dict:
    x = (torch.rand(2, 3, IMAGE, IMAGE, generator=gen) * 2 - 1).half().float()
    labels = torch.tensor([3, 999])
    cases = []

    def recorder(net, target, cond):  # the release calls it once per scale, coarse to fine
        n = target.shape[1]
        xt = torch.randn(target.shape, generator=gen).half().float()
        t = torch.tensor([0.25, 0.936])  # on the release's 1/1000 grid (its head takes an integer index)
        cases.append(dict(side=round(n ** 0.5), x_release=xt, t_release=t, cond_release=cond,
                          v_release=net(xt, t, cond)))
        return torch.zeros(target.shape[0])

    with torch.no_grad():
        posterior = vae.encode(x)
        latent = posterior.mean * SCALE_FACTOR
        decoded = vae.decode(latent / SCALE_FACTOR)
        model.flow_loss_fn = recorder
        model.train()  # the teacher-forced path: block-causal mask, per-scale RoPE
        model(latent, labels)
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
