"""VAR: the shared scale-wise backbone + a discrete head over the tokenizer's codebook.

Training (teacher forcing): the frozen tokenizer encodes the image into K token maps; the backbone
reads the start token (scale 1) and ``teacher_inputs`` (scales 2..K), and a linear head turns each
position's hidden vector into logits over the codebook. Loss: cross-entropy averaged over all L
tokens (per-scale CE is logged as ``ce_s1`` .. ``ce_sK``).

Sampling, scale by scale with the KV cache: logits of scale k -> token map (temperature, top-k,
top-p, or argmax) -> f_hat += phi_k(up(codebook[tokens])) -> f_hat downsampled to the next side is
the next scale's input; the image is ``decoder(f_hat)``. Classifier-free guidance as in VAR: the
batch is doubled with the null class and ``logits = (1 + w_k) cond - w_k uncond``, with
``w_k = cfg_scale * k / (K - 1)`` (k = 0..K-1, "linear") or ``w_k = cfg_scale`` ("constant");
``cfg_scale = 0`` runs the conditional model alone.

Inpainting / outpainting (zero-shot, as in VAR): a pixel mask (True = keep) maps to each scale's
token map by footprint: a token is kept iff every pixel of its footprint is kept, the footprint
being the pixels the area resize from the image side to h_k averages into it (for a side that
does not divide the image, footprints of neighbours overlap by a pixel). Kept tokens are the
encoded original's, teacher-forced at every scale; only the other tokens are sampled.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F

from nextscale.backbone import Backbone, BackboneConfig
from nextscale.config import check_bool, check_choice, check_float, check_int, check_seed, config_from
from nextscale.guidance import CFG_SCHEDULES, cfg_weights, guide
from nextscale.scales import scale_slices

from .tokenizer import MultiScaleVQVAE



@dataclass(frozen=True)
class VARConfig:
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    vocab_size: int = 512           # must equal the tokenizer's
    label_smoothing: float = 0.0    # of the training CE (the logged per-scale CE is always plain)

    def __post_init__(self):
        if isinstance(self.backbone, dict):  # loaded from plain data
            object.__setattr__(self, "backbone", BackboneConfig(**self.backbone))
        if not isinstance(self.backbone, BackboneConfig):
            raise ValueError(f"backbone must be a BackboneConfig, got {type(self.backbone).__name__}")
        check_int("vocab_size", self.vocab_size, 2)
        check_float("label_smoothing", self.label_smoothing, 0, 1, hi_open=True)


RNGS = ("inverse_cdf", "release")


@dataclass(frozen=True)
class VARSampling:
    """VAR's sampling settings, checked here (``ValueError`` naming the allowed values): guidance
    strength ``cfg_scale`` w >= 0 with ``cfg_schedule`` "linear" (w_k = w (k-1)/(K-1), the release's)
    or "constant"; ``top_k`` (None: off), ``top_p`` nucleus mass in (0, 1], ``temperature`` > 0;
    ``greedy`` takes the argmax (ignores temperature/top-k/top-p); ``use_cache`` False recomputes the
    full teacher-forced pass at every scale (for checking the KV cache); ``rng`` "release" draws tokens
    with ``torch.multinomial`` as VAR's release does (see :func:`sample_tokens`)."""
    cfg_scale: float = 1.5
    cfg_schedule: str = "linear"
    top_k: int | None = None
    top_p: float = 1.0
    temperature: float = 1.0
    greedy: bool = False
    use_cache: bool = True
    rng: str = "inverse_cdf"        # "release": draw as VAR's release does (same seed, same tokens)

    def __post_init__(self):
        check_float("cfg_scale", self.cfg_scale, 0)
        check_choice("cfg_schedule", self.cfg_schedule, CFG_SCHEDULES)
        if self.top_k is not None:  # None = off
            check_int("top_k", self.top_k, 1)
        check_float("top_p", self.top_p, 0, 1, lo_open=True)
        check_float("temperature", self.temperature, 1e-4)  # below, logits / T overflow (greedy: the argmax)
        check_bool("greedy", self.greedy)
        check_bool("use_cache", self.use_cache)
        check_choice("rng", self.rng, RNGS)


def filter_logits(logits_NV: torch.Tensor, top_k: int | None = None, top_p: float = 1.0) -> torch.Tensor:
    """Keep the top_k largest logits (None: all) and the smallest set whose probability reaches top_p
    (1: all); the others become -inf. The most likely token always survives."""
    if top_k is not None and top_k < logits_NV.shape[-1]:
        kth = logits_NV.topk(top_k, dim=-1).values[..., -1:]
        logits_NV = logits_NV.masked_fill(logits_NV < kth, float("-inf"))
    if top_p < 1.0:  # as the release computes it: drop the least likely tokens whose total stays <= 1 - top_p
        sorted_NV, order = logits_NV.sort(dim=-1, descending=False)
        drop = sorted_NV.softmax(-1).cumsum(-1) <= 1 - top_p
        drop[..., -1] = False
        logits_NV = logits_NV.masked_fill(drop.scatter(-1, order, drop), float("-inf"))
    return logits_NV


def sample_tokens(logits_NV: torch.Tensor, generator: torch.Generator, *, top_k: int | None = None, top_p: float = 1.0,
                  temperature: float = 1.0, greedy: bool = False, rng: str = "inverse_cdf") -> torch.Tensor:
    """One token per row: argmax when greedy, else a draw from the filtered, tempered softmax.

    ``rng="inverse_cdf"`` inverts the cumulative distribution with one uniform number per row (O(V) adds;
    ``torch.multinomial`` draws an exponential per vocabulary entry). Filtered-out tokens have
    probability 0 and are never drawn: the first index whose cumulative mass exceeds u is taken.
    ``rng="release"`` draws with ``torch.multinomial`` as VAR's release does: the same distribution, and
    from the same seeded generator the same tokens as the release's."""
    if greedy:
        return logits_NV.argmax(-1)
    logits = logits_NV if logits_NV.dtype == torch.float64 else logits_NV.float()  # float32 at least
    logits = logits if temperature == 1.0 else logits / temperature
    logits = filter_logits(logits, top_k, top_p)
    if rng == "release":
        return torch.multinomial(logits.softmax(-1), 1, replacement=True, generator=generator)[:, 0]
    cdf_NV = (logits - logits.amax(-1, keepdim=True)).exp_().cumsum_(-1)  # unnormalised
    total_N1 = cdf_NV[:, -1:]
    u_N1 = torch.rand(len(cdf_NV), 1, device=cdf_NV.device, generator=generator) * total_N1
    u_N1 = torch.minimum(u_N1, torch.nextafter(total_N1, torch.zeros_like(total_N1)))  # u < total after rounding
    return torch.searchsorted(cdf_NV, u_N1, right=True).squeeze(-1)


def keep_masks(mask_B1HW: torch.Tensor, schedule) -> list[torch.Tensor]:
    """Pixel keep-mask -> per-scale token keep-masks (B, h_k, h_k): a token is kept iff no pixel of its
    area-resize footprint is masked out."""
    lost = (~mask_B1HW).float()
    return [~F.adaptive_max_pool2d(lost, s)[:, 0].bool() for s in schedule]


class VAR(nn.Module):
    sampling_cls = VARSampling  # the sampling settings :meth:`sample` reads

    def __init__(self, config: VARConfig, tokenizer: MultiScaleVQVAE):
        super().__init__()
        if not isinstance(tokenizer, MultiScaleVQVAE):
            raise ValueError(f"tokenizer must be a MultiScaleVQVAE, got {type(tokenizer).__name__}")
        bb, tc = config.backbone, tokenizer.config
        if bb.in_dim != tc.latent_channels:
            raise ValueError(f"backbone.in_dim ({bb.in_dim}) must equal the tokenizer's latent channels "
                             f"({tc.latent_channels})")
        if bb.schedule != tc.schedule:
            raise ValueError(f"backbone.schedule {bb.schedule} must equal the tokenizer's schedule {tc.schedule}")
        if config.vocab_size != tc.vocab_size:
            raise ValueError(f"vocab_size ({config.vocab_size}) must equal the tokenizer's ({tc.vocab_size})")
        self.config = config
        self.tokenizer = tokenizer.eval().requires_grad_(False)  # frozen, saved with the model
        self.backbone = Backbone(bb)
        self.head = nn.Linear(bb.width, config.vocab_size)
        nn.init.trunc_normal_(self.head.weight, std=0.02)
        nn.init.zeros_(self.head.bias)
        self.slices = scale_slices(bb.schedule)

    def train(self, mode: bool = True):
        super().train(mode)
        self.tokenizer.eval()  # never update the codebook or its usage counters
        return self

    @property
    def num_scales(self) -> int:
        return len(self.config.backbone.schedule)

    # ---- training -----------------------------------------------------------------------------
    def forward(self, x_BCHW: torch.Tensor, y_B: torch.Tensor) -> dict[str, torch.Tensor]:
        """Teacher-forced CE: {"loss": mean over all tokens, "ce_s1".."ce_sK": mean per scale}."""
        self.tokenizer.check_images(x_BCHW)
        return self.token_loss(self.tokenizer.encode(x_BCHW), y_B)

    def token_loss(self, tokens: list[torch.Tensor], y_B: torch.Tensor, return_hidden: bool = False):
        """:meth:`forward` on already encoded token maps (``return_hidden``: also the backbone output)."""
        self.backbone.check_labels(y_B)
        with torch.no_grad():
            x_in = self.tokenizer.teacher_inputs(tokens)
        target_BL = torch.cat([t.flatten(1) for t in tokens], 1)
        h_BLW = self.backbone(x_in, y_B)
        logp_BLV = self.head(h_BLW).float().log_softmax(-1)
        nll_BL = -logp_BLV.gather(-1, target_BL[..., None])[..., 0]
        ls = self.config.label_smoothing
        loss = nll_BL.mean() if ls == 0 else ((1 - ls) * nll_BL - ls * logp_BLV.mean(-1)).mean()
        out = {"loss": loss}
        for k, sl in enumerate(self.slices):
            out[f"ce_s{k + 1}"] = nll_BL[:, sl].mean().detach()
        return (out, h_BLW) if return_hidden else out

    # ---- sampling -----------------------------------------------------------------------------
    def _check_sampling(self, y_B, seed):
        self.backbone.check_labels(y_B, allow_null=False, nonempty=True)
        if seed is not None:
            check_seed("seed", seed)

    @torch.no_grad()
    def _generate(self, y_B, sp: VARSampling, seed, keep_tokens=None, keep_masks_=None):
        bb, tok = self.backbone, self.tokenizer
        sch, K = self.config.backbone.schedule, self.num_scales
        dev = self.head.weight.device
        y_B = y_B.to(dev)
        B, C, S = len(y_B), tok.config.latent_channels, tok.config.latent_side
        g = torch.Generator(device=dev)
        g.manual_seed(int(torch.randint(2**62, ())) if seed is None else seed)
        guided = sp.cfg_scale > 0
        ws = cfg_weights(sp.cfg_scale, sp.cfg_schedule, K)
        y_in = torch.cat([y_B, torch.full_like(y_B, bb.null_class)]) if guided else y_B
        cond = bb.class_emb(y_in)
        cache = bb.new_cache() if sp.use_cache else None
        f_hat, x_next, tokens = torch.zeros(B, C, S, S, device=dev), None, []
        for k, s in enumerate(sch):
            if sp.use_cache:
                h = bb.step(None if k == 0 else x_next.repeat(2 if guided else 1, 1, 1), cond, cache)
            else:  # the full teacher-forced pass; inputs of scales not sampled yet are zeros (unseen)
                x_in = torch.zeros(len(y_in), bb.cfg.seq_len - bb.cfg.first_len, C, device=dev)
                if k:
                    known = tok.teacher_inputs(tokens)
                    x_in[:, :known.shape[1]] = known.repeat(2 if guided else 1, 1, 1)
                h = bb(x_in, y_in)[:, self.slices[k]]
            logits = self.head(h)
            logits = logits if logits.dtype == torch.float64 else logits.float()
            if guided:
                c, u = logits.chunk(2)
                logits = guide(c, u, ws[k])
            idx = sample_tokens(logits.flatten(0, 1), g, top_k=sp.top_k, top_p=sp.top_p, temperature=sp.temperature,
                                greedy=sp.greedy, rng=sp.rng).view(B, s, s)
            if keep_tokens is not None:
                idx = torch.where(keep_masks_[k], keep_tokens[k], idx)
            tokens.append(idx)
            f_hat, x_next = tok.next_input(k, f_hat, idx)
        images, last_nfe = self._finish(f_hat, h, ws[-1], sp, g)
        per_scale = [2 if guided else 1] * K
        per_scale[-1] += last_nfe
        stats = {"backbone_forwards": K, "head_nfe": sum(per_scale), "head_nfe_per_scale": per_scale,
                 "guided": guided}
        return images, stats, tokens

    def _finish(self, f_hat_BCSS, h_BnW, w: float, sp: VARSampling, g: torch.Generator):
        """The image from the final latent, and the head evaluations that took beyond the last scale's
        logits (none here; :class:`crossfamily.hybrid.HybridVAR` draws a residual). ``h``: the last scale's
        backbone output (conditional rows, then unconditional ones when guided), ``w`` its guidance."""
        return self.tokenizer.decode_latent(f_hat_BCSS).clamp(-1, 1), 0

    @torch.no_grad()
    def reconstruct(self, x_BCHW: torch.Tensor) -> torch.Tensor:
        """The autoencoder's reconstruction this model's samples can at best match (its ceiling)."""
        return self.tokenizer.reconstruct(x_BCHW)

    def _run(self, *args, **kw):
        was = self.training
        self.eval()
        try:
            return self._generate(*args, **kw)
        finally:
            self.train(was)

    def sample(self, y_B: torch.Tensor, sampling: VARSampling | None = None, *, seed: int | None = None,
               return_tokens: bool = False, **kw):
        """Class-conditional images (B, C, S, S) in [-1, 1] and stats {"backbone_forwards", "head_nfe",
        "head_nfe_per_scale", "guided"} (head NFE per image: a guided evaluation counts 2).

        ``sampling`` is a :class:`VARSampling`, or its fields are given as keywords (``cfg_scale=``,
        ``top_k=`` ...; an unknown one is a ``ValueError``). seed: same seed -> identical images (None:
        drawn from the global torch RNG). return_tokens adds the sampled token maps."""
        sp = config_from(self.sampling_cls, sampling, kw, "sampling", also=("seed", "return_tokens"))
        self._check_sampling(y_B, seed)
        images, stats, tokens = self._run(y_B, sp, seed)
        return (images, stats, tokens) if return_tokens else (images, stats)

    def inpaint(self, x_BCHW: torch.Tensor, mask_B1HW: torch.Tensor, y_B: torch.Tensor,
                sampling: VARSampling | None = None, *, seed: int | None = None, return_tokens: bool = False, **kw):
        """Zero-shot in/outpainting: regenerate the pixels where ``mask`` is False, keeping the tokens
        whose whole footprint is True (see the module doc). Same options and returns as :meth:`sample`."""
        sp = config_from(self.sampling_cls, sampling, kw, "sampling", also=("seed", "return_tokens"))
        self._check_sampling(y_B, seed)
        self.tokenizer.check_images(x_BCHW, "x", finite=True)
        B, _, H, W = x_BCHW.shape
        if not torch.is_tensor(mask_B1HW) or mask_B1HW.dtype != torch.bool or tuple(mask_B1HW.shape) != (B, 1, H, W):
            got = f"{mask_B1HW.dtype} of shape {tuple(mask_B1HW.shape)}" if torch.is_tensor(mask_B1HW) \
                else type(mask_B1HW).__name__
            raise ValueError(f"mask must be a bool tensor of shape ({B}, 1, {H}, {W}) (True = keep), got {got}")
        if len(y_B) != B:
            raise ValueError(f"y must hold one class id per image ({B}), got {len(y_B)}")
        dev = self.head.weight.device
        keep = self.tokenizer.encode(x_BCHW.to(dev, torch.float32))  # float64 / half inputs: float32 weights
        masks = keep_masks(mask_B1HW.to(dev), self.config.backbone.schedule)
        images, stats, tokens = self._run(y_B, sp, seed, keep, masks)
        return (images, stats, tokens) if return_tokens else (images, stats)
