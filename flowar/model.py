"""FlowAR: the shared scale-wise backbone + a flow-matching velocity head on continuous latents.

Time convention: t = 0 noise, t = 1 data (see ``flowar.solvers``).

Training (teacher forcing). The frozen autoencoder gives the latent z (B, C, s, s); its pyramid is
z_k = area-resize(z, side_k). The backbone input of scale k > 1 is z_{k-1} upsampled (bicubic) to
side_k; its output h at each position of scale k conditions the head, a per-position MLP with
adaptive layer norm on [h + embedding of t] (MAR's / FlowAR's small head), which predicts the
velocity of the linear path x_t = t x1 + (1 - t) x0 with x1 = z_k and x0 = Gaussian noise
(``path="noise"``) or, FlowAR's variant, the upsampled previous scale plus noise
(``path="prev_noise"``; scale 1 has no previous scale and starts from noise). t is drawn per
position (uniform or logit-normal); each scale's loss is weighted by its token count.

Sampling, scale by scale with the KV cache: one backbone step per scale gives h, then
dx/dt = v(t, x | h) is integrated from t = 0 to 1 with torchdiffeq, the result is the next input.

Classifier-free guidance on the velocity, in the form where w = 0 is exactly the conditional model:
    v = v_c + w_k (v_c - v_u)          (FlowAR's / MAR's cfg = 1 + w)
with w_k = cfg_scale (``"constant"``) or cfg_scale * (k - 1) / (K - 1) (``"linear"``, growing with
the scale index k = 1..K), only inside ``cfg_interval`` in t and only at scales k <= ``cfg_max_scale``.
A guided evaluation costs 2 head calls (cond + uncond), an unguided one 1.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Sequence

import torch
import torch.nn as nn
from einops import rearrange

from nextscale.backbone import Backbone, BackboneConfig
from nextscale.guidance import CFG_SCHEDULES, cfg_weights, guide
from nextscale.config import check_choice, check_float, check_int
from nextscale.scales import maps_to_seq, pyramid, resize, scale_slices

from .autoencoder import AEConfig, ContinuousAE
from .solvers import METHODS, TIME_GRIDS, SolverConfig, path_sample, sample_t, solve

PATHS = ("noise", "prev_noise")
T_SAMPLINGS = ("uniform", "logit_normal")
LOSS_WEIGHTS = ("tokens", "uniform")


@dataclass(frozen=True)
class FlowARConfig:
    ae: AEConfig = field(default_factory=AEConfig)
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    head_width: int = 128
    head_depth: int = 3            # adaLN residual MLP blocks
    path: str = "noise"            # "noise" | "prev_noise" (upsampled previous scale + noise)
    prev_noise_std: float = 1.0    # std of the noise added to the previous scale (prev_noise only)
    t_sampling: str = "logit_normal"
    logit_mean: float = 0.0
    logit_std: float = 1.0
    loss_weight: str = "tokens"    # "tokens": scale k weighted by its token count (FlowAR); "uniform"

    def __post_init__(self):
        if not isinstance(self.ae, AEConfig):
            raise ValueError(f"ae must be an AEConfig, got {type(self.ae).__name__}")
        if not isinstance(self.backbone, BackboneConfig):
            raise ValueError(f"backbone must be a BackboneConfig, got {type(self.backbone).__name__}")
        if self.backbone.in_dim != self.ae.latent_channels:
            raise ValueError(f"backbone.in_dim ({self.backbone.in_dim}) must equal the autoencoder's latent "
                             f"channels ({self.ae.latent_channels})")
        if self.backbone.schedule[-1] != self.ae.latent_side:
            raise ValueError(f"backbone.schedule {self.backbone.schedule} must end at the autoencoder's latent "
                             f"side {self.ae.latent_side}")
        check_int("head_width", self.head_width, 1)
        check_int("head_depth", self.head_depth, 1)
        check_choice("path", self.path, PATHS)
        check_float("prev_noise_std", self.prev_noise_std, 0)
        check_choice("t_sampling", self.t_sampling, T_SAMPLINGS)
        check_float("logit_mean", self.logit_mean)
        check_float("logit_std", self.logit_std, 0, lo_open=True)
        check_choice("loss_weight", self.loss_weight, LOSS_WEIGHTS)


# ----------------------------------------------------------------------------- the velocity head

def _modulate(x, shift, scale):
    return x * (1 + scale) + shift


class TimeEmbedding(nn.Module):
    """Sinusoidal features of t in [0, 1] (times 1000, as DiT) followed by an MLP."""

    def __init__(self, width: int, freq_dim: int = 256):
        super().__init__()
        self.freq_dim = freq_dim
        self.mlp = nn.Sequential(nn.Linear(freq_dim, width), nn.SiLU(), nn.Linear(width, width))

    def forward(self, t):  # (...) -> (..., width)
        half = self.freq_dim // 2
        freqs = torch.exp(-math.log(10_000) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
        arg = (1000 * t.float())[..., None] * freqs
        return self.mlp(torch.cat([torch.cos(arg), torch.sin(arg)], dim=-1))


class AdaLNBlock(nn.Module):
    """x + gate * MLP(modulate(LN(x))), shift/scale/gate from the condition (adaLN-Zero)."""

    def __init__(self, width: int):
        super().__init__()
        self.norm = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.mlp = nn.Sequential(nn.Linear(width, width), nn.SiLU(), nn.Linear(width, width))
        self.ada = nn.Sequential(nn.SiLU(), nn.Linear(width, 3 * width))

    def forward(self, x, c):
        shift, scale, gate = self.ada(c).chunk(3, dim=-1)
        return x + gate * self.mlp(_modulate(self.norm(x), shift, scale))


class VelocityHead(nn.Module):
    """v(x_t, t | h), independently at every position: (..., C), (...), (..., W_backbone) -> (..., C)."""

    def __init__(self, channels: int, cond_width: int, width: int, depth: int):
        super().__init__()
        self.x_in = nn.Linear(channels, width)
        self.c_in = nn.Linear(cond_width, width)
        self.t_emb = TimeEmbedding(width)
        self.blocks = nn.ModuleList(AdaLNBlock(width) for _ in range(depth))
        self.norm_out = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.ada_out = nn.Sequential(nn.SiLU(), nn.Linear(width, 2 * width))
        self.out = nn.Linear(width, channels)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        for lin in [b.ada[-1] for b in self.blocks] + [self.ada_out[-1], self.out]:
            nn.init.zeros_(lin.weight)
            nn.init.zeros_(lin.bias)

    def forward(self, x_NC, t_N, h_NW):
        return self.velocity(x_NC, t_N, self.c_in(h_NW))

    def velocity(self, x_NC, t_N, hc_NW):
        """``hc = c_in(h)``, computed once per scale when sampling; ``t`` may be one time for all
        positions (shape (1, 1)), so its embedding is computed once per evaluation."""
        c = hc_NW + self.t_emb(t_N)
        x = self.x_in(x_NC)
        for blk in self.blocks:
            x = blk(x, c)
        shift, scale = self.ada_out(c).chunk(2, dim=-1)
        return self.out(_modulate(self.norm_out(x), shift, scale))


# ----------------------------------------------------------------------------- the model

def _seq(m_BCHW):
    return rearrange(m_BCHW, "B C H W -> B (H W) C")


def _map(x_BnC, side):
    return rearrange(x_BnC, "B (H W) C -> B C H W", H=side, W=side)


class FlowAR(nn.Module):
    def __init__(self, config: FlowARConfig, autoencoder: ContinuousAE):
        super().__init__()
        if not isinstance(config, FlowARConfig):
            raise ValueError(f"config must be a FlowARConfig, got {type(config).__name__}")
        if not isinstance(autoencoder, ContinuousAE) or autoencoder.config != config.ae:
            raise ValueError("autoencoder must be a ContinuousAE built from config.ae")
        self.config = config
        self.ae = autoencoder.eval().requires_grad_(False)  # frozen; its weights ride along in checkpoints
        self.backbone = Backbone(config.backbone)
        self.head = VelocityHead(config.ae.latent_channels, config.backbone.width, config.head_width,
                                 config.head_depth)
        sch = config.backbone.schedule
        n = torch.tensor([s * s for s in sch], dtype=torch.float32)
        w = n / n.sum() if config.loss_weight == "tokens" else torch.full_like(n, 1 / len(sch))
        self.register_buffer("scale_weights", w, persistent=False)

    def train(self, mode: bool = True):
        super().train(mode)
        self.ae.eval()
        return self

    @property
    def schedule(self) -> tuple[int, ...]:
        return self.config.backbone.schedule

    @property
    def device(self) -> torch.device:
        return self.scale_weights.device

    # ------------------------------------------------------------------ training

    def latent_pyramid(self, x_BCHW: torch.Tensor) -> list[torch.Tensor]:
        """[z_k (B, C, side_k, side_k)]: the normalised latent area-resized to every scale."""
        with torch.no_grad():
            return pyramid(self.ae.encode(x_BCHW), self.schedule)

    def _source(self, noise_BnC, up_BnC):
        """x0 of one scale: noise, or (prev_noise, scales > 1) the upsampled previous scale plus noise."""
        if self.config.path == "noise" or up_BnC is None:
            return noise_BnC
        return up_BnC + self.config.prev_noise_std * noise_BnC

    def forward(self, x_BCHW: torch.Tensor, y_B: torch.Tensor) -> dict[str, torch.Tensor]:
        sch, cfg = self.schedule, self.config
        maps = self.latent_pyramid(x_BCHW)
        ups = [_seq(resize(m, s)) for m, s in zip(maps[:-1], sch[1:])]  # inputs of scales 2..K
        h_BLW = self.backbone(torch.cat(ups, 1), y_B)
        x1 = maps_to_seq(maps)                                            # (B, L, C)
        noise = torch.randn_like(x1)
        slices = scale_slices(sch)
        x0 = torch.cat([self._source(noise[:, sl], None if k == 0 else ups[k - 1]) for k, sl in enumerate(slices)], 1)
        t_BL = sample_t(x1.shape[0] * x1.shape[1], cfg.t_sampling, cfg.logit_mean, cfg.logit_std,
                        device=x1.device).view(x1.shape[:2])
        x_t, target = path_sample(x0, x1, t_BL[..., None])
        err_BL = (self.head(x_t, t_BL, h_BLW) - target).pow(2).mean(-1)
        per_scale = torch.stack([err_BL[:, sl].mean() for sl in slices])
        out = {"loss": (per_scale * self.scale_weights).sum()}
        out.update({f"flow_s{k + 1}": l for k, l in enumerate(per_scale)})
        return out

    # ------------------------------------------------------------------ sampling

    def _check_y(self, y_B) -> torch.Tensor:
        if not isinstance(y_B, torch.Tensor):
            y_B = torch.as_tensor(y_B)
        if y_B.dtype != torch.long or y_B.ndim != 1 or len(y_B) == 0:
            raise ValueError(f"labels must be a non-empty 1-d long tensor, got {y_B.dtype} of shape {tuple(y_B.shape)}")
        self.backbone.check_labels(y_B, allow_null=False)
        return y_B.to(self.device)

    def _plan(self, solver, steps, rtol, atol, time_grid, first_step, min_step, cfg_scale, cfg_schedule,
              cfg_interval, cfg_max_scale) -> tuple[list[SolverConfig], list[float], tuple[float, float]]:
        """Validate the sampling arguments; returns one SolverConfig and one guidance weight per scale."""
        K = len(self.schedule)
        check_choice("solver", solver, METHODS)
        check_choice("time_grid", time_grid, TIME_GRIDS)
        if isinstance(steps, (list, tuple)) and len(steps) == K:
            for k, n in enumerate(steps):
                check_int(f"steps[{k}]", n, 1)
            steps_k = list(steps)
        elif isinstance(steps, int) and not isinstance(steps, bool):
            check_int("steps", steps, 1)
            steps_k = [steps] * K
        else:
            raise ValueError(f"steps must be an int >= 1 or a sequence of {K} ints (one per scale), got {steps!r}")
        solvers = [SolverConfig(solver, s, time_grid, rtol, atol, first_step, min_step) for s in steps_k]
        check_float("cfg_scale", cfg_scale, 0)
        check_choice("cfg_schedule", cfg_schedule, CFG_SCHEDULES)
        if not (isinstance(cfg_interval, (tuple, list)) and len(cfg_interval) == 2):
            raise ValueError(f"cfg_interval must be a pair (t_lo, t_hi) with 0 <= t_lo <= t_hi <= 1, got {cfg_interval!r}")
        lo, hi = cfg_interval
        check_float("cfg_interval[0]", lo, 0, 1)
        check_float("cfg_interval[1]", hi, lo, 1)
        if cfg_max_scale is not None:
            check_int("cfg_max_scale", cfg_max_scale, 0, K)
        ws = [w if cfg_max_scale is None or k + 1 <= cfg_max_scale else 0.0
              for k, w in enumerate(cfg_weights(cfg_scale, cfg_schedule, K))]
        return solvers, ws, (float(lo), float(hi))

    @torch.no_grad()
    def generate_latents(self, y_B: torch.Tensor, *, known_BCHW: torch.Tensor | None = None,
                         keep_B1HW: torch.Tensor | None = None, **sampling) -> tuple[torch.Tensor, dict]:
        """Sample normalised latents (B, C, s, s) scale by scale, in eval mode; ``sampling`` as in
        :meth:`sample`. ``known_BCHW`` / ``keep_B1HW`` (latent side, bool): latents imposed where keep
        is True, at every scale (keep area-resized; a position is kept only if fully covered) and
        along each ODE path."""
        if (known_BCHW is None) != (keep_B1HW is None):
            raise ValueError("give both known_BCHW and keep_B1HW, or neither")
        if known_BCHW is not None:
            B, C, s = len(y_B), self.config.ae.latent_channels, self.config.ae.latent_side
            if tuple(known_BCHW.shape) != (B, C, s, s) or tuple(keep_B1HW.shape) != (B, 1, s, s) \
                    or keep_B1HW.dtype != torch.bool:
                raise ValueError(f"known_BCHW must have shape ({B}, {C}, {s}, {s}) and keep_B1HW be bool of shape "
                                 f"({B}, 1, {s}, {s}), got {tuple(known_BCHW.shape)} and {keep_B1HW.dtype} "
                                 f"{tuple(keep_B1HW.shape)}")
        was_training = self.training
        self.eval()
        try:
            return self._generate(y_B, known_BCHW, keep_B1HW, **sampling)
        finally:
            self.train(was_training)

    def _generate(self, y_B, known_BCHW, keep_B1HW, *, solver: str = "euler", steps: int | Sequence[int] = 4,
                  rtol: float = 1e-3, atol: float = 1e-3, cfg_scale: float = 1.0, cfg_schedule: str = "linear",
                  cfg_interval: tuple[float, float] = (0.0, 1.0), cfg_max_scale: int | None = None,
                  time_grid: str = "uniform", per_sample: bool = False, seed: int | None = None,
                  use_cache: bool = True, first_step: float = 0.05, min_step: float = 0.0):
        y_B = self._check_y(y_B)
        solvers, ws, (t_lo, t_hi) = self._plan(solver, steps, rtol, atol, time_grid, first_step, min_step,
                                               cfg_scale, cfg_schedule, cfg_interval, cfg_max_scale)
        if seed is not None:
            check_int("seed", seed, 0)
        base = int(torch.randint(0, 2**31, (1,))) if seed is None else seed
        sch, B, C, dev = self.schedule, len(y_B), self.config.ae.latent_channels, self.device
        known = keep = None
        if known_BCHW is not None:
            known, keep = pyramid(known_BCHW.to(dev), sch), pyramid(keep_B1HW.to(dev).float(), sch)
            keep = [_seq(m >= 1 - 1e-6) for m in keep]  # (B, n_k, 1) bool
            known = [_seq(m) for m in known]

        guided = any(w > 0 for w in ws)
        y_in = torch.cat([y_B, torch.full_like(y_B, self.backbone.null_class)]) if guided else y_B
        cond = self.backbone.class_emb(y_in)
        cache = self.backbone.new_cache() if use_cache else None
        inputs: list[torch.Tensor] = []      # backbone inputs fed so far (uncached path)
        nfe_scale, nfe_image = [], torch.zeros(B, dtype=torch.long)
        tic = time.perf_counter()
        # image i's noise (all scales) comes from its own generator seeded by (seed, i): it does not
        # depend on the batch size or on its neighbours
        L = self.config.backbone.seq_len
        noise_BLC = torch.stack([torch.randn(L, C, device=dev, generator=torch.Generator(dev).manual_seed(
            (base * 1_000_003 + i) % 2**63)) for i in range(B)])
        prev = None
        for k, (side, sl) in enumerate(zip(sch, scale_slices(sch))):
            up = None if k == 0 else _seq(resize(prev, side))                     # (B, n, C)
            x_in = None if up is None else (torch.cat([up, up]) if guided else up)
            if use_cache:
                h = self.backbone.step(x_in, cond, cache)                          # (B or 2B, n, W)
            else:
                if x_in is not None:
                    inputs.append(x_in)
                h = self._uncached_h(inputs, y_in, k)
            w, ks = ws[k], (None if keep is None else (keep[k], known[k]))
            hc = self.head.c_in(h)                                                 # fixed during the solve
            x0 = self._source(noise_BLC[:, sl], up)

            def guided_at(t: float) -> bool:
                return w > 0 and t_lo <= t <= t_hi

            def velocity(t, x, rows, hc=hc, w=w, ks=ks, x0=x0):
                t_11 = t.to(x.dtype).reshape(1, 1)
                if ks is not None:  # kept positions follow the known path exactly
                    kp, x1k = ks[0][rows], ks[1][rows]
                    x = torch.where(kp, t * x1k + (1 - t) * x0[rows], x)
                if guided_at(float(t)):
                    hc2 = torch.cat([hc[:B][rows], hc[B:][rows]])
                    v_c, v_u = self.head.velocity(torch.cat([x, x]), t_11, hc2).chunk(2)
                    v = guide(v_c, v_u, w)
                else:
                    v = self.head.velocity(x, t_11, hc[:B][rows])
                if ks is not None:
                    v = torch.where(kp, x1k - x0[rows], v)
                return v

            sol = solve(velocity, x0, solvers[k], per_sample=per_sample,
                        cost=lambda t: 2 if guided_at(t) else 1)
            x1 = sol.x if ks is None else torch.where(ks[0], ks[1], sol.x)
            prev = _map(x1, side)
            nfe_image += torch.tensor(sol.nfe)
            nfe_scale.append(max(sol.nfe))
        stats = {"backbone_forwards": len(sch), "head_nfe": int(nfe_image.max()),
                 "head_nfe_per_scale": nfe_scale, "guided": guided,
                 "head_nfe_per_image": nfe_image.tolist(), "cfg_per_scale": ws,
                 "solver": solver, "steps_per_scale": [s.steps if not s.adaptive else None for s in solvers],
                 "seconds": time.perf_counter() - tic}
        return prev, stats

    def _uncached_h(self, inputs: list[torch.Tensor], y_in: torch.Tensor, k: int) -> torch.Tensor:
        """h of scale k from a full teacher-forced pass (later scales zero-padded: block-causal, unseen)."""
        cfg = self.config.backbone
        fed = torch.cat(inputs, 1) if inputs else torch.zeros(len(y_in), 0, cfg.in_dim, device=self.device)
        pad = torch.zeros(len(y_in), cfg.seq_len - cfg.first_len - fed.shape[1], cfg.in_dim, device=self.device)
        return self.backbone(torch.cat([fed, pad], 1), y_in)[:, scale_slices(cfg.schedule)[k]]

    @torch.no_grad()
    def sample(self, y_B: torch.Tensor, *, solver: str = "euler", steps: int | Sequence[int] = 4,
               rtol: float = 1e-3, atol: float = 1e-3, cfg_scale: float = 1.0, cfg_schedule: str = "linear",
               cfg_interval: tuple[float, float] = (0.0, 1.0), cfg_max_scale: int | None = None,
               time_grid: str = "uniform", per_sample: bool = False, seed: int | None = None,
               use_cache: bool = True, first_step: float = 0.05, min_step: float = 0.0
               ) -> tuple[torch.Tensor, dict]:
        """Class-conditional samples: returns (images (B, C_img, S, S) in about [-1, 1], stats).

        Arguments (all validated, bad values raise ``ValueError`` naming the allowed ones):
        ``solver`` one of euler/midpoint/rk4 (fixed step) or dopri5/bosh3 (adaptive); ``steps`` per
        scale for fixed-step solvers, an int or one per scale; ``rtol``/``atol``, ``first_step``,
        ``min_step`` for adaptive ones; ``time_grid`` "uniform" or "two_segment" (FlowAR's);
        ``cfg_scale`` w >= 0 (0: the conditional model, exactly), ``cfg_schedule`` "linear"
        (w_k = w (k-1)/(K-1)) or "constant", ``cfg_interval`` (t_lo, t_hi) where guidance is on,
        ``cfg_max_scale`` (guidance only at scales k <= it; 0 turns it off); t = 0 is noise, so
        FlowAR's ``guidance_high=0.9`` (t = 1 noise) is ``cfg_interval=(0.1, 1.0)`` here; ``per_sample`` integrates every image
        on its own (adaptive: reproducible per-image NFE); ``seed`` (same seed -> same images);
        ``use_cache`` (False: recompute the full backbone pass at every scale, for testing).

        stats: ``backbone_forwards`` (= K), ``head_nfe`` (head evaluations per image, guided ones
        counting 2; with per_sample, the largest over the batch), ``head_nfe_per_scale``,
        ``head_nfe_per_image``, ``guided``, ``cfg_per_scale``, ``solver``, ``steps_per_scale``, ``seconds``.
        With a batch-shared adaptive step every image sees the whole batch's evaluations."""
        z, stats = self.generate_latents(
            y_B, solver=solver, steps=steps, rtol=rtol, atol=atol, cfg_scale=cfg_scale, cfg_schedule=cfg_schedule,
            cfg_interval=cfg_interval, cfg_max_scale=cfg_max_scale, time_grid=time_grid, per_sample=per_sample,
            seed=seed, use_cache=use_cache, first_step=first_step, min_step=min_step)
        return self.ae.decode(z), stats

    @torch.no_grad()
    def inpaint(self, x_BCHW: torch.Tensor, mask_B1HW: torch.Tensor, y_B: torch.Tensor, *,
                paste: bool = True, **sampling) -> tuple[torch.Tensor, dict]:
        """Zero-shot inpainting / outpainting: regenerate where ``mask`` is False, keep where it is True.

        The kept region's latents (of ``x``) are imposed at every scale and along each ODE path
        (x_t = t x1_known + (1 - t) x0); only the other positions are generated. A latent position
        is kept when the mask covers it fully. ``paste`` copies the kept pixels of ``x`` into the
        output (the decoder's receptive field otherwise blends them slightly with the generated
        part). Other keyword arguments as in :meth:`sample`."""
        self.ae.check_images(x_BCHW)
        B, _, S, _ = x_BCHW.shape
        if not isinstance(mask_B1HW, torch.Tensor) or mask_B1HW.dtype != torch.bool \
                or tuple(mask_B1HW.shape) != (B, 1, S, S):
            raise ValueError(f"mask must be a bool tensor of shape ({B}, 1, {S}, {S}) (True = keep), got "
                             f"{getattr(mask_B1HW, 'dtype', type(mask_B1HW))} of shape "
                             f"{tuple(getattr(mask_B1HW, 'shape', ()))}")
        if len(y_B) != B:
            raise ValueError(f"need one label per image, got {len(y_B)} labels for {B} images")
        x = x_BCHW.to(self.device)
        s = self.config.ae.latent_side
        keep_lat = resize(mask_B1HW.to(self.device).float(), s) >= 1 - 1e-6
        z, stats = self.generate_latents(y_B, known_BCHW=self.ae.encode(x), keep_B1HW=keep_lat, **sampling)
        img = self.ae.decode(z)
        if paste:
            img = torch.where(mask_B1HW.to(self.device), x, img)
        return img, stats
