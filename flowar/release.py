"""FlowAR's release (Ren et al. 2025, github.com/OliverRensu/FlowAR): its model and MAR's KL-16 VAE (Li et
al. 2024) in nextscale, its sizes and its sampler settings.

:func:`load` reads a released ``checkpoint-last.pth`` and ``kl16.ckpt`` into a :class:`~flowar.model.FlowAR`
on a :class:`~flowar.autoencoder.ContinuousAE` (the ldm coder with a Gaussian posterior, latents x 0.2325
as the release), sizes read from the shapes; its whole training pass gives the release's velocities
(``tests/test_flowar_release_model.py``, fixture made by ``tools/flowar_model_golden.py``). The VAE's
names are ldm's, with ``quant_conv`` / ``post_quant_conv`` inside the encoder / decoder and each
attention's ``q``, ``k``, ``v`` stacked into ``qkv``. Where it differs from the release: ``encode`` takes
the posterior mean where the release's training draws from the posterior.

:func:`head_state_from_release` maps the release's flow-head weights (``flownet.*`` and
``diffusion_pos_embed_learned`` of a FlowAR state dict, as in its ``checkpoint-last.pth``) onto
:class:`flowar.heads.TransformerHead`; with ``FlowARConfig(head_time="index")`` the two compute the same
velocity (``tests/test_flowar_release.py``, fixtures made by ``tools/flowar_golden.py`` from the
release's code). The name map:

| release | here |
|---|---|
| ``diffusion_pos_embed_learned`` | ``pos_emb`` |
| ``time_embed.mlp.{0,2}`` / ``cond_embed`` / ``input_proj`` | ``t_emb.mlp.{0,2}`` / ``c_in`` / ``x_in`` |
| ``res_blocks.i.attn.{qkv,proj}`` | ``blocks.i.attn.{qkv,proj}`` |
| ``res_blocks.i.mlp.fc1_g`` and ``fc1_x`` / ``fc2`` | ``blocks.i.mlp.gate_up`` (stacked, gate first) / ``down`` |
| ``res_blocks.i.ada_lin`` (S) | ``blocks.i.ada.1`` |
| ``res_blocks.i.ada_lin_attn`` / ``ada_lin_mlp`` (L/H) | ``blocks.i.ada_attn.1`` / ``ada_mlp.1`` |
| ``res_blocks.i.crossattn.*`` / ``norm2_1`` / ``norm2_2`` (L/H) | ``blocks.i.cross.*`` / ``norm_x`` / ``norm_z`` |
| ``final_layer.adaLN_modulation.1`` | ``ada_out.1`` |
| ``final_layer.linear`` | ``out``, negated (the release's velocity points from data to noise) |
| ``res_blocks.i.{attn,crossattn}.rope.freqs`` | not stored: checked equal to the frequencies computed here |

:func:`backbone_state_from_release` maps the release's AR transformer (``FlowAR``'s other weights) onto
:class:`nextscale.backbone.Backbone` built with :func:`backbone_config_from_release` (the options of
``BackboneConfig.flowar_release``); the two compute the same backbone output, the release's ``decoder_norm``
output, teacher-forced and scale by scale from a KV cache (``tests/test_backbone_release.py``, fixture made
by ``tools/flowar_ar_golden.py``). The name map:

| release | here |
|---|---|
| ``class_emb`` / ``z_proj`` / ``z_proj_ln`` | ``class_emb`` / ``word_emb`` / ``in_norm`` |
| ``encoder_pos_embed_learned`` | ``pos_emb`` |
| ``encoder_blocks.i`` / ``decoder_blocks.i`` (n each) | ``blocks.i`` / ``blocks.{n + i}`` |
| ``*_blocks.i.attn.{qkv,proj}`` / ``mlp.fc2`` | ``blocks.j.{qkv,proj}`` / ``mlp.down`` |
| ``*_blocks.i.mlp.fc1_g`` and ``fc1_x`` | ``blocks.j.mlp.gate_up`` (stacked, gate first) |
| ``*_blocks.i.ada_lin.1``, rows (g1, g2, sc1, sc2, sh1, sh2) | ``blocks.j.ada.1``, rows (sh1, sc1, g1, sh2, sc2, g2) |
| ``encoder_norm`` / ``decoder_embed`` | ``stack_norm.0`` / ``stack_join.0`` |
| ``decoder_pos_embed_learned`` / ``decoder_norm`` | ``stack_pos.0`` / ``norm_out`` |
| ``*_blocks.i.attn.rope.freqs`` / ``mask`` | not stored: checked equal to the frequencies / block-causal mask here |
| ``flownet.*`` / ``diffusion_pos_embed_learned`` | the head's (above), skipped |

The release's sizes (``RELEASE_SIZES``) and sampler settings (``RELEASE_SAMPLING``) in this project's
conventions: its ``--cfg c`` is ``cfg_scale = c - 1`` (guidance v_c + w (v_c - v_u) here, v_u + c (v_c - v_u)
there), its ``--guidance g`` (guided while its time s <= g, s = 1 noise) is ``cfg_interval = (1 - g, 1)``,
its ``--num_step 25`` (25 time points on its two-segment grid) is ``steps=24`` on ``"two_segment"`` and
its ``--num_step 50`` (which switches it to a uniform grid) is ``steps=50`` on ``"uniform"``.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Mapping

import torch

from nextscale.backbone import Backbone, BackboneConfig
from nextscale.ldm import ldm_config_from_state
from nextscale.release import (ADA_ROWS, Renamed, check_state, load_state_file, permute_rows, rename,
                               state_shape)
from nextscale.scales import block_causal_mask, num_tokens

from .autoencoder import AEConfig, ContinuousAE
from .heads import rope_freqs
from .model import FlowAR, FlowARConfig
from .sampling import PAPER_GUIDANCE, PAPER_SOLVER

# head blocks x width (heads: width // 64), cross-attention blocks; the AR transformer's sizes (encoder +
# decoder blocks; its heads are not width // 64: flowar_small 12, flowar_large and flowar_huge 16)
RELEASE_SIZES = {
    "S": dict(head="transformer", head_depth=2, head_width=1024, backbone_width=768, backbone_depth=6 + 6,
              backbone_heads=12),
    "L": dict(head="transformer_cross", head_depth=12, head_width=1024, backbone_width=1024, backbone_depth=8 + 8,
              backbone_heads=16),
    "H": dict(head="transformer_cross", head_depth=12, head_width=1536, backbone_width=1536, backbone_depth=15 + 15,
              backbone_heads=16),
}
# the release's evaluation commands (README): S --cfg 4.3, L --cfg 2.4 (both --num_step 25 --guidance 0.9),
# H --cfg 2.4 --num_step 50 --guidance 0.7
RELEASE_SAMPLING = {
    "S": {**PAPER_SOLVER, "cfg_scale": 3.3, **PAPER_GUIDANCE},
    "L": {**PAPER_SOLVER, "cfg_scale": 1.4, **PAPER_GUIDANCE},
    "H": {**PAPER_SOLVER, "steps": 50, "time_grid": "uniform", "cfg_scale": 1.4, **PAPER_GUIDANCE,
          "cfg_interval": (0.3, 1.0)},
}

_RENAMES = [  # (release pattern, ours), applied to names without the "flownet." prefix
    (r"^time_embed\.", "t_emb."), (r"^cond_embed\.", "c_in."), (r"^input_proj\.", "x_in."),
    (r"^final_layer\.adaLN_modulation\.1\.", "ada_out.1."), (r"^final_layer\.linear\.", "out."),
    (r"^res_blocks\.(\d+)\.attn\.(qkv|proj)\.", r"blocks.\1.attn.\2."),
    (r"^res_blocks\.(\d+)\.crossattn\.(q|kv|proj)\.", r"blocks.\1.cross.\2."),
    (r"^res_blocks\.(\d+)\.mlp\.fc2\.", r"blocks.\1.mlp.down."),
    (r"^res_blocks\.(\d+)\.ada_lin\.", r"blocks.\1.ada.1."),
    (r"^res_blocks\.(\d+)\.ada_lin_(attn|mlp)\.", r"blocks.\1.ada_\2.1."),
    (r"^res_blocks\.(\d+)\.norm2_1\.", r"blocks.\1.norm_x."), (r"^res_blocks\.(\d+)\.norm2_2\.", r"blocks.\1.norm_z."),
]
_ROPE = re.compile(r"^res_blocks\.(\d+)\.(attn|crossattn)\.rope\.freqs$")
_GLU = re.compile(r"^res_blocks\.(\d+)\.mlp\.fc1_([gx])\.(weight|bias)$")


def head_state_from_release(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The release's flow-head weights as a :class:`~flowar.heads.TransformerHead` state dict.

    ``state``: a FlowAR state dict (keys ``flownet.*`` and ``diffusion_pos_embed_learned``; other keys,
    the AR transformer's, are ignored) or the flow head's own (no prefix) plus the position embedding.
    Raises ``ValueError`` naming any head key it cannot place, a missing position embedding, or RoPE
    frequencies that differ from the ones computed here."""
    if not isinstance(state, Mapping) or "diffusion_pos_embed_learned" not in state:
        raise ValueError("state must be a FlowAR state dict with 'diffusion_pos_embed_learned' and the flow head's "
                         "weights ('flownet.*')")
    prefixed = any(k.startswith("flownet.") for k in state)
    head = {k[len("flownet."):] if prefixed else k: v for k, v in state.items()
            if k.startswith("flownet.") or not prefixed}
    head.pop("diffusion_pos_embed_learned", None)
    out: dict[str, torch.Tensor] = {"pos_emb": state["diffusion_pos_embed_learned"]}
    glu: dict[tuple[str, str], dict[str, torch.Tensor]] = {}
    unknown = []
    for name, value in head.items():
        if m := _ROPE.match(name):
            want = rope_freqs(4 * len(value), device=value.device)
            if not torch.allclose(value.float(), want, rtol=1e-6, atol=0):
                raise ValueError(f"{name}: RoPE frequencies differ from 10000^(-i/(d/4)) (a changed rotary base?)")
            continue
        if m := _GLU.match(name):
            glu.setdefault((m[1], m[3]), {})[m[2]] = value
            continue
        new = rename(name, _RENAMES)
        if new is None:
            unknown.append(name)
        else:
            out[new] = value
    if unknown:
        raise ValueError(f"release keys with no place in the head: {sorted(unknown)[:8]}")
    for (blk, kind), parts in glu.items():
        if set(parts) != {"g", "x"}:
            raise ValueError(f"res_blocks.{blk}.mlp needs both fc1_g and fc1_x {kind}s, got {sorted(parts)}")
        out[f"blocks.{blk}.mlp.gate_up.{kind}"] = torch.cat([parts["g"], parts["x"]])
    for kind in ("weight", "bias"):  # velocity data -> noise there, noise -> data here
        if f"out.{kind}" in out:
            out[f"out.{kind}"] = -out[f"out.{kind}"]
    return out


