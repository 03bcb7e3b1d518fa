"""The training loop both heads (and their autoencoders) share.

A model to train is any ``nn.Module`` whose ``forward(x_BCHW, y_B)`` returns a dict of scalar
tensors with a ``"loss"`` key (other keys are logged, e.g. per-scale losses) and which has a
``config`` dataclass (stored in checkpoints as plain data).

AdamW, linear warmup + cosine decay, gradient clipping, optional EMA, bf16 autocast on CUDA,
DistributedDataParallel when launched by ``torchrun`` (or with a process group already set up),
atomic checkpoints and exact resume. Randomness inside the model (noise, label dropout) draws
from the global torch RNG, which is reseeded from (seed, step, rank) at every step, so a run is
reproducible and a resumed run continues the same curve without storing RNG state.
"""
from __future__ import annotations

import copy
import math
import os
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn as nn

from .cache import read_cached
from .checkpoint import check_config, load_checkpoint, load_state, save_checkpoint
from .config import check_float, check_int, check_seed, config_to_dict

# Fields that may change between a run and its resumption without changing the loss curve.
# Fields that may differ between a checkpoint and the run that resumes it. ``steps`` is not one: the
# cosine schedule depends on it, so continuing a run to more steps would not equal a fresh run of that
# length; a run with other steps needs its own checkpoint (the keyed paths of the commands do that).
_RESUMABLE_FIELDS = ("ckpt_every", "log_every", "progress")
_TRAIN_KEYS = ("config", "train_config", "step", "model", "optimizer", "ema", "history")


@dataclass(frozen=True)
class TrainConfig:
    steps: int = 1000
    batch_size: int = 64        # global batch, split evenly across processes
    lr: float = 1e-3
    weight_decay: float = 0.05
    beta1: float = 0.9
    beta2: float = 0.95
    warmup_steps: int = 50
    min_lr_ratio: float = 0.1   # the cosine ends at lr * min_lr_ratio
    grad_clip: float = 1.0      # max global grad norm; 0 turns clipping off
    ema_decay: float = 0.0      # 0 turns EMA off
    seed: int = 0
    amp: bool = True            # bf16 autocast on CUDA (ignored on CPU)
    ckpt_every: int = 0         # also checkpoint every n steps (0: only at the end)
    log_every: int = 50
    progress: bool = True

    def __post_init__(self):
        check_int("steps", self.steps, 0)
        check_int("batch_size", self.batch_size, 1)
        check_float("lr", self.lr, 0, lo_open=True)
        check_float("weight_decay", self.weight_decay, 0)
        check_float("beta1", self.beta1, 0, 1, hi_open=True)
        check_float("beta2", self.beta2, 0, 1, hi_open=True)
        check_int("warmup_steps", self.warmup_steps, 0)
        check_float("min_lr_ratio", self.min_lr_ratio, 0, 1)
        check_float("grad_clip", self.grad_clip, 0)
        check_float("ema_decay", self.ema_decay, 0, 1, hi_open=True)
        check_seed("seed", self.seed)
        check_int("ckpt_every", self.ckpt_every, 0)
        check_int("log_every", self.log_every, 1)

    def override(self, steps: int | None = None, batch_size: int | None = None) -> "TrainConfig":
        """A copy with ``steps`` (warmup clipped to it) and/or ``batch_size`` replaced; None keeps a value."""
        cfg = self
        if steps is not None:
            cfg = replace(cfg, steps=steps, warmup_steps=min(cfg.warmup_steps, steps))
        if batch_size is not None:
            cfg = replace(cfg, batch_size=batch_size)
        return cfg


