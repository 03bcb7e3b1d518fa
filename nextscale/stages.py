"""Training one family: its autoencoder (tokenizer), then its generator on the frozen autoencoder, each
from a checkpoint keyed by everything that shapes its weights (:func:`nextscale.checkpoint.keyed_stage_paths`),
so a second call with the same settings trains nothing and a killed one resumes. Each family's
``train_family`` (``var.pipeline``, ``flowar.pipeline``, ``crossfamily.latent``) names its stages and
trainers and calls :func:`train_stages`; the commands, the comparison and the experiments call those."""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch.nn as nn

from .checkpoint import keyed_path, keyed_stage_paths
from .cost import memory_estimate
from .data import ImageData
from .train import TrainConfig


@dataclass(frozen=True)
class Stage:
    """One training stage: the name its checkpoint file starts with, the model config, the training config
    and the trainer, ``train(data, [autoencoder,] config, train_cfg, ckpt_path=, device=) -> model`` (the
    generator's takes the trained autoencoder; an autoencoder built on a base takes it as ``base=``)."""
    name: str
    config: Any
    train_cfg: TrainConfig
    train: Callable[..., nn.Module]


@dataclass
class Trained:
    """A trained family: the autoencoder, the generator (eval mode, holding the autoencoder), the checkpoint
    files (the base's when there is one, the autoencoder's, the generator's), the seconds each stage took
    (the autoencoder's with its base's) and whether every checkpoint was finished before (nothing trained)."""
    autoencoder: nn.Module
    model: nn.Module
    checkpoints: list[Path]
    ae_seconds: float
    gen_seconds: float
    reused: bool


def train_stages(data: ImageData, autoencoder: Stage, generator: Stage, folder: str | Path,
                 device=None, base: Stage | None = None) -> Trained:
    """Train (or reuse) ``base`` (an autoencoder another family's autoencoder is built on, keyed as that
    family keys its own), ``autoencoder`` on it and ``generator`` on the autoencoder, checkpoints in
    ``folder``; a finished checkpoint is read, never rewritten, and a partial one is resumed. Configs
    whose models and training cannot fit in memory are refused first (:func:`nextscale.cost.memory_estimate`)."""
    stages = [s for s in (base, autoencoder, generator) if s is not None]
    memory_estimate([s.config for s in stages], max(s.train_cfg.batch_size for s in stages)).check()
    fp, t = data.fingerprint(), time.perf_counter()
    base_ae = base_ck = None
    if base is not None:
        base_ck = keyed_path(folder, base.name, fp, base.config, base.train_cfg)
        base_ae = base.train(data, base.config, base.train_cfg, ckpt_path=base_ck, device=device)
    ae_ck, gen_ck = keyed_stage_paths(folder, fp, (autoencoder.name, autoencoder.config, autoencoder.train_cfg),
                                      (generator.name, generator.config, generator.train_cfg), base=base_ck)
    paths = [p for p in (base_ck, ae_ck, gen_ck) if p is not None]
    before = [p.stat().st_mtime_ns if p.exists() else None for p in paths]
    ae = autoencoder.train(data, autoencoder.config, autoencoder.train_cfg, ckpt_path=ae_ck, device=device,
                           **({} if base_ae is None else {"base": base_ae}))
    t_ae = time.perf_counter()
    model = generator.train(data, ae, generator.config, generator.train_cfg, ckpt_path=gen_ck, device=device).eval()
    reused = None not in before and before == [p.stat().st_mtime_ns for p in paths]
    return Trained(ae, model, paths, t_ae - t, time.perf_counter() - t_ae, reused)
