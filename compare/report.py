"""results.json, report.md and the plots of a comparison run."""
from __future__ import annotations

import json
from pathlib import Path

from nextscale.checkpoint import atomic_path, write_text

from .arms import ANCHOR, ARMS, CHAIN
from .stats import fmt_interval


def _name(arm: str) -> str:
    """The arm's name in plots (results from an arm no longer registered keep their key)."""
    return ARMS[arm].label if arm in ARMS else arm


def _color(arm: str) -> str | None:
    return ARMS[arm].color if arm in ARMS else None


def _fmt(v, digits=3):
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.{digits}g}" if abs(v) < 1e4 else f"{v:.3e}"
    return str(v)


def _iv(s: dict, scale: float = 1.0) -> str:
    return fmt_interval(s, scale=scale)


def main_table(results: dict) -> str:
    """Quality against cost for every model and sampler, and the floor: mean ± 95% half-width over seeds."""
    head = ("| model | sampler | FID | KID x1e3 | class acc | precision | recall | backbone fwd | head NFE "
            "| GFLOPs/img | ms/img (batch {b}, {dev}) | latency ms (batch 1) | throughput img/s (batch) | peak MB |")
    cost_b = results["config"]["cost_batch"]
    dev = f"{results['device']} {results.get('precision', 'fp32')}" + (" compiled" if results.get("compiled") else "")
    other = [sp["name"] for sp in results.get("feature_spaces", []) if sp["name"] != "classifier"]
    head = head.replace("| FID | KID x1e3 |", "| FID (classifier) | KID x1e3 |" if other else "| FID | KID x1e3 |")
    head += "".join(f" FID ({n}) | KID x1e3 ({n}) | precision ({n}) | recall ({n}) |" for n in other)

    def extra(r):
        return "".join(f" {_iv(r[f'fid_{n}'])} | {_iv(r[f'kid_{n}'], 1e3)} | {_iv(r[f'precision_{n}'])} "
                       f"| {_iv(r[f'recall_{n}'])} |" for n in other)
    lines = [head.format(b=cost_b, dev=dev), "|" + "---|" * (14 + 4 * len(other))]
    for model, sampler, f in _real_rows(results):
        lines.append(f"| {model} | {sampler} | {_iv(f['fid'])} | {_iv(f['kid'], 1e3)} | {_iv(f['class_acc'])} "
                     f"| {_iv(f['precision'])} | {_iv(f['recall'])} | - | - | - | - | - | - | - |" + extra(f))
    for r in results["rows"]:
        lines.append(
            f"| {r['model']} | {r['sampler']} | {_iv(r['fid'])} | {_iv(r['kid'], 1e3)} | {_iv(r['class_acc'])} "
            f"| {_iv(r['precision'])} | {_iv(r['recall'])} | {r['backbone_forwards']} | {_fmt(r['head_nfe']['mean'])} "
            f"| {_fmt(r['flops_per_image_exact'] / 1e9)} | {_iv(r['ms_per_image'])} | {_fmt(r['latency_ms'])} "
            f"| {_fmt(r['throughput_img_per_s'])} ({r['throughput_batch']}) "
            f"| {_iv(r['peak_mem_bytes'], 1 / 2**20)} |" + extra(r))
    return "\n".join(lines)


def _real_rows(results: dict) -> list[tuple[str, str, dict]]:
    """The floor (real images scored like samples) and each arm's autoencoder ceiling (its reconstructions
    of the same images): rows no generator of that arm can be expected to beat."""
    n = results["floor_samples"]
    rows = [(f"real {results.get('floor_split', 'train')}", f"(floor, n={n})", results["floor"])]
    return rows + [(f"{arm} autoencoder", "(ceiling: reconstructions of the floor's images)", m["ceiling"])
                   for arm, m in results["models"].items() if "ceiling" in m]


