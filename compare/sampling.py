"""Sampling a trained arm for the comparison, and its cost: batched seeded generation (sharded over
ranks), bf16 and compiled variants, latency and throughput, FLOPs per backbone step and per training
step."""
from __future__ import annotations

import platform
import sys

import torch

from nextscale.cost import count_flops, count_train_flops
from nextscale.data import ImageData
from nextscale.distributed import rank, shard_map, world

from .arms import ARMS, arm_configs, build_arm, sampler_rows
from .cost import measure_cost


def precision_context(cfg, dev: torch.device):
    """bf16 autocast for sampling (``precision="bf16"``); features of samples are extracted outside it, in
    float32 like the reference's, and metrics in float64."""
    from contextlib import nullcontext

    return torch.autocast(dev.type, dtype=torch.bfloat16) if cfg.precision == "bf16" else nullcontext()


def method_of(bound) -> tuple[object, str]:
    """(object, attribute) of a bound method: where a wrapper of it goes, an instance attribute shadowing
    the class's method for every caller (how the head's evaluation is compiled and timed in place)."""
    return bound.__self__, bound.__func__.__name__


def compile_for_sampling(model, head_eval):
    """Wrap every backbone block's forward and the head's evaluation ``head_eval(model)`` (the family's: VAR's
    linear head's ``forward``, FlowAR's ``velocity``) with ``torch.compile``, in place; returns the model.
    The block is the compute of a KV-cached step; ``Backbone.step`` itself is bookkeeping (input checks,
    the scale counter) that dynamic-shape tracing cannot follow (it fails on the check of which scale is
    fed)."""
    for blk in model.backbone.blocks:
        blk.forward = torch.compile(blk.forward, dynamic=True)
    owner, name = method_of(head_eval(model))
    setattr(owner, name, torch.compile(getattr(owner, name), dynamic=True))
    return model


def model_device(model) -> torch.device:
    return next(model.parameters()).device


@torch.no_grad()
def generate(model, labels_N: torch.Tensor, batch: int, seed: int, **kw) -> tuple[torch.Tensor, dict]:
    """Samples for ``labels`` in batches; batch i uses seed + i. Returns images (CPU) and the first stats."""
    from tqdm import tqdm

    chunks = list(enumerate(torch.split(labels_N, batch)))
    bar = tqdm(total=len(chunks), leave=False, disable=not sys.stderr.isatty() or rank() > 0, desc="sampling")

    def one(item):
        i, y = item
        imgs, st = model.sample(y.to(model_device(model)), seed=seed + i, **kw)
        bar.update(world())
        return imgs.float().cpu(), st
    done = shard_map(one, chunks)  # under torchrun: batch i on rank i % world, gathered in order
    bar.close()
    return torch.cat([imgs for imgs, _ in done]), done[0][1]


def check_samplers(cfg, data: ImageData, backbone, dev: torch.device) -> None:
    """Refuse bad sampler settings of a run spec before any training: every row samples one image with
    the arm's untrained model (milliseconds)."""
    for name in cfg.arms:
        if not (cfg.samplers and name in cfg.samplers):
            continue
        model = build_arm(name, *arm_configs(name, data, backbone, cfg)).to(dev).eval()
        for label, kw in sampler_rows(name, cfg):
            try:
                model.sample(torch.zeros(1, dtype=torch.long, device=dev), seed=0, **kw)
            except (TypeError, ValueError) as e:
                raise ValueError(f"samplers.{name} [{label}]: {e}") from None


def backbone_flops_per_scale(model, batch: int = 1) -> list[int]:
    """FLOPs of each KV-cached backbone step (one image): the pyramid's growing attention cost."""
    bb = model.backbone
    y = torch.zeros(batch, dtype=torch.long, device=model_device(model))
    cache, cond, flops = bb.new_cache(), bb.class_emb(y), []
    for k, side in enumerate(bb.cfg.schedule):
        x = None if k == 0 else torch.zeros(batch, side * side, bb.cfg.in_dim, device=cond.device)
        flops.append(count_flops(bb.step, x, cond, cache) // batch)
    return flops


def trainable_copy(model):
    """A copy of a trained generator (EMA weights are frozen) whose backbone and head train again, in
    train mode; the autoencoder stays frozen. For measuring training cost without touching ``model``."""
    import copy

    m = copy.deepcopy(model).train()
    m.backbone.requires_grad_(True)
    m.head.requires_grad_(True)
    return m


def train_flops_per_image(model, data: ImageData, batch: int, dev: torch.device) -> int:
    """FLOPs of one training step (forward + backward) per image, on one batch of real data, counted with
    torch's FLOP counter on a trainable copy of the generator (its frozen autoencoder excluded)."""
    m = trainable_copy(model)
    x, y = data.x_train[:batch].to(dev), data.y_train[:batch].to(dev)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        flops = count_train_flops(lambda: m(x, y)["loss"])
    return flops // len(x)


def device_name(dev: torch.device) -> str:
    if dev.type == "cuda":
        return torch.cuda.get_device_name(dev)
    return f"{platform.processor() or platform.machine()} CPU, {torch.get_num_threads()} threads"


def sample_fn(model, labels, seed, kw, dev, cfg):
    """``f(b)``: one sampling call of ``b`` images (labels cycled) at the run's precision."""
    def sample(b):
        y = labels[torch.arange(b) % len(labels)]
        with precision_context(cfg, dev):
            return model.sample(y.to(dev), seed=seed, **kw)
    return sample


def latency_and_throughput(sample, max_batch: int, dev: torch.device, seed: int) -> dict:
    """ms/img at batch 1 (latency: median of 3 after a warm-up) and at the largest batch up to
    ``max_batch`` that fits (throughput: one timed call; on CUDA the batch is halved on out-of-memory)."""
    lat = measure_cost(sample, batch_size=1, repeats=3, warmup=1, device=dev, seed=seed, flops=False)
    b = max_batch
    while True:
        try:
            thr = measure_cost(sample, batch_size=b, repeats=1, warmup=int(dev.type == "cuda"), device=dev,
                               seed=seed, flops=False)
            break
        except torch.OutOfMemoryError:
            if b == 1:
                raise
            torch.cuda.empty_cache()
            b //= 2
    return {"latency_ms": lat["ms_per_image"], "throughput_batch": b, "throughput_ms_per_image": thr["ms_per_image"],
            "throughput_img_per_s": 1000 / thr["ms_per_image"]}


def compile_arm(name: str, model):
    """:func:`compile_for_sampling` with arm ``name``'s head evaluation."""
    return compile_for_sampling(model, ARMS[name].family.head_eval)
