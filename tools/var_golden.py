"""Make tests/data/var_release_golden.pt from VAR's released code, in float64 (run by hand, not by the tests).

    python tools/var_golden.py --release PATH/TO/VAR [--out tests/data/var_release_golden.pt]

PATH/TO/VAR is a checkout of the release, github.com/FoundationVision/VAR at commit
78b95394fc5896192e3a003e4b295f8ea743c48f (``git clone https://github.com/FoundationVision/VAR && git -C VAR
checkout 78b9539``). Run it in this project's venv (torch, numpy) with ``huggingface_hub`` added
(``pip install huggingface_hub``: the release's ``models/var.py`` imports its ``PyTorchModelHubMixin``);
the VAR release needs nothing else (no timm, no flash-attn, no xformers: without them it takes its plain
paths). The script imports ``_int8_grid`` and ``_randomize`` from ``tools/flowar_golden.py``.

The script builds the release's VQVAE and VAR at a tiny size on the release's ten-scale schedule: the
VQVAE's own ``Encoder``/``Decoder`` classes at ch 32, ch_mult (1, 2) and one block per level (the
release fixes ch_mult (1, 1, 2, 2, 4), which would make the file large; the loader reads both from
shapes), four shared phi convs, and a 2-block VAR with ``attn_l2_norm`` (width 64, 2 heads). Every
parameter gets random values on an int8 grid (stored as those integers and an exponent, see
``tools/flowar_golden.py``), so the file is small and the values exact in float32 and float64; then the
modules are cast to float64 and run on float64 inputs.

**Everything is computed in float64.** The release casts to float32 in a few places (``VAR.forward``'s
``x_BLCv_wo_first_l.float()`` and ``x_BLC.float()``, ``VAR.get_logits``' three ``.float()``, and the f_hat
buffer ``new_zeros(..., dtype=torch.float32)`` of ``VectorQuantizer2.idxBl_to_var_input``, into which
float64 terms would be added in place, rounding them to float32; ``embed_to_fhat`` has the same buffer but
is not reached here). While it records, a torch function mode (``flowar_golden.Float64``) takes those casts and
allocations as float64 (it prints how many) and raises if any torch operation still yields a float tensor
that is not float64; the default dtype is float64 too (the label-dropout draw ``torch.rand(B)``). Nothing
of the release had to stay in float32.

It records on two fixed images and labels (all floating outputs float64):

- the encoder latent f, the token maps the quantizer draws from it, the teacher-forcing input, the
  decoded f and the reconstruction from the tokens;
- VAR's teacher-forced logits (label dropout off);
- ``autoregressive_infer_cfg`` images and token maps at a fixed seed (cfg 1.5, top-k 20, top-p 0.9);
- ``no_qk_norm``: a second 2-block VAR of width 64 built with ``attn_l2_norm=False`` and 4 heads (not
  width / 64: the file's shapes do not tell the heads, and the release scales its attention logits by
  0.25 / sqrt(head_dim)), on the same VQVAE: its weights (``var``), ``heads`` and teacher-forced logits.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from flowar_golden import _int8_grid, _randomize, float64, report  # noqa: E402

SCHEDULE = (1, 2, 3, 4, 5, 6, 8, 10, 13, 16)
V, CVAE, CH, CH_MULT, CLASSES = 32, 8, 32, (1, 2), 10
SAMPLING = dict(g_seed=7, cfg=1.5, top_k=20, top_p=0.9)
NO_QK_NORM = dict(depth=2, embed_dim=64, num_heads=4)  # heads != width / 64


def _release(path: Path):
    sys.path.insert(0, str(path))
    from models import var as var_module
    from models.basic_vae import Decoder, Encoder
    from models.var import VAR
    from models.vqvae import VQVAE
    return VQVAE, VAR, Encoder, Decoder, var_module


def _var(VAR, vae, gen, **size):
    """A release VAR on ``vae`` with random int8-grid weights, in float64, label dropout off."""
    var = VAR(vae, num_classes=CLASSES, patch_nums=SCHEDULE, flash_if_available=False, fused_if_available=False,
              **size)
    var.eval()
    _randomize(var, gen)
    var.cond_drop_rate = 0.0  # the release drops labels even in eval mode
    return var.double()


def _build(VQVAE, VAR, Encoder, Decoder, gen):
    torch.manual_seed(0)
    vae = VQVAE(vocab_size=V, z_channels=CVAE, ch=CH, share_quant_resi=4, v_patch_nums=SCHEDULE, test_mode=False)
    dd = dict(ch=CH, ch_mult=CH_MULT, num_res_blocks=1, dropout=0.0, z_channels=CVAE, using_sa=True, using_mid_sa=True)
    vae.encoder, vae.decoder = Encoder(double_z=False, **dd), Decoder(**dd)
    vae.eval()
    _randomize(vae, gen)
    var = _var(VAR, vae, gen, depth=2, embed_dim=64, num_heads=2, attn_l2_norm=True)
    return vae.double(), var


def _images(gen) -> torch.Tensor:
    side = 16 * 2 ** (len(CH_MULT) - 1)
    return (torch.rand(2, 3, side, side, generator=gen) * 2 - 1).half().double()  # exact in any dtype


def _record(vae, var, var_module, x) -> dict:
    labels = torch.tensor([3, 7])
    drawn = []
    release_draw = var_module.sample_with_top_k_top_p_

    def recording(*a, **k):
        idx = release_draw(*a, **k)
        drawn.append(idx[:, :, 0].clone())
        return idx

    with torch.no_grad():
        f = vae.quant_conv(vae.encoder(x))
        tokens = vae.img_to_idxBl(x)
        x_in = vae.quantize.idxBl_to_var_input(tokens)
        out = dict(x=x, labels=labels, latent=f, tokens=tokens, teacher_input=x_in,
                   decoded=vae.decoder(vae.post_quant_conv(f)),
                   reconstruction=vae.img_to_reconstructed_img(x, last_one=True),
                   logits=var(labels, x_in))
        var_module.sample_with_top_k_top_p_ = recording
        try:
            images = var.autoregressive_infer_cfg(2, labels, **SAMPLING)
        finally:
            var_module.sample_with_top_k_top_p_ = release_draw
    out.update(sampling=SAMPLING, sampled_images=images, sampled_tokens=drawn)
    return out


def _grid_state(module: torch.nn.Module) -> dict:
    """The state dict in the release's names: parameters as (int8, exponent), small buffers as they are,
    large ones (the attention mask) as their shape only (the loader ignores them; the tests rebuild them)."""
    params = dict(module.named_parameters())
    return {k: _int8_grid(v) if k in params else (v if v.numel() < 10_000 else torch.Size(v.shape))
            for k, v in module.state_dict().items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--release", type=Path, required=True, help="a checkout of VAR's release")
    p.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "tests/data/var_release_golden.pt")
    a = p.parse_args()
    VQVAE, VAR, Encoder, Decoder, var_module = _release(a.release)
    gen = torch.Generator().manual_seed(0)
    vae, var = _build(VQVAE, VAR, Encoder, Decoder, gen)
    x = _images(gen)
    with float64():
        fixture = {"schedule": SCHEDULE, "vocab_size": V, "num_classes": CLASSES, "vae": _grid_state(vae),
                   "var": _grid_state(var), **_record(vae, var, var_module, x)}
        plain = _var(VAR, vae, gen, attn_l2_norm=False, **NO_QK_NORM)
        with torch.no_grad():
            fixture["no_qk_norm"] = {"var": _grid_state(plain), "heads": NO_QK_NORM["num_heads"],
                                     "logits": plain(fixture["labels"], fixture["teacher_input"])}
    report()
    a.out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(fixture, a.out)
    print(f"wrote {a.out} ({a.out.stat().st_size / 1e6:.2f} MB)")


if __name__ == "__main__":
    main()