def more_metrics_table(results: dict) -> str:
    """FID at n and extrapolated to infinite n, density and coverage (and the Inception Score where there
    are Inception features), in every feature space: mean ± 95% half-width over seeds."""
    spaces = [sp["name"] for sp in results.get("feature_spaces", [{"name": "classifier"}])]
    cols = []
    for n in spaces:
        sfx = "" if n == "classifier" else f"_{n}"
        cols += [(f"FID ({n})", f"fid{sfx}"), (f"FID_inf ({n})", f"fid_inf{sfx}"), (f"density ({n})", f"density{sfx}"),
                 (f"coverage ({n})", f"coverage{sfx}")]
        cols += [(f"IS ({n})", f"is{sfx}")] if any(f"is{sfx}" in r for r in results["rows"]) else []
    rows = _real_rows(results) + [(r["model"], r["sampler"], r) for r in results["rows"]]
    cols += [("reconstruction MSE", "recon_mse")]
    lines = ["| model | sampler | " + " | ".join(c for c, _ in cols) + " |", "|---|---|" + "---|" * len(cols)]
    for model, sampler, r in rows:
        lines.append(f"| {model} | {sampler} | " + " | ".join(_iv(r[k]) if k in r else "-" for _, k in cols) + " |")
    return "\n".join(lines)


def comparisons_table(results: dict) -> str:
    lines = ["| comparison | A | B | FID A - B | recall A - B | ms/img A - B | FID difference resolved? |",
             "|---|---|---|---|---|---|---|"]
    for c in results["comparisons"]:
        d = c["fid_diff"]
        verdict = ("n/a (one seed)" if d["half"] is None else
                   ("yes: A lower" if d["hi"] < 0 else "yes: B lower") if d["resolved"] else "no (interval holds 0)")
        lines.append(f"| {c['what']} | {c['a']['model']} [{c['a']['sampler']}] | {c['b']['model']} "
                     f"[{c['b']['sampler']}] | {_iv(d)} | {_iv(c['recall_diff'])} | {_iv(c['ms_per_image_diff'])} "
                     f"| {verdict} |")
    return "\n".join(lines)


def attribution_section(results: dict) -> list[str]:
    """How much of VAR - FlowAR each factor explains, where the factor's arms ran: paired differences of
    best rows and at matched ms/img, and one sentence per factor that states only what the interval
    resolves; where the chain var -> ... -> flowar ran, that its parts add up to the total."""
    att = results.get("attribution") or []
    if len(att) < 2:
        return []
    lines = ["## Attribution: one factor at a time", "",
             "| factor | A [best row] | B [best row] | FID A - B | recall A - B | B at A's ms/img "
             "| FID A - B there |",
             "|---|---|---|---|---|---|---|"]
    for f in att:
        m = f["matched"]
        lines.append(f"| {f['factor']} | {f['a']['model']} [{f['a']['sampler']}] | {f['b']['model']} "
                     f"[{f['b']['sampler']}] | {_iv(f['fid_diff'])} | {_iv(f['recall_diff'])} | "
                     f"[{m['b']['sampler']}] | {_iv(m['fid_diff'])} |")
    said = [f"{f['factor']}: {'resolved' if f['fid_diff']['resolved'] else 'not resolved'}" for f in att]
    chain = [f for f in att if (f["a"]["model"], f["b"]["model"]) in set(zip(CHAIN, CHAIN[1:]))]
    if len(chain) == len(CHAIN) - 1:
        adds = (f"The {len(chain)} steps of the chain {' -> '.join(CHAIN)} change one factor each; at best rows "
                f"their differences add up to the total, seed by seed.")
    else:
        adds = f"The chain {' -> '.join(CHAIN)} did not run whole, so the factors need not add up to the total."
    return lines + ["", "In FID at best rows, paired over seeds: " + "; ".join(said) + ". " + adds, ""]


def reading(results: dict) -> list[str]:
    """Sentences that state only what the intervals resolve."""
    out = []
    for c in results["comparisons"]:
        if c["what"] != "best vs best":
            continue
        d = c["fid_diff"]
        a, b = f"{c['a']['model']} ({c['a']['sampler']})", f"{c['b']['model']} ({c['b']['sampler']})"
        if d["half"] is None:
            out.append(f"- {a} vs {b}: FID difference {_fmt(d['mean'])} from one seed; no interval, no claim.")
        elif d["resolved"]:
            lower = a if d["hi"] < 0 else b
            out.append(f"- {a} vs {b}: FID difference {_iv(d)}; resolved: {lower} has the lower FID.")
        else:
            out.append(f"- {a} vs {b}: FID difference {_iv(d)}; not resolved at {len(results['seeds'])} seeds.")
    return out


