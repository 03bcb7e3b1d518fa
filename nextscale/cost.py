"""Parameter and FLOP counts, reused by every head and by the comparison harness, and the one memory estimate
from configs (:func:`memory_estimate`) every command refuses sizes with before building anything."""
from __future__ import annotations

from dataclasses import dataclass, fields, is_dataclass
from typing import Callable

import torch
from torch.utils import flop_counter
from torch.utils.flop_counter import FlopCounterMode

from .autoencoder import ConvAEConfig
from .backbone import BackboneConfig
from .config import check_int, check_memory, size_text
from .ldm import LDMConfig


def count_params(module: torch.nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


def _sdpa_cpu_flops(query_shape, key_shape, value_shape, *args, **kwargs) -> int:
    return flop_counter.sdpa_flop_count(query_shape, key_shape, value_shape)


def _sdpa_cpu_backward_flops(grad_out_shape, query_shape, key_shape, value_shape, *args, **kwargs) -> int:
    return flop_counter.sdpa_backward_flop_count(grad_out_shape, query_shape, key_shape, value_shape)


# torch's counter knows the CUDA attention kernels but not the fused CPU ones (torch 2.13): without these the
# O(L^2) attention term, the very cost the pyramid is about, would count as zero on CPU.
_EXTRA = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _sdpa_cpu_flops,
          torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward: _sdpa_cpu_backward_flops}


def count_flops(fn: Callable, *args, **kwargs) -> int:
    """FLOPs of one call of ``fn(*args, **kwargs)`` (no grad), counted by ``torch.utils.flop_counter``.

    A multiply-add counts as 2 FLOPs. Matmuls, convolutions and attention count; elementwise ops do not.
    """
    counter = FlopCounterMode(display=False, custom_mapping=_EXTRA)
    with torch.no_grad(), counter:
        fn(*args, **kwargs)
    return int(counter.get_total_flops())


def count_train_flops(loss_fn: Callable[[], torch.Tensor]) -> int:
    """FLOPs of one training step: ``loss_fn()`` (the forward) and the backward of its result, counted as
    :func:`count_flops` does (the backward of a matmul costs its weight and, where needed, input
    gradients: about twice the forward). Gradients are left in the parameters' ``.grad``."""
    counter = FlopCounterMode(display=False, custom_mapping=_EXTRA)
    with counter:
        loss_fn().backward()
    return int(counter.get_total_flops())


# ----------------------------------------------------------------------------- memory, from the configs alone

FLOAT = 4  # bytes of a float32
TRAIN_STATE = 4  # per trained float32 weight: its gradient, AdamW's two moments and the EMA copy
KINDS = ("parameters", "optimizer", "activations", "sampling")


@dataclass(frozen=True)
class MemoryEstimate:
    """What a run's models need in memory, from their configs alone (:func:`memory_estimate`): ``parts``
    are (kind, what it comes from, bytes), the kinds of :data:`KINDS`. Training and sampling come one after
    the other, so the total is the weights and their training state plus the larger of one training step's
    activations and one sampling batch."""
    parts: tuple[tuple[str, str, float], ...]

    def of(self, kind: str) -> float:
        return sum(b for k, _, b in self.parts if k == kind)

    @property
    def total(self) -> float:
        return self.of("parameters") + self.of("optimizer") + max(self.of("activations"), self.of("sampling"))

    def line(self) -> str:
        """The one line the training commands print."""
        size = {k: size_text(self.of(k)) for k in KINDS}
        return (f"memory: about {size_text(self.total)} (parameters {size['parameters']}, optimizer and EMA "
                f"{size['optimizer']}, training activations {size['activations']}, sampling batch {size['sampling']})")

    def check(self, name: str = "memory estimate") -> "MemoryEstimate":
        """Refuse (``ValueError``) an estimate above half this machine's memory, naming its largest part and
        the setting it comes from; returns itself."""
        _, what, b = max(self.parts, key=lambda p: p[2])
        check_memory(name, self.total, f"the largest part is {what}: {size_text(b)}; make it smaller")
        return self


def memory_estimate(stages, batch: int, sample_batch: int = 0, batch_name: str = "batch",
                    sample_name: str = "sampling batch") -> MemoryEstimate:
    """The memory a family's models take, estimated from their configs before anything is built: ``stages``
    are the model configs of the stages trained one after the other (autoencoder, generator), ``batch`` the
    largest training batch, ``sample_batch`` the largest sampling batch (doubled: guidance runs the
    unconditional half beside it), named in the estimate's parts by ``batch_name`` and ``sample_name`` (the
    settings they come from). Every command calls it where its configs are built, so a width, depth,
    vocabulary or batch that cannot fit is refused (:meth:`MemoryEstimate.check`) before anything is
    allocated, and the training commands print :meth:`MemoryEstimate.line`.

    Counted, in float32: the weights of every config in the tree (the backbone's blocks and embeddings, a
    vocabulary's head and codebook, a velocity or residual head's blocks, a coder's convolutions), their
    gradients, AdamW moments and EMA; per stage, the activations one training step keeps for its backward
    (per token and block of the backbone and heads, the logits and codebook distances per token, a coder's
    full-resolution maps), the largest stage counting; for sampling, the KV cache, the last scale's logits
    or head states and the decoder's maps. An estimate of the dominant terms (within a factor of about 2
    of what training takes: attention scores, allocator slack and small buffers are left out), not a bound."""
    check_int("batch", batch, 1)
    check_int("sample_batch", sample_batch, 0)
    parts, acts = [], []
    for stage in stages:
        stage_parts = []
        stack = [stage]
        while stack:
            node = stack.pop()
            if not is_dataclass(node) or isinstance(node, type):
                continue
            stage_parts += _node_terms(node, batch, 2 * sample_batch, batch_name, sample_name)
            stack += [getattr(node, f.name) for f in fields(node)]
        parts += [p for p in stage_parts if p[0] != "activations"]
        acts.append([p for p in stage_parts if p[0] == "activations"])
    parts += [("optimizer", f"the training state of {what}", TRAIN_STATE * b) for k, what, b in list(parts)
              if k == "parameters"]
    if acts:  # the stages train one after the other: the largest one's activations
        parts += max(acts, key=lambda a: sum(p[2] for p in a))
    return MemoryEstimate(tuple(parts))


