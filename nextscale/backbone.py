"""The scale-wise transformer both heads share.

A decoder-only transformer over the concatenated token maps of all scales, with block-causal
attention (scale k sees scales <= k), class conditioning by adaptive layer norm and a KV cache
for scale-by-scale sampling. Options of the VAR release, off by default: query/key L2
normalisation with a learnable per-head scale (``qk_norm``), stochastic depth (``drop_path``) and, for
its models without qk_norm, attention logits scaled by 0.25 (``attn_scale``).
:meth:`BackboneConfig.flowar_release` switches on the options of FlowAR's released AR transformer (Ren et
al. 2025): RMSNorm, GEGLU, 2-D RoPE, class token, input RMSNorm, encoder + decoder stacks, no final adaLN.

Inputs, as in VAR: scale 1 is the start token (the class embedding, broadcast over the first
map's positions); scale k > 1 is an ``in_dim``-channel map the head provides (VAR: the running
reconstruction f_hat downsampled to side_k; FlowAR: the previous scale's latent upsampled).
The output is one hidden vector per position, ``h_BLC``; each head maps it its own way.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from .attention import KINDS, attention, check_options
from .config import check_bool, check_choice, check_float, check_int
from .layers import GEGLU, RMSNorm, apply_rope, rope_2d
from .scales import default_schedule, latent_side_of, level_ids, num_tokens, scale_slices, validate_schedule


NORMS, MLPS, STARTS = ("layer", "rms"), ("gelu", "geglu"), ("pos_start", "class_token")
# the options of FlowAR's released AR transformer (its mlp_ratio is 4 and its label drop 0.1, our defaults)
FLOWAR_RELEASE = dict(norm="rms", mlp="geglu", rope=True, level_emb=False, start="class_token", in_norm=True,
                      stacks=2, final_adaln=False)


@dataclass(frozen=True)
class BackboneConfig:
    schedule: tuple[int, ...] = (1, 2, 3, 4, 6, 8)
    in_dim: int = 8            # channels of the per-scale input map (latent channels)
    num_classes: int = 10      # class ids 0..num_classes-1; id num_classes is the null class
    width: int = 128
    depth: int = 4
    heads: int = 4
    mlp_ratio: float = 4.0
    dropout: float = 0.0
    class_dropout: float = 0.1  # probability of replacing the label by the null class in training
    attn_kind: str = "exact"
    qk_norm: bool = False       # VAR's attn_l2_norm: L2-normalised q, k with a learnable per-head scale
    attn_scale: float = 1.0     # times the attention logits' 1/sqrt(d) (VAR's release without qk_norm: 0.25)
    drop_path: float = 0.0      # stochastic depth, rate rising linearly over the blocks to this value (VAR)
    # Options of FlowAR's release (see flowar_release); the defaults are VAR's design.
    norm: str = "layer"         # the blocks' (and the final adaLN's) norm, no parameters: "layer" or "rms"
    mlp: str = "gelu"           # "gelu": Linear, GELU (tanh), Linear; "geglu": GELU-gated, hidden 2/3 as wide
    rope: bool = False          # 2-D rotary embedding on q and k, each scale on the final grid's frame
    level_emb: bool = True      # a learned embedding of each position's scale index, added to the input
    start: str = "pos_start"    # scale 1: "pos_start" the class embedding + learned positions; "class_token"
    in_norm: bool = False       # RMSNorm (with weight) of the embedded input, before the first block
    stacks: int = 1             # the blocks in this many equal stacks; between two: RMSNorm, Linear, + positions
    final_adaln: bool = True    # output adaLN from the class; False: the output is RMSNorm (with weight)

    def __post_init__(self):
        object.__setattr__(self, "schedule", validate_schedule(self.schedule))
        check_int("in_dim", self.in_dim, 1)
        check_int("num_classes", self.num_classes, 1)
        check_int("width", self.width, 1)
        check_int("depth", self.depth, 1)
        check_int("heads", self.heads, 1)
        if self.width % self.heads:
            raise ValueError(f"width ({self.width}) must be divisible by heads ({self.heads})")
        check_float("mlp_ratio", self.mlp_ratio, 0, lo_open=True)
        check_float("dropout", self.dropout, 0, 1, hi_open=True)
        check_float("class_dropout", self.class_dropout, 0, 1)
        check_choice("attn_kind", self.attn_kind, KINDS)
        if not isinstance(self.qk_norm, bool):
            raise ValueError(f"qk_norm must be True or False, got {self.qk_norm!r}")
        check_float("attn_scale", self.attn_scale, 0, lo_open=True)
        check_float("drop_path", self.drop_path, 0, 1, hi_open=True)
        check_choice("norm", self.norm, NORMS)
        check_choice("mlp", self.mlp, MLPS)
        check_choice("start", self.start, STARTS)
        for name in ("rope", "level_emb", "in_norm", "final_adaln"):
            check_bool(name, getattr(self, name))
        if self.rope and (self.width // self.heads) % 4:
            raise ValueError(f"rope needs a head dimension (width / heads) divisible by 4, "
                             f"got {self.width // self.heads}")
        if self.start == "class_token" and self.schedule[0] != 1:
            raise ValueError(f"start='class_token' needs a schedule starting at side 1, got {self.schedule}")
        check_int("stacks", self.stacks, 1)
        if self.depth % self.stacks:
            raise ValueError(f"depth ({self.depth}) must be divisible by stacks ({self.stacks})")

    @classmethod
    def for_images(cls, image_side: int, num_classes: int, latent_channels: int, **kw) -> "BackboneConfig":
        """The backbone every command builds for data of ``image_side`` pixels: over the default schedule of
        its latent (side ``image_side / 2``, ``latent_channels`` channels); ``kw``: width, depth, heads ..."""
        return cls(schedule=default_schedule(latent_side_of(image_side)), in_dim=latent_channels,
                   num_classes=num_classes, **kw)

    @classmethod
    def flowar_release(cls, schedule: tuple[int, ...], in_dim: int, width: int, depth: int, heads: int,
                       num_classes: int = 1000, **kw) -> "BackboneConfig":
        """The design of FlowAR's released AR transformer (``models/flowar.py``, ``FlowAR``): the class
        embedding is the first token, then z_proj(x) + learned positions, RMSNorm with weight; ``depth``
        blocks (RMSNorm, GEGLU, qkv bias, 2-D RoPE, adaLN from the class) in an encoder and a decoder stack
        of depth / 2 each; the output is the decoder's RMSNorm. Release S: width 768, depth 6 + 6, 12 heads;
        L: 1024, 8 + 8, 16; H: 1536, 15 + 15, 16. ``kw``: other fields (class_dropout ...)."""
        return cls(schedule=schedule, in_dim=in_dim, num_classes=num_classes, width=width, depth=depth,
                   heads=heads, **{**FLOWAR_RELEASE, **kw})

    @property
    def seq_len(self) -> int:
        return num_tokens(self.schedule)

    @property
    def first_len(self) -> int:
        return self.schedule[0] ** 2


class KVCache:
    """Keys and values of the scales fed so far, one buffer per layer.

    A layer's buffer, (B, seq_len, 2, H, d), is allocated at the first scale for the whole pyramid, and
    each scale's keys and values are written in place with one copy, in the layout the qkv projection
    produces them (no ``torch.cat`` of the growing prefix, no transpose). The class embedding's adaLN
    terms are kept here too: they are computed once per pyramid, not once per scale."""

    def __init__(self, depth: int, seq_len: int):
        self.seq_len = seq_len
        self.kv: list[torch.Tensor | None] = [None] * depth
        self.length = [0] * depth
        self.next_scale = 0
        self.cond: torch.Tensor | None = None  # the class embedding of the steps, and its adaLN terms:
        self.ada: list[tuple[torch.Tensor, ...]] = []  # one tuple per block, then the output norm's

    def append(self, layer: int, kv_Bn2Hd: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write one scale's keys and values (stacked on dim 2) after the previous ones; returns views
        (B, H, S, d) of all keys and values fed so far."""
        start, n = self.length[layer], kv_Bn2Hd.shape[1]
        if start + n > self.seq_len:
            raise ValueError(f"KV cache holds {self.seq_len} positions, got {start + n}")
        if self.kv[layer] is None:
            B, _, _, H, d = kv_Bn2Hd.shape
            self.kv[layer] = kv_Bn2Hd.new_empty(B, self.seq_len, 2, H, d)
        buf = self.kv[layer]
        buf[:, start:start + n] = kv_Bn2Hd
        self.length[layer] = start + n
        return buf[:, :start + n, 0].transpose(1, 2), buf[:, :start + n, 1].transpose(1, 2)


