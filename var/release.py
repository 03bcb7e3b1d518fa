"""VAR's release (Tian et al. 2024, github.com/FoundationVision/VAR): its VQVAE and VAR checkpoints
(``vae_ch160v4096z32.pth``, ``var_d16.pth`` ... ``var_d30.pth``) loaded into this project's
:class:`~var.model.VAR`, and its sampling settings.

:func:`load` reads the sizes from the files' shapes: the VQVAE's coder (an
:class:`~nextscale.ldm.LDMConfig`), its vocabulary and shared phi convs; VAR's width (64 d), depth d, heads
(d, from the shape of the ``attn_l2_norm`` scales ``scale_mul_1H11``), classes and its ten-scale schedule. A
VAR trained without ``attn_l2_norm`` has no such scales, so its shapes do not tell its heads: it loads only
with ``heads=`` given, and its attention logits are scaled by 0.25 / sqrt(head_dim) as the release's are.
Teacher-forced logits, token maps and decoded images equal the release's in float64
(``tests/test_var_release.py``, fixtures made by ``tools/var_golden.py`` from the release's code). The name
map (release -> here):

| release | here |
|---|---|
| ``encoder.*`` / ``decoder.*`` (ldm names) | the same |
| ``quant_conv`` / ``post_quant_conv`` | ``encoder.quant_conv`` / ``decoder.post_quant_conv`` |
| ``quantize.embedding`` / ``quantize.quant_resi.qresi_ls.i`` | ``codebook`` / ``phis.i`` |
| ``class_emb``, ``pos_start`` / ``pos_1LC`` | ``backbone.class_emb``, ``pos_start`` / ``pos_emb`` |
| ``lvl_embed`` / ``word_embed`` | ``backbone.level_emb`` / ``word_emb`` |
| ``blocks.i.attn.mat_qkv`` + ``q_bias``, ``v_bias`` (k bias 0) | ``backbone.blocks.i.qkv`` |
| ``blocks.i.attn.scale_mul_1H11`` / ``proj`` | ``backbone.blocks.i.qk_log_scale`` / ``proj`` |
| ``blocks.i.ffn.fc1``, ``fc2`` | ``backbone.blocks.i.mlp.0``, ``mlp.2`` |
| ``blocks.i.ada_lin.1`` (g1, g2, sc1, sc2, sh1, sh2) | ``backbone.blocks.i.ada.1`` (sh1, sc1, g1, sh2, sc2, g2) |
| ``head_nm.ada_lin.1`` rows (scale, shift) / ``head`` | ``backbone.ada_out.1`` rows (shift, scale) / ``head`` |

Where it differs from the release: the qkv projection here has a key bias, set to zero (the release has
none; softmax ignores a constant per query). Not read from the files (the release's constants): phi's
residual ratio 0.5, bicubic upsampling, label dropout 0.1, stochastic depth 0.1 d / 24. Buffers the release
derives (``lvl_1L``, the attention mask, ``zero_k_bias``, the VQVAE's hit counters) are ignored.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Mapping

import torch

from nextscale.backbone import BackboneConfig
from nextscale.config import check_int
from nextscale.ldm import ldm_config_from_state
from nextscale.release import (ADA_ROWS, Renamed, check_state, count_under, load_state_file, permute_rows, rename,
                                state_shape)

from .model import VAR, VARConfig, VARSampling
from .tokenizer import MultiScaleVQVAE, VQConfig

SCHEDULE = (1, 2, 3, 4, 5, 6, 8, 10, 13, 16)
# the release's FID evaluation (README): cfg 1.5 ramped linearly over the scales, top-k 900, top-p 0.96
RELEASE_SAMPLING = VARSampling(cfg_scale=1.5, cfg_schedule="linear", top_k=900, top_p=0.96)
_IGNORED = re.compile(r"^(lvl_1L|attn_bias_for_masking|blocks\.\d+\.attn\.zero_k_bias|quantize\.ema_vocab_hit_SV)$")


def vqvae_config_from_release(state: Mapping[str, torch.Tensor]) -> VQConfig:
    """The :class:`VQConfig` of a release VQVAE state dict, read from its shapes."""
    coder = ldm_config_from_state(state, SCHEDULE[-1], gaussian=False, what="VAR VQVAE")
    phis = count_under(state, "quantize.quant_resi.qresi_ls.")
    if not phis:
        raise ValueError("the VQVAE's phi convs must be partially shared (quantize.quant_resi.qresi_ls.*, the "
                         "release's share_quant_resi=4); this file has none")
    vocab = state_shape(state, "quantize.embedding.weight", "VAR VQVAE", 2)[0]
    return VQConfig(ae=coder, schedule=SCHEDULE, vocab_size=vocab, phi_convs=phis, phi_residual_ratio=0.5,
                    upsample="bicubic")


_VQVAE_RENAMES = [(r"^quant_conv\.", "encoder.quant_conv."), (r"^post_quant_conv\.", "decoder.post_quant_conv."),
                  (r"^quantize\.embedding\.", "codebook."), (r"^quantize\.quant_resi\.qresi_ls\.", "phis.")]


def vqvae_state_from_release(state: Mapping[str, torch.Tensor]) -> Renamed:
    """Release VQVAE names -> :class:`MultiScaleVQVAE` names (values unchanged)."""
    out = Renamed()
    for k, v in state.items():
        if not _IGNORED.match(k):
            new = k
            for pat, rep in _VQVAE_RENAMES:
                new = re.sub(pat, rep, new)
            out.put(new, v, k)
    return out


def _release_heads(state: Mapping[str, torch.Tensor], heads: int | None) -> tuple[int, bool]:
    """(heads, qk_norm) as the release's ``SelfAttention`` has them: with ``attn_l2_norm`` the heads are the
    H of its (1, H, 1, 1) ``scale_mul_1H11``; without, nothing in the file tells them and ``heads`` must."""
    if heads is not None:
        check_int("heads", heads, 1)
    key = "blocks.0.attn.scale_mul_1H11"
    if key in state:
        shape = state_shape(state, key, "VAR", 4)
        if (shape[0], shape[2], shape[3]) != (1, 1, 1):
            raise ValueError(f"the VAR file's {key} has shape {tuple(shape)}, expected (1, heads, 1, 1)")
        found = shape[1]
        if heads is not None and heads != found:
            raise ValueError(f"heads={heads} disagrees with the VAR file: its {key} has shape "
                             f"{tuple(shape)}, {found} heads")
        return found, True
    if heads is None:
        raise ValueError(f"heads: this VAR file was trained without attn_l2_norm (it has no {key}), so its "
                         "shapes do not tell its number of heads; give heads= (the release's num_heads)")
    return heads, False


def var_config_from_release(state: Mapping[str, torch.Tensor], vq: VQConfig, heads: int | None = None) -> VARConfig:
    """The :class:`VARConfig` of a release VAR state dict on the tokenizer ``vq``, read from its shapes
    (``heads``: needed for a file without ``attn_l2_norm``, see :func:`load`)."""
    what = "VAR"
    classes, width = state_shape(state, "class_emb.weight", what, 2)
    depth = count_under(state, "blocks.")
    heads, qk_norm = _release_heads(state, heads)
    # the release's attention scale: 1 after l2-normalising q, k (ours: the learned scale times sqrt(d) over
    # SDPA's 1/sqrt(d)), else 0.25 / sqrt(head_dim)
    bb = BackboneConfig(schedule=SCHEDULE, in_dim=state_shape(state, "word_embed.weight", what, 2)[1],
                        num_classes=classes - 1, width=width, depth=depth, heads=heads, qk_norm=qk_norm,
                        attn_scale=1.0 if qk_norm else 0.25, drop_path=0.1 * depth / 24)
    return VARConfig(backbone=bb, vocab_size=state_shape(state, "head.weight", what, 2)[0])


_VAR_RENAMES = [
    (r"^(class_emb|pos_start)\b", r"backbone.\1"), (r"^pos_1LC$", "backbone.pos_emb"),
    (r"^lvl_embed\.", "backbone.level_emb."), (r"^word_embed\.", "backbone.word_emb."),
    (r"^blocks\.(\d+)\.attn\.mat_qkv\.", r"backbone.blocks.\1.qkv."),
    (r"^blocks\.(\d+)\.attn\.scale_mul_1H11$", r"backbone.blocks.\1.qk_log_scale"),
    (r"^blocks\.(\d+)\.attn\.proj\.", r"backbone.blocks.\1.proj."),
    (r"^blocks\.(\d+)\.ffn\.fc1\.", r"backbone.blocks.\1.mlp.0."),
    (r"^blocks\.(\d+)\.ffn\.fc2\.", r"backbone.blocks.\1.mlp.2."),
    (r"^blocks\.(\d+)\.ada_lin\.1\.", r"backbone.blocks.\1.ada.1."),
    (r"^head_nm\.ada_lin\.1\.", "backbone.ada_out.1."), (r"^head\.", "head."),
]
_HEAD_ORDER = (1, 0)             # ours (shift, scale) from the release's (scale, shift)


def var_state_from_release(state: Mapping[str, torch.Tensor]) -> Renamed:
    """Release VAR names -> :class:`VAR` names (backbone and head; the tokenizer comes from the VQVAE file)."""
    out, qkv_bias = Renamed(), {}
    for k, v in state.items():
        if _IGNORED.match(k):
            continue
        if m := re.match(r"^blocks\.(\d+)\.attn\.([qv])_bias$", k):
            qkv_bias.setdefault(m[1], {})[m[2]] = v
            continue
        new = rename(k, _VAR_RENAMES)
        if new is None:
            out.put(k, v, k)  # no place here: check_state names it
            continue
        if ".ada.1." in new:
            v = permute_rows(v, ADA_ROWS)
        elif ".ada_out.1." in new:
            v = permute_rows(v, _HEAD_ORDER)
        out.put(new, v, k)
    for i, b in qkv_bias.items():
        if set(b) != {"q", "v"}:
            raise ValueError(f"blocks.{i}.attn needs both q_bias and v_bias, got {sorted(b)}")
        out.put(f"backbone.blocks.{i}.qkv.bias", torch.cat([b["q"], torch.zeros_like(b["q"]), b["v"]]),
                f"blocks.{i}.attn.q_bias")
    return out


def from_release_states(vae_state: Mapping, var_state: Mapping, heads: int | None = None) -> VAR:
    """A :class:`VAR` (with its tokenizer) holding the release's weights, sized from their shapes (``heads``:
    see :func:`load`)."""
    vq_cfg = vqvae_config_from_release(vae_state)
    tok = MultiScaleVQVAE(vq_cfg)
    check_state(tok, vqvae_state_from_release(vae_state), "the VQVAE file",
                keep=("hits_since_restart", "train_steps"))
    model = VAR(var_config_from_release(var_state, vq_cfg, heads), tok)
    state = var_state_from_release(var_state)
    for k, v in tok.state_dict().items():
        state.put(f"tokenizer.{k}", v, f"tokenizer.{k}")
    check_state(model, state, "the VAR file")
    return model.eval()


def load(vae_path: str | Path, var_path: str | Path, map_location="cpu", heads: int | None = None) -> VAR:
    """VAR-d16/20/24/30 from the release's files (``vae_ch160v4096z32.pth``, ``var_d{16,20,24,30}.pth``).
    A file that does not fit is refused with a ``ValueError`` naming its first mismatching key and shape.

    ``heads``: the released files (and any trained with ``attn_l2_norm``, the release's default for them)
    give their heads in the shape of ``scale_mul_1H11``, and a ``heads`` that disagrees is refused; a file
    trained without ``attn_l2_norm`` does not, and loads only with ``heads`` given."""
    return from_release_states(load_state_file(vae_path, "vae_path", map_location),
                               load_state_file(var_path, "var_path", map_location), heads)
