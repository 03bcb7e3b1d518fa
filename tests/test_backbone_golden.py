"""The backbone's defaults compute what the backbone computed before its options existed.

``tests/data/backbone_golden.pt`` was made by ``tools/backbone_golden.py`` from ``nextscale/`` at the commit
before ``qk_norm`` and ``drop_path`` were added (random weights, output in float64); every option added since
(qk-norm, drop path, the FlowAR release's norm, MLP, RoPE, stacks...) is off by default and must leave the
parameters and the outputs as they were.
"""
import torch

from nextscale.backbone import Backbone, BackboneConfig
from golden import close, equal, fixture


def test_options_off_equal_the_original_backbone():
    ref = fixture("backbone_golden")
    cfg = BackboneConfig(schedule=(1, 2, 4), in_dim=3, num_classes=5, width=32, depth=2, heads=2, class_dropout=0.0)
    m = Backbone(cfg)
    m.load_state_dict(ref["state"])  # strict: no new parameters when the options are off
    m.double()
    with torch.no_grad():
        close(m.eval()(ref["x"].double(), ref["y"]), ref["h"])
        equal(m.train()(ref["x"].double(), ref["y"]), m.eval()(ref["x"].double(), ref["y"]))  # no dropout anywhere
