"""A toy model family, the module of the family tests/test_registries.py adds as one entry (:data:`ARM`):
VAR's model with a 16-token codebook on a budget of its own, trained by a ``train_family`` of its own that
records the steps each training is given."""
from dataclasses import replace

from compare.arms import VAR_FAMILY, Arm, Budget
from var.pipeline import default_configs, train_family

SEEN: list[tuple[int, int]] = []  # (autoencoder steps, generator steps) of every training


def train_toy(data, ae_cfg, gen_cfg, ae_train, gen_train, folder, device=None, names=("coder", "toy")):
    SEEN.append((ae_train.steps, gen_train.steps))
    return train_family(data, ae_cfg, gen_cfg, ae_train, gen_train, folder, device, names)


def toy_configs(data, backbone):
    return default_configs(data, backbone, vocab_size=16)


FAMILY = replace(VAR_FAMILY, name="toy", train=train_toy, budget=Budget(
    "toy", "coder", ("the toy's coder", "the toy generator"), default=(30, 50), quick=(3, 5)))
ARM = Arm("toy", "a toy family (a test's)", "toy", "tab:gray", FAMILY, toy_configs, (("cfg 0", dict(cfg_scale=0.0)),),
          ("cfg 0",), default=False)