def _node_terms(c, B: int, S: int, at_b: str, at_s: str) -> list[tuple[str, str, float]]:
    """(kind, what, bytes) of one config node: a backbone, a vocabulary over a backbone (VAR's head) or a
    latent (a tokenizer's codebook), a velocity or residual head over a backbone, a coder; ``B`` the
    training batch, ``S`` the sampling batch with its guided half, ``at_b`` and ``at_s`` their names."""
    at_b, at_s = f"at {at_b} {B}", f"at {at_s} {S // 2}"
    out = []
    bb = getattr(c, "backbone", None)
    if isinstance(c, BackboneConfig):
        W, D, L, r = c.width, c.depth, c.seq_len, c.mlp_ratio
        mlp = 3 * int(W * r * 2 / 3) * W if c.mlp == "geglu" else 2 * int(W * r) * W
        block = 4 * W * W + mlp + 6 * W * W
        emb = (c.num_classes + 1 + c.in_dim + L * c.stacks + 2 * W + (c.stacks - 1) * W) * W
        what = f"the backbone (width {W}, depth {D})"
        out += [("parameters", what, FLOAT * (D * block + emb)),
                ("activations", f"{what} {at_b}", FLOAT * B * L * W * D * (4 + 2 * r)),
                ("sampling", f"the KV cache of {what} {at_s}", FLOAT * S * L * 2 * W * D)]
    elif isinstance(c, ConvAEConfig):
        H, side, rb = c.hidden, c.image_side, c.res_blocks
        conv = ((c.down + 1) * rb * 36 * H * H + c.down * 25 * H * H
                + 9 * H * (c.image_channels + 3 * c.latent_channels))
        what = f"the coder (hidden {H}, image side {side})"
        out += [("parameters", what, FLOAT * conv),
                ("activations", f"{what} {at_b}", FLOAT * B * H * side * side * (2 + 4 * rb) * 2),
                ("sampling", f"the decoder of {what} {at_s}", FLOAT * S // 2 * H * side * side * 4)]
    elif isinstance(c, LDMConfig):
        chans, rb, side = [c.ch * m for m in c.ch_mult], c.res_blocks, c.image_side
        conv = sum((2 * rb + 1) * 18 * ch * ch for ch in chans) + 8 * (rb + 1) * chans[-1] ** 2
        what = f"the ldm coder (ch {c.ch}, ch_mult {c.ch_mult}, image side {side})"
        out += [("parameters", what, FLOAT * conv),
                ("activations", f"{what} {at_b}", FLOAT * B * c.ch * side * side * (2 + 4 * rb) * 2),
                ("sampling", f"the decoder of {what} {at_s}", FLOAT * S // 2 * c.ch * side * side * 4)]
    V = getattr(c, "vocab_size", None)
    if isinstance(V, int) and isinstance(bb, BackboneConfig):  # a discrete head: logits over the vocabulary
        W, L, last = bb.width, bb.seq_len, bb.schedule[-1] ** 2
        what = f"the logits of vocab_size {V}"
        out += [("parameters", f"the head of vocab_size {V}", FLOAT * (W + 1) * V),
                ("activations", f"{what} {at_b}", FLOAT * B * L * V * 2),
                ("sampling", f"{what} {at_s}", FLOAT * S * last * V * 2)]
    elif isinstance(V, int) and isinstance(getattr(c, "ae", None), (ConvAEConfig, LDMConfig)):  # a codebook
        side = c.schedule[-1] if getattr(c, "schedule", None) else 1
        what = f"the codebook of vocab_size {V}"
        out += [("parameters", what, FLOAT * V * c.ae.latent_channels),
                ("activations", f"the code distances of vocab_size {V} {at_b}", FLOAT * B * side * side * V * 2)]
    for width, depth, kind in (("head_width", "head_depth", "head"), ("residual_width", "residual_depth", None)):
        if isinstance(bb, BackboneConfig) and hasattr(c, depth):  # a velocity head over the backbone
            W, L, last = bb.width, bb.seq_len, bb.schedule[-1] ** 2
            hw, hd = getattr(c, width) or W, getattr(c, depth)
            mlp = kind is None or getattr(c, kind) == "mlp"
            block = 5 * hw * hw if mlp else 18 * hw * hw + 2 * W * hw
            what = f"the {'residual head' if kind is None else 'velocity head'} ({width} {hw}, {depth} {hd})"
            out += [("parameters", what, FLOAT * (hd * block + (W + 256 + 3 * hw) * hw + L * W)),
                    ("activations", f"{what} {at_b}", FLOAT * B * L * hw * hd * (6 if mlp else 12)),
                    ("sampling", f"{what} {at_s}", FLOAT * S * last * hw * 4)]
    return out
