"""Step cost of a sampling call, per generated image: FLOPs, wall time, peak memory, and the sampler's own
counts (backbone forward passes, head function evaluations).

A sampler for :func:`measure_cost` is ``sample_fn(n) -> (images_BCHW, stats)`` generating ``n`` images,
``stats`` holding at least :data:`SAMPLER_STATS` (wrap a model's sampler in a closure that fixes its
labels, steps and guidance).

Peak memory is the memory a call needs above what was in use just before it:
  * CUDA: ``torch.cuda.max_memory_allocated`` (reset before the call) minus the allocated bytes before it;
  * CPU (Linux): the resident-set high-water mark ``VmHWM`` (reset through ``/proc/self/clear_refs``)
    minus the resident set ``VmRSS`` before the call, after ``malloc_trim`` has handed freed heap pages
    back to the OS, so memory the call reuses from earlier calls counts too. This includes every
    allocation of the process during the call (not only tensors), page-granular;
  * CPU elsewhere: ``ru_maxrss`` growth, a lifetime peak that reads 0 when the process peaked earlier.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import resource
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import torch

from nextscale.config import check_int, check_seed
from nextscale.cost import count_flops

SAMPLER_STATS = ("backbone_forwards", "head_nfe", "head_nfe_per_scale", "guided")
_PROC_STATUS, _CLEAR_REFS = Path("/proc/self/status"), Path("/proc/self/clear_refs")


def _status_bytes(field: str) -> int:
    for line in _PROC_STATUS.read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024  # reported in kB
    raise KeyError(field)


def _malloc_trim() -> None:
    name = ctypes.util.find_library("c")
    if name is not None:
        libc = ctypes.CDLL(name)
        if hasattr(libc, "malloc_trim"):  # glibc only
            libc.malloc_trim(0)


def _reset_rss_peak() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0); False where that is not possible."""
    try:
        _CLEAR_REFS.write_text("5")
        return True
    except OSError:
        return False


class _PeakMemory:
    """Measures the peak extra memory of the code run between :meth:`start` and :meth:`stop`."""

    def __init__(self, device: torch.device):
        self.device = device
        if device.type == "cuda":
            self.method = "cuda max_memory_allocated"
        elif _PROC_STATUS.exists() and _reset_rss_peak():
            self.method = "rss high-water mark (VmHWM) after malloc_trim"
        else:
            self.method = "ru_maxrss growth (lifetime peak, may read low)"

    def start(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.base = torch.cuda.memory_allocated(self.device)
        elif self.method.startswith("rss"):
            _malloc_trim()
            self.base = _status_bytes("VmRSS")
            _reset_rss_peak()
        else:
            self.base = self._maxrss()

    def stop(self) -> int:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            return torch.cuda.max_memory_allocated(self.device) - self.base
        if self.method.startswith("rss"):
            return max(0, _status_bytes("VmHWM") - self.base)
        return max(0, self._maxrss() - self.base)

    @staticmethod
    def _maxrss() -> int:
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return rss if sys.platform == "darwin" else rss * 1024  # bytes on macOS, kB elsewhere


def _check_output(out, batch_size: int) -> tuple[torch.Tensor, dict]:
    if not (isinstance(out, tuple) and len(out) == 2 and isinstance(out[0], torch.Tensor) and isinstance(out[1], dict)):
        raise ValueError(f"sample_fn must return (images, stats), got {type(out).__name__}")
    images, stats = out
    if images.ndim != 4 or len(images) != batch_size:
        raise ValueError(f"sample_fn({batch_size}) must return {batch_size} images (B, C, H, W), "
                         f"got shape {tuple(images.shape)}")
    missing = [k for k in SAMPLER_STATS if k not in stats]
    if missing:
        raise ValueError(f"sample_fn's stats lack {missing} (expected keys {list(SAMPLER_STATS)})")
    return images, stats


def measure_cost(sample_fn: Callable[[int], tuple[torch.Tensor, dict]], batch_size: int, repeats: int = 3,
                 warmup: int = 1, device: str | torch.device | None = None, seed: int = 0, flops: bool = True) -> dict:
    """Cost of ``sample_fn(batch_size)`` per generated image.

    One call under ``torch.utils.flop_counter`` gives FLOPs (``flops=False``: skipped, reported as None);
    ``warmup`` untimed calls follow, then
    ``repeats`` timed ones (CUDA synchronised) give the median wall time and the peak memory (the largest
    over the repeats; see the module docstring). Every call runs under ``torch.no_grad`` with the global
    RNG seeded by ``seed`` (the caller's RNG state is restored). ``device`` defaults to the device of the
    returned images. Returns a dict of plain numbers, the sampler's stats (of the last call) included."""
    check_int("batch_size", batch_size, 1)
    check_int("repeats", repeats, 1)
    check_int("warmup", warmup, 0)
    check_seed("seed", seed)
    outputs = []
    with torch.random.fork_rng(devices=range(torch.cuda.device_count()) if torch.cuda.is_available() else []):
        def call():
            torch.manual_seed(seed)
            with torch.no_grad():
                outputs.append(_check_output(sample_fn(batch_size), batch_size))

        n_flops = count_flops(call) if flops else None
        if device is not None:
            dev = torch.device(device)
        else:
            if not outputs:
                call()
            dev = outputs[0][0].device
        for _ in range(warmup):
            call()
        meter, seconds, peaks = _PeakMemory(dev), [], []
        for _ in range(repeats):
            outputs.clear()
            meter.start()
            t0 = time.perf_counter()
            call()
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)
            seconds.append(time.perf_counter() - t0)
            peaks.append(meter.stop())
    stats = outputs[-1][1]
    result = {
        "batch_size": batch_size,
        "device": str(dev),
        "flops_per_image": None if n_flops is None else n_flops / batch_size,
        "ms_per_image": 1000 * statistics.median(seconds) / batch_size,
        "ms_per_image_repeats": [1000 * s / batch_size for s in seconds],
        "peak_mem_bytes": int(max(peaks)),
        "peak_mem_method": meter.method,
    }
    clash = sorted(set(stats) & set(result))
    if clash:
        raise ValueError(f"sample_fn's stats use reserved keys {clash}")
    result.update(stats)
    return result