def head_config_from_release(state: Mapping[str, torch.Tensor]) -> dict:
    """``head``, ``head_width``, ``head_depth``, ``head_heads`` and the latent channels of a release state
    dict, for building the matching :class:`~flowar.model.FlowARConfig`."""
    ours = head_state_from_release(state)
    width, channels = state_shape(ours, "x_in.weight", "FlowAR head", 2)
    depth = 1 + max(int(k.split(".")[1]) for k in ours if k.startswith("blocks."))
    cross = any(".cross." in k for k in ours)
    return dict(head="transformer_cross" if cross else "transformer", head_width=width, head_depth=depth,
                head_heads=max(1, width // 64), channels=channels, cond_width=state_shape(ours, "c_in.weight", "FlowAR head", 2)[1])


# ----------------------------------------------------------------------------- the AR transformer

_BACKBONE_TOP = {  # release name -> ours, outside the blocks
    "class_emb.weight": "class_emb.weight", "z_proj.weight": "word_emb.weight", "z_proj.bias": "word_emb.bias",
    "z_proj_ln.weight": "in_norm.weight", "encoder_pos_embed_learned": "pos_emb",
    "encoder_norm.weight": "stack_norm.0.weight", "decoder_embed.weight": "stack_join.0.weight",
    "decoder_embed.bias": "stack_join.0.bias", "decoder_pos_embed_learned": "stack_pos.0",
    "decoder_norm.weight": "norm_out.weight"}
_BACKBONE_BLOCK = {  # inside encoder_blocks.i / decoder_blocks.i -> inside blocks.j
    "attn.qkv.weight": "qkv.weight", "attn.qkv.bias": "qkv.bias", "attn.proj.weight": "proj.weight",
    "attn.proj.bias": "proj.bias", "mlp.fc1_g.weight": "mlp.gate_up.weight", "mlp.fc1_g.bias": "mlp.gate_up.bias",
    "mlp.fc1_x.weight": "mlp.gate_up.weight", "mlp.fc1_x.bias": "mlp.gate_up.bias",
    "mlp.fc2.weight": "mlp.down.weight", "mlp.fc2.bias": "mlp.down.bias",
    "ada_lin.1.weight": "ada.1.weight", "ada_lin.1.bias": "ada.1.bias"}
_SKIPPED = re.compile(r"^(flownet\.|diffusion_pos_embed_learned$|mask$)")
_AR_ROPE = re.compile(r"^(encoder|decoder)_blocks\.\d+\.attn\.rope\.freqs$")
_AR_BLOCK = re.compile(r"^(encoder|decoder)_blocks\.(\d+)\.")


def _backbone_names(state: Mapping[str, torch.Tensor]) -> tuple[dict[str, str], int]:
    """Every release name the AR transformer needs -> its name here, and the number of blocks per stack
    ``state`` shows (encoder and decoder the same). The release's RoPE frequencies are checked here."""
    if not isinstance(state, Mapping):
        raise ValueError(f"state must be a FlowAR state dict, got {type(state).__name__}")
    counts = {"encoder": 0, "decoder": 0}
    for name, value in state.items():
        want = rope_freqs(4 * len(value), device=value.device) if _AR_ROPE.match(name) else None
        if want is not None and not torch.allclose(value.float(), want, rtol=1e-6, atol=0):
            raise ValueError(f"{name}: RoPE frequencies differ from 10000^(-i/(d/4)) (a changed rotary base?)")
        if m := _AR_BLOCK.match(name):
            counts[m[1]] = max(counts[m[1]], int(m[2]) + 1)
    n = counts["encoder"]
    if n == 0 or counts["decoder"] != n:
        raise ValueError(f"the release's encoder and decoder must have the same number of blocks (at least 1), "
                         f"got {counts['encoder']} and {counts['decoder']}")
    names = dict(_BACKBONE_TOP)
    for offset, stack in ((0, "encoder"), (n, "decoder")):
        for i in range(n):
            names.update({f"{stack}_blocks.{i}.{r}": f"blocks.{offset + i}.{o}" for r, o in _BACKBONE_BLOCK.items()})
    return names, n


def backbone_state_from_release(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The release's AR-transformer weights as a :class:`~nextscale.backbone.Backbone` state dict (of
    :func:`backbone_config_from_release`'s config; load it strictly).

    ``state``: a FlowAR state dict (``model`` of its ``checkpoint-last.pth``); the flow head's keys
    (``flownet.*``, ``diffusion_pos_embed_learned``) and the ``mask`` buffer are skipped. Raises
    ``ValueError`` naming the first key it cannot place (and its shape), the first missing one, or RoPE
    frequencies that differ from the ones computed here; shapes are checked by
    :func:`backbone_config_from_release` (call it first)."""
    names, _ = _backbone_names(state)
    kept = {k: v for k, v in state.items() if not (_SKIPPED.match(k) or _AR_ROPE.match(k))}
    for name, value in kept.items():
        if name not in names:
            raise ValueError(f"release key {name!r} (shape {tuple(value.shape)}) has no place in the backbone")
    for name in names:
        if name not in kept:
            raise ValueError(f"release key {name!r} is missing from the state dict")
    out: dict[str, torch.Tensor] = {}
    for name, value in kept.items():
        if ".fc1_x." in name:  # placed with its fc1_g
            continue
        if ".fc1_g." in name:  # gate rows first, then the up projection's
            value = torch.cat([value, kept[name.replace(".fc1_g.", ".fc1_x.")]])
        elif ".ada_lin.1." in name:
            value = permute_rows(value, ADA_ROWS) if len(value) % 6 == 0 else value  # shape checked later
        out[names[name]] = value
    return out


def backbone_config_from_release(state: Mapping[str, torch.Tensor], schedule: tuple[int, ...],
                                 heads: int | None = None, **kw) -> BackboneConfig:
    """The :class:`~nextscale.backbone.BackboneConfig` of a release state dict: width, depth (encoder +
    decoder blocks), latent channels and classes read from the shapes, over ``schedule`` (the release's
    ``--scale``, by default 1, 2, 4, 8, 16; its ``mask`` buffer, if present, must be that schedule's).

    ``heads`` cannot be read from shapes: by default the release's for its width (``RELEASE_SIZES``: 768 ->
    12, 1024 and 1536 -> 16); another width needs it given. ``kw``: other fields (class_dropout ...).
    Every tensor's shape is checked against this config: ``ValueError`` naming the first that differs."""
    names, per_stack = _backbone_names(state)
    if "encoder_pos_embed_learned" not in state:
        raise ValueError("release key 'encoder_pos_embed_learned' is missing from the state dict")
    rows, width = state_shape(state, "class_emb.weight", "FlowAR", 2)
    if heads is None:
        by_width = {r["backbone_width"]: r["backbone_heads"] for r in RELEASE_SIZES.values()}
        if width not in by_width:
            raise ValueError(f"heads: a width of {width} is none of the release's sizes {sorted(by_width)}: give heads")
        heads = by_width[width]
    cfg = BackboneConfig.flowar_release(schedule, in_dim=state_shape(state, "z_proj.weight", "FlowAR", 2)[1], width=width,
                                        depth=2 * per_stack, heads=heads, num_classes=rows - 1, **kw)
    if "mask" in state:  # (1, 1, L, L): 0 where attention is allowed, -inf elsewhere
        allowed = block_causal_mask(cfg.schedule, device="cpu")
        want = torch.zeros(1, 1, cfg.seq_len, cfg.seq_len, device="cpu").masked_fill(~allowed, float("-inf"))
        if state["mask"].shape != want.shape or not torch.equal(state["mask"].float().cpu(), want):
            raise ValueError(f"release key 'mask' (shape {tuple(state['mask'].shape)}) is not the block-causal mask "
                             f"of schedule {cfg.schedule} with buffer_size 0")
    with torch.device("meta"):  # shapes only, no memory
        ours = {k: tuple(v.shape) for k, v in Backbone(cfg).state_dict().items()}
    for name, ours_name in names.items():
        want = ours[ours_name]
        if ".fc1_" in name:  # half of gate_up
            want = (want[0] // 2,) + want[1:]
        if name in state and tuple(state[name].shape) != want:
            raise ValueError(f"release key {name!r} has shape {tuple(state[name].shape)}; a backbone of width {width} "
                             f"over {num_tokens(cfg.schedule)} positions needs {want}")
    return cfg


# ----------------------------------------------------------------------------- the whole model and MAR's VAE

SCHEDULE = (1, 2, 4, 8, 16)  # the release's --scale
SCALE_FACTOR = 0.2325        # MAR's KL-16 latents times this are what FlowAR models (its engine.py)
_MAR_ATTN = re.compile(r"^(.*\.(?:attn_1|attn\.\d+))\.([qkv])\.(weight|bias)$")


def vae_config_from_release(state: Mapping[str, torch.Tensor]) -> AEConfig:
    """The :class:`AEConfig` of MAR's KL VAE state dict (``kl16.ckpt``'s ``model``), read from its shapes."""
    return AEConfig(ae=ldm_config_from_state(state, SCHEDULE[-1], gaussian=True, what="MAR KL VAE"), kind="vae")


def vae_state_from_release(state: Mapping[str, torch.Tensor]) -> Renamed:
    """MAR's VAE names -> :class:`~flowar.autoencoder.ContinuousAE` names: ``quant_conv`` / ``post_quant_conv``
    go inside the encoder / decoder, each attention's q, k, v convs are stacked into one ``qkv``. The
    training loss's weights some VAE files carry (``loss.*``) are ignored."""
    out, qkv = Renamed(), {}
    for k, v in state.items():
        if k.startswith("loss."):
            continue
        if m := _MAR_ATTN.match(k):
            qkv.setdefault((m[1], m[3]), {})[m[2]] = v
            continue
        new = re.sub(r"^quant_conv\.", "encoder.quant_conv.", k)
        out.put(re.sub(r"^post_quant_conv\.", "decoder.post_quant_conv.", new), v, k)
    for (block, kind), parts in qkv.items():
        if set(parts) != set("qkv"):
            raise ValueError(f"{block} needs q, k and v {kind}s, got {sorted(parts)}")
        out.put(f"{block}.qkv.{kind}", torch.cat([parts["q"], parts["k"], parts["v"]]), f"{block}.q.{kind}")
    return out


def flowar_config_from_release(state: Mapping[str, torch.Tensor], ae: AEConfig,
                               heads: int | None = None) -> FlowARConfig:
    """The :class:`FlowARConfig` of a release FlowAR state dict on the autoencoder ``ae``: the AR transformer's
    and the head's sizes read from the shapes (the AR transformer's ``heads``: the release's for its width
    by default, see :func:`backbone_config_from_release`), the release's time input and training path."""
    head = head_config_from_release(state)
    bb = backbone_config_from_release(state, SCHEDULE, heads)
    return FlowARConfig(ae=ae, backbone=bb, head=head["head"],
                        head_width=head["head_width"], head_depth=head["head_depth"], head_heads=head["head_heads"],
                        head_time="index", input_resize="via_full", path="noise", t_per="scale",
                        loss_weight="tokens")


def from_release_states(flowar_state: Mapping, vae_state: Mapping, heads: int | None = None,
                        dtype: torch.dtype = torch.float32) -> FlowAR:
    """A :class:`FlowAR` holding the release's weights and MAR's VAE, sized from their shapes (``heads``: of
    the AR transformer, needed for a width the release does not have), in ``dtype`` (float64: the scale
    factor is then 0.2325 exactly, as the release multiplies by it)."""
    ae = ContinuousAE(vae_config_from_release(vae_state)).to(dtype)
    check_state(ae, vae_state_from_release(vae_state), "the VAE file", keep=("scale_factor",))
    ae.scale_factor.fill_(SCALE_FACTOR)
    model = FlowAR(flowar_config_from_release(flowar_state, ae.config, heads), ae).to(dtype)
    state = Renamed()
    for prefix, part in (("backbone.", backbone_state_from_release(flowar_state)),
                         ("head.", head_state_from_release(flowar_state)), ("ae.", ae.state_dict())):
        for k, v in part.items():
            state.put(prefix + k, v, k)
    check_state(model, state, "the FlowAR file")
    return model.eval()


def load(flowar_path: str | Path, vae_path: str | Path, map_location="cpu", heads: int | None = None,
         dtype: torch.dtype = torch.float32) -> FlowAR:
    """FlowAR-S/L/H from the release's ``checkpoint-last.pth`` and MAR's ``kl16.ckpt``, in ``dtype``. A file
    that does not fit is refused with a ``ValueError`` naming its first mismatching key and shape."""
    return from_release_states(load_state_file(flowar_path, "flowar_path", map_location),
                               load_state_file(vae_path, "vae_path", map_location), heads, dtype)


def release_size(model: FlowAR) -> str | None:
    """"S", "L" or "H" where ``model`` has a released size (backbone and head widths and depths), else None."""
    c = model.config
    got = dict(head=c.head, head_depth=c.head_depth, head_width=c.head_width, backbone_width=c.backbone.width,
               backbone_depth=c.backbone.depth)
    return next((s for s, r in RELEASE_SIZES.items() if all(r[k] == v for k, v in got.items())), None)


def sampling_for(model: FlowAR) -> dict:
    """The release's evaluation settings for ``model``'s size (``RELEASE_SAMPLING``; FlowAR-S's for a size
    the release does not have, e.g. the tests' tiny models)."""
    return dict(RELEASE_SAMPLING[release_size(model) or "S"])
