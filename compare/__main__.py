"""``python -m compare``: train VAR, FlowAR and FlowAR with an MLP head on the same backbone config and data,
over several training seeds, and write the report (means with 95% intervals, paired differences).

Settings are layered, each overriding the one before: the defaults, ``--quick``, ``--preset``, the run
spec (``--config FILE``; only its keys that differ from the defaults: one ``note:`` line lists the spec's
values that ``--quick`` or ``--preset`` replaced), then the flags given on the command line.
``--print-config`` prints the default spec with a comment per key."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from nextscale.cli import run_or_exit

from .arms import ARMS, DESIGNS, budgets
from .config import (CODER_NAMES, PRECISIONS, PRESET_DATA_KEYS, PRESETS, REFERENCES, CompareConfig, changed, describe,
                     every_budget, layered, preset)
from .harness import run
from .metrics.evaluate import NETWORKS, add_network_flags

# flags renamed: old -> new; the old one is refused with one line naming the new one (not left to argparse,
# whose prefix matching could take it for another flag)
RENAMED = {"--steps": "--train-steps"}


def _parser(suppress: bool = False) -> argparse.ArgumentParser:
    """The command's flags; ``suppress`` drops every default, so parsing returns only the flags given."""
    d = CompareConfig()
    p = argparse.ArgumentParser(prog="python -m compare", description=__doc__,
                                argument_default=argparse.SUPPRESS if suppress else None)

    def add(*names, default=None, **kw):
        p.add_argument(*names, **kw) if suppress else p.add_argument(*names, default=default, **kw)

    def opt(flag, name=None, extra="", **kw):
        """A flag for CompareConfig field ``name`` (default: the flag's name), described by the field."""
        name = name or flag[2:].replace("-", "_")
        value = getattr(d, name)
        shown = "none" if value is None else ",".join(value) if isinstance(value, tuple) else value
        text = describe(name).replace("%", "%%") + f" (default: {shown}{extra})"
        add(flag, default=value if kw.get("action") else None, help=text, **kw)

    opt("--data", "dataset")
    opt("--out")
    opt("--seed", type=int)
    opt("--seeds", type=int, extra="; --quick: 2")
    opt("--split-seed", type=int)
    opt("--arms", extra="; comma-separated, from " + ", ".join(ARMS))
    add("--design", choices=sorted(DESIGNS),
        help="a named set of arms instead of --arms: published = " + ",".join(DESIGNS["published"]) +
             "; attribution = " + ",".join(DESIGNS["attribution"]) + " (the arms that change one factor at a time "
             "from VAR to FlowAR, and the hybrid; default: none)")
    opt("--head-width", type=int)
    opt("--samples", type=int, extra="; --quick: 100")
    add("--train-steps", type=int, metavar="N", help="training steps of every family's generator, its autoencoder "
        "half (default: each family's own: " + ", ".join(f"{n} {s['generator']}/{s['autoencoder']}"
                                                          for n, s in d.train_steps.items()) + ")")
    for old in RENAMED:
        add(old, nargs="?", help=argparse.SUPPRESS)
    opt("--side", type=int)
    opt("--coder", choices=CODER_NAMES)
    add_network_flags(p)
    opt("--reference", choices=REFERENCES)
    opt("--reference-stats", metavar="NPZ")
    opt("--precision", choices=PRECISIONS)
    opt("--compile", action="store_true")
    opt("--sample-batch", type=int)
    opt("--flowar-cfg", type=float)
    opt("--device")
    add("--preset", choices=sorted(PRESETS),
        help="named settings for common data, sized for a GPU: cifar32 = 32x32 RGB folders such as CIFAR-10; "
             "imagenet256 = 256x256 RGB class folders on the releases' ldm coder (with --quick only its data "
             "settings apply; default: none)")
    add("--config", metavar="TOML", help="run spec: data, arms (overrides, sampler sweeps), budgets, seeds, "
        "feature networks, device ... (default: none; see --print-config)")
    add("--print-config", action="store_true", default=False,
        help="print the full default run spec (TOML, a comment per key) and exit")
    opt("--quick", action="store_true")
    return p


def _to_config_kwargs(given: dict) -> dict:
    """CompareConfig keyword arguments from the flags the user gave."""
    for old, new in RENAMED.items():
        if old[2:].replace("-", "_") in given:
            raise ValueError(f"{old} is now {new} (training steps; a sampler row's solver steps are its own "
                             f"'steps' key in the run spec)")
    kw = {("dataset" if k == "data" else k): v for k, v in given.items()
          if k not in ("train_steps", "arms", "design", "preset", "quick", "config", "print_config", *NETWORKS)}
    if any(n in given for n in NETWORKS):
        kw["networks"] = {n: given[n] for n in NETWORKS if n in given}
    if "design" in given:
        if "arms" in given:
            raise ValueError("give --arms or --design, not both")
        kw["arms"] = DESIGNS[given["design"]]
    if "arms" in given:
        kw["arms"] = tuple(x.strip() for x in given["arms"].split(",") if x.strip())
    if "train_steps" in given:
        s = given["train_steps"]
        if s < 1:
            raise ValueError(f"--train-steps must be >= 1, got {s}")
        kw["train_steps"] = every_budget(max(1, s // 2), s)
    return kw


def _spec_kwargs(path: str) -> dict:
    """CompareConfig keywords of the run spec at ``path`` that differ from the defaults."""
    from .spec import load_spec, spec_to_config_kwargs

    return changed(spec_to_config_kwargs(load_spec(Path(path))))


def parse(argv=None) -> CompareConfig:
    _parser().parse_args(argv)  # usage errors (and --help) with the defaults shown
    given = vars(_parser(suppress=True).parse_args(argv))
    if given.get("print_config"):
        from .spec import default_spec_text
        print(default_spec_text(), end="")
        raise SystemExit(0)
    named = preset(given["preset"]) if "preset" in given else {}
    if given.get("quick"):
        named = {k: v for k, v in named.items() if k in PRESET_DATA_KEYS}

    def config():
        from .spec import merge_cli, overridden

        spec = _spec_kwargs(given["config"]) if "config" in given else {}
        flags = _to_config_kwargs(given)
        kw = merge_cli(layered(named, spec), flags)
        cfg = CompareConfig.quick_config(**kw) if given.get("quick") else CompareConfig(**kw)
        lost = overridden(given["config"], cfg, set(flags)) if "config" in given else []
        if lost:  # spec values equal to the defaults gave way to --quick / --preset: said, not silent
            by = " and ".join(([f"--preset {given['preset']}"] if "preset" in given else [])
                              + (["--quick"] if given.get("quick") else [])) or "the defaults"
            print(f"note: the spec's values equal to the defaults give way to {by}: {'; '.join(lost)}; give one "
                  f"as a flag to keep it", file=sys.stderr)
        return cfg
    return run_or_exit(config)


def main(argv=None) -> None:
    cfg = parse(argv)
    res = run_or_exit(run, cfg)  # bad data or options are found before any training (see harness.run)
    if not res:  # a torchrun rank > 0: rank 0 reports
        return
    from .report import main_table
    print(main_table(res))
    print(f"\nreport: {cfg.out}/report.md  ({res['timings_s']['total']:.0f} s)", file=sys.stderr)


if __name__ == "__main__":
    main()