def param_note(models: dict) -> str:
    totals = {n: m["params_generator"] for n, m in models.items()}
    lo, hi = min(totals.values()), max(totals.values())
    if hi <= 1.15 * lo:
        return f"Trainable parameters of the arms are within 15% of each other ({lo:,} to {hi:,})."
    return (f"Trainable parameters differ by more than 15% ({lo:,} to {hi:,}, ratio {hi / lo:.2f}): the arms keep "
            "their papers' heads (VAR a linear layer; FlowAR a transformer as wide as the backbone, as the paper's "
            "S model; MAR's MLP), so the heads' sizes are part of what is compared. `--head-width` shrinks the "
            "FlowAR heads to match parameters.")


def write_report(results: dict, out: Path) -> None:
    """results.json, the plots and report.md (the tables, the paired differences, budgets, plots, grids)."""
    out = Path(out)
    write_text(out / "results.json", json.dumps(results, indent=2, default=str))
    plots = write_plots(results, out)
    md = _intro(results) + [
        main_table(results),
        "",
        "## More metrics",
        "",
        more_metrics_table(results),
        "",
        "FID falls with the number of samples n even between two samples of one distribution; FID_inf is its "
        "value extrapolated to infinite n (Chong and Forsyth 2020), given where n is at least the feature "
        "dimension ('-' elsewhere). Density near 1 and coverage near the floor's mean a sample as faithful and as diverse as real "
        "images (Naeem et al. 2020).",
        "",
        *attribution_section(results),
        "## Differences between arms (paired over seeds)",
        "",
        comparisons_table(results),
        "",
        "Reading (only what the intervals resolve):",
        "",
        *reading(results),
        "",
        *_budgets(results["models"]),
        "## Plots", "", *[f"![{p.stem}]({p.name})" for p in plots],
        "", "## Samples (rows: classes; first seed)", "",
        *[f"- {r['model']} [{r['sampler']}]: [{r['grid']}]({r['grid']})" for r in results["rows"]],
        "", "## Protocol of each row", "",
        *[f"- {r['model']} [{r['sampler']}]: {r['protocol']}" for r in results["rows"] if "protocol" in r],
        "", "Stage times (s): " + ", ".join(f"{k} {v}" for k, v in results["timings_s"].items()), "",
    ]
    write_text(out / "report.md", "\n".join(md))


