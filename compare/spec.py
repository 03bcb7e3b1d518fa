"""The run spec: one TOML file with everything ``python -m compare`` runs (data, seeds, budgets, backbone,
and per arm: on/off, generator-config overrides, sampler sweep).

:func:`default_spec_text` is the full default spec with a comment per key (the harness's built-in sampler
tables written out); :func:`load_spec` parses and validates a spec (every bad key or value one line naming
its dotted path, all raised together as one ``ValueError`` before anything runs; missing keys take the
defaults); :func:`spec_to_config_kwargs` turns it into :class:`~compare.config.CompareConfig` keywords;
:func:`merge_cli` lays the command-line flags the user gave on top; :func:`dump_spec` writes a spec back
in the default's commented layout (``dump_spec(load_spec(default_spec_text())) == default_spec_text()``).
TOML has no null: ``""``, ``0`` and ``"auto"`` stand for "none / the default" where a comment says so.
"""
from __future__ import annotations

import dataclasses
import difflib
import json
import re
import sys
import textwrap
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10: the same parser, as a package
    import tomli as tomllib

from .arms import ARMS, DEFAULT_ARMS, STAGES, arm_configs, budgets, sampler_rows
from .config import CompareConfig, describe, layered
from .metrics.evaluate import NETWORKS


@dataclasses.dataclass(frozen=True)
class Key:
    """A scalar spec key ``section.name`` holding CompareConfig's ``field`` (described once, in the field's
    metadata), or with ``entry`` the value at that place in a mapping field (a family's budget stage, a
    feature network's weights; described by ``doc``, the registry entry's words); ``none`` is the TOML value
    that stands for the field's ``None`` (TOML has no null)."""
    section: str
    name: str
    field: str
    none: object = None
    entry: tuple[str, ...] = ()
    doc: str = ""

    @property
    def path(self) -> str:
        return f"{self.section}.{self.name}"

    @property
    def comment(self) -> str:
        return (self.doc or describe(self.field)) + ("" if self.none is None else f"; {_toml(self.none)} = none")

    @property
    def default(self):
        value = getattr(CompareConfig(), self.field)
        for e in self.entry:
            value = value.get(e)
        return self.none if value is None else value

    def put(self, kw: dict, value) -> None:
        """Set this key's ``value`` in CompareConfig keywords ``kw`` (an entry's None: left out)."""
        if not self.entry:
            kw[self.field] = value
        elif value is not None:
            *up, last = self.entry
            place = kw.setdefault(self.field, {})
            for e in up:
                place = place.setdefault(e, {})
            place[last] = value


SECTIONS = {
    "data": "the images and the real reference the samples are scored against",
    "run": "seeds, sample counts, device and feature networks",
    "train": "training budgets (optimizer steps) and batches, the same recipe for every arm",
    "eval": "sampling and cost-measurement batches, FlowAR's guidance, and how images are scored",
    "backbone": "the scale-wise transformer every arm shares",
}


def keys() -> tuple[Key, ...]:
    """Every scalar spec key, the registries' among them (``run.<network>`` per feature network,
    ``train.<stage>_steps`` per family budget stage): read when called, so an entry added later has its keys."""
    return (
        Key("data", "spec", "dataset"), Key("data", "side", "side", none=0), Key("data", "split_seed", "split_seed"),
        Key("data", "reference", "reference"), Key("data", "reference_stats", "reference_stats", none=""),
        *(Key("run", f, f) for f in ("out", "seed", "seeds", "samples")), Key("run", "device", "device", none="auto"),
        Key("run", "precision", "precision"), Key("run", "compile", "compile"),
        *(Key("run", n, "networks", none="", entry=(n,), doc=f"{net.doc} (none: off)") for n, net in NETWORKS.items()),
        *(Key("train", key, "train_steps", entry=(b.name, stage), doc=f"training steps of {doc}")
          for b in budgets().values() for key, stage, doc in zip(b.keys, STAGES, b.docs)),
        *(Key("train", f, f) for f in ("classifier_steps", "batch_size", "ae_batch_size")),
        *(Key("eval", f, f) for f in ("sample_batch", "cost_batch", "cost_repeats", "throughput_batch", "quantize")),
        Key("eval", "kid_subset_size", "kid_subset_size", none=0), Key("eval", "flowar_cfg", "flowar_cfg"),
        *(Key("backbone", f, f) for f in ("width", "depth", "heads", "latent_channels", "coder")),
    )


