"""Classifier-free guidance, shared by both heads: the per-scale weight ramp and the combination.

Guided output = cond + w_k (cond - uncond), so w = 0 is exactly the conditional model (VAR writes
it (1 + w) cond - w uncond on logits; FlowAR applies it to velocities). w_k grows linearly with the
scale index (k = 0..K-1: cfg_scale * k / (K - 1), as in VAR) or stays constant.
"""
from __future__ import annotations

CFG_SCHEDULES = ("linear", "constant")


def cfg_weights(cfg_scale: float, schedule: str, num_scales: int) -> list[float]:
    """Guidance weight w_k of every scale: the linear ramp cfg_scale * k / (K - 1), or constant."""
    if schedule not in CFG_SCHEDULES:
        raise ValueError(f"cfg_schedule must be one of {CFG_SCHEDULES}, got {schedule!r}")
    if schedule == "constant" or num_scales == 1:
        return [float(cfg_scale)] * num_scales
    return [cfg_scale * k / (num_scales - 1) for k in range(num_scales)]


def guide(cond, uncond, w: float):
    """cond + w (cond - uncond): logits for VAR, velocities for FlowAR."""
    return cond + w * (cond - uncond)
