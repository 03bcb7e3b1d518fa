"""flowar.autoencoder: the continuous AE / VAE, its losses, normalisation and validation."""
import pytest
import torch

from nextscale.autoencoder import ConvAEConfig
from nextscale.data import load_digits
from nextscale.train import TrainConfig, train

from flowar.autoencoder import AEConfig, ContinuousAE

TINY = ConvAEConfig(image_channels=1, image_side=8, latent_channels=4, hidden=8, down=1)


def images(n=16, seed=0):
    return torch.rand(n, 1, 8, 8, generator=torch.Generator().manual_seed(seed)) * 2 - 1


@pytest.mark.parametrize("kind", ["ae", "vae"])
def test_forward_losses_and_shapes(kind):
    torch.manual_seed(0)
    ae = ContinuousAE(AEConfig(TINY, kind=kind, kl_weight=0.1))
    x = images()
    out = ae(x, torch.zeros(16, dtype=torch.long))
    assert set(out) == {"loss", "recon_mse", "kl"}
    assert torch.allclose(out["loss"], out["recon_mse"] + 0.1 * out["kl"])
    assert (out["kl"] == 0) == (kind == "ae")
    z = ae.encode(x)
    assert z.shape == (16, 4, 4, 4)
    assert ae.decode(z).shape == x.shape
    assert torch.equal(ae.encode(x), z)  # deterministic (VAE: the posterior mean)


def test_vae_training_sample_is_stochastic_but_encode_is_mean():
    torch.manual_seed(0)
    ae = ContinuousAE(AEConfig(TINY, kind="vae"))
    x = images()
    a, b = ae(x)["recon_mse"], ae(x)["recon_mse"]
    assert a != b
    mean = ae.encoder(x).chunk(2, 1)[0]
    assert torch.allclose(ae.encode(x), mean * ae.scale_factor)


def test_calibrate_gives_unit_latent_std_and_is_saved():
    torch.manual_seed(0)
    ae = ContinuousAE(AEConfig(TINY))
    x = images(64)
    s = ae.calibrate(x)
    assert s == pytest.approx(float(ae.scale_factor)) and s != 1.0
    with torch.no_grad():
        assert float(ae.encode(x).double().std()) == pytest.approx(1.0, abs=1e-4)
    assert "scale_factor" in ae.state_dict()
    other = ContinuousAE(AEConfig(TINY))
    other.load_state_dict(ae.state_dict())
    assert torch.equal(other.encode(x), ae.encode(x))
    # decode undoes the normalisation
    z = ae.encode(x)
    assert torch.allclose(ae.decode(z), ae.decoder(z / s), atol=1e-6)


def test_training_reduces_reconstruction_error():
    d = load_digits(side=8, seed=0)
    x, y = d.x_train[:32], d.y_train[:32]
    torch.manual_seed(0)
    ae = ContinuousAE(AEConfig(TINY, kind="vae", kl_weight=1e-4))
    before = float(((ae.reconstruct(x) - x) ** 2).mean())
    train(ae, x, y, TrainConfig(steps=60, batch_size=16, lr=3e-3, warmup_steps=5, progress=False))
    after = float(((ae.reconstruct(x) - x) ** 2).mean())
    assert after < 0.5 * before


def test_validation():
    with pytest.raises(ValueError, match=r"kind must be one of \('ae', 'vae'\)"):
        AEConfig(TINY, kind="vqvae")
    with pytest.raises(ValueError, match=r"kl_weight must lie in \[0, inf\)"):
        AEConfig(TINY, kl_weight=-1.0)
    with pytest.raises(ValueError, match="ae must be one of ConvAEConfig, LDMConfig, got int"):
        AEConfig(ae=4)
    with pytest.raises(ValueError, match=r"ae fits no coder family \(ConvAEConfig, LDMConfig\): fields \['width'\]"):
        AEConfig(ae={"width": 4})  # plain data (a checkpoint's) rebuilds the family whose fields it has
    assert AEConfig(ae={"latent_channels": 4}).ae == ConvAEConfig(latent_channels=4)
    ae = ContinuousAE(AEConfig(TINY))
    with pytest.raises(ValueError, match=r"images must have shape \(B, 1, 8, 8\)"):
        ae.encode(torch.zeros(2, 1, 16, 16))
    with pytest.raises(ValueError, match=r"latents must have shape \(B, 4, 4, 4\)"):
        ae.decode(torch.zeros(2, 4, 8, 8))
