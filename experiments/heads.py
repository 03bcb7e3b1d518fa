"""Train VAR and FlowAR (and their tokenizer / autoencoder) for the experiments, through the heads' own
pipelines and the shared training loop, with checkpoints keyed by everything that shapes the weights."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch

from nextscale.backbone import BackboneConfig
from nextscale.config import config_to_dict
from nextscale.data import ImageData
from nextscale.train import TrainConfig, recipe


def _ckpt(ckpt_dir: Path | None, name: str, *parts) -> Path | None:
    if ckpt_dir is None:
        return None
    key = json.dumps([config_to_dict(p) if hasattr(p, "__dataclass_fields__") else p for p in parts],
                     sort_keys=True, default=str)
    return Path(ckpt_dir) / f"{name}-{hashlib.sha256(key.encode()).hexdigest()[:12]}.pt"


def train_tokenizer(data: ImageData, bb: BackboneConfig, steps: int, seed: int, ckpt_dir: Path | None):
    from var.pipeline import default_configs, train_tokenizer as train_vq

    vq_cfg, _ = default_configs(data, bb)
    tc, _ = recipe(seed=seed, ae_steps=steps, progress=False)
    return train_vq(data, vq_cfg, tc, ckpt_path=_ckpt(ckpt_dir, "tokenizer", vq_cfg, tc, data.fingerprint()),
                    device="cpu")


def train_autoencoder(data: ImageData, bb: BackboneConfig, steps: int, seed: int, ckpt_dir: Path | None):
    from flowar.pipeline import default_configs, train_autoencoder as train_ae

    ae_cfg, _ = default_configs(data, bb)
    tc, _ = recipe(seed=seed, ae_steps=steps, progress=False)
    return train_ae(data, ae_cfg, tc, ckpt_path=_ckpt(ckpt_dir, "ae", ae_cfg, tc, data.fingerprint()), device="cpu")


def train_var(data: ImageData, tokenizer, bb: BackboneConfig, tc: TrainConfig, ckpt_dir: Path | None):
    from var.pipeline import default_configs, train_var as train_v

    _, cfg = default_configs(data, bb)
    return train_v(data, tokenizer, cfg, tc, ckpt_path=_ckpt(ckpt_dir, "var", cfg, tc, tokenizer.config,
                                                             data.fingerprint()), device="cpu")


def train_flowar(data: ImageData, autoencoder, bb: BackboneConfig, tc: TrainConfig, ckpt_dir: Path | None,
                 head_width: int | None = None):
    """FlowAR with the pipeline's default config on ``bb``'s schedule and MAR's per-token MLP head, the
    head these experiments' recorded numbers were measured with (``head_width`` overrides its width)."""
    from dataclasses import replace

    from flowar.pipeline import default_configs, train_flowar as train_f

    _, cfg = default_configs(data, bb)
    cfg = replace(cfg, head="mlp", head_width=128, head_depth=3, t_sampling="logit_normal", t_per="token",
                  input_resize="direct")  # the flowar defaults before FlowAR's transformer head (issue 9)
    if head_width is not None:
        cfg = replace(cfg, head_width=head_width)
    return train_f(data, autoencoder, cfg, tc, ckpt_path=_ckpt(ckpt_dir, "flowar", cfg, tc, autoencoder.config,
                                                               data.fingerprint()), device="cpu")


@torch.no_grad()
def var_test_ce(model, data: ImageData) -> float:
    """Teacher-forced cross-entropy (nats per token) on the test split."""
    from var.pipeline import measure

    return float(measure(model.tokenizer, model, data.x_test, data.y_test)["ce"])


@torch.no_grad()
def flowar_test_loss(model, data: ImageData, seed: int) -> float:
    """The flow-matching objective on the test split (noise and t drawn from ``seed``)."""
    from flowar.pipeline import flow_losses

    with torch.random.fork_rng(devices=[]):
        return float(flow_losses(model, data.x_test, data.y_test, seed=seed)["loss"])


def trainable_params(model) -> int:
    """Parameters the head trains: backbone + head (the frozen tokenizer / autoencoder excluded)."""
    frozen = getattr(model, "tokenizer", None) or getattr(model, "ae")
    return sum(p.numel() for p in model.parameters()) - sum(p.numel() for p in frozen.parameters())
