"""Run by test_train.py under torchrun: train the toy model data-parallel, write the loss curve."""
import json
import sys

import torch

from nextscale.data import load_digits
from nextscale.train import TrainConfig, train
from toy import Toy

if __name__ == "__main__":
    torch.set_num_threads(1)
    torch.manual_seed(0)
    d = load_digits(side=8)
    res = train(Toy(), d.x_train, d.y_train, TrainConfig(steps=8, batch_size=32, lr=3e-3, warmup_steps=2,
                                                         progress=False), device="cpu")
    if torch.distributed.get_rank() == 0:
        json.dump(res.losses, open(sys.argv[1], "w"))
    torch.distributed.destroy_process_group()
