"""Run by test_train.py under torchrun: train a model data-parallel, write the loss curve (and, for
FlowAR, a checksum of every rank's weights, to check that the ranks stayed in sync)."""
import json
import sys

import torch

from nextscale.data import load_digits
from nextscale.train import TrainConfig, train
from toy import Toy


def flowar_model(d, head="transformer"):
    from nextscale.autoencoder import ConvAEConfig
    from nextscale.backbone import BackboneConfig
    from flowar.autoencoder import AEConfig, ContinuousAE
    from flowar.model import FlowAR, FlowARConfig

    ae = AEConfig(ConvAEConfig(image_channels=1, image_side=8, latent_channels=4, hidden=8, down=1))
    bb = BackboneConfig(schedule=(1, 2, 4), in_dim=4, num_classes=10, width=32, depth=1, heads=2)
    autoencoder = ContinuousAE(ae)
    autoencoder.calibrate(d.x_train)
    time = "continuous" if head == "transformer" else "index"
    return FlowAR(FlowARConfig(ae=ae, backbone=bb, head=head, head_time=time), autoencoder)


if __name__ == "__main__":
    torch.set_num_threads(1)
    torch.manual_seed(0)
    d = load_digits(side=8)
    kind = sys.argv[2] if len(sys.argv) > 2 else "toy"
    model = Toy() if kind == "toy" else flowar_model(d, "transformer_cross" if kind == "flowar_cross" else "transformer")
    res = train(model, d.x_train, d.y_train, TrainConfig(steps=8, batch_size=32, lr=3e-3, warmup_steps=2,
                                                         progress=False), device="cpu")
    flat = torch.cat([p.detach().flatten() for p in res.model.parameters()])
    sums = [torch.zeros(2) for _ in range(torch.distributed.get_world_size())]
    torch.distributed.all_gather(sums, torch.stack([flat.sum(), flat.abs().sum()]).float())
    if torch.distributed.get_rank() == 0:
        json.dump({"losses": res.losses, "weights": [s.tolist() for s in sums]}, open(sys.argv[1], "w"))
    torch.distributed.barrier()  # no rank tears gloo down while the other still uses it
    torch.distributed.destroy_process_group()