def _gen_config_class(arm: str):
    return ARMS[arm].family.config


def _nested(arm: str) -> list[str]:
    """Generator-config fields that are configs themselves (autoencoder, backbone): not overridable here."""
    return [f.name for f in dataclasses.fields(_gen_config_class(arm)) if dataclasses.is_dataclass(f.default_factory)]


def override_fields(arm: str) -> list[str]:
    """The generator-config fields ``arms.<arm>.overrides`` may set."""
    return [f.name for f in dataclasses.fields(_gen_config_class(arm)) if f.name not in _nested(arm)]


def sampler_keywords(arm: str) -> list[str]:
    """The sampling keywords a row of ``arms.<arm>.samplers`` may set (the family's sampling config fields)."""
    return [f.name for f in dataclasses.fields(ARMS[arm].family.sampling)]


def _plain(value):
    """Tuples as lists (TOML arrays)."""
    return [_plain(v) for v in value] if isinstance(value, (list, tuple)) else value


def _tuples(value):
    """TOML arrays back as tuples (the harness's sampler tables hold tuples, e.g. cfg_interval)."""
    return tuple(_tuples(v) for v in value) if isinstance(value, (list, tuple)) else value


def _ordered(arm: str, kw: dict) -> dict:
    """Sampling keywords in the order of the model's signature (solver and steps before guidance)."""
    order = sampler_keywords(arm)
    return dict(sorted(kw.items(), key=lambda item: order.index(item[0]) if item[0] in order else len(order)))


def default_spec() -> dict:
    """The default spec as data: CompareConfig's defaults and the sweeps the harness runs by default."""
    cfg = CompareConfig()
    spec = {section: {k.name: k.default for k in keys() if k.section == section} for section in SECTIONS}
    spec["arms"] = {arm: {"enabled": arm in DEFAULT_ARMS, "overrides": {},
                          "samplers": [{"label": label, **_plain(_ordered(arm, kw))}
                                       for label, kw in sampler_rows(arm, cfg)]}
                    for arm in ARMS}
    return spec


# ----------------------------------------------------------------------------- writing

def _toml(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)  # float reprs ('1.0', '1e-05', 'inf') are TOML floats
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False).replace("\x7f", "\\u007f")
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(map(_toml, value)) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{_toml_key(k)} = {_toml(v)}" for k, v in value.items()) + " }" if value else "{}"
    raise TypeError(f"no TOML form for {value!r}")


def _toml_key(key: str) -> str:
    return key if re.fullmatch(r"[A-Za-z0-9_-]+", key) else json.dumps(key, ensure_ascii=False)


def _comment(text: str) -> list[str]:
    return ["# " + line for line in textwrap.wrap(text, 108, break_on_hyphens=False)]


def dump_spec(spec: dict) -> str:
    """``spec`` (as :func:`load_spec` returns it) as commented TOML, in :func:`default_spec_text`'s layout."""
    lines = ["# Run spec of python -m compare (--config FILE; --print-config prints this default). Every key is",
             "# optional (a missing one takes the default shown here); command-line flags override the spec."]
    for section, doc in SECTIONS.items():
        lines += ["", *_comment(doc), f"[{section}]"]
        for k in (k for k in keys() if k.section == section):
            lines += [*_comment(k.comment), f"{k.name} = {_toml(spec[section][k.name])}"]
    lines += ["", *_comment("One table per arm. Arms run by default: " + ", ".join(DEFAULT_ARMS) + ".")]
    for arm in ARMS:
        table = spec["arms"][arm]
        lines += ["", *_comment(ARMS[arm].doc), f"[arms.{_toml_key(arm)}]",
                  "# true: train and compare this arm", f"enabled = {_toml(table['enabled'])}",
                  *_comment(f"{_gen_config_class(arm).__name__} fields to override "
                            f"({', '.join(override_fields(arm))}); {{}} = none"),
                  f"overrides = {_toml(table['overrides'])}",
                  *_comment("sampler sweep: one row per setting, a distinct label and sampling keywords ("
                            + ", ".join(sampler_keywords(arm)) + ")"), "samplers = ["]
        lines += [f"    {_toml(row)}," for row in table["samplers"]] + ["]"]
    return "\n".join(lines) + "\n"


