"""The InceptionV3 used for published FID numbers, in plain torch (no torchvision).

This is the FID variant of the architecture (TensorFlow's 2015-12-05 graph as ported by pytorch-fid):
torchvision's Inception3 layout with average pools that leave the zero padding out of the mean in the
A, C and first E blocks, and a max pool in the last E block. Features are the 2048-d final average
pool. Its weights are NOT bundled and never downloaded: pass the path of the standard
``pt_inception-2015-12-05-6726825d.pth`` state dict to :func:`load_inception`.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from nextscale.train import pick_device

from .features import FeatureNet

FID_WEIGHTS_NAME = "pt_inception-2015-12-05-6726825d.pth"
FID_WEIGHTS_URL = ("https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/" + FID_WEIGHTS_NAME)
_GET_WEIGHTS = (f"download {FID_WEIGHTS_URL} (the FID InceptionV3 weights released with pytorch-fid) "
                "and pass its local path")


class BasicConv2d(nn.Module):
    """Conv (no bias) -> BatchNorm (eps 1e-3) -> ReLU."""

    def __init__(self, c_in: int, c_out: int, **conv_kwargs):
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, bias=False, **conv_kwargs)
        self.bn = nn.BatchNorm2d(c_out, eps=0.001)

    def forward(self, x):
        return F.relu(self.bn(self.conv(x)))


def _avg_pool_3x3(x):
    """TensorFlow's 3x3 average pool: padded zeros do not count in the mean."""
    return F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False)


class InceptionA(nn.Module):  # 35x35: 1x1 | 5x5 | double 3x3 | pool
    def __init__(self, c_in: int, pool_features: int):
        super().__init__()
        self.branch1x1 = BasicConv2d(c_in, 64, kernel_size=1)
        self.branch5x5_1 = BasicConv2d(c_in, 48, kernel_size=1)
        self.branch5x5_2 = BasicConv2d(48, 64, kernel_size=5, padding=2)
        self.branch3x3dbl_1 = BasicConv2d(c_in, 64, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, kernel_size=3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, kernel_size=3, padding=1)
        self.branch_pool = BasicConv2d(c_in, pool_features, kernel_size=1)

    def forward(self, x):
        return torch.cat([
            self.branch1x1(x),
            self.branch5x5_2(self.branch5x5_1(x)),
            self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
            self.branch_pool(_avg_pool_3x3(x)),
        ], 1)


class InceptionB(nn.Module):  # 35x35 -> 17x17 reduction
    def __init__(self, c_in: int):
        super().__init__()
        self.branch3x3 = BasicConv2d(c_in, 384, kernel_size=3, stride=2)
        self.branch3x3dbl_1 = BasicConv2d(c_in, 64, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, kernel_size=3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, kernel_size=3, stride=2)

    def forward(self, x):
        return torch.cat([
            self.branch3x3(x),
            self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
            F.max_pool2d(x, kernel_size=3, stride=2),
        ], 1)


