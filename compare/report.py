"""results.json, report.md and the plots of a comparison run."""
from __future__ import annotations

import json
from pathlib import Path


def _fmt(v, digits=3):
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.{digits}g}" if abs(v) < 1e4 else f"{v:.3e}"
    return str(v)


def main_table(results: dict) -> str:
    """The report's main table: quality against cost for every model and sampler, and the floor."""
    head = ("| model | sampler | FID | KID x1e3 | class acc | precision | recall | backbone fwd | head NFE "
            "| GFLOPs/img | ms/img | peak MB |")
    lines = [head, "|" + "---|" * 12]
    f = results["floor"]
    lines.append(f"| real train | (floor, n={results['floor_samples']}) | {_fmt(f['fid'])} | {_fmt(f['kid'] * 1e3)} "
                 f"| {_fmt(f['class_acc'])} | {_fmt(f['precision'])} | {_fmt(f['recall'])} | - | - | - | - | - |")
    for r in results["rows"]:
        lines.append(
            f"| {r['model']} | {r['sampler']} | {_fmt(r['fid'])} | {_fmt(r['kid'] * 1e3)} | {_fmt(r['class_acc'])} "
            f"| {_fmt(r['precision'])} | {_fmt(r['recall'])} | {r['backbone_forwards']} | {r['head_nfe']} "
            f"| {_fmt(r['flops_per_image'] / 1e9)} | {_fmt(r['ms_per_image'])} | {_fmt(r['peak_mem_bytes'] / 2**20)} |")
    return "\n".join(lines)


