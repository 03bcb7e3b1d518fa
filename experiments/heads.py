"""Train VAR and FlowAR (and their tokenizer / autoencoder) for the experiments through each family's
``train_family`` (the shared training loop, checkpoints keyed by everything that shapes the weights)."""
from __future__ import annotations

from pathlib import Path

import torch

from nextscale.backbone import BackboneConfig
from nextscale.data import ImageData
from nextscale.train import TrainConfig, recipe


def train_var(data: ImageData, bb: BackboneConfig, tokenizer_steps: int, seed: int, tc: TrainConfig, ckpt_dir: Path):
    """VAR with the pipeline's default configs on ``bb``, on a tokenizer trained ``tokenizer_steps`` steps on the
    one recipe (one checkpoint: the tokenizer's config does not depend on the backbone's width)."""
    from var.pipeline import default_configs, train_family

    vq_cfg, cfg = default_configs(data, bb)
    tok_tc, _ = recipe(seed=seed, ae_steps=tokenizer_steps, progress=False)
    return train_family(data, vq_cfg, cfg, tok_tc, tc, ckpt_dir, "cpu").model


def train_flowar(data: ImageData, bb: BackboneConfig, ae_steps: int, seed: int, tc: TrainConfig, ckpt_dir: Path,
                 head_width: int | None = None):
    """FlowAR with the pipeline's default config on ``bb``'s schedule and MAR's per-token MLP head, the
    head these experiments' recorded numbers were measured with (``head_width`` overrides its width), on an
    autoencoder trained ``ae_steps`` steps on the one recipe."""
    from dataclasses import replace

    from flowar.pipeline import default_configs, train_family

    ae_cfg, cfg = default_configs(data, bb)
    cfg = replace(cfg, head="mlp", head_width=128, head_depth=3, t_sampling="logit_normal", t_per="token",
                  input_resize="direct")  # the flowar defaults before FlowAR's transformer head (issue 9)
    if head_width is not None:
        cfg = replace(cfg, head_width=head_width)
    ae_tc, _ = recipe(seed=seed, ae_steps=ae_steps, progress=False)
    return train_family(data, ae_cfg, cfg, ae_tc, tc, ckpt_dir, "cpu").model


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
