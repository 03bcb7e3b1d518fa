"""A small CNN trained on the real train split: its penultimate layer is the domain feature space for
FID/KID/precision-recall on small images (where InceptionV3's ImageNet features say little), and its
predictions give the class accuracy of class-conditional samples."""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from nextscale.checkpoint import keyed_path
from nextscale.config import check_int, check_seed
from nextscale.data import ImageData
from nextscale.train import TrainConfig, train

from .features import FeatureNet


@dataclass(frozen=True)
class ClassifierConfig:
    image_channels: int = 1
    image_side: int = 16
    num_classes: int = 10
    width: int = 16        # conv channels at full resolution (2x after the first pooling)
    feature_dim: int = 64  # penultimate layer: the feature vector

    def __post_init__(self):
        check_int("image_channels", self.image_channels, 1, 3)
        check_int("image_side", self.image_side, 4)
        check_int("num_classes", self.num_classes, 2)
        check_int("width", self.width, 1)
        check_int("feature_dim", self.feature_dim, 1)


def _conv_block(c_in: int, c_out: int) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, 3, padding=1), nn.SiLU(), nn.Conv2d(c_out, c_out, 3, padding=1), nn.SiLU(),
            nn.AvgPool2d(2)]


class DomainClassifier(FeatureNet):
    """Two conv blocks (each halves the side), a 4x4 pooled map, an RMS-normalised ``feature_dim`` layer
    (the features), a linear head."""

    name = "classifier"

    def __init__(self, config: ClassifierConfig = ClassifierConfig()):
        super().__init__()
        self.config = config
        self.dim, self.channels, self.side = config.feature_dim, (config.image_channels,), config.image_side
        w = config.width
        self.convs = nn.Sequential(*_conv_block(config.image_channels, w), *_conv_block(w, 2 * w))
        self.to_features = nn.Sequential(nn.AdaptiveAvgPool2d(4), nn.Flatten(),
                                         nn.Linear(2 * w * 16, config.feature_dim), nn.SiLU())
        self.head = nn.Linear(config.feature_dim, config.num_classes)

    def embed(self, x_BCHW: torch.Tensor) -> torch.Tensor:
        # scaled to mean square 1 per image, so KID's kernel (x.y/d + 1)^3 sees x.y/d in [-1, 1] (the scale
        # it was designed for) whatever training did to the weights; unlike LayerNorm this keeps full rank
        f_BD = self.to_features(self.convs(x_BCHW))
        return F.normalize(f_BD, dim=1) * f_BD.shape[1] ** 0.5

    def forward(self, x_BCHW: torch.Tensor, y_B: torch.Tensor) -> dict[str, torch.Tensor]:
        logits_BK = self.head(self.embed(x_BCHW))
        return {"loss": F.cross_entropy(logits_BK, y_B), "acc": (logits_BK.argmax(1) == y_B).float().mean()}

    @torch.no_grad()
    def predict(self, images_BCHW: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
        """(B,) predicted class ids (CPU long) of images in [-1, 1]."""
        return self.head(self.features(images_BCHW, batch_size).to(self.device)).argmax(1).cpu()


def class_accuracy(classifier: DomainClassifier, images_BCHW: torch.Tensor, labels_B: torch.Tensor) -> float:
    """Share of images the classifier assigns to their label (for samples: to the requested class)."""
    labels_B = torch.as_tensor(labels_B)
    if labels_B.ndim != 1 or len(labels_B) != len(images_BCHW):
        raise ValueError(f"need one label per image, got labels of shape {tuple(labels_B.shape)} "
                         f"for {len(images_BCHW)} images")
    return (classifier.predict(images_BCHW) == labels_B.cpu().long()).double().mean().item()


def train_classifier(data: ImageData, seed: int = 0, cache_dir: str | Path | None = None, steps: int = 400,
                     device: str | torch.device | None = None, progress: bool = True) -> DomainClassifier:
    """Train a :class:`DomainClassifier` on ``data``'s train split with the shared training loop.

    With ``cache_dir``, the weights are stored there under a name keyed by the data fingerprint, the seed
    and the configs; a later call with the same key loads them and trains nothing."""
    check_seed("seed", seed)
    check_int("steps", steps, 1)
    cfg = ClassifierConfig(data.channels, data.side, data.num_classes)
    tcfg = TrainConfig(steps=steps, batch_size=64, lr=2e-3, warmup_steps=min(50, steps), seed=seed,
                       log_every=max(1, steps // 4), progress=progress)
    with torch.random.fork_rng(devices=[]):  # seeded init that leaves the caller's RNG alone
        torch.manual_seed(seed)
        model = DomainClassifier(cfg)
    ckpt = None
    if cache_dir is not None:
        name = re.sub(r"[^\w.-]", "_", data.name)
        ckpt = keyed_path(cache_dir, f"classifier-{name}-{data.fingerprint()}-seed{seed}", cfg, tcfg)
    result = train(model, data.x_train, data.y_train, tcfg, ckpt_path=ckpt, device=device, desc="classifier")
    return result.model.eval().requires_grad_(False)