def default_spec_text() -> str:
    """The full default spec as commented TOML (what ``--print-config`` prints)."""
    return dump_spec(default_spec())


# ----------------------------------------------------------------------------- reading and checking

def _unknown(path: str, allowed, hints: dict | None = None) -> str:
    """``unknown key PATH (did you mean X?)``; ``hints`` maps more names to the suggestion shown for them."""
    names = {a: a for a in allowed} | (hints or {})
    key = path.rsplit(".", 1)[-1].split("]")[-1]
    match = difflib.get_close_matches(key, list(names), n=1)
    return f"unknown key {path} " + (f"(did you mean {names[match[0]]}?)" if match else
                                     f"(allowed: {', '.join(allowed)})")


def _type_error(path: str, value, like) -> str | None:
    if isinstance(like, bool):
        ok, what = isinstance(value, bool), "true or false"
    elif isinstance(like, int):
        ok, what = isinstance(value, int) and not isinstance(value, bool), "an int"
    elif isinstance(like, float):
        ok, what = isinstance(value, (int, float)) and not isinstance(value, bool), "a number"
    else:
        ok, what = isinstance(value, str), "a string"
    return None if ok else f"{path} must be {what}, got {value!r}"


def _read_samplers(arm: str, path: str, rows, errors: list) -> None:
    keywords = sampler_keywords(arm)
    if not isinstance(rows, list) or not rows or not all(isinstance(r, dict) for r in rows):
        errors.append(f"{path} must be a non-empty array of tables ({{ label = ..., <sampling keywords> }}), "
                      f"got {rows!r}")
        return
    labels = []
    for i, row in enumerate(rows):
        label = row.get("label")
        if not isinstance(label, str) or not label:
            errors.append(f"{path}[{i}].label must be a non-empty string, got {label!r}")
        elif label in labels:
            errors.append(f"{path}[{i}].label {label!r} repeats an earlier row's label")
        labels.append(label)
        errors += [_unknown(f"{path}[{i}].{k}", keywords) for k in row if k != "label" and k not in keywords]


def _read_arm(arm: str, table: dict, into: dict, errors: list) -> None:
    fields, nested = override_fields(arm), _nested(arm)
    for key, value in table.items():
        path, n = f"arms.{arm}.{key}", len(errors)
        if key not in into:
            errors.append(_unknown(path, list(into), {f: f"overrides.{f}" for f in fields}))
        elif key == "enabled":
            errors += filter(None, [_type_error(path, value, True)])
        elif key == "samplers":
            _read_samplers(arm, path, value, errors)
        elif not isinstance(value, dict):
            errors.append(f"{path} must be a table of {_gen_config_class(arm).__name__} fields, got {value!r}")
        else:
            errors += [f"{path}.{k} is a nested config, not overridable here (the backbone's size is in [backbone])"
                       if k in nested else _unknown(f"{path}.{k}", fields) for k in value if k not in fields]
        if len(errors) == n:
            into[key] = value


def _with_path(msg: str, paths: dict, fallback: str | None = None) -> str:
    """A config's error message with its leading field name replaced by the spec path (ranges in words)."""
    msg = re.sub(r"must lie in \[([^,\]]+), inf\)", r"must be >= \1", msg)
    msg = re.sub(r"must lie in \(([^,\]]+), inf\)", r"must be > \1", msg)
    head = re.match(r"[A-Za-z_][\w.]*", msg)
    if head and head.group(0) in paths:
        return paths[head.group(0)] + msg[head.end():]
    return f"{fallback}: {msg}" if fallback else msg