def modulate(x_BLC, shift_B1C, scale1p_B1C):
    """adaLN: ``x * (1 + scale) + shift``, with ``1 + scale`` given (see :func:`ada_terms`)."""
    return x_BLC * scale1p_B1C + shift_B1C


def ada_terms(ada_BnC: torch.Tensor, n: int) -> tuple[torch.Tensor, ...]:
    """Split an adaLN projection (B, n * C) into n (B, 1, C) terms laid out (shift, scale, gate, ...) or
    (shift, scale), each scale replaced by 1 + scale: the form :func:`modulate` takes, computed once."""
    terms = list(ada_BnC[:, None].chunk(n, dim=-1))
    for i in range(1, n, 3):
        terms[i] = 1 + terms[i]
    return tuple(terms)


def drop_path(x_BLC: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """Stochastic depth (Huang et al. 2016): zero a residual branch per sample with prob p, rescale the rest."""
    if p == 0.0 or not training:
        return x_BLC
    keep_B11 = torch.rand(x_BLC.shape[0], 1, 1, device=x_BLC.device) >= p
    return x_BLC * keep_B11.to(x_BLC.dtype) / (1 - p)


# VAR's attn_l2_norm: q and k L2-normalised per head, logits scaled by a learned per-head factor,
# initialised to 4 and capped at 100 (as the VAR release does).
QK_SCALE_INIT, QK_SCALE_MAX = 4.0, 100.0


def make_norm(kind: str, width: int) -> nn.Module:
    """A norm without parameters: LayerNorm (VAR) or RMSNorm (FlowAR's release), eps 1e-6 both."""
    return nn.LayerNorm(width, elementwise_affine=False, eps=1e-6) if kind == "layer" else RMSNorm(width)


class Block(nn.Module):
    """Pre-norm transformer block with adaLN-Zero conditioning (DiT)."""

    def __init__(self, cfg: BackboneConfig, drop_path: float = 0.0):
        super().__init__()
        C = cfg.width
        self.heads, self.attn_kind, self.dropout, self.drop_path = cfg.heads, cfg.attn_kind, cfg.dropout, drop_path
        self.attn_scale = cfg.attn_scale
        self.attn_opts: dict = {}  # options of an approximate kind, see Backbone.set_attention
        self.norm1 = make_norm(cfg.norm, C)
        self.qkv = nn.Linear(C, 3 * C)
        self.proj = nn.Linear(C, C)
        self.norm2 = make_norm(cfg.norm, C)
        if cfg.mlp == "geglu":
            self.mlp = GEGLU(C, cfg.mlp_ratio)
        else:
            hidden = int(C * cfg.mlp_ratio)
            self.mlp = nn.Sequential(nn.Linear(C, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, C))
        self.drop = nn.Dropout(cfg.dropout)
        self.ada = nn.Sequential(nn.SiLU(), nn.Linear(C, 6 * C))
        if cfg.qk_norm:  # log of the per-head logit scale
            self.qk_log_scale = nn.Parameter(torch.full((1, cfg.heads, 1, 1), math.log(QK_SCALE_INIT)))

    def forward(self, x_BLC, ada: tuple[torch.Tensor, ...], q_level, k_level, cache: KVCache | None = None,
                layer: int = 0, rope: tuple[torch.Tensor, torch.Tensor] | None = None):
        """``ada`` is ``ada_terms(self.ada(cond), 6)``: the block's adaLN shifts, 1 + scales and gates (the
        backbone projects the class embedding once per pass or, with a cache, once per pyramid). ``rope``:
        (cos, sin) of the positions of ``x``, each (L, 1, d / 2), or None (no rotary embedding)."""
        sh1, sc1, g1, sh2, sc2, g2 = ada
        B, L, C = x_BLC.shape
        qkv_BL3Hd = self.qkv(modulate(self.norm1(x_BLC), sh1, sc1)).view(B, L, 3, self.heads, -1)
        if hasattr(self, "qk_log_scale"):  # times sqrt(d): SDPA divides the logits by sqrt(d) again
            scale_1H11 = self.qk_log_scale.clamp(max=math.log(QK_SCALE_MAX)).exp() * qkv_BL3Hd.shape[-1] ** 0.5
            q, k, v = qkv_BL3Hd.unbind(2)
            q, k = F.normalize(q, dim=-1) * scale_1H11.transpose(1, 2), F.normalize(k, dim=-1)
            qkv_BL3Hd = torch.stack([q, k, v], 2)
        if rope is not None:  # rotated before caching: a cached key keeps the rotation of its own position
            q, k, v = qkv_BL3Hd.unbind(2)
            qkv_BL3Hd = torch.stack([apply_rope(q, *rope), apply_rope(k, *rope), v], 2)
        q = qkv_BL3Hd[:, :, 0].transpose(1, 2)  # (B, H, L, d) views, no copies
        if self.attn_scale != 1.0:
            q = q * self.attn_scale
        if cache is not None:
            k, v = cache.append(layer, qkv_BL3Hd[:, :, 1:])
        else:
            k, v = qkv_BL3Hd[:, :, 1].transpose(1, 2), qkv_BL3Hd[:, :, 2].transpose(1, 2)
        a = attention(q, k, v, q_level, k_level, kind=self.attn_kind,
                      dropout_p=self.dropout if self.training else 0.0, **self.attn_opts)
        a = g1 * self.drop(self.proj(a.transpose(1, 2).reshape(B, L, C)))
        x_BLC = x_BLC + drop_path(a, self.drop_path, self.training)
        m = g2 * self.drop(self.mlp(modulate(self.norm2(x_BLC), sh2, sc2)))
        return x_BLC + drop_path(m, self.drop_path, self.training)


class Backbone(nn.Module):
    """The transformer over the pyramid. Parameters are created only for the options switched on, so a
    default config has VAR's parameter names; ``blocks`` holds the blocks of every stack, in order (the
    KV cache has one buffer per block)."""

    def __init__(self, cfg: BackboneConfig):
        super().__init__()
        self.cfg = cfg
        C, L = cfg.width, cfg.seq_len
        self.class_emb = nn.Embedding(cfg.num_classes + 1, C)  # last row: the null class
        if cfg.start == "pos_start":
            self.pos_start = nn.Parameter(torch.zeros(1, cfg.first_len, C))
        self.word_emb = nn.Linear(cfg.in_dim, C)
        self.pos_emb = nn.Parameter(torch.zeros(1, L, C))
        if cfg.level_emb:
            self.level_emb = nn.Embedding(len(cfg.schedule), C)
        if cfg.in_norm:
            self.in_norm = RMSNorm(C, weight=True)
        rates = [cfg.drop_path * i / max(cfg.depth - 1, 1) for i in range(cfg.depth)]
        self.blocks = nn.ModuleList(Block(cfg, r) for r in rates)
        if cfg.stacks > 1:  # what joins stack j to stack j + 1 (the release: encoder_norm, decoder_embed, its pos)
            self.stack_norm = nn.ModuleList(RMSNorm(C, weight=True) for _ in range(cfg.stacks - 1))
            self.stack_join = nn.ModuleList(nn.Linear(C, C) for _ in range(cfg.stacks - 1))
            self.stack_pos = nn.ParameterList(nn.Parameter(torch.zeros(1, L, C)) for _ in range(cfg.stacks - 1))
        if cfg.final_adaln:
            self.norm_out = make_norm(cfg.norm, C)
            self.ada_out = nn.Sequential(nn.SiLU(), nn.Linear(C, 2 * C))
        else:
            self.norm_out = RMSNorm(C, weight=True)
        self.register_buffer("levels", level_ids(cfg.schedule), persistent=False)
        self.slices = scale_slices(cfg.schedule)
        self._rope: dict = {}  # device -> (cos, sin) of every position, built once
        self.reset_parameters()

    def reset_parameters(self):
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Embedding):
                nn.init.trunc_normal_(m.weight, std=0.02)
        for name, p in self.named_parameters():
            if name in ("pos_start", "pos_emb") or name.startswith("stack_pos."):
                nn.init.trunc_normal_(p, std=0.02)
        ada_out = [self.ada_out] if self.cfg.final_adaln else []
        for ada in [b.ada for b in self.blocks] + ada_out:  # adaLN-Zero: blocks start as identity
            nn.init.zeros_(ada[-1].weight)
            nn.init.zeros_(ada[-1].bias)

    def set_attention(self, kind: str = "exact", **opts) -> "Backbone":
        """Swap the attention of every block (e.g. a trained model to ``kind="poly", degree=4``), validating
        ``opts`` as :func:`nextscale.attention.check_options` does. A runtime switch: ``cfg.attn_kind``
        (what checkpoints record) is unchanged. Returns self."""
        opts = check_options(kind, **opts)
        for blk in self.blocks:
            blk.attn_kind, blk.attn_opts = kind, dict(opts)
        return self

    @property
    def null_class(self) -> int:
        return self.cfg.num_classes

    def check_labels(self, y_B: torch.Tensor, allow_null: bool = True, nonempty: bool = False) -> None:
        """The one label check: a 1-d long tensor (non-empty where asked) of ids in [0, num_classes), the
        null class included where ``allow_null``."""
        hi = self.cfg.num_classes + int(allow_null)
        if not torch.is_tensor(y_B) or y_B.dtype != torch.long or y_B.ndim != 1 or (nonempty and len(y_B) == 0):
            got = f"{y_B.dtype} of shape {tuple(y_B.shape)}" if torch.is_tensor(y_B) else type(y_B).__name__
            raise ValueError(f"labels must be a {'non-empty ' if nonempty else ''}1-d long tensor of class ids, "
                             f"got {got}")
        if len(y_B) and (y_B.min() < 0 or y_B.max() >= hi):
            raise ValueError(f"class ids must lie in [0, {hi - 1}], got {sorted(set(y_B.tolist()))}")

    def condition(self, y_B: torch.Tensor) -> torch.Tensor:
        """Class embedding (B, C); in training labels are dropped to the null class with prob class_dropout."""
        self.check_labels(y_B)
        if self.training and self.cfg.class_dropout > 0:
            drop = torch.rand(y_B.shape, device=y_B.device) < self.cfg.class_dropout
            y_B = torch.where(drop, torch.full_like(y_B, self.null_class), y_B)
        return self.class_emb(y_B)

    def embed(self, x_in_BlI: torch.Tensor | None, cond_BC: torch.Tensor, scale: int | None = None):
        """Token embeddings of the whole sequence (scale=None) or of one scale."""
        cfg, B = self.cfg, cond_BC.shape[0]
        parts = []
        if scale in (None, 0):
            start = cond_BC[:, None]
            parts.append(start + self.pos_start.expand(B, -1, -1) if cfg.start == "pos_start" else start)
        if scale != 0:
            parts.append(self.word_emb(x_in_BlI))
        x_BlC = torch.cat(parts, 1)
        sl = slice(0, cfg.seq_len) if scale is None else self.slices[scale]
        x_BlC = x_BlC + self.pos_emb[:, sl]
        if cfg.level_emb:
            x_BlC = x_BlC + self.level_emb(self.levels[sl])
        return self.in_norm(x_BlC) if cfg.in_norm else x_BlC

    def rope_tables(self, device, dtype=torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
        """(cos, sin), each (L, 1, head_dim / 2): every scale's grid on the final grid's frame (positions
        i * last side / side, as the release's), concatenated like the scales; in ``dtype``."""
        key = (str(device), dtype)
        if key not in self._rope:
            cfg = self.cfg
            per_scale = [rope_2d(s, cfg.width // cfg.heads, frame=cfg.schedule[-1], device=device, dtype=dtype)
                         for s in cfg.schedule]
            self._rope[key] = tuple(torch.cat(t)[:, None] for t in zip(*per_scale))
        return self._rope[key]

    def trunk(self, x_BlC, ada: list, sl: slice, levels: torch.Tensor | None, cache: KVCache | None = None):
        """The blocks of every stack on the positions ``sl`` (the whole sequence with its ``levels``, or one
        scale after those in ``cache``); ``ada``: each block's :func:`ada_terms`."""
        cfg = self.cfg
        wide = torch.promote_types(x_BlC.dtype, torch.float32)  # float64 tables for a float64 pass
        rope = tuple(t[sl] for t in self.rope_tables(x_BlC.device, wide)) if cfg.rope else None
        per_stack = cfg.depth // cfg.stacks
        for i, blk in enumerate(self.blocks):
            if i and i % per_stack == 0:  # into the next stack
                j = i // per_stack - 1
                x_BlC = self.stack_join[j](self.stack_norm[j](x_BlC)) + self.stack_pos[j][:, sl]
            x_BlC = blk(x_BlC, ada[i], levels, levels, cache=cache, layer=i, rope=rope)
        return x_BlC

    def head_out(self, x_BLC, cond_BC, ada_out: tuple[torch.Tensor, torch.Tensor] | None = None):
        """Final adaLN; ``ada_out`` is ``ada_terms(self.ada_out(cond_BC), 2)`` if already computed. Without
        ``final_adaln``: the RMSNorm (with weight) alone."""
        if not self.cfg.final_adaln:
            return self.norm_out(x_BLC)
        shift, scale1p = ada_terms(self.ada_out(cond_BC), 2) if ada_out is None else ada_out
        return modulate(self.norm_out(x_BLC), shift, scale1p)

    def forward(self, x_in_BlI: torch.Tensor, y_B: torch.Tensor) -> torch.Tensor:
        """Teacher-forced pass. x_in: (B, L - first_len, in_dim), inputs of scales 2..K. Returns h (B, L, C)."""
        cfg = self.cfg
        want = (y_B.shape[0], cfg.seq_len - cfg.first_len, cfg.in_dim)
        if tuple(x_in_BlI.shape) != want:
            raise ValueError(f"backbone input must have shape {want} (batch, L - first_len, in_dim), "
                             f"got {tuple(x_in_BlI.shape)}")
        cond = self.condition(y_B)
        x = self.embed(x_in_BlI, cond)
        x = self.trunk(x, [ada_terms(blk.ada(cond), 6) for blk in self.blocks], slice(0, cfg.seq_len), self.levels)
        return self.head_out(x, cond)

    def new_cache(self) -> KVCache:
        return KVCache(self.cfg.depth, self.cfg.seq_len)

    def step(self, x_in_BlI: torch.Tensor | None, cond_BC: torch.Tensor, cache: KVCache) -> torch.Tensor:
        """Feed the next scale (None for scale 1) after those already in ``cache``; returns its h (B, h_k^2, C).

        ``cond_BC`` is ``class_emb(y)`` (use :meth:`condition` in eval mode)."""
        k = cache.next_scale
        if k >= len(self.cfg.schedule):
            raise ValueError(f"all {len(self.cfg.schedule)} scales were already fed to this cache")
        if (x_in_BlI is None) != (k == 0):
            raise ValueError("scale 1 takes no input (it is the start token); later scales need one")
        if k > 0 and tuple(x_in_BlI.shape[1:]) != (self.cfg.schedule[k] ** 2, self.cfg.in_dim):
            raise ValueError(f"scale {k + 1} input must have shape (B, {self.cfg.schedule[k] ** 2}, "
                             f"{self.cfg.in_dim}), got {tuple(x_in_BlI.shape)}")
        if cache.cond is not cond_BC:  # the class embedding is projected once per pyramid, not per scale
            cache.cond = cond_BC
            out = ada_terms(self.ada_out(cond_BC), 2) if self.cfg.final_adaln else None
            cache.ada = [ada_terms(blk.ada(cond_BC), 6) for blk in self.blocks] + [out]
        x = self.trunk(self.embed(x_in_BlI, cond_BC, scale=k), cache.ada, self.slices[k], None, cache)
        cache.next_scale = k + 1
        return self.head_out(x, cond_BC, cache.ada[-1])
