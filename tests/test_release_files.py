"""Malformed files are refused with one line naming the key, before anything runs: release files whose
weights were cast to integers or have the wrong rank, and checkpoints whose model entry is not a state
dict (issue 33; each case ended in an IndexError, a TypeError or a model that loaded wrong)."""
from __future__ import annotations

import pytest
import torch

from golden import fixture, release_state
from nextscale.checkpoint import load_state
from var.release import load as var_load

VAR = fixture("var_release_golden")


@pytest.fixture
def var_files(tmp_path):
    vae, var = release_state(VAR["vae"]), release_state(VAR["var"])
    torch.save(vae, tmp_path / "vae.pth")

    def write(**changes):
        torch.save({**var, **changes}, tmp_path / "var.pth")
        return tmp_path / "vae.pth", tmp_path / "var.pth"
    return var, write


def test_integer_weights_are_refused_naming_the_key(var_files):
    var, write = var_files
    with pytest.raises(ValueError, match=r"key 'blocks\.0\.ffn\.fc1\.weight'.* holds torch\.int64 values"):
        var_load(*write(**{"blocks.0.ffn.fc1.weight": var["blocks.0.ffn.fc1.weight"].long()}))
    with pytest.raises(ValueError, match=r"'class_emb\.weight' is a 2-D torch\.int64 tensor"):
        var_load(*write(**{"class_emb.weight": var["class_emb.weight"].long()}))  # a size read from it


@pytest.mark.parametrize("key, bad, message", [
    ("word_embed.weight", lambda v: v.flatten(), r"'word_embed\.weight' is a 1-D .* expected a 2-D floating"),
    ("blocks.0.attn.scale_mul_1H11", lambda v: v.flatten()[:1], r"'blocks\.0\.attn\.scale_mul_1H11' is a 1-D"),
    ("head.weight", lambda v: v[None], r"'head\.weight' is a 3-D"),
])
def test_wrong_rank_weights_are_refused_naming_the_key(var_files, key, bad, message):
    var, write = var_files
    with pytest.raises(ValueError, match=message):
        var_load(*write(**{key: bad(var[key])}))


def test_a_checkpoint_model_that_is_not_a_state_dict_is_one_error(tmp_path):
    m = torch.nn.Linear(2, 2)
    for bad in ([torch.zeros(2)], {"weight": [1.0, 2.0]}, None):
        with pytest.raises(ValueError, match="where a state dict .* belongs"):
            load_state(m, bad, tmp_path / "c.pt")