def _value_errors(spec: dict) -> list[str]:
    """Values checked by the configs themselves: CompareConfig, the backbone and every arm's configs."""
    from nextscale.backbone import BackboneConfig
    from nextscale.data import load_digits

    kw = spec_to_config_kwargs(spec)
    if not kw["arms"]:
        return ["arms: no arm is enabled; set enabled = true in one of " + ", ".join(f"[arms.{a}]" for a in ARMS)]
    paths = {(k.name if k.entry else k.field): k.path for k in keys()} | \
        {f"samplers.{a}": f"arms.{a}.samplers" for a in ARMS}
    try:
        cfg = CompareConfig(**kw)
        data = load_digits(side=16)  # the override checks need an ImageData: the embedded one is instant
        backbone = BackboneConfig.for_images(data.side, data.num_classes, cfg.latent_channels, width=cfg.width,
                                             depth=cfg.depth, heads=cfg.heads)
    except ValueError as e:
        return [_with_path(str(e), paths | {"in_dim": "backbone.latent_channels"}, "backbone")]
    errors = []
    for arm in ARMS:
        over = (kw["arm_overrides"] or {}).get(arm, {})
        try:
            arm_configs(arm, data, backbone, dataclasses.replace(cfg, arm_overrides={arm: over}))
        except ValueError as e:
            base = f"arms.{arm}.overrides"
            errors.append(_with_path(str(e), {k: f"{base}.{k}" for k in over}, base))
    return errors


# a spec is a few kB of shallow TOML (the default is 14 kB, its deepest value 6 levels down: arms.<arm>.samplers,
# a row, a value, an array): more is not a spec (``/dev/zero``, a log), and deeper nesting would exhaust the
# parser's recursion (a RecursionError) or the code that walks it
SPEC_MAX_BYTES = 1 << 20
SPEC_MAX_DEPTH = 16


def read_toml(source: str | Path) -> tuple[dict, str]:
    """(the parsed TOML, what to call it in errors) of a spec: a path to a ``.toml`` file (a ``Path``, or a
    string without a newline), or TOML text (a string with one). Only a regular file of at most
    :data:`SPEC_MAX_BYTES` is read (a device, a pipe or a folder is refused without blocking), and nothing
    nested deeper than :data:`SPEC_MAX_DEPTH`; every problem is a ``ValueError`` naming the file."""
    import os
    import stat

    where = "the spec"
    if isinstance(source, Path) or "\n" not in source:
        where = f"the spec file {source}"
        try:  # O_NONBLOCK: opening a named pipe does not wait for a writer
            fd = os.open(source, os.O_RDONLY | os.O_NONBLOCK)
        except OSError as e:
            raise ValueError(f"cannot read {where}: {e.strerror or e}") from None
        try:
            mode = os.fstat(fd).st_mode
            if not stat.S_ISREG(mode):
                what = "a folder" if stat.S_ISDIR(mode) else "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) \
                    else "a named pipe" if stat.S_ISFIFO(mode) else "not a regular file"
                raise ValueError(f"{where} is {what}, not a spec file")
            data = b""
            while len(data) <= SPEC_MAX_BYTES and (block := os.read(fd, SPEC_MAX_BYTES + 1 - len(data))):
                data += block
        except OSError as e:
            raise ValueError(f"cannot read {where}: {e.strerror or e}") from None
        finally:
            os.close(fd)
        try:
            source = data.decode("utf-8")
        except UnicodeDecodeError as e:
            raise ValueError(f"{where} is not UTF-8 text (byte {e.start}: {e.reason}); save it as UTF-8") from None
    if len(source.encode("utf-8", "surrogatepass")) > SPEC_MAX_BYTES:
        raise ValueError(f"{where} is over {SPEC_MAX_BYTES >> 20} MB: not a run spec (the full default spec is "
                         f"{len(default_spec_text().encode()) // 1000} kB)")
    try:
        raw = tomllib.loads(source)
    except tomllib.TOMLDecodeError as e:
        raise ValueError(f"{where} is not valid TOML: {e}") from None
    except RecursionError:
        raw = None
    if raw is None or _depth(raw) > SPEC_MAX_DEPTH:
        raise ValueError(f"{where} nests arrays or tables more than {SPEC_MAX_DEPTH} deep: not a run spec")
    return raw, where


def _depth(value) -> int:
    """How deeply ``value`` nests lists and dicts (a scalar: 0), without recursion."""
    deepest, todo = 0, [(value, 0)]
    while todo:
        v, d = todo.pop()
        deepest = max(deepest, d)
        if d <= SPEC_MAX_DEPTH:  # deeper is refused anyway: no need to walk it all
            todo += [(x, d + 1) for x in (v.values() if isinstance(v, dict) else v if isinstance(v, list) else ())]
    return deepest


