"""The run's overall progress line: stage i of n, elapsed, estimated time left."""
from __future__ import annotations

import sys
import time


class Progress:
    """One overall line for the whole run (stage i of n, elapsed, estimated time left) above the per-stage
    bars on a terminal; plain log lines otherwise. The estimate assumes the remaining stages take as long
    as the finished ones on average."""

    def __init__(self, total: int, enabled: bool = True):
        self.total, self.done, self.t0, self.enabled = total, 0, time.perf_counter(), enabled
        self.bar = None
        if enabled and sys.stderr.isatty():
            from tqdm import tqdm
            self.bar = tqdm(total=total, position=0, desc="overall", bar_format="{desc} {n}/{total} {postfix}")

    def stage(self, msg: str):
        elapsed = time.perf_counter() - self.t0
        left = "?" if self.done == 0 else _clock(elapsed / self.done * (self.total - self.done))
        line = f"stage {self.done + 1}/{self.total}, {_clock(elapsed)} elapsed, ~{left} left: {msg}"
        if self.bar is not None:
            self.bar.n = self.done
            self.bar.set_postfix_str(line, refresh=True)
        elif self.enabled:
            print(f"== {line}", file=sys.stderr, flush=True)
        self.done += 1

    def close(self):
        if self.bar is not None:
            self.bar.close()


def _clock(seconds: float) -> str:
    m, s = divmod(int(seconds), 60)
    return f"{m // 60}:{m % 60:02d}:{s:02d}" if m >= 60 else f"{m}:{s:02d}"


def note(msg: str):
    """One ``== msg`` log line (before the staged part of a run)."""
    print(f"== {msg}", file=sys.stderr, flush=True)
