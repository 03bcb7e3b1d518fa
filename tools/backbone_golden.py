"""Make tests/data/backbone_golden.pt from the backbone as it was before its options existed (run by hand).

    python tools/backbone_golden.py [--rev 1a8b388^] [--out tests/data/backbone_golden.pt]

The fixture pins that the backbone's defaults (qk_norm off, drop_path 0, and every release option added
since) still compute what the original backbone computed. The script extracts ``nextscale/`` at ``--rev``
(the commit before ``qk_norm`` and ``drop_path`` were added) from this repository's history with
``git archive``, builds that revision's ``Backbone`` (schedule 1, 2, 4; 3 input channels; 5 classes; width
32, depth 2, 2 heads; no label dropout), gives every parameter random values, and records its output on
two fixed inputs and labels, computed in float64. Weights and inputs are stored as float32 values (exact
in float64); the output is float64.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
CONFIG = dict(schedule=(1, 2, 4), in_dim=3, num_classes=5, width=32, depth=2, heads=2, class_dropout=0.0)


def old_backbone(rev: str, into: Path):
    """The ``Backbone`` and ``BackboneConfig`` classes of ``nextscale/`` at ``rev``."""
    tar = subprocess.run(["git", "-C", str(ROOT), "archive", rev, "nextscale"], check=True, capture_output=True)
    subprocess.run(["tar", "-x", "-C", str(into)], input=tar.stdout, check=True)
    sys.path.insert(0, str(into))
    for name in [m for m in sys.modules if m == "nextscale" or m.startswith("nextscale.")]:
        del sys.modules[name]
    from nextscale.backbone import Backbone, BackboneConfig
    assert Path(sys.modules["nextscale.backbone"].__file__).is_relative_to(into)
    return Backbone, BackboneConfig


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rev", default="1a8b388^", help="the revision of nextscale/ to record")
    p.add_argument("--out", type=Path, default=ROOT / "tests/data/backbone_golden.pt")
    a = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        Backbone, BackboneConfig = old_backbone(a.rev, Path(tmp))
        torch.manual_seed(0)
        m = Backbone(BackboneConfig(**CONFIG)).eval()
        with torch.no_grad():
            for q in m.parameters():  # nothing left at an initial zero (adaLN-Zero would hide the blocks)
                q.copy_(0.05 * torch.randn(q.shape))
        state = {k: v.clone() for k, v in m.state_dict().items()}
        x, y = torch.randn(2, 20, 3), torch.tensor([1, 4])  # scales 2 and 3: 4 + 16 positions
        with torch.no_grad():
            h = m.double()(x.double(), y)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"rev": a.rev, "state": state, "x": x, "y": y, "h": h}, a.out)
    print(f"wrote {a.out} ({a.out.stat().st_size / 1e3:.0f} kB): h {tuple(h.shape)} {h.dtype}, "
          f"up to {float(h.abs().max()):.3g}")


if __name__ == "__main__":
    main()
