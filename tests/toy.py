"""A tiny next-scale regressor on the shared backbone, for testing the core without a head."""
from dataclasses import dataclass, field

import torch.nn as nn
import torch.nn.functional as F

from nextscale.backbone import Backbone, BackboneConfig
from nextscale.scales import maps_to_seq, pyramid, resize


@dataclass(frozen=True)
class ToyConfig:
    backbone: BackboneConfig = field(default_factory=lambda: BackboneConfig(
        schedule=(1, 2, 4, 8), in_dim=1, width=32, depth=2, heads=2, class_dropout=0.0))


class Toy(nn.Module):
    """Predicts each scale of the image pyramid from the upsampled previous scale (MSE)."""

    def __init__(self, config: ToyConfig = ToyConfig()):
        super().__init__()
        self.config = config
        self.backbone = Backbone(config.backbone)
        self.out = nn.Linear(config.backbone.width, 1)

    def forward(self, x_BCHW, y_B):
        sch = self.config.backbone.schedule
        maps = pyramid(resize(x_BCHW, sch[-1]), sch)
        inputs = maps_to_seq([resize(m, s) for m, s in zip(maps[:-1], sch[1:])])
        pred = self.out(self.backbone(inputs, y_B))
        return {"loss": F.mse_loss(pred, maps_to_seq(maps))}