def write_report(results: dict, out: Path) -> None:
    out = Path(out)
    (out / "results.json").write_text(json.dumps(results, indent=2, default=str))
    plots = write_plots(results, out)
    m = results["models"]
    cfg = results["config"]
    bb = results["backbone"]
    md = [
        "# VAR vs FlowAR on one backbone",
        "",
        f"Data: **{results['data']['name']}** ({results['data']['train']} train / {results['data']['test']} test, "
        f"{results['data']['side']}x{results['data']['side']}, {results['data']['classes']} classes), seed "
        f"{results['seed']}, device {results['device']}, torch {results['versions']['torch']}, nextscale "
        f"{results['versions']['nextscale']}.",
        "",
        f"Shared backbone config: width {bb['width']}, depth {bb['depth']}, heads {bb['heads']}, latent channels "
        f"{bb['in_dim']}; each arm keeps its paper's scale schedule: " + "; ".join(
            f"{n} {tuple(i['schedule'])} (L = {sum(s * s for s in i['schedule'])})" for n, i in m.items()) + ". "
        "Arms: `var` (VAR), `flowar` (FlowAR as published: transformer velocity head, doubling schedule, "
        "two-segment Euler), `flowar-mlp` (the same with MAR's per-token MLP head). FlowAR rows use FlowAR's "
        f"guidance: w = {cfg['flowar_cfg']} (FlowAR's cfg {1 + cfg['flowar_cfg']:g}) ramped linearly from 0 at "
        "scale 1, off for the noisiest 10% of t.",
        "",
        f"Metrics on {cfg['samples']} class-balanced samples per row against the {results['data']['test']} "
        "held-out real images, in the feature space of a classifier trained on the real train split "
        f"(its test accuracy: {_fmt(results['floor']['test_class_acc'])}). The floor row scores real train "
        "images the same way: no model can be expected to beat it. FID is biased at small N; compare rows at the "
        "same N, and read KID (unbiased) beside it. Cost is per generated image at batch "
        f"{cfg['cost_batch']} (median of {cfg['cost_repeats']} after a warm-up); head NFE counts a guided "
        "evaluation as 2; FLOPs from torch.utils.flop_counter (matmuls, convs, attention).",
        "",
        main_table(results),
        "",
        "## Training",
        "",
        "| model | trainable params (backbone + head = total) | autoencoder params | train s | reused checkpoints "
        "| train loss | test loss |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, info in m.items():
        md.append(f"| {name} | {info['params_backbone']:,} + {info['params_head']:,} = {info['params_generator']:,} "
                  f"| {info['params_autoencoder']:,} | {info['train_seconds']} | "
                  f"{info['reused_checkpoints']} | {_fmt(info['train_loss']['loss'])} | "
                  f"{_fmt(info['test_loss']['loss'])} |")
    md += ["", "Per-scale held-out loss (test split):", ""]
    for name, info in m.items():
        parts = {k: v for k, v in info["test_loss"].items() if k != "loss"}
        md.append(f"- {name}: " + ", ".join(f"{k} {_fmt(v)}" for k, v in parts.items()))
    md += ["", "Backbone GFLOPs per KV-cached scale step (one image): " + "; ".join(
        f"{n} " + ", ".join(_fmt(f / 1e9) for f in info["backbone_flops_per_scale"]) for n, info in m.items()), ""]
    md += ["## Plots", ""] + [f"![{p.stem}]({p.name})" for p in plots]
    md += ["", "## Samples (rows: classes)", ""]
    md += [f"- {r['model']} [{r['sampler']}]: [{r['grid']}]({r['grid']})" for r in results["rows"]]
    md += ["", "Stage times (s): " + ", ".join(f"{k} {v}" for k, v in results["timings_s"].items()), ""]
    (out / "report.md").write_text("\n".join(md))


def write_plots(results: dict, out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows, floor = results["rows"], results["floor"]["fid"]
    colors = {"var": "tab:blue", "flowar": "tab:orange", "flowar-mlp": "tab:green"}
    names = {"var": "VAR", "flowar": "FlowAR", "flowar-mlp": "FlowAR, MLP head"}
    paths = []
    for key, xlabel, fname in (("head_nfe", "head evaluations per image (NFE)", "fid_vs_nfe.png"),
                               ("ms_per_image", "wall time per image (ms)", "fid_vs_time.png")):
        fig, ax = plt.subplots(figsize=(6, 4))
        for r in rows:
            ax.scatter(r[key], r["fid"], color=colors[r["model"]])
            ax.annotate(r["sampler"], (r[key], r["fid"]), fontsize=7, xytext=(3, 3), textcoords="offset points")
        for m, c in colors.items():
            ax.scatter([], [], color=c, label=names[m])
        ax.axhline(floor, color="grey", ls="--", lw=1, label="real floor")
        ax.set_xscale("log")
        ax.set_xlabel(xlabel)
        ax.set_ylabel("FID (classifier features)")
        ax.legend()
        fig.tight_layout()
        fig.savefig(out / fname, dpi=120)
        plt.close(fig)
        paths.append(out / fname)

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for name, info in results["models"].items():
        f = info["backbone_flops_per_scale"]
        axes[0].plot(range(1, len(f) + 1), [v / 1e6 for v in f], marker="o", color=colors[name],
                     label=f"{name} backbone")
    axes[0].set_xlabel("scale k")
    axes[0].set_ylabel("backbone MFLOPs per image")
    axes[0].set_title("backbone cost per scale step")
    axes[0].legend()
    cmap = plt.get_cmap("tab10")
    for i, r in enumerate(rows):
        nfe = r.get("head_nfe_per_scale") or []
        axes[1].plot(range(1, len(nfe) + 1), nfe, marker="o" if r["model"] == "var" else ".",
                     ls="--" if r["model"] == "var" else "-", label=f"{r['model']} {r['sampler']}", color=cmap(i % 10))
    axes[1].set_xlabel("scale k")
    axes[1].set_ylabel("head NFE per image")
    axes[1].set_yscale("log")
    axes[1].set_title("head evaluations per scale")
    axes[1].legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(out / "per_scale_cost.png", dpi=120)
    plt.close(fig)
    paths.append(out / "per_scale_cost.png")
    return paths
