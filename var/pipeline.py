"""Train the VQ tokenizer, then VAR, through the one shared training loop; and measure them."""
from __future__ import annotations

from functools import partial
from pathlib import Path

import torch

from nextscale.autoencoder import conv_ae_config
from nextscale.backbone import BackboneConfig
from nextscale.config import check_int
from nextscale.data import ImageData
from nextscale.stages import Stage, Trained, train_stages
from nextscale.train import TrainConfig, train

from .model import VAR, VARConfig
from .tokenizer import MultiScaleVQVAE, VQConfig, usage_from_hits


def default_configs(data: ImageData, backbone: BackboneConfig | None = None, vocab_size: int = 512
                    ) -> tuple[VQConfig, VARConfig]:
    """Tokenizer and VAR configs for ``data`` around ``backbone`` (default: ``BackboneConfig`` for the
    data's classes). The latent side is the schedule's last side and the latent channels its in_dim."""
    bb = backbone if backbone is not None else BackboneConfig(num_classes=data.num_classes)
    ae = conv_ae_config(data, bb)
    return VQConfig(ae=ae, schedule=bb.schedule, vocab_size=vocab_size), VARConfig(backbone=bb, vocab_size=vocab_size)


def train_tokenizer(data: ImageData, cfg: VQConfig, train_cfg: TrainConfig, ckpt_path: str | Path | None = None,
                    device: str | torch.device | None = None) -> MultiScaleVQVAE:
    """Train (or reload from a finished ``ckpt_path``) the multi-scale VQ-VAE; returns it in eval mode
    (the EMA weights when ``train_cfg.ema_decay > 0``)."""
    torch.manual_seed(train_cfg.seed)
    model = MultiScaleVQVAE(cfg)
    res = train(model, data.x_train, data.y_train, train_cfg, ckpt_path=ckpt_path, device=device, desc="vq tokenizer")
    return res.best.eval()


def train_var(data: ImageData, tokenizer: MultiScaleVQVAE, cfg: VARConfig, train_cfg: TrainConfig,
              ckpt_path: str | Path | None = None, device: str | torch.device | None = None,
              model_cls: type = VAR) -> VAR:
    """Train (or reload) VAR (or ``model_cls``, e.g. :class:`crossfamily.hybrid.HybridVAR`) on top of the
    frozen ``tokenizer``; returns it in eval mode (EMA when kept). The checkpoint holds the tokenizer too, so
    a reloaded VAR decodes with the tokenizer it learned."""
    torch.manual_seed(train_cfg.seed + 1)
    model = model_cls(cfg, tokenizer)
    res = train(model, data.x_train, data.y_train, train_cfg, ckpt_path=ckpt_path, device=device, desc="var")
    return res.best.eval()


def train_family(data: ImageData, vq_cfg: VQConfig, var_cfg: VARConfig, tok_train: TrainConfig,
                 var_train: TrainConfig, folder: str | Path, device: str | torch.device | None = None,
                 names: tuple[str, str] = ("tokenizer", "var"), model_cls: type = VAR) -> Trained:
    """Train (or reuse) the tokenizer, then VAR (or ``model_cls``) on it, with checkpoints in ``folder`` keyed
    by everything that shapes their weights and named ``names`` (tokenizer, generator)."""
    return train_stages(data, Stage(names[0], vq_cfg, tok_train, train_tokenizer),
                        Stage(names[1], var_cfg, var_train, partial(train_var, model_cls=model_cls)), folder, device)


@torch.no_grad()
def measure(tokenizer: MultiScaleVQVAE, model: VAR | None, x_NCHW: torch.Tensor, y_N: torch.Tensor,
            batch_size: int = 256) -> dict:
    """One pass over (x, y), encoding each image once: tokenizer reconstruction MSE (encode ->
    decode_tokens, images in [-1, 1]), codebook usage and perplexity over all scales, and with a
    model its teacher-forced cross-entropy per scale (nats per token, eval mode)."""
    check_int("batch_size", batch_size, 1)
    dev = tokenizer.codebook.weight.device
    V, sq_err = tokenizer.config.vocab_size, 0.0
    hits = torch.zeros(V)
    ce_sum = None if model is None else torch.zeros(model.num_scales)
    was = None if model is None else model.training
    if model is not None:
        model.eval()
    try:
        for i in range(0, len(x_NCHW), batch_size):
            xb, yb = x_NCHW[i:i + batch_size].to(dev), y_N[i:i + batch_size].to(dev)
            tokens = tokenizer.encode(xb)
            sq_err += float((tokenizer.decode_tokens(tokens) - xb).pow(2).sum())
            hits += torch.cat([t.flatten() for t in tokens]).bincount(minlength=V).float().cpu()
            if model is not None:
                out = model.token_loss(tokens, yb)
                ce_sum += torch.tensor([float(out[f"ce_s{k + 1}"]) for k in range(model.num_scales)]) * len(xb)
    finally:
        if model is not None:
            model.train(was)
    usage, ppl = usage_from_hits(hits)
    res = {"recon_mse": sq_err / x_NCHW.numel(), "codebook_usage": usage, "perplexity": ppl}
    if model is not None:
        res["ce_per_scale"] = (ce_sum / len(x_NCHW)).tolist()
        res["ce"] = _token_mean(res["ce_per_scale"], model)
    return res


def evaluate(tokenizer: MultiScaleVQVAE, model: VAR | None, data: ImageData) -> dict:
    """:func:`measure` on the train and test splits, as {"tokenizer": {...}, "var": {...}}."""
    tr = measure(tokenizer, model, data.x_train, data.y_train)
    te = measure(tokenizer, model, data.x_test, data.y_test)
    out = {"tokenizer": {f"{k}_{split}": m[k] for split, m in (("train", tr), ("test", te))
                         for k in ("recon_mse", "codebook_usage", "perplexity")}}
    if model is not None:
        out["var"] = {"ce_train_per_scale": tr["ce_per_scale"], "ce_test_per_scale": te["ce_per_scale"],
                      "ce_train": tr["ce"], "ce_test": te["ce"]}
    return out


def _token_mean(per_scale: list[float], model: VAR) -> float:
    """Mean CE over all tokens (scales weighted by their token counts), like the training loss."""
    sizes = [s * s for s in model.config.backbone.schedule]
    return sum(c * n for c, n in zip(per_scale, sizes)) / sum(sizes)


__all__ = ["default_configs", "train_tokenizer", "train_var", "train_family", "measure", "evaluate"]