def _intro(results: dict) -> list[str]:
    """What was run, on what, and how every cell is measured."""
    m, cfg, bb, n_seeds = results["models"], results["config"], results["backbone"], len(results["seeds"])
    return [
        "# VAR vs FlowAR on one backbone",
        "",
        f"Data: **{results['data']['name']}** ({results['data']['train']} train / {results['data']['test']} test, "
        f"{results['data']['side']}x{results['data']['side']}, {results['data']['classes']} classes, split seed "
        f"{results['data']['split_seed']}), training seeds {results['seeds']}, device {results['device']} "
        f"({results['device_name']}, {results.get('precision', 'fp32')}"
        f"{', compiled' if results.get('compiled') else ''}), torch {results['versions']['torch']}, nextscale "
        f"{results['versions']['nextscale']}.",
        "",
        f"Shared backbone config: width {bb['width']}, depth {bb['depth']}, heads {bb['heads']}, latent channels "
        f"{bb['in_dim']}, {cfg.get('coder', 'conv')} coder for every autoencoder; each arm keeps its paper's scale "
        "schedule: " + "; ".join(
            f"{n} {tuple(i['schedule'])} (L = {sum(s * s for s in i['schedule'])})" for n, i in m.items()) + ". "
        "Arms: " + "; ".join(f"`{n}` ({ARMS[n].doc})" for n in m if n in ARMS) + ". FlowAR rows use FlowAR's "
        f"guidance: w = {cfg['flowar_cfg']} (FlowAR's cfg {1 + cfg['flowar_cfg']:g}) ramped linearly from 0 at "
        "scale 1, off for the noisiest 10% of t (rows labelled `w 0.5` use w = 0.5; a shortcut step [t, t + d] "
        "is guided where it meets t >= 0.1).",
        "",
        f"Every cell is mean ± 95% half-width over {n_seeds} training seeds ({results['interval']}). Each seed "
        f"trains every arm anew and draws {cfg['samples']} class-balanced samples per row, scored against the "
        + (f"{results['data']['test']} held-out real images" if cfg.get("reference", "test") == "test" else
           f"{results['data']['train']} real train images (the reference is the train split)")
        + " in the feature space of a classifier trained on the "
        f"real train split (test accuracy {_fmt(results['floor']['test_class_acc'])})"
        + "".join(_space_line(sp) for sp in results.get("feature_spaces", []) if sp["name"] != "classifier")
        + f". The floor row scores a fresh subset of {results['floor_samples']} real "
        f"{results.get('floor_split', 'train')} images per seed the same way (disjoint from the reference): no "
        "model can be expected to beat it. FID is "
        "biased at small N; compare rows at the same N, and read KID (unbiased) beside it. Cost per image: "
        f"ms/img at batch {cfg['cost_batch']} on every seed (spread over seeds), latency at batch 1 (median of "
        "3 after a warm-up) and throughput at the largest batch that fits up to "
        f"{cfg['throughput_batch']}, both on the first seed's weights; head NFE counts a guided evaluation as 2; "
        "FLOPs from torch.utils.flop_counter (matmuls, convs, attention).",
        "",
    ]


def _space_line(sp: dict) -> str:
    per = sp.get("reference_per_metric")
    if not per or len(set(per.values())) == 1:
        return f"; and in {sp['name']} space against {sp['reference']}"
    return (f"; and in {sp['name']} space, FID against {per['fid']}, KID and precision/recall against "
            f"{per['kid']}")


def _budgets(m: dict) -> list[str]:
    """Parameters, training FLOPs and time, held-out losses and backbone FLOPs per scale, per arm."""
    md = ["## Budgets", "", param_note(m), "",
          "| model | trainable params (backbone + head = total) | autoencoder params | train GFLOPs/img (fwd + bwd) "
          "| generator train s | reused checkpoints | train loss (first seed) | test loss (first seed) |",
          "|---|---|---|---|---|---|---|---|"]
    for name, info in m.items():
        first = info["per_seed"][0]
        md.append(f"| {name} | {info['params_backbone']:,} + {info['params_head']:,} = {info['params_generator']:,} "
                  f"| {info['params_autoencoder']:,} | {_fmt(info['train_flops_per_image'] / 1e9)} "
                  f"| {_iv(info['train_seconds'])} | {[p['reused_checkpoints'] for p in info['per_seed']]} "
                  f"| {_fmt(first['train_loss']['loss'])} | {_fmt(first['test_loss']['loss'])} |")
    md += ["", "Per-scale held-out loss (test split, first seed):", ""]
    for name, info in m.items():
        parts = {k: v for k, v in info["per_seed"][0]["test_loss"].items() if k != "loss"}
        md.append(f"- {name}: " + ", ".join(f"{k} {_fmt(v)}" for k, v in parts.items()))
    return md + ["", "Backbone GFLOPs per KV-cached scale step (one image): " + "; ".join(
        f"{n} " + ", ".join(_fmt(f / 1e9) for f in info["backbone_flops_per_scale"]) for n, info in m.items()), ""]


def _err(s: dict) -> float:
    return 0.0 if s["half"] is None else s["half"]