class InceptionC(nn.Module):  # 17x17: factorised 7x7 convolutions
    def __init__(self, c_in: int, channels_7x7: int):
        super().__init__()
        c7 = channels_7x7
        self.branch1x1 = BasicConv2d(c_in, 192, kernel_size=1)
        self.branch7x7_1 = BasicConv2d(c_in, c7, kernel_size=1)
        self.branch7x7_2 = BasicConv2d(c7, c7, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7_3 = BasicConv2d(c7, 192, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = BasicConv2d(c_in, c7, kernel_size=1)
        self.branch7x7dbl_2 = BasicConv2d(c7, c7, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = BasicConv2d(c7, c7, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = BasicConv2d(c7, c7, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = BasicConv2d(c7, 192, kernel_size=(1, 7), padding=(0, 3))
        self.branch_pool = BasicConv2d(c_in, 192, kernel_size=1)

    def forward(self, x):
        b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        b7dbl = self.branch7x7dbl_1(x)
        for conv in (self.branch7x7dbl_2, self.branch7x7dbl_3, self.branch7x7dbl_4, self.branch7x7dbl_5):
            b7dbl = conv(b7dbl)
        return torch.cat([self.branch1x1(x), b7, b7dbl, self.branch_pool(_avg_pool_3x3(x))], 1)


class InceptionD(nn.Module):  # 17x17 -> 8x8 reduction
    def __init__(self, c_in: int):
        super().__init__()
        self.branch3x3_1 = BasicConv2d(c_in, 192, kernel_size=1)
        self.branch3x3_2 = BasicConv2d(192, 320, kernel_size=3, stride=2)
        self.branch7x7x3_1 = BasicConv2d(c_in, 192, kernel_size=1)
        self.branch7x7x3_2 = BasicConv2d(192, 192, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7x3_3 = BasicConv2d(192, 192, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7x3_4 = BasicConv2d(192, 192, kernel_size=3, stride=2)

    def forward(self, x):
        b7 = self.branch7x7x3_1(x)
        for conv in (self.branch7x7x3_2, self.branch7x7x3_3, self.branch7x7x3_4):
            b7 = conv(b7)
        return torch.cat([self.branch3x3_2(self.branch3x3_1(x)), b7, F.max_pool2d(x, kernel_size=3, stride=2)], 1)


class InceptionE(nn.Module):  # 8x8: expanded filter bank; FID's second E block max-pools its pool branch
    def __init__(self, c_in: int, max_pool: bool):
        super().__init__()
        self.max_pool = max_pool
        self.branch1x1 = BasicConv2d(c_in, 320, kernel_size=1)
        self.branch3x3_1 = BasicConv2d(c_in, 384, kernel_size=1)
        self.branch3x3_2a = BasicConv2d(384, 384, kernel_size=(1, 3), padding=(0, 1))
        self.branch3x3_2b = BasicConv2d(384, 384, kernel_size=(3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = BasicConv2d(c_in, 448, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(448, 384, kernel_size=3, padding=1)
        self.branch3x3dbl_3a = BasicConv2d(384, 384, kernel_size=(1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = BasicConv2d(384, 384, kernel_size=(3, 1), padding=(1, 0))
        self.branch_pool = BasicConv2d(c_in, 192, kernel_size=1)

    def forward(self, x):
        b3 = self.branch3x3_1(x)
        b3dbl = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        pooled = F.max_pool2d(x, kernel_size=3, stride=1, padding=1) if self.max_pool else _avg_pool_3x3(x)
        return torch.cat([
            self.branch1x1(x),
            self.branch3x3_2a(b3), self.branch3x3_2b(b3),
            self.branch3x3dbl_3a(b3dbl), self.branch3x3dbl_3b(b3dbl),
            self.branch_pool(pooled),
        ], 1)


class InceptionV3FID(FeatureNet):
    """FID InceptionV3: images in [-1, 1] (grey or RGB, any size) -> 2048-d pool features.

    Input handling follows pytorch-fid: bilinear resize to 299x299 (align_corners=False, no antialias),
    then the network sees values in [-1, 1] (pytorch-fid maps its [0, 1] input by 2x - 1; our images are
    already there, and bilinear resizing commutes with that affine map). Grey images are repeated to RGB.
    Module and parameter names match the standard state dict, so it loads with no renaming; ``fc`` (the
    1008-way classifier of that file) gives the Inception Score's logits (:meth:`class_logits`)."""

    name = "inception"
    dim = 2048
    channels = (1, 3)

    def __init__(self):
        super().__init__()
        self.Conv2d_1a_3x3 = BasicConv2d(3, 32, kernel_size=3, stride=2)
        self.Conv2d_2a_3x3 = BasicConv2d(32, 32, kernel_size=3)
        self.Conv2d_2b_3x3 = BasicConv2d(32, 64, kernel_size=3, padding=1)
        self.Conv2d_3b_1x1 = BasicConv2d(64, 80, kernel_size=1)
        self.Conv2d_4a_3x3 = BasicConv2d(80, 192, kernel_size=3)
        self.Mixed_5b = InceptionA(192, pool_features=32)
        self.Mixed_5c = InceptionA(256, pool_features=64)
        self.Mixed_5d = InceptionA(288, pool_features=64)
        self.Mixed_6a = InceptionB(288)
        self.Mixed_6b = InceptionC(768, channels_7x7=128)
        self.Mixed_6c = InceptionC(768, channels_7x7=160)
        self.Mixed_6d = InceptionC(768, channels_7x7=160)
        self.Mixed_6e = InceptionC(768, channels_7x7=192)
        self.Mixed_7a = InceptionD(768)
        self.Mixed_7b = InceptionE(1280, max_pool=False)
        self.Mixed_7c = InceptionE(2048, max_pool=True)
        self.fc = nn.Linear(2048, 1008)
        self.requires_grad_(False).eval()

    def class_logits(self, feats_ND: torch.Tensor) -> torch.Tensor:
        """The 1008-way logits of pool features without the bias: torch-fidelity's ``logits_unbiased``,
        from which it computes the Inception Score."""
        return feats_ND.double() @ self.fc.weight.detach().cpu().double().T

    def embed(self, x_BCHW: torch.Tensor) -> torch.Tensor:
        x = x_BCHW.expand(-1, 3, -1, -1) if x_BCHW.shape[1] == 1 else x_BCHW
        x = F.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False)     # B 3 299 299
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))               # B 64 147 147
        x = F.max_pool2d(x, kernel_size=3, stride=2)                                     # B 64 73 73
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x))                                    # B 192 71 71
        x = F.max_pool2d(x, kernel_size=3, stride=2)                                     # B 192 35 35
        for block in (self.Mixed_5b, self.Mixed_5c, self.Mixed_5d, self.Mixed_6a,       # B 768 17 17
                      self.Mixed_6b, self.Mixed_6c, self.Mixed_6d, self.Mixed_6e,
                      self.Mixed_7a, self.Mixed_7b, self.Mixed_7c):                      # B 2048 8 8
            x = block(x)
        return x.mean(dim=(2, 3))                                                        # B 2048


def _shapes(state: dict) -> dict[str, tuple]:
    """Parameter/buffer shapes by name; BatchNorm's step counters are bookkeeping, not weights."""
    return {k: tuple(v.shape) for k, v in state.items() if not k.endswith("num_batches_tracked")}


def load_inception(path: str | Path, device: str | torch.device | None = None) -> InceptionV3FID:
    """The FID InceptionV3 with weights from a local ``pt_inception-2015-12-05-6726825d.pth``, on ``device``
    (default: CUDA when available, else CPU), in eval mode.

    A missing file raises ``FileNotFoundError``, an unreadable file or one whose names/shapes differ
    from the standard state dict raises ``ValueError``; both say where to get the right file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no InceptionV3 FID weights at {path}: {_GET_WEIGHTS}")
    model = InceptionV3FID()
    model.load_state_dict(check_state(path, model, _GET_WEIGHTS, f"FID InceptionV3 state dict ({FID_WEIGHTS_NAME})"),
                          strict=False)
    return model.to(pick_device(device))


def inception_score(logits_NK: torch.Tensor, splits: int = 10, seed: int = 2020) -> tuple[float, float]:
    """Inception Score (Salimans et al. 2016) as torch-fidelity computes it: the rows shuffled with numpy's
    ``RandomState(seed).permutation`` (its seed 2020), cut into ``splits`` equal parts, exp(mean KL(p(y|x) || p(y))) per part; (mean, std
    over parts, population std)."""
    logits = torch.as_tensor(logits_NK).double()
    if logits.ndim != 2 or len(logits) < splits or not torch.isfinite(logits).all():
        raise ValueError(f"logits must be finite (N, K) with N >= splits ({splits}), got shape {tuple(logits.shape)}")
    logits = logits[torch.from_numpy(np.random.RandomState(seed).permutation(len(logits)))]
    n, scores = len(logits), []
    for i in range(splits):
        part = logits[i * n // splits:(i + 1) * n // splits]
        p, log_p = part.softmax(1), part.log_softmax(1)
        log_q = p.mean(0, keepdim=True).log()
        scores.append((p * (log_p - log_q)).sum(1).mean().exp().item())
    return float(np.mean(scores)), float(np.std(scores))


def check_state(path: Path, model: nn.Module, get_weights: str, what: str) -> dict:
    """The state dict at ``path`` restricted to ``model``'s names, after checking it is readable, holds
    every name with the right shape and no other (BatchNorm step counters aside), and only finite values;
    each problem is a ``ValueError`` naming the file, the tensors and ``get_weights`` (where to get it)."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated file, pickle of foreign objects
        raise ValueError(f"cannot read {path} ({e}): {get_weights}") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path} is not a state dict of tensors: {get_weights}")
    want, got = _shapes(model.state_dict()), _shapes(state)
    missing, unexpected = sorted(want.keys() - got.keys()), sorted(got.keys() - want.keys())
    wrong = sorted(f"{k} {got[k]} (expected {want[k]})" for k in want.keys() & got.keys() if got[k] != want[k])
    if missing or unexpected or wrong:
        def head(names):
            return ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
        problems = [f"{kind}: {head(names)}" for kind, names in
                    (("missing keys", missing), ("unexpected keys", unexpected), ("wrong shapes", wrong)) if names]
        raise ValueError(f"{path} does not match the {what}; " + "; ".join(problems) + f"; {get_weights}")
    bad = sorted(k for k in want if state[k].is_floating_point() and not bool(torch.isfinite(state[k]).all()))
    if bad:
        raise ValueError(f"{path} holds NaN/inf weights in {len(bad)} tensor(s), e.g. {bad[0]}: a corrupt copy; "
                         f"{get_weights}")
    return {k: v for k, v in state.items() if k in want}
