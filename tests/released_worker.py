"""``python -m compare.released`` with the tests' tiny DINOv2 as the feature network (the ViT-L/14 file is not
made here), for launching under torchrun: ``torchrun ... tests/released_worker.py ARGS``."""
import sys
from dataclasses import replace

from compare.metrics import evaluate
from compare.metrics.dinov2 import load_dinov2
from compare.released import main

evaluate.NETWORKS["dinov2"] = replace(evaluate.NETWORKS["dinov2"], load=lambda path, device: load_dinov2(
    path, device, dim=32, depth=2, heads=2, grid=4))

if __name__ == "__main__":
    main(sys.argv[1:])