def pareto(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """The points no other point beats in both cost (x) and FID (y), sorted by cost."""
    front, best = [], float("inf")
    for x, y in sorted(points):
        if y < best:
            front.append((x, y))
            best = y
    return front


# the plots write_plots draws, in its order: FID against each cost, precision against recall, cost per scale
PLOTS = ("fid_vs_nfe.png", "fid_vs_gflops.png", "fid_vs_time.png", "precision_recall.png", "per_scale_cost.png")
# every file write_report writes (the harness checks each can be made before a run, see harness.outputs)
REPORT_FILES = ("results.json", "report.md", *PLOTS)


def write_plots(results: dict, out: Path) -> list[Path]:
    """FID against each cost (with every arm's Pareto front), precision against recall, and the cost of
    each scale step; returns the PNG paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths, rows = [], results["rows"]
    models = list(dict.fromkeys(r["model"] for r in rows))
    for key, xlabel, fname in zip((
            lambda r: r["head_nfe"]["mean"], lambda r: r["flops_per_image_exact"] / 1e9,
            lambda r: r["ms_per_image"]["mean"]), ("head evaluations per image (NFE)", "GFLOPs per image",
                                                   f"ms per image (batch {results['config']['cost_batch']})"),
            PLOTS[:3]):
        fig, ax = plt.subplots(figsize=(6.5, 4.5))
        _fid_vs_cost(ax, rows, models, key, xlabel, results["floor"]["fid"]["mean"])
        paths.append(_save(fig, out / fname))
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    _precision_recall(ax, rows, models, results["floor"])
    paths.append(_save(fig, out / PLOTS[3]))
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    _per_scale_cost(axes, rows, results["models"], plt.get_cmap("tab20"))
    paths.append(_save(fig, out / PLOTS[4]))
    return paths


def _save(fig, path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)
    return path


def _fid_vs_cost(ax, rows, models, key, xlabel: str, floor: float) -> None:
    for m in models:
        mine = [r for r in rows if r["model"] == m]
        xs, ys = [key(r) for r in mine], [r["fid"]["mean"] for r in mine]
        ax.errorbar(xs, ys, yerr=[_err(r["fid"]) for r in mine], fmt="o", color=_color(m), capsize=3,
                    label=_name(m))
        front = pareto(list(zip(xs, ys)))
        ax.plot(*zip(*front), color=_color(m), lw=1, alpha=0.7)
        for r, x, y in zip(mine, xs, ys):
            ax.annotate(r["sampler"], (x, y), fontsize=6, xytext=(3, 3), textcoords="offset points")
    ax.axhline(floor, color="grey", ls="--", lw=1, label="real floor")
    ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("FID (classifier features), mean ± 95% CI")
    ax.set_title("lines: each arm's Pareto front", fontsize=8)
    ax.legend(fontsize=7)


def _precision_recall(ax, rows, models, floor: dict) -> None:
    for r in rows:
        ax.errorbar(r["recall"]["mean"], r["precision"]["mean"], xerr=_err(r["recall"]), yerr=_err(r["precision"]),
                    fmt="o", color=_color(r["model"]), capsize=2)
        ax.annotate(r["sampler"], (r["recall"]["mean"], r["precision"]["mean"]), fontsize=6, xytext=(3, 3),
                    textcoords="offset points")
    ax.scatter([floor["recall"]["mean"]], [floor["precision"]["mean"]], marker="*", s=120, color="grey",
               label="real floor")
    for m in models:
        ax.scatter([], [], color=_color(m), label=_name(m))
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.legend(fontsize=7)


def _per_scale_cost(axes, rows, models: dict, cmap) -> None:
    for name, info in models.items():
        fl = info["backbone_flops_per_scale"]
        axes[0].plot(range(1, len(fl) + 1), [v / 1e6 for v in fl], marker="o", color=_color(name),
                     label=f"{name} backbone")
    axes[0].set_xlabel("scale k")
    axes[0].set_ylabel("backbone MFLOPs per image")
    axes[0].set_title("backbone cost per scale step")
    axes[0].legend()
    for i, r in enumerate(rows):
        nfe = r.get("head_nfe_per_scale") or []
        axes[1].plot(range(1, len(nfe) + 1), nfe, marker="o" if r["model"] == ANCHOR else ".",
                     ls="--" if r["model"] == ANCHOR else "-", label=f"{r['model']} {r['sampler']}", color=cmap(i % 20))
    axes[1].set_xlabel("scale k")
    axes[1].set_ylabel("head NFE per image")
    axes[1].set_yscale("log")
    axes[1].set_title("head evaluations per scale")
    axes[1].legend(fontsize=5)
