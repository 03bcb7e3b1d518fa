"""``python -m compare.bench``: where sampling time goes, for VAR and each FlowAR arm on the default config.

For every arm (random weights: cost does not depend on them for fixed-step samplers) it prints, in one
process, with the measurements interleaved (one round runs each once) and reported as medians over the
rounds after a warm-up round; each ratio is the median of the per-round ratios of two measurements
taken in the same round, which cancels the machine's slow drifts. Each timed call comes right after an
untimed call of itself: it is timed in the steady state of repeating it, as sampling or training runs.
(The allocator returns freed large blocks to the system, so the call that ran before decides how many
pages a call must fault in again: on the 2-core CPU here a batch-50 forward took 108 to 140 ms
depending on its predecessor.)
- the teacher-forced forward (backbone + one head evaluation per position) of a batch, and KV-cached
  sampling of the same batch, unguided and guided (the forward then runs on the doubled batch), and
  their ratio, with and without the final decode (latent -> image), which sampling includes and the
  forward does not;
- the backbone part of sampling, timed inside ``Backbone.step``, against one teacher-forced backbone pass
  of the same batch (the arms' schedules differ, so each is compared with its own backbone): the floor
  is about 1.0, the cached steps do the same matmul work as the pass;
- the rest of sampling outside the backbone steps and the head (VAR: token draws, the tokenizer's
  next input, the decode; FlowAR: the solver loop, noise, resizes, the decode);
- for FlowAR, the mean time of one head evaluation inside sampling against the head alone on the same
  batch, averaged over the scales as the sampler calls them (the per-evaluation overhead of the solver,
  guidance and bookkeeping);
- ms/img at batch 1, 50 and 256 (guided), the head's share of sampling time, training images/s;
- with ``--compile``, the same sampling figures with the backbone and head compiled by ``torch.compile``.

No test asserts a time: this machine is shared and noisy; compare ratios from one run.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from contextlib import contextmanager

import torch

from flowar.sampling import PAPER_SOLVER
from nextscale.backbone import BackboneConfig
from nextscale.cost import memory_estimate
from nextscale.data import load_digits
from nextscale.train import pick_device

from .arms import ARMS, DEFAULT_ARMS, arm_configs, backbone_inputs, build_arm
from .config import CompareConfig
from .sampling import compile_for_sampling, method_of, trainable_copy


PER_IMAGE_BATCHES = (1, 50, 256)  # the (guided) sampling batches of the ms/img figures
TRAIN_BATCH = 32  # the batch of the training images/s


def build(arm: str, data, backbone: BackboneConfig, dev):
    """An untrained model of ``arm`` on the harness's default configs."""
    torch.manual_seed(0)
    model = build_arm(arm, *arm_configs(arm, data, backbone, CompareConfig()))
    with torch.no_grad():  # adaLN-Zero starts every block as the identity: perturb so all paths compute
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.02 * torch.randn_like(p))
    return model.to(dev).eval()


class CallTimer:
    """Accumulates the wall time spent inside ``obj.<name>`` calls while active (synchronised on CUDA)."""

    def __init__(self, obj, name: str, dev):
        self.obj, self.name, self.dev = obj, name, dev
        self.seconds, self.calls = 0.0, 0

    @contextmanager
    def active(self):
        orig, own = getattr(self.obj, self.name), self.name in vars(self.obj)  # own: an instance attribute
        self.seconds, self.calls = 0.0, 0

        def timed(*a, **kw):
            _sync(self.dev)
            t = time.perf_counter()
            out = orig(*a, **kw)
            _sync(self.dev)
            self.seconds += time.perf_counter() - t
            self.calls += 1
            return out
        setattr(self.obj, self.name, timed)
        try:
            yield self
        finally:
            if own:
                setattr(self.obj, self.name, orig)
            else:
                delattr(self.obj, self.name)


def _sync(dev):
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def _timed(fn, dev) -> float:
    _sync(dev)
    t = time.perf_counter()
    fn()
    _sync(dev)
    return time.perf_counter() - t


def decoder(family, model, batch: int, dev):
    """The final latent -> image decode that sampling ends with (not part of the teacher-forced forward):
    the latent has the backbone's input channels at the schedule's last side."""
    bb = model.backbone.cfg
    z = torch.randn(batch, bb.in_dim, bb.schedule[-1], bb.schedule[-1], device=dev)
    decode = family.decode(model)
    return lambda: decode(z)


