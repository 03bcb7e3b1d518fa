"""Print how far this project's ports are from the releases' outputs on the fixtures in tests/data/, and the
parameter counts of the released sizes as loaded here.

    python tools/release_equality.py

The fixtures were made from the releases' own code (``tools/var_golden.py``, ``tools/flowar_ar_golden.py``,
``tools/flowar_model_golden.py``); the tests assert these differences stay within their tolerances, this
prints them (largest absolute difference, and the largest magnitude it is measured against).
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))


def row(what: str, ours: torch.Tensor, release: torch.Tensor) -> None:
    print(f"{what:<46} {float((ours - release).abs().max()):.2e}   (values up to {float(release.abs().max()):.3g})")


@torch.no_grad()
def var_rows() -> None:
    from golden import release_state
    from test_var_release import GOLDEN as G
    from var.release import SCHEDULE, from_release_states
    m = from_release_states(release_state(G["vae"]), release_state(G["var"]))
    tok, x = m.tokenizer, G["x"]
    row("VAR VQVAE encoder latent", tok.latent(x), G["latent"])
    row("VAR VQVAE decoded latent (image)", tok.decode_latent(tok.latent(x)), G["decoded"])
    tokens = tok.encode(x)
    same = sum(int((t.flatten(1) == g).sum()) for t, g in zip(tokens, G["tokens"]))
    print(f"{'VAR tokens equal to the release':<46} {same} of {sum(g.numel() for g in G['tokens'])}")
    _, h = m.token_loss([t.view(-1, s, s) for t, s in zip(G["tokens"], SCHEDULE)], G["labels"], return_hidden=True)
    row("VAR teacher-forced logits", m.head(h), G["logits"])
    s = G["sampling"]
    images, _, drawn = m.sample(G["labels"], cfg_scale=s["cfg"], top_k=s["top_k"], top_p=s["top_p"], rng="release",
                                seed=s["g_seed"], return_tokens=True)
    same = sum(int((t.flatten(1) == g).sum()) for t, g in zip(drawn, G["sampled_tokens"]))
    print(f"{'VAR sampled tokens (rng=release) equal':<46} {same} of {sum(g.numel() for g in G['sampled_tokens'])}")
    row("VAR sampled images (rng=release)", (images + 1) / 2, G["sampled_images"])


@torch.no_grad()
def flowar_rows() -> None:
    from test_backbone_release import GOLDEN as A, ported, stepped
    from golden import release_state
    from test_flowar_release_model import GOLDEN as G, flowar_state
    from flowar.release import from_release_states
    from nextscale.scales import pyramid, scale_slices
    bb = ported()
    row("FlowAR AR transformer, teacher-forced", bb(A["x_in"], A["labels"]), A["h_teacher"])
    row("FlowAR AR transformer, KV-cached steps", stepped(bb, A["x_in"], A["labels"]), A["h_cached"])
    m = from_release_states(flowar_state(), release_state(G["vae"]["model"]), heads=G["heads"])
    row("MAR KL VAE latent (mean x 0.2325)", m.ae.encode(G["x"]), G["latent"])
    row("MAR KL VAE decoded image", m.ae.decode(G["latent"]), G["decoded"])
    maps = pyramid(G["latent"], m.schedule)
    h = m.backbone(torch.cat([m.next_input(p, k + 1) for k, p in enumerate(maps[:-1])], 1), G["labels"])
    worst = max(float((m.head(c["x_release"], (1 - c["t_release"].double()).float()[:, None], h[:, sl], k)
                       + c["v_release"]).abs().max()) for k, (c, sl) in enumerate(zip(G["cases"],
                                                                                      scale_slices(m.schedule))))
    print(f"{'FlowAR velocities of its training pass':<46} {worst:.2e}   (all five scales)")


def size_rows() -> None:
    """The real sizes, built on the meta device from the releases' key/shape listings (tools/release_shapes.py)."""
    from test_release_shapes import meta_state, params
    from flowar.release import from_release_states as flowar_from
    from var.release import from_release_states as var_from
    for depth in (16, 20, 24, 30):
        vae, var = meta_state("vae"), meta_state(f"var_d{depth}")
        with torch.device("meta"):
            m = var_from(vae, var)
        print(f"{f'VAR-d{depth} parameters (VQVAE apart)':<46} {params(m, 'tokenizer.') / 1e6:.1f}M")
    print(f"{'VAR VQVAE parameters':<46} {params(m.tokenizer) / 1e6:.1f}M")
    for size in "SLH":
        fl, vae = meta_state(f"flowar_{size}"), meta_state("kl16")
        with torch.device("meta"):
            m = flowar_from(fl, vae)
        print(f"{f'FlowAR-{size} parameters (VAE apart)':<46} {params(m, 'ae.') / 1e6:.1f}M")
    print(f"{'MAR KL-16 VAE parameters':<46} {params(m.ae) / 1e6:.1f}M")


if __name__ == "__main__":
    var_rows()
    flowar_rows()
    size_rows()