def load_spec(source: str | Path) -> dict:
    """Parse and check a spec (:func:`read_toml`). Returns the full spec (missing keys filled with the defaults);
    raises ``ValueError`` with one line per bad key or value, each naming its dotted path."""
    raw, _ = read_toml(source)
    spec, errors = default_spec(), []
    for section, body in raw.items():
        if section not in spec:
            errors.append(_unknown(section, list(spec)))
        elif not isinstance(body, dict):
            errors.append(f"{section} must be a table, got {body!r}")
        elif section == "arms":
            for arm, table in body.items():
                if arm not in ARMS:
                    errors.append(_unknown(f"arms.{arm}", list(ARMS)))
                elif not isinstance(table, dict):
                    errors.append(f"arms.{arm} must be a table, got {table!r}")
                else:
                    _read_arm(arm, table, spec["arms"][arm], errors)
        else:
            for name, value in body.items():
                path = f"{section}.{name}"
                err = _unknown(path, list(spec[section])) if name not in spec[section] else \
                    _type_error(path, value, spec[section][name])
                if err:
                    errors.append(err)
                else:
                    spec[section][name] = value
    errors = errors or _value_errors(spec)
    if errors:
        raise ValueError("\n".join(errors))
    return spec


def spec_to_config_kwargs(spec: dict) -> dict:
    """:class:`CompareConfig` keywords of a loaded spec. ``samplers`` holds only the sweeps that differ from
    the harness's built-in ones (so ``--quick``'s reduced sweep still applies to a default sweep),
    ``arm_overrides`` only the non-empty overrides; both are None when empty."""
    kw: dict = {}
    for k in keys():
        value = spec[k.section][k.name]
        k.put(kw, None if k.none is not None and value == k.none else value)
    arms, default = spec["arms"], CompareConfig()
    kw["arms"] = tuple(a for a in ARMS if arms[a]["enabled"])
    samplers = {}
    for arm in ARMS:
        rows = tuple((r["label"], {k: _tuples(v) for k, v in r.items() if k != "label"}) for r in arms[arm]["samplers"])
        if rows != tuple(sampler_rows(arm, default)):
            samplers[arm] = rows
    kw["samplers"] = samplers or None
    kw["arm_overrides"] = {a: dict(arms[a]["overrides"]) for a in ARMS if arms[a]["overrides"]} or None
    return kw


def overridden(source: str | Path, cfg: CompareConfig, flags=()) -> list[str]:
    """The values the spec at ``source`` sets that the final config ``cfg`` does not hold, leaving out the
    CompareConfig fields given as command-line flags (``flags``): spec values equal to the defaults, which give
    way to ``--quick`` and ``--preset`` (so a printed default spec changes nothing). Each as ``key = spec value
    (now value)``; a sampler sweep as ``arms.<arm>.samplers (now rows ...)``."""
    raw, _ = read_toml(source)
    lost = []
    for k in keys():
        table = raw.get(k.section)
        if not isinstance(table, dict) or k.name not in table or k.field in flags:
            continue
        have = getattr(cfg, k.field)
        for e in k.entry:
            have = have.get(e) if isinstance(have, dict) else None
        have = k.none if have is None else have
        if table[k.name] != have:
            lost.append(f"{k.path} = {_toml(table[k.name])} (now {_toml(have)})")
    for arm, table in (raw.get("arms") or {}).items():
        if arm in cfg.arms and isinstance(table, dict) and "samplers" in table and "samplers" not in flags:
            rows = [lbl for lbl, _ in sampler_rows(arm, cfg)]
            if [r.get("label") for r in table["samplers"]] != rows:
                lost.append(f"arms.{arm}.samplers (now rows {', '.join(rows)})")
    return lost


def merge_cli(spec_kwargs: dict, cli_overrides: dict) -> dict:
    """CompareConfig keywords: the spec's, with the command-line flags the user gave (``cli_overrides``,
    CompareConfig field names) winning. A ``head_width`` flag also beats the arms' head_width overrides."""
    merged = layered(spec_kwargs, cli_overrides)
    if cli_overrides.get("head_width") is not None and merged.get("arm_overrides"):
        over = {a: {k: v for k, v in o.items() if k != "head_width"} for a, o in merged["arm_overrides"].items()}
        merged["arm_overrides"] = {a: o for a, o in over.items() if o} or None
    return merged