def recipe(seed: int = 0, ae_steps: int | None = None, gen_steps: int | None = None, ae_batch: int = 64,
           gen_batch: int = 32, progress: bool = True) -> tuple[TrainConfig, TrainConfig]:
    """The project's one training recipe, (autoencoder, generator), for every family (VAR's tokenizer
    and VAR, FlowAR's autoencoder and FlowAR) and every command: AdamW at lr 2e-3 / 1e-3 with linear
    warmup (20 / 50 steps, at most a quarter of the run) and cosine decay; the generator keeps an EMA
    (decay 0.99) when it trains 300 steps or more (over fewer, an EMA of horizon ~100 steps still mostly averages
    the untrained start). Sized for digits on 2 CPU cores at the default steps (None): 300 and 600.
    Both checkpoint every 10% of their steps, so a killed run loses at most a tenth of a stage (resuming
    gives the same numbers as an uninterrupted run)."""
    ae_steps = 300 if ae_steps is None else ae_steps
    gen_steps = 600 if gen_steps is None else gen_steps
    ae = TrainConfig(steps=ae_steps, batch_size=ae_batch, lr=2e-3, warmup_steps=min(20, max(1, ae_steps // 4)),
                     seed=seed, progress=progress, log_every=max(1, ae_steps // 5), ckpt_every=max(1, ae_steps // 10))
    gen = TrainConfig(steps=gen_steps, batch_size=gen_batch, lr=1e-3, warmup_steps=min(50, max(1, gen_steps // 4)),
                      seed=seed, ema_decay=0.99 if gen_steps >= 300 else 0.0, progress=progress,
                      log_every=max(1, gen_steps // 10), ckpt_every=max(1, gen_steps // 10))
    return ae, gen


@dataclass
class TrainResult:
    model: nn.Module                    # the trained (unwrapped) model
    ema: nn.Module | None               # EMA copy, when ema_decay > 0
    history: list[dict] = field(default_factory=list)  # one dict of floats per step (all steps, resumed ones too)
    steps_run: int = 0                  # steps run by this call (0 when a finished checkpoint was reused)
    seconds: float = 0.0

    @property
    def best(self) -> nn.Module:
        """The weights to sample from: the EMA when kept, else the raw model."""
        return self.ema if self.ema is not None else self.model

    @property
    def losses(self) -> list[float]:
        return [h["loss"] for h in self.history]


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warmup to ``lr`` then cosine decay to ``lr * min_lr_ratio`` at ``steps``."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    span = max(1, cfg.steps - cfg.warmup_steps)
    progress = min(1.0, (step - cfg.warmup_steps) / span)
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def pick_device(device: str | torch.device | None = None) -> torch.device:
    """``device`` if given, else CUDA when available (the local rank's GPU under torchrun), else CPU.

    The one device parser of every command and the harness: anything but cpu, cuda, cuda:N (N a visible
    GPU) or mps (where available) is a ``ValueError`` saying which of them this machine has."""
    if device is None:
        if torch.cuda.is_available():
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        return torch.device("cpu")
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    mps = getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()
    here = ["cpu"] + (["cuda"] + [f"cuda:{i}" for i in range(gpus)] if gpus else []) + (["mps"] if mps else [])
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        dev = None
    ok = dev is not None and (dev.type == "cpu" or (dev.type == "cuda" and gpus and (dev.index or 0) < gpus)
                              or (dev.type == "mps" and mps))
    if not ok:
        raise ValueError(f"device must be {', '.join(here[:-1]) + ' or ' if len(here) > 1 else ''}{here[-1]} on "
                         f"this machine, got {str(device)!r}")
    return dev


def setup_distributed(device: torch.device) -> tuple[int, int]:
    """Join the process group torchrun describes (gloo on CPU, nccl on CUDA); returns (rank, world)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    if int(os.environ.get("WORLD_SIZE", 1)) > 1:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class BatchSampler:
    """Global batch of step s: positions s*B .. s*B+B-1 of an endless stream of seeded epoch shuffles."""

    def __init__(self, n: int, batch_size: int, seed: int):
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self._perms: dict[int, torch.Tensor] = {}

    def _perm(self, epoch: int) -> torch.Tensor:
        if epoch not in self._perms:
            g = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
            self._perms = {epoch: torch.randperm(self.n, generator=g)}
        return self._perms[epoch]

    def __call__(self, step: int) -> torch.Tensor:
        pos = torch.arange(step * self.batch_size, (step + 1) * self.batch_size)
        return torch.stack([self._perm(int(p) // self.n)[int(p) % self.n] for p in pos])


def _step_seed(seed: int, step: int, rank: int) -> int:
    return (seed * 1_000_003 + step * 7919 + rank * 104_729) % (2**63)


@torch.no_grad()
def _ema_update(ema: nn.Module, model: nn.Module, decay: float) -> None:
    for e, p in zip(ema.parameters(), model.parameters()):
        e.lerp_(p.detach(), 1 - decay)
    for e, b in zip(ema.buffers(), model.buffers()):
        e.copy_(b)


class _Progress:
    """tqdm on a terminal, a log line every ``log_every`` steps otherwise."""

    def __init__(self, total: int, start: int, desc: str, enabled: bool, log_every: int):
        self.enabled, self.log_every, self.desc, self.total = enabled, log_every, desc, total
        self.bar = None
        if enabled and sys.stderr.isatty():
            from tqdm import tqdm
            self.bar = tqdm(total=total, initial=start, desc=desc, dynamic_ncols=True)

    def update(self, step: int, loss: float, ips: float):
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(loss=f"{loss:.4f}", img_s=f"{ips:.0f}")
        elif (step + 1) % self.log_every == 0 or step + 1 == self.total:
            print(f"[{self.desc}] step {step + 1}/{self.total} loss {loss:.4f} {ips:.0f} img/s",
                  file=sys.stderr, flush=True)

    def close(self):
        if self.bar is not None:
            self.bar.close()


def data_fingerprint(x_NCHW: torch.Tensor, y_N: torch.Tensor) -> str:
    """A hash of the training images and labels (shape, dtype, values): recorded in every checkpoint, so a
    checkpoint trained on other data is never resumed or reused, even copied under the right name."""
    import hashlib

    h = hashlib.sha256()
    for t in (x_NCHW, y_N):
        t = t.detach().cpu().contiguous()
        h.update(f"{tuple(t.shape)} {t.dtype}".encode())
        h.update((t.float() if t.dtype == torch.bfloat16 else t).numpy().tobytes())
    return h.hexdigest()[:16]


def _resume(ck: dict, ckpt_path, model, ema, opt, model_cfg: dict, train_cfg: dict, data: str) -> tuple[int, list]:
    """Load checkpoint ``ck`` (read from ``ckpt_path``) into (model, ema, opt) after checking it was made by
    this model config, this training config (resumable fields aside) and this data; returns (step, history)."""
    check_config(ckpt_path, ck["config"], model_cfg)
    stored = {k: v for k, v in ck["train_config"].items() if k not in _RESUMABLE_FIELDS}
    check_config(ckpt_path, stored, {k: v for k, v in train_cfg.items() if k not in _RESUMABLE_FIELDS},
                 what="training config")
    if ck.get("data") != data:
        raise ValueError(f"checkpoint {ckpt_path} was trained on other data (fingerprint {ck.get('data')}, this "
                         f"data {data}): remove it or use another --out")
    load_state(model, ck["model"], ckpt_path)
    opt.load_state_dict(ck["optimizer"])
    if ema is not None:
        if ck["ema"] is None:
            raise ValueError(f"checkpoint {ckpt_path} holds no EMA weights but ema_decay > 0")
        load_state(ema, ck["ema"], ckpt_path)
    return ck["step"], list(ck["history"])


def train(model: nn.Module, x_NCHW: torch.Tensor, y_N: torch.Tensor, cfg: TrainConfig, *,
          ckpt_path: str | Path | None = None, device: str | torch.device | None = None,
          desc: str = "train") -> TrainResult:
    """Train ``model`` on (x, y) for ``cfg.steps`` steps; resumes from ``ckpt_path`` when it exists.

    A checkpoint that already reached ``cfg.steps`` is loaded and nothing is trained."""
    if len(x_NCHW) != len(y_N) or len(x_NCHW) == 0:
        raise ValueError(f"need as many labels as images (and at least one), got {len(x_NCHW)} and {len(y_N)}")
    dev = pick_device(device)
    rank, world = setup_distributed(dev)
    if cfg.batch_size % world:
        raise ValueError(f"batch_size ({cfg.batch_size}) must be divisible by the number of processes ({world})")
    local_bs = cfg.batch_size // world
    model = model.to(dev)
    model_cfg = config_to_dict(model.config)
    train_cfg = config_to_dict(cfg)
    ema = copy.deepcopy(model).eval().requires_grad_(False) if cfg.ema_decay > 0 else None
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}],
                            lr=cfg.lr, betas=(cfg.beta1, cfg.beta2))

    data = data_fingerprint(x_NCHW, y_N) if ckpt_path is not None else None
    start, history = 0, []
    if ckpt_path is not None and Path(ckpt_path).exists():  # one that cannot be read is set aside, trained anew
        ck = read_cached(ckpt_path, lambda p: load_checkpoint(p, map_location=dev, require=_TRAIN_KEYS), "checkpoint")
        if ck is not None:
            start, history = _resume(ck, ckpt_path, model, ema, opt, model_cfg, train_cfg, data)

    def checkpoint(step: int):
        if ckpt_path is not None and rank == 0:
            save_checkpoint(ckpt_path, {
                "model_class": type(model).__name__, "config": model_cfg, "train_config": train_cfg,
                "data": data, "step": step, "model": model.state_dict(), "optimizer": opt.state_dict(),
                "ema": None if ema is None else ema.state_dict(), "history": history})

    net = model
    if world > 1:
        net = nn.parallel.DistributedDataParallel(model, device_ids=[dev.index] if dev.type == "cuda" else None)
    sampler = BatchSampler(len(x_NCHW), cfg.batch_size, cfg.seed)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=cfg.amp and dev.type == "cuda")
    bar = _Progress(cfg.steps, start, desc, cfg.progress and rank == 0, cfg.log_every)
    t0 = time.perf_counter()
    model.train()
    for step in range(start, cfg.steps):
        torch.manual_seed(_step_seed(cfg.seed, step, rank))
        idx = sampler(step)[rank * local_bs:(rank + 1) * local_bs]
        xb, yb = x_NCHW[idx].to(dev, non_blocking=True), y_N[idx].to(dev, non_blocking=True)
        for g in opt.param_groups:
            g["lr"] = lr_at(step, cfg)
        tic = time.perf_counter()
        with autocast:
            out = net(xb, yb)
        logs = torch.stack([v.detach().float() for v in out.values()])
        if world > 1:
            dist.all_reduce(logs)
            logs /= world
        logs = dict(zip(out.keys(), logs.tolist()))
        if not math.isfinite(logs["loss"]):
            bar.close()
            raise FloatingPointError(f"loss became {logs['loss']} at step {step}; training stopped, the last "
                                     f"checkpoint{'' if ckpt_path is None else f' ({ckpt_path})'} is untouched")
        opt.zero_grad(set_to_none=True)
        out["loss"].backward()
        if cfg.grad_clip > 0:
            logs["grad_norm"] = float(nn.utils.clip_grad_norm_(params, cfg.grad_clip))
        opt.step()
        if ema is not None:
            _ema_update(ema, model, cfg.ema_decay)
        logs["lr"] = opt.param_groups[0]["lr"]
        history.append(logs)
        bar.update(step, logs["loss"], cfg.batch_size / max(time.perf_counter() - tic, 1e-9))
        if cfg.ckpt_every and (step + 1) % cfg.ckpt_every == 0 and step + 1 < cfg.steps:
            checkpoint(step + 1)
    bar.close()
    steps_run = max(0, cfg.steps - start)
    if steps_run:
        checkpoint(cfg.steps)
    model.eval()
    return TrainResult(model, ema, history, steps_run, time.perf_counter() - t0)


def load_trained(model: nn.Module, ckpt_path: str | Path, use_ema: bool = True) -> nn.Module:
    """Load a checkpoint written by :func:`train` into ``model`` (EMA weights when stored and asked for);
    a checkpoint of a different config raises ``ValueError``. Returns the model in eval mode."""
    ck = load_checkpoint(ckpt_path, require=("config", "model", "ema"))
    check_config(ckpt_path, ck["config"], config_to_dict(model.config))
    state = ck["ema"] if use_ema and ck["ema"] is not None else ck["model"]
    load_state(model, state, ckpt_path)
    return model.eval()
