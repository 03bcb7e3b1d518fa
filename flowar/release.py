"""FlowAR's release (Ren et al. 2025, github.com/OliverRensu/FlowAR): its head's weights in nextscale,
its sizes and its sampler settings.

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
| ``res_blocks.i.crossattn.{q,kv,proj}`` / ``norm2_1`` / ``norm2_2`` (L/H) | ``blocks.i.cross.{q,kv,proj}`` / ``norm_x`` / ``norm_z`` |
| ``final_layer.adaLN_modulation.1`` | ``ada_out.1`` |
| ``final_layer.linear`` | ``out``, negated (the release's velocity points from data to noise) |
| ``res_blocks.i.{attn,crossattn}.rope.freqs`` | not stored: checked equal to the frequencies computed here |

The release's sizes (``RELEASE_SIZES``) and sampler settings (``RELEASE_SAMPLING``) in this project's
conventions: its ``--cfg c`` is ``cfg_scale = c - 1`` (guidance v_c + w (v_c - v_u) here, v_u + c (v_c - v_u)
there), its ``--guidance g`` (guided while its time s <= g, s = 1 noise) is ``cfg_interval = (1 - g, 1)``,
its ``--num_step 25`` (25 time points on its two-segment grid) is ``steps=24`` on ``"two_segment"`` and
its ``--num_step 50`` (which switches it to a uniform grid) is ``steps=50`` on ``"uniform"``.
"""
from __future__ import annotations

import re
from typing import Mapping

import torch

from .heads import rope_freqs

# head blocks x width (heads: width // 64), cross-attention blocks; the AR transformer's sizes for reference
RELEASE_SIZES = {
    "S": dict(head="transformer", head_depth=2, head_width=1024, backbone_width=768, backbone_depth=6 + 6),
    "L": dict(head="transformer_cross", head_depth=12, head_width=1024, backbone_width=1024, backbone_depth=8 + 8),
    "H": dict(head="transformer_cross", head_depth=12, head_width=1536, backbone_width=1536, backbone_depth=15 + 15),
}
# the release's evaluation commands (README): S --cfg 4.3, L --cfg 2.4 (both --num_step 25 --guidance 0.9),
# H --cfg 2.4 --num_step 50 --guidance 0.7
RELEASE_SAMPLING = {
    "S": dict(solver="euler", steps=24, time_grid="two_segment", cfg_scale=3.3, cfg_schedule="linear",
              cfg_interval=(0.1, 1.0)),
    "L": dict(solver="euler", steps=24, time_grid="two_segment", cfg_scale=1.4, cfg_schedule="linear",
              cfg_interval=(0.1, 1.0)),
    "H": dict(solver="euler", steps=50, time_grid="uniform", cfg_scale=1.4, cfg_schedule="linear",
              cfg_interval=(0.3, 1.0)),
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
            if not torch.allclose(value.float(), rope_freqs(4 * len(value)), rtol=1e-6, atol=0):
                raise ValueError(f"{name}: RoPE frequencies differ from 10000^(-i/(d/4)) (a changed rotary base?)")
            continue
        if m := _GLU.match(name):
            glu.setdefault((m[1], m[3]), {})[m[2]] = value
            continue
        for pat, rep in _RENAMES:
            if re.match(pat, name):
                out[re.sub(pat, rep, name)] = value
                break
        else:
            unknown.append(name)
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
    width, channels = ours["x_in.weight"].shape
    depth = 1 + max(int(k.split(".")[1]) for k in ours if k.startswith("blocks."))
    cross = any(".cross." in k for k in ours)
    return dict(head="transformer_cross" if cross else "transformer", head_width=width, head_depth=depth,
                head_heads=max(1, width // 64), channels=channels, cond_width=ours["c_in.weight"].shape[1])
