"""FlowAR (Ren et al., ICML 2025): the shared scale-wise backbone + a flow-matching velocity head.

Time convention: t = 0 noise, t = 1 data (see ``flowar.solvers``).

Training (teacher forcing). The frozen autoencoder gives the latent z (B, C, S, S); its pyramid is
z_k = area-resize(z, side_k). The backbone input of scale k > 1 is made from z_{k-1} as the release
does (``input_resize="via_full"``: bicubic up to the full latent side S, then area down to side_k;
``"direct"``: bicubic straight to side_k). The backbone output h_k conditions the velocity head
(``flowar.heads``: FlowAR's transformer over the tokens of the scale, or MAR's per-token MLP), which
predicts the velocity of the linear path x_t = t x1 + (1 - t) x0, x1 = z_k, x0 ~ N(0, I) at every
scale (``path="noise"``, FlowAR's). t is uniform, one per image and scale (``t_per="scale"``,
FlowAR's; ``"token"`` draws one per position; ``t_sampling="logit_normal"`` is SD3's). Each scale's
loss is weighted by its token count over the last scale's, n_k / n_K (the release's n_k / 256 at 256 px).

Not FlowAR's, kept as a variant of this project: ``path="prev_noise"`` starts scale k from the
upsampled previous scale plus noise (closer to a bridge between scales than to FlowAR).

Sampling, scale by scale with the KV cache: one backbone step per scale gives h_k, then
dx/dt = v(t, x | h_k) is integrated from pure noise at t = 0 to t = 1 (torchdiffeq ODE solvers, or
Euler–Maruyama on the SDE with the same marginals); the result is the next scale's input.

Classifier-free guidance on the velocity, in the form where w = 0 is exactly the conditional model:
    v = v_c + w_k (v_c - v_u)          (FlowAR's / MAR's cfg = 1 + w)
with w_k = cfg_scale (``"constant"``) or cfg_scale * (k - 1) / (K - 1) (``"linear"``, growing with
the scale index k = 1..K), only inside ``cfg_interval`` in t and only at scales k <= ``cfg_max_scale``.
A guided evaluation costs 2 head calls (cond + uncond), an unguided one 1.

Few-step variant, not FlowAR's (``few_step="shortcut"``; shortcut models, Frans et al. 2024): the
head also takes a step size d and predicts the average velocity over [t, t + d]; a fraction
``shortcut_fraction`` of each batch is trained on the self-consistency target
s(x_t, t, 2d) = [s(x_t, t, d) + s(x_t + d s, t + d, d)] / 2 (stop-gradient) with 2d in
{1, 1/2, ..., 1/shortcut_max_steps} and t on the grid of multiples of 2d, the rest on the flow loss
at d = 0 (the shared path, unchanged); ``solver="shortcut"`` samples it in 1, 2, 4 ... steps.

Where we differ from FlowAR: one block-causal backbone stack serves both heads (FlowAR's
release conditions its head on a separate stack); see ``flowar/README.md``.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch
import torch.nn as nn
from einops import rearrange

from nextscale.backbone import Backbone, BackboneConfig
from nextscale.config import check_choice, check_float, check_int, check_seed, config_from
from nextscale.scales import pyramid, resize, scale_slices

from .autoencoder import AEConfig, ContinuousAE
from .heads import HEADS, TIME_INPUTS, TRANSFORMER_HEADS, make_head
from .field import ImageNoise, ScaleField
from .sampling import FlowSampling
from .solvers import path_sample, sample_t, shortcut_target, solve

PATHS = ("noise", "prev_noise")
T_PER = ("scale", "token")
T_SAMPLINGS = ("uniform", "logit_normal")
LOSS_WEIGHTS = ("tokens", "uniform")
INPUT_RESIZES = ("via_full", "direct")
FEW_STEP = (None, "shortcut")


@dataclass(frozen=True)
class FlowARConfig:
    ae: AEConfig = field(default_factory=AEConfig)
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    head: str = "transformer"      # "transformer" (FlowAR-S's) | "transformer_cross" (FlowAR-L/H's) | "mlp" (MAR's)
    head_width: int | None = None  # None: the backbone's width
    head_depth: int = 2            # transformer blocks / adaLN residual MLP blocks
    head_heads: int | None = None  # attention heads of a transformer head (None: head_width // 64, the release's)
    head_time: str = "continuous"  # transformer heads' time input: 1000 (1 - t) | "index": floor of it (release)
    path: str = "noise"            # "noise" (FlowAR's) | "prev_noise" (upsampled previous scale + noise; ours)
    prev_noise_std: float = 1.0    # std of the noise added to the previous scale (prev_noise only)
    input_resize: str = "via_full" # next-scale input: "via_full" (release: bicubic to S, area down) | "direct"
    t_per: str = "scale"           # one t per image and scale (FlowAR's) | "token"
    t_sampling: str = "uniform"
    logit_mean: float = 0.0
    logit_std: float = 1.0
    loss_weight: str = "tokens"    # "tokens": scale k weighted n_k / n_K (FlowAR's release); "uniform": 1 / K
    few_step: str | None = None    # None (FlowAR) | "shortcut" (step-size-conditioned head, self-consistency)
    shortcut_fraction: float = 0.25  # share of each batch trained on the self-consistency target
    shortcut_max_steps: int = 8    # finest trained step 1/shortcut_max_steps (a power of 2); finer steps = flow

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
        if len(self.backbone.schedule) < 2:
            raise ValueError(f"backbone.schedule {self.backbone.schedule} has one scale; FlowAR predicts scale k "
                             f"from scale k - 1 and needs at least 2 (an odd latent side has a one-scale doubling "
                             f"schedule: use an image side that is a multiple of 4)")
        check_choice("head", self.head, HEADS)
        if self.head_width is None:
            object.__setattr__(self, "head_width", self.backbone.width)
        if self.head_heads is None:
            object.__setattr__(self, "head_heads", max(1, self.head_width // 64))
        check_int("head_width", self.head_width, 1)
        check_int("head_depth", self.head_depth, 1)
        check_int("head_heads", self.head_heads, 1)
        transformer = self.head in TRANSFORMER_HEADS
        if transformer and (self.head_width % self.head_heads or (self.head_width // self.head_heads) % 4):
            raise ValueError(f"head_width ({self.head_width}) must be head_heads ({self.head_heads}) times a multiple "
                             f"of 4 (the 2-D rotary embedding splits each head's channels in 4)")
        check_choice("head_time", self.head_time, TIME_INPUTS if transformer else ("continuous",))
        check_choice("path", self.path, PATHS)
        check_choice("input_resize", self.input_resize, INPUT_RESIZES)
        check_choice("t_per", self.t_per, T_PER)
        check_float("prev_noise_std", self.prev_noise_std, 0, 100)  # larger overflows float32 latents
        check_choice("t_sampling", self.t_sampling, T_SAMPLINGS)
        check_float("logit_mean", self.logit_mean)
        check_float("logit_std", self.logit_std, 0, lo_open=True)
        check_choice("loss_weight", self.loss_weight, LOSS_WEIGHTS)
        check_choice("few_step", self.few_step, FEW_STEP)
        check_float("shortcut_fraction", self.shortcut_fraction, 0, 1, lo_open=True, hi_open=True)
        check_int("shortcut_max_steps", self.shortcut_max_steps, 1)
        if self.shortcut_max_steps & (self.shortcut_max_steps - 1):
            raise ValueError(f"shortcut_max_steps must be a power of 2, got {self.shortcut_max_steps}")
        if self.few_step is not None and self.t_per != "scale":
            raise ValueError(f"few_step={self.few_step!r} needs t_per='scale' (one step of one image's scale "
                             f"shares one t), got t_per={self.t_per!r}")


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
        self.head = make_head(config.head, config.ae.latent_channels, config.backbone.width, config.head_width,
                              config.head_depth, config.head_heads, config.backbone.schedule,
                              step_embedding=config.few_step is not None, min_step=1 / config.shortcut_max_steps,
                              time_input=config.head_time)
        sch = config.backbone.schedule
        n = torch.tensor([s * s for s in sch], dtype=torch.float32)
        w = n / n[-1] if config.loss_weight == "tokens" else torch.full_like(n, 1 / len(sch))
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

    @property
    def dtype(self) -> torch.dtype:
        """The dtype of the weights (sampling draws its noise and integrates in it)."""
        return self.scale_weights.dtype

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

    def next_input(self, prev_BCHW: torch.Tensor, k: int) -> torch.Tensor:
        """Backbone input of scale k (0-based, k >= 1) from the latent of scale k - 1, as tokens (B, n_k, C)."""
        side = self.schedule[k]
        if self.config.input_resize == "via_full":
            prev_BCHW = resize(prev_BCHW, self.schedule[-1])
        return _seq(resize(prev_BCHW, side))

    def _t(self, B: int, n: int, device) -> torch.Tensor:
        """Training times of one scale: (B, 1) (one per image) or (B, n) (one per token)."""
        cfg = self.config
        shape = (B, 1) if cfg.t_per == "scale" else (B, n)
        return sample_t(shape[0] * shape[1], cfg.t_sampling, cfg.logit_mean, cfg.logit_std, device=device).view(shape)

    def _shortcut_steps(self, B: int, device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(t, 2d, d) of the self-consistency rows, each (B, 1): 2d uniform over the levels
        {1, 1/2, ..., 1/max_steps}, t uniform over the grid {0, 2d, ..., 1 - 2d}."""
        levels = self.config.shortcut_max_steps.bit_length()                    # log2(max_steps) + 1
        n_steps = 2 ** torch.randint(0, levels, (B, 1), device=device)          # 1 / (2d)
        t = torch.floor(torch.rand(B, 1, device=device) * n_steps) / n_steps
        return t, 1 / n_steps, 0.5 / n_steps

    def forward(self, x_BCHW: torch.Tensor, y_B: torch.Tensor) -> dict[str, torch.Tensor]:
        maps = self.latent_pyramid(x_BCHW)
        ups = [self.next_input(m, k + 1) for k, m in enumerate(maps[:-1])]  # inputs of scales 2..K
        h_BLW = self.backbone(torch.cat(ups, 1), y_B)
        B, few = len(x_BCHW), self.config.few_step is not None
        n_sc = max(1, round(self.config.shortcut_fraction * B)) if few else 0  # self-consistency rows (first)
        per_scale = []
        for k, sl in enumerate(scale_slices(self.schedule)):
            x1 = _seq(maps[k])                                                  # (B, n, C)
            x0 = self._source(torch.randn_like(x1), None if k == 0 else ups[k - 1])
            t = self._t(*x1.shape[:2], x1.device)
            d = torch.zeros_like(t) if few else None                            # flow rows: d = 0
            if n_sc:
                t_sc, d2_sc, d_sc = self._shortcut_steps(n_sc, x1.device)
                t, d = torch.cat([t_sc, t[n_sc:]]), torch.cat([d2_sc, d[n_sc:]])
            x_t, target = path_sample(x0, x1, t[..., None])
            c = self.head.condition(h_BLW[:, sl], k)
            if n_sc:
                with torch.no_grad():
                    c_sc = c[:n_sc].detach()
                    target_sc = shortcut_target(lambda x, tt, dd: self.head.velocity(x, tt, c_sc, k, dd),
                                                x_t[:n_sc], t_sc, d_sc)
                target = torch.cat([target_sc, target[n_sc:]])
            per_scale.append((self.head.velocity(x_t, t, c, k, d) - target).pow(2).mean())
        per_scale = torch.stack(per_scale)
        out = {"loss": (per_scale * self.scale_weights).sum()}
        out.update({f"flow_s{k + 1}": l for k, l in enumerate(per_scale)})
        return out

    # ------------------------------------------------------------------ sampling

    def _check_y(self, y_B) -> torch.Tensor:
        if not isinstance(y_B, torch.Tensor):
            y_B = torch.as_tensor(y_B)
        self.backbone.check_labels(y_B, allow_null=False, nonempty=True)
        return y_B.to(self.device)

    @torch.no_grad()
    def generate_latents(self, y_B: torch.Tensor, sampling: FlowSampling | None = None, *,
                         seed: int | None = None, known_BCHW: torch.Tensor | None = None,
                         keep_B1HW: torch.Tensor | None = None, **kw) -> tuple[torch.Tensor, dict]:
        """Sample normalised latents (B, C, s, s) scale by scale, in eval mode; ``sampling``, ``seed``
        and ``kw`` as in :meth:`sample`. ``known_BCHW`` / ``keep_B1HW`` (latent side, bool): latents
        imposed where keep is True, at every scale (keep area-resized; a position is kept only if fully
        covered) and along each ODE path."""
        sampling = config_from(FlowSampling, sampling, kw, "sampling", also=("seed",))
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
            return self._generate(y_B, known_BCHW, keep_B1HW, sampling, seed)
        finally:
            self.train(was_training)

    def _generate(self, y_B, known_BCHW, keep_B1HW, sampling: FlowSampling, seed: int | None):
        y_B = self._check_y(y_B)
        solvers, ws = sampling.plan(len(self.schedule), self.config.few_step)
        if seed is not None:
            check_seed("seed", seed)
        base = int(torch.randint(0, 2**31, (1,))) if seed is None else seed
        sch, B, dt = self.schedule, len(y_B), self.dtype
        keep, known = self._kept(known_BCHW, keep_B1HW)
        guided = any(w > 0 for w in ws)
        y_in = torch.cat([y_B, torch.full_like(y_B, self.backbone.null_class)]) if guided else y_B
        cond = self.backbone.class_emb(y_in)
        cache = self.backbone.new_cache() if sampling.use_cache else None
        inputs: list[torch.Tensor] = []      # backbone inputs fed so far (uncached path)
        nfe_scale, nfe_image = [], torch.zeros(B, dtype=torch.long)
        tic = time.perf_counter()
        noise = ImageNoise(base, B, self.config.backbone.seq_len, self.config.ae.latent_channels, self.device, dt)
        prev = None
        for k, (side, sl) in enumerate(zip(sch, scale_slices(sch))):
            up = None if k == 0 else self.next_input(prev, k)                     # (B, n, C)
            x_in = None if up is None else (torch.cat([up, up]) if guided else up)
            if cache is not None:
                h = self.backbone.step(x_in, cond, cache)                          # (B or 2B, n, W)
            else:
                if x_in is not None:
                    inputs.append(x_in)
                h = self._uncached_h(inputs, y_in, k)
            x0 = self._source(noise.start[:, sl], up)
            f = ScaleField(self.head, k, self.head.condition(h, k), ws[k], sampling, solvers[k], x0, dt,
                           *((None, None) if keep is None else (keep[k], known[k])))
            sol = solve(f, x0, solvers[k], per_sample=sampling.per_sample, cost=f.cost,
                        noise=lambda rows, n=side * side: noise.draw(rows, n))
            prev = _map(f.finish(sol.x), side)
            nfe_image += torch.tensor(sol.nfe)
            nfe_scale.append(max(sol.nfe))
        stats = {"backbone_forwards": len(sch), "head_nfe": int(nfe_image.max()),
                 "head_nfe_per_scale": nfe_scale, "guided": guided,
                 "head_nfe_per_image": nfe_image.tolist(), "cfg_per_scale": ws,
                 "solver": sampling.solver, "steps_per_scale": [s.steps if not s.adaptive else None for s in solvers],
                 "seconds": time.perf_counter() - tic}
        return prev, stats

    def _kept(self, known_BCHW, keep_B1HW) -> tuple[list | None, list | None]:
        """Inpainting's kept positions (B, n_k, 1) bool and their latents (B, n_k, C) at every scale: keep
        area-resized, a position kept only if fully covered; (None, None) when nothing is imposed."""
        if known_BCHW is None:
            return None, None
        sch, dev = self.schedule, self.device
        keep = [_seq(m >= 1 - 1e-6) for m in pyramid(keep_B1HW.to(dev).float(), sch)]
        return keep, [_seq(m) for m in pyramid(known_BCHW.to(dev, self.dtype), sch)]

    def _uncached_h(self, inputs: list[torch.Tensor], y_in: torch.Tensor, k: int) -> torch.Tensor:
        """h of scale k from a full teacher-forced pass (later scales zero-padded: block-causal, unseen)."""
        cfg = self.config.backbone
        dev, dt = self.device, self.dtype
        fed = torch.cat(inputs, 1) if inputs else torch.zeros(len(y_in), 0, cfg.in_dim, device=dev, dtype=dt)
        pad = fed.new_zeros(len(y_in), cfg.seq_len - cfg.first_len - fed.shape[1], cfg.in_dim)
        return self.backbone(torch.cat([fed, pad], 1), y_in)[:, scale_slices(cfg.schedule)[k]]

    @torch.no_grad()
    def sample(self, y_B: torch.Tensor, sampling: FlowSampling | None = None, *, seed: int | None = None,
               **kw) -> tuple[torch.Tensor, dict]:
        """Class-conditional samples: returns (images (B, C_img, S, S) in about [-1, 1], stats).

        ``sampling`` is a :class:`~flowar.sampling.FlowSampling`, or its fields are given as keywords
        (``solver=``, ``steps=``, ``cfg_scale=`` ...; an unknown one is a ``ValueError``); ``seed``: the
        same seed gives the same images.

        stats: ``backbone_forwards`` (= K), ``head_nfe`` (head evaluations per image, guided ones
        counting 2; with per_sample, the largest over the batch), ``head_nfe_per_scale``,
        ``head_nfe_per_image``, ``guided``, ``cfg_per_scale``, ``solver``, ``steps_per_scale``, ``seconds``.
        With a batch-shared adaptive step every image sees the whole batch's evaluations."""
        z, stats = self.generate_latents(y_B, sampling, seed=seed, **kw)
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
        self.ae.check_images(x_BCHW, "x", finite=True)
        B, _, S, _ = x_BCHW.shape
        if not isinstance(mask_B1HW, torch.Tensor) or mask_B1HW.dtype != torch.bool \
                or tuple(mask_B1HW.shape) != (B, 1, S, S):
            raise ValueError(f"mask must be a bool tensor of shape ({B}, 1, {S}, {S}) (True = keep), got "
                             f"{getattr(mask_B1HW, 'dtype', type(mask_B1HW))} of shape "
                             f"{tuple(getattr(mask_B1HW, 'shape', ()))}")
        if len(y_B) != B:
            raise ValueError(f"need one label per image, got {len(y_B)} labels for {B} images")
        x = x_BCHW.to(self.device, self.dtype)  # the weights' dtype
        s = self.config.ae.latent_side
        keep_lat = resize(mask_B1HW.to(self.device).float(), s) >= 1 - 1e-6
        z, stats = self.generate_latents(y_B, known_BCHW=self.ae.encode(x), keep_B1HW=keep_lat, **sampling)
        img = self.ae.decode(z)
        if paste:
            img = torch.where(mask_B1HW.to(self.device), x, img)
        return img, stats