def measure_arm(arm, data, backbone, dev, batch, repeats, steps, compile_=False) -> dict:
    family = ARMS[arm].family
    model = build(arm, data, backbone, dev)
    hot_head = method_of(family.head_eval(model))  # before compiling: the compiled wrapper is no bound method
    if compile_:
        compile_for_sampling(model, family.head_eval)
    bb = model.backbone
    kw = {**family.own_sampler, **({"steps": steps} if "steps" in family.own_sampler else {})}

    def sample(model, y, cfg):
        return model.sample(y, cfg_scale=cfg, seed=0, **kw)
    y = (torch.arange(batch) % data.num_classes).to(dev)
    y2 = torch.cat([y, torch.full_like(y, bb.null_class)])
    x_in = backbone_inputs(bb, batch, dev)
    x_in2 = x_in.repeat(2, 1, 1)
    tasks = {"forward": family.teacher_forced(model, y, dev), "forward_x2": family.teacher_forced(model, y2, dev),
             "backbone": lambda: bb(x_in, y), "backbone_x2": lambda: bb(x_in2, y2),
             "decode": decoder(family, model, batch, dev),
             "sample": lambda: sample(model, y, 0.0), "sample_cfg": lambda: sample(model, y, 1.0)}
    if family.head_alone is not None:  # one evaluation of the head alone at every scale (the sampler's mix)
        tasks["head_eval_alone"] = family.head_alone(model, batch, dev)
    in_head, in_steps = CallTimer(*hot_head, dev), CallTimer(bb, "step", dev)
    series: dict[str, list[float]] = {}
    with torch.no_grad():
        for r in range(repeats + 1):  # interleaved; round 0 is the warm-up
            for name, fn in tasks.items():
                fn()  # untimed: each call is timed in the steady state of repeating it (see the module doc)
                if name.startswith("sample"):
                    with in_head.active(), in_steps.active():
                        dt = _timed(fn, dev)
                    if r:
                        for part, timer in (("head", in_head), ("steps", in_steps)):
                            series.setdefault(f"{name}_{part}", []).append(timer.seconds)
                        series.setdefault(f"{name}_head_calls", []).append(in_head.calls)
                else:
                    dt = _timed(fn, dev)
                if r:
                    series.setdefault(name, []).append(dt)
        per_img = {}
        for b in PER_IMAGE_BATCHES:
            yb = (torch.arange(b) % data.num_classes).to(dev)
            sample(model, yb, 1.0)
            per_img[b] = 1000 * statistics.median(_timed(lambda yb=yb: sample(model, yb, 1.0), dev)
                                                  for _ in range(max(1, repeats // 2))) / b
    out = {"arm": arm, **summarise(series, len(bb.cfg.schedule)), "ms_per_img": per_img}
    if not compile_:
        out["train_img_per_s"] = train_throughput(model, data, dev, repeats)
    return out


def summarise(series: dict[str, list[float]], num_scales: int) -> dict:
    """Medians (ms) and per-round ratios of the interleaved timings of :func:`measure_arm`."""
    med = {k: statistics.median(v) for k, v in series.items()}

    def ratio(num, den, minus=None):
        """Median over rounds of the per-round ratio of two measurements taken in the same round."""
        n = series[num] if minus is None else [a - b for a, b in zip(series[num], series[minus])]
        return statistics.median(a / b for a, b in zip(n, series[den]))

    ms = lambda k: 1000 * med[k]
    out = {"forward_ms": ms("forward"), "forward_x2_ms": ms("forward_x2"),
           "sample_ms": ms("sample"), "sample_cfg_ms": ms("sample_cfg"), "decode_ms": ms("decode"),
           "ratio": ratio("sample", "forward"), "ratio_cfg": ratio("sample_cfg", "forward_x2"),
           "ratio_no_decode": ratio("sample", "forward", minus="decode"),
           "ratio_cfg_no_decode": ratio("sample_cfg", "forward_x2", minus="decode"),
           "backbone_ms": ms("backbone"), "steps_ms": ms("sample_steps"),
           "steps_ratio": ratio("sample_steps", "backbone"), "steps_ratio_cfg": ratio("sample_cfg_steps", "backbone_x2"),
           "head_share": ratio("sample_head", "sample"), "head_share_cfg": ratio("sample_cfg_head", "sample_cfg"),
           "rest_ms": 1000 * statistics.median(s - h - b for s, h, b in zip(
               series["sample"], series["sample_head"], series["sample_steps"]))}
    if "head_eval_alone" in series:  # one head evaluation inside sampling vs the head alone on the same batch
        out["head_eval_in_sampling_ms"] = 1000 * med["sample_head"] / med["sample_head_calls"]
        out["head_eval_alone_ms"] = ms("head_eval_alone") / num_scales
    return out


def train_throughput(model, data, dev, repeats: int, batch: int = TRAIN_BATCH) -> float:
    """Training images/s: forward + backward + AdamW step on a batch of real images (median step time)."""
    m = trainable_copy(model)
    opt = torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=1e-4)
    x, y = data.x_train[:batch].to(dev), data.y_train[:batch].to(dev)

    def step():
        opt.zero_grad(set_to_none=True)
        m(x, y)["loss"].backward()
        opt.step()
    step()
    return batch / statistics.median(_timed(step, dev) for _ in range(repeats))


def main(argv=None) -> list[dict]:
    p = argparse.ArgumentParser(prog="python -m compare.bench", description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="small model, few repeats (seconds)")
    p.add_argument("--device", default=None, help="cpu, cuda, ... (default: CUDA when available)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--batch", type=int, default=50, help="batch of the forward vs sampling comparison")
    p.add_argument("--repeats", type=int, default=None, help="timed rounds (default 7; --quick 2)")
    p.add_argument("--steps", type=int, default=PAPER_SOLVER["steps"],
                   help=f"steps per scale of FlowAR's sampler (default {PAPER_SOLVER['steps']}: the release's)")
    p.add_argument("--compile", action="store_true", help="also measure with torch.compile (slow to start)")
    p.add_argument("--arms", nargs="+", choices=list(ARMS), default=list(DEFAULT_ARMS),
                   help="arms to measure (default: " + " ".join(DEFAULT_ARMS) + ")")
    a = p.parse_args(argv)
    for name in ("batch", "steps", "repeats", "threads"):
        v = getattr(a, name)
        if v is not None and v < 1:
            p.error(f"--{name} must be >= 1, got {v}")
    try:
        dev = pick_device(a.device)
    except ValueError as e:
        p.error(str(e))
    if a.threads:
        torch.set_num_threads(a.threads)
    repeats = a.repeats or (2 if a.quick else 7)
    data = load_digits(side=16, seed=0)
    width, depth, heads = (64, 2, 2) if a.quick else (128, 4, 4)
    backbone = BackboneConfig.for_images(data.side, data.num_classes, 8, width=width, depth=depth, heads=heads)
    steps = min(a.steps, 4) if a.quick else a.steps
    for arm in a.arms:  # the sampling batches (--batch, 256 for ms/img) and the training batch must fit, first
        try:
            memory_estimate(arm_configs(arm, data, backbone, CompareConfig()), TRAIN_BATCH,
                            max(a.batch, *PER_IMAGE_BATCHES), sample_name="--batch").check()
        except ValueError as e:
            p.error(f"arm {arm}: {e}")
    dev_name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"device {dev} ({dev_name}), torch {torch.__version__}, backbone {width}/{depth}/{heads}, batch {a.batch}, "
          f"FlowAR's sampler at {steps} steps per scale, medians of {repeats} after a warm-up", file=sys.stderr)
    rows = []
    for compile_ in ([False, True] if a.compile else [False]):
        for arm in a.arms:
            try:
                r = measure_arm(arm, data, backbone, dev, a.batch, repeats, steps, compile_)
            except Exception as e:  # torch.compile needs a working compiler toolchain for the device
                if not compile_:
                    raise
                print(f"compile: {arm} failed ({type(e).__name__}: {str(e).splitlines()[0][:200]})", file=sys.stderr)
                continue
            r["compile"] = compile_
            rows.append(r)
    print_table(rows)
    return rows


def print_table(rows: list[dict]) -> None:
    f = lambda v: "-" if v is None else f"{v:.3g}"  # noqa: E731
    print("| arm | compile | forward ms | sample ms | sample / forward (w/o decode) | forward x2 ms | sample cfg ms "
          "| cfg ratio (w/o decode) | decode ms | backbone steps / pass ms | steps / pass (cfg) | rest ms "
          "| head share (cfg) | head eval in sampling / alone ms | ms/img b1 | b50 | b256 | train img/s |")
    print("|" + "---|" * 18)
    for r in rows:
        he = (f"{f(r['head_eval_in_sampling_ms'])} / {f(r['head_eval_alone_ms'])}"
              if "head_eval_alone_ms" in r else "-")
        m = r["ms_per_img"]
        print(f"| {r['arm']} | {r['compile']} | {f(r['forward_ms'])} | {f(r['sample_ms'])} | {f(r['ratio'])} "
              f"({f(r['ratio_no_decode'])}) | {f(r['forward_x2_ms'])} | {f(r['sample_cfg_ms'])} | {f(r['ratio_cfg'])} "
              f"({f(r['ratio_cfg_no_decode'])}) | {f(r['decode_ms'])} | {f(r['steps_ms'])} / {f(r['backbone_ms'])} "
              f"| {f(r['steps_ratio'])} ({f(r['steps_ratio_cfg'])}) | {f(r['rest_ms'])} "
              f"| {f(r['head_share'])} ({f(r['head_share_cfg'])}) | {he} | {f(m[1])} | {f(m[50])} | {f(m[256])} "
              f"| {f(r.get('train_img_per_s'))} |")


if __name__ == "__main__":
    main()
