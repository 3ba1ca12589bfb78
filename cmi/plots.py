"""Plotting functions for the notebooks: each takes results, returns a matplotlib Figure."""
from __future__ import annotations

import math

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
from cycler import cycler

from .models import LAYER_NAMES

STRATEGY_COLOURS = {"scree": "tab:blue", "xmeans": "tab:orange", "ptest": "tab:green"}

#: seaborn's "deep" palette.
DEEP = ("#4C72B0", "#DD8452", "#55A868", "#C44E52", "#8172B3", "#937860", "#DA8BC3", "#8C8C8C", "#CCB974", "#64B5CD")

#: The matplotlib settings of seaborn's ``set_theme(context="notebook", style="whitegrid")``, written out
#: because importing seaborn imports scipy.stats (1.5 s in every notebook). A test compares them with
#: seaborn's. Left out: ``image.cmap`` (seaborn's "rocket", registered only by importing seaborn; every
#: image here names its colormap or is RGB).
THEME = {
    "axes.axisbelow": True, "axes.edgecolor": ".8", "axes.grid": True, "axes.labelcolor": ".15",
    "axes.labelsize": 12.0, "axes.linewidth": 1.25, "axes.titlesize": 12.0,
    "font.sans-serif": ["Arial", "DejaVu Sans", "Liberation Sans", "Bitstream Vera Sans", "sans-serif"],
    "font.size": 12.0, "grid.color": ".8", "grid.linewidth": 1.0, "legend.fontsize": 11.0,
    "legend.title_fontsize": 12.0, "lines.solid_capstyle": "round", "patch.edgecolor": "w",
    "patch.force_edgecolor": True, "text.color": ".15", "xtick.bottom": False, "xtick.color": ".15",
    "xtick.labelsize": 11.0, "xtick.major.size": 6.0, "xtick.major.width": 1.25, "xtick.minor.size": 4.0,
    "xtick.minor.width": 1.0, "ytick.color": ".15", "ytick.labelsize": 11.0, "ytick.left": False,
    "ytick.major.size": 6.0, "ytick.major.width": 1.25, "ytick.minor.size": 4.0, "ytick.minor.width": 1.0,
}


def set_theme() -> None:
    """The notebooks' look: :data:`THEME` and the :data:`DEEP` colour cycle."""
    matplotlib.rcParams.update(THEME)
    matplotlib.rcParams["axes.prop_cycle"] = cycler(color=[matplotlib.colors.to_rgb(c) for c in DEEP])


def sample_grid(ds, per_class: int = 8, seed: int = 0):
    """A grid of training images, one row per class."""
    import torch
    g = torch.Generator().manual_seed(seed)
    fig, axes = plt.subplots(ds.num_classes, per_class, figsize=(per_class * 0.8, ds.num_classes * 0.85))
    for c in range(ds.num_classes):
        idx = (ds.train_y == c).nonzero().flatten()
        idx = idx[torch.randperm(len(idx), generator=g)[:per_class]]
        for j, ax in enumerate(axes[c]):
            ax.axis("off")
            if j < len(idx):
                img = ds.train_x[idx[j]].permute(1, 2, 0).numpy()
                ax.imshow(img.squeeze(-1) if img.shape[-1] == 1 else img, cmap="gray" if img.shape[-1] == 1 else None)
        axes[c][0].set_title(ds.classes[c], fontsize=7, loc="left")
    fig.suptitle(f"{ds.name}: training images by class (32x32)")
    fig.tight_layout()
    return fig


def learning_curves(history: list[dict], label_smoothing: float = 0.0):
    """Training loss and train/held-out/test accuracy per epoch of a baseline's ``history``; the
    loss is the one optimised, so it carries the run's ``label_smoothing``."""
    ep = [r["epoch"] for r in history]
    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.4))
    a.plot(ep, [r["train_loss"] for r in history], marker="o")
    a.set(xlabel="epoch", ylabel="training loss (nats" + (f", label smoothing {label_smoothing:g})" if label_smoothing else ")"), title="loss")
    for key, label in (("train_acc", "train (augmented)"), ("val_acc", "held-out"), ("test_acc", "test")):
        if key in history[0]:
            b.plot(ep, [100 * r[key] for r in history], marker="o", label=label)
    b.set(xlabel="epoch", ylabel="accuracy (%)", title="accuracy")
    b.legend()
    fig.tight_layout()
    return fig


def _grid(n: int, cols: int = 5, size=(3.0, 2.3)):
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(size[0] * cols, size[1] * rows), squeeze=False)
    for ax in axes.flat[n:]:
        ax.axis("off")
    return fig, axes.flat


def cmi_curves(rankings: list, cuts: dict[str, dict[str, list[int]]] | None = None, title: str = ""):
    """CMI_t against the number of channels selected t, one panel per layer; optional cut markers
    ``cuts[layer name][strategy] = [keep counts]`` (the chosen one drawn solid). Picks after a
    saturation stop (ordered by the tail rule, not by CMI) are shaded grey."""
    fig, axes = _grid(len(rankings))
    for ax, r, name in zip(axes, rankings, LAYER_NAMES):
        t = np.arange(1, len(r.cmi) + 1)
        ax.plot(t, r.cmi, color="k", lw=1.2)
        if getattr(r, "saturated_at", None) is not None:
            ax.axvspan(r.saturated_at + 0.5, len(r.cmi) + 0.5, color="0.85", lw=0,
                       label="saturated: tail rule, not CMI")
        ax.set_title(f"{name} (C={r.n_channels})", fontsize=9)
        ax.set_xlabel("channels selected t", fontsize=8)
        ax.set_ylabel("CMI_t (nats)", fontsize=8)
        for strategy, ks in (cuts or {}).get(name, {}).items():
            for i, k in enumerate(ks):
                ax.axvline(k, color=STRATEGY_COLOURS.get(strategy, "0.5"), lw=1, ls="-" if i == 0 else ":",
                           label=strategy if i == 0 else None)
    handles = {}
    for ax in fig.axes:           # ``axes`` is a flat iterator, already consumed above
        for h, lab in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(lab, h)
    if handles:
        fig.legend(list(handles.values()), list(handles), loc="lower right", fontsize=8, bbox_to_anchor=(0.98, 0.05))
    fig.suptitle(title or "Remaining label information CMI_t = I(Y; R | S) per layer")
    fig.tight_layout()
    return fig


def mi_curves(rankings: list, title: str = ""):
    """I(S; Y) and I(input; S) against the number of selected channels, one panel per layer."""
    fig, axes = _grid(len(rankings))
    for ax, r, name in zip(axes, rankings, LAYER_NAMES):
        t = np.arange(1, len(r.mi_labels) + 1)
        ax.plot(t, r.mi_labels, label="I(S; Y)")
        if r.mi_input:
            ax.plot(t, r.mi_input, label="I(input; S)")
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("channels selected t", fontsize=8)
        ax.set_ylabel("nats", fontsize=8)
    axes[0].legend(fontsize=7)
    fig.suptitle(title or "Information kept by the selected channels")
    fig.tight_layout()
    return fig


def kept_heatmap(layers_df, title: str = "Filters kept per layer (% of the layer)"):
    """Heatmap: one row per plan, one column per layer, cells = percent of filters kept."""
    import seaborn as sns

    pivot = layers_df.pivot(index="plan", columns="name", values="kept_fraction")[list(LAYER_NAMES)] * 100
    counts = layers_df.pivot(index="plan", columns="name", values="kept")[list(LAYER_NAMES)]
    fig, ax = plt.subplots(figsize=(12, 0.42 * len(pivot) + 1.8))
    sns.heatmap(pivot, annot=counts, fmt="d", cmap="viridis", vmin=0, vmax=100, ax=ax,
                cbar_kws={"label": "% of filters kept"}, annot_kws={"fontsize": 7})
    ax.set(xlabel="layer (cells: filters kept)", ylabel="plan", title=title)
    fig.tight_layout()
    return fig


def accuracy_bars(results_df, columns=("acc_masked", "acc_removed", "acc_finetuned"), title: str = ""):
    """Test accuracy of each plan under each way of applying it, with the baseline as a line."""
    import seaborn as sns

    base = results_df.loc[results_df.plan == "baseline", "acc_baseline"].iloc[0] * 100
    df = results_df[results_df.plan != "baseline"]
    cols = [c for c in columns if c in df and df[c].notna().any()]
    long = df.melt(id_vars=["plan"], value_vars=cols, var_name="applied as", value_name="accuracy")
    long["accuracy"] = long["accuracy"].astype(float) * 100
    fig, ax = plt.subplots(figsize=(10, 0.35 * len(df) * max(1, len(cols)) / 2 + 2))
    sns.barplot(long, y="plan", x="accuracy", hue="applied as", ax=ax, orient="h")
    ax.axvline(base, color="k", ls="--", lw=1, label=f"baseline {base:.2f}%")
    ax.set(xlabel="test accuracy (%)", ylabel="", title=title or "Test accuracy of the pruned networks")
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    return fig


def cost_accuracy(results_df, title: str = ""):
    """Accuracy against parameters, MACs and batch-1 CPU latency, one point per plan."""
    df = results_df.copy()
    acc_col = "acc_finetuned" if df["acc_finetuned"].notna().any() else "acc_removed"
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    for ax, (col, label, scale) in zip(axes, (("params", "parameters (M)", 1e-6), ("macs", "MACs (M)", 1e-6),
                                              ("latency_b1_ms", "CPU latency, batch 1 (ms)", 1.0))):
        for _, row in df.iterrows():
            acc = row["acc_baseline"] if row["plan"] == "baseline" else row[acc_col]
            if acc is None or acc != acc:
                continue
            marker = "*" if row["plan"] == "baseline" else "o"
            ax.scatter(row[col] * scale, 100 * acc, marker=marker, s=80 if marker == "*" else 25,
                       color="k" if marker == "*" else STRATEGY_COLOURS.get(row.get("cutoff"), "0.4"))
        ax.set(xlabel=label, ylabel=f"test accuracy (%), {acc_col.replace('acc_', '')}")
    handles = [plt.Line2D([], [], marker="o", ls="", color=c, label=s) for s, c in STRATEGY_COLOURS.items()]
    handles.append(plt.Line2D([], [], marker="*", ls="", color="k", markersize=10, label="baseline"))
    axes[-1].legend(handles=handles, fontsize=8)
    fig.suptitle(title or "Cost against accuracy (colour: cutoff strategy)")
    fig.tight_layout()
    return fig


def mi_vs_rho(rows):
    fig, ax = plt.subplots(figsize=(5, 3.5))
    r = [x["rho"] for x in rows]
    ax.plot(r, [x["matrix_mi"] for x in rows], marker="o", label="matrix-based I(X;Y), α=1.01")
    ax.plot(r, [x["shannon_mi"] for x in rows], marker="s", label="Shannon −½log(1−ρ²)")
    ax.set(xlabel="correlation ρ", ylabel="nats", title="Gaussian pairs of set correlation")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def sigma_plot(rows):
    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.4))
    for pair in ("correlated", "independent"):
        xs = [r for r in rows if r["pair"] == pair]
        a.plot([r["factor"] for r in xs], [r["mi"] for r in xs], marker="o", label=pair)
        b.plot([r["factor"] for r in xs], [r["entropy_x"] for r in xs], marker="o", label=pair)
    for ax, lab in ((a, "I(X; Y) (nats)"), (b, "S(X) (nats)")):
        ax.set_xscale("log")
        ax.set(xlabel="σ / paper rule", ylabel=lab)
    a.legend(fontsize=8)
    fig.suptitle("Sensitivity to the kernel width")
    fig.tight_layout()
    return fig


CRITERION_COLOURS = {"cmi": "tab:red", "cmi-median": "tab:purple", "l1": "tab:blue", "hrank": "tab:green",
                     "random": "0.45"}


def sensitivity_curves(rows, baseline_acc: float | None = None, title: str = ""):
    """Li et al. (2017, Fig. 2) style: one panel per layer, test accuracy against the fraction of the
    layer's filters kept, one colour per criterion; solid = masked (BN untouched), dashed = removed +
    BN recalibration. Seeded criteria are drawn as the mean with a ±1 sd band."""
    import pandas as pd

    df = pd.DataFrame(rows)
    layers = list(dict.fromkeys(df.name))
    fig, axes = _grid(len(layers), cols=5, size=(3.1, 2.4))
    for ax, name in zip(axes, layers):
        part = df[df.name == name]
        for crit, g in part.groupby("criterion", sort=False):
            colour = CRITERION_COLOURS.get(crit)
            for col, ls in (("acc_masked", "-"), ("acc_recalibrated", "--")):
                stats = g.groupby("keep_fraction")[col].agg(["mean", "std"]).sort_index()
                ax.plot(100 * stats.index, 100 * stats["mean"], ls=ls, color=colour, lw=1.2,
                        label=f"{crit}, {'masked' if ls == '-' else 'removed + BN recal'}")
                if g.seed.nunique() > 1:
                    ax.fill_between(100 * stats.index, 100 * (stats["mean"] - stats["std"]),
                                    100 * (stats["mean"] + stats["std"]), color=colour, alpha=0.15, lw=0)
        if baseline_acc is not None:
            ax.axhline(100 * baseline_acc, color="k", lw=0.6, ls=":")
        ax.set_title(f"{name} ({int(part.channels.iloc[0])} filters)", fontsize=9)
        ax.set_xlim(100, 0)
        ax.set_ylim(0, 100)
        ax.tick_params(labelsize=7)
    axes[0].set_ylabel("test accuracy (%)")
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower right", fontsize=7, ncol=2, bbox_to_anchor=(0.98, 0.04))
    fig.suptitle(title or "Each layer pruned alone: test accuracy against % of its filters kept", fontsize=11)
    fig.supxlabel("% of the layer's filters kept", fontsize=9)
    fig.tight_layout()
    return fig


def saturation_plot(rows, title: str = ""):
    """Picks until CMI_t ≈ 0, as a fraction of the layer's filters, per layer and kernel-width rule
    (a layer that never saturates is drawn at 100 % with an open marker)."""
    import pandas as pd

    df = pd.DataFrame(rows)
    fig, ax = plt.subplots(figsize=(7.5, 3.4))
    for rule, g in df.groupby("sigma_rule", sort=False):
        picks = pd.to_numeric(g["picks"], errors="coerce")
        frac = 100 * picks / g["channels"]
        x = np.arange(len(g))
        line, = ax.plot(x, frac, marker="o", label=f"σ rule: {rule}")
        never = picks.isna().to_numpy()
        if never.any():
            ax.plot(x[never], np.full(never.sum(), 100.0), ls="", marker="o", mfc="white", color=line.get_color(),
                    label=f"σ rule: {rule}, never saturates")
        ax.set_xticks(x, g["layer"], rotation=45, fontsize=8)
    ax.set_ylabel("picks to saturate (% of the layer)")
    ax.set_ylim(0, 105)
    ax.legend(fontsize=8)
    ax.set_title(title or "Where CMI_t reaches ≈ 0: after that the greedy order is noise", fontsize=10)
    fig.tight_layout()
    return fig


def controls_plot(summary, baseline_acc: float | None = None, modes=("masked", "recalibrated", "finetuned"),
                  title: str = ""):
    """Controls at equal per-layer counts: one panel per protocol (rows) and mode (columns); per
    criterion, each plan's accuracy (mean over seeds) as a dot and the mean over plans as a bar."""
    import pandas as pd

    df = pd.DataFrame(summary)
    protocols = list(dict.fromkeys(df.protocol))
    modes = [m for m in modes if f"{m}_mean" in df and df[f"{m}_mean"].notna().any()]
    fig, axes = plt.subplots(len(protocols), len(modes), figsize=(3.3 * len(modes), 2.8 * len(protocols)),
                             squeeze=False, sharey=True)
    crits = list(dict.fromkeys(df.criterion))
    rng = np.random.default_rng(0)                       # horizontal jitter of the dots only
    for i, proto in enumerate(protocols):
        for j, mode in enumerate(modes):
            ax = axes[i][j]
            part = df[df.protocol == proto]
            for k, crit in enumerate(crits):
                vals = 100 * part[part.criterion == crit][f"{mode}_mean"].dropna()
                colour = CRITERION_COLOURS.get(crit, "0.5")
                ax.bar(k, vals.mean(), color=colour, alpha=0.35, width=0.7)
                ax.plot(k + rng.uniform(-0.2, 0.2, len(vals)), vals, ls="", marker=".", color=colour, ms=4)
            if baseline_acc is not None:
                ax.axhline(100 * baseline_acc, color="k", lw=0.6, ls=":")
            ax.set_xticks(range(len(crits)), crits, rotation=30, fontsize=8)
            ax.set_title(f"{proto} · {mode}", fontsize=9)
            ax.set_ylim(0, 100)
        axes[i][0].set_ylabel("test accuracy (%)")
    fig.suptitle(title or "Same per-layer counts, different filters: each plan (dots) and the mean (bars)",
                 fontsize=10)
    fig.tight_layout()
    return fig


def kept_counts_plot(kept_rows, title: str = ""):
    """Kept filters per layer (% of the layer), ``paper`` against ``authors`` protocol, one panel per
    plan the authors' code defines (rows of :func:`cmi.controls.kept_counts_table`)."""
    import pandas as pd

    df = pd.DataFrame(kept_rows)
    names = list(dict.fromkeys(df[df.protocol == "authors"].plan)) or list(dict.fromkeys(df.plan))
    fig, axes = _grid(len(names), cols=3, size=(3.6, 2.4))
    for ax, name in zip(axes, names):
        for proto, ls in (("paper", "-"), ("authors", "--")):
            row = df[(df.protocol == proto) & (df.plan == name)]
            if row.empty:
                continue
            counts = row[list(LAYER_NAMES)].iloc[0].to_numpy(dtype=float)
            ax.plot(range(len(LAYER_NAMES)), counts, ls=ls, marker="o", ms=3,
                    label=f"{proto}: {row['pruned_pct'].iloc[0]:.0f} % pruned")
        ax.set_title(name, fontsize=8)
        ax.set_xticks(range(len(LAYER_NAMES)), [n.replace("conv", "") for n in LAYER_NAMES], fontsize=6, rotation=90)
        ax.tick_params(labelsize=7)
        ax.legend(fontsize=6)
    axes[0].set_ylabel("filters kept")
    fig.suptitle(title or "Filters kept per layer: the paper's text (solid) against the authors' code paths (dashed)",
                 fontsize=10)
    fig.tight_layout()
    return fig


def path_ablation_plot(summary, title: str = ""):
    """Each of the authors' code paths' effect (with it - without it, pp) on the mean filters removed
    and the mean accuracy of their plans: switched on alone in the paper's text and off alone in
    the authors' code (rows of :func:`cmi.ablation.ablation_summary`)."""
    import pandas as pd

    df = pd.DataFrame([r for r in summary if r["path"] != "-"])
    paths = list(dict.fromkeys(df.path))
    from .tables import ABLATION, SWITCHED

    metrics = [c for c in ("effect_pruned", "effect_masked", "effect_recalibrated") if c in df]
    fig, axes = plt.subplots(1, len(metrics), figsize=(3.6 * len(metrics), 0.45 * len(paths) + 1.6), sharey=True,
                             squeeze=False)
    y = np.arange(len(paths))
    for ax, metric in zip(axes[0], metrics):
        for k, (switched, colour) in enumerate((("on", "tab:blue"), ("off", "tab:orange"))):
            part = df[df.switched == switched].set_index("path").reindex(paths)
            ax.barh(y + (k - 0.5) * 0.38, part[metric], height=0.36, color=colour, label=SWITCHED[switched])
        ax.axvline(0, color="k", lw=0.6)
        ax.set_title(ABLATION[metric].replace(" (pp)", ""), fontsize=9)
        ax.set_xlabel("pp (with the path - without it)", fontsize=8)
        ax.tick_params(labelsize=7)
    axes[0][0].set_yticks(y, paths)
    axes[0][0].invert_yaxis()
    axes[0][-1].legend(fontsize=7)
    fig.suptitle(title or "Which of the authors' code paths moves their plans?", fontsize=10)
    fig.tight_layout()
    return fig


def census_plot(model, history: list[dict], title: str = ""):
    """Left: |γ| of every channel, per layer, relative to the layer's largest (log scale); right: over
    training, per layer, the share of channels with |γ| below 10 % of the layer's largest (from the
    ``small_gamma`` each epoch recorded; absent in baselines trained before it was recorded)."""
    from .models import LAYER_NAMES
    from .train import SMALL_GAMMA

    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 3.6))
    for l, bn in enumerate(model.norms()):
        g = bn.weight.detach().abs().double()
        rel = (g / g.max()).clamp_min(1e-12).numpy()
        a.scatter(np.full(len(rel), l) + np.random.default_rng(l).uniform(-0.25, 0.25, len(rel)), rel, s=4, alpha=0.5)
    a.axhline(SMALL_GAMMA, color="k", lw=0.8, ls="--")
    a.set_yscale("log")
    a.set_xticks(range(len(LAYER_NAMES)), LAYER_NAMES, rotation=45, fontsize=8)
    a.set(ylabel="|γ| / layer's largest", title="BatchNorm |γ| per channel")
    recorded = [r for r in history if "small_gamma" in r]
    if recorded:
        ep = [r["epoch"] for r in recorded]
        shares = np.array([r["small_gamma"] for r in recorded]) * 100
        for l, name in enumerate(LAYER_NAMES):
            b.plot(ep, shares[:, l], label=name, lw=1)
        b.legend(fontsize=6, ncol=2)
    else:
        b.text(0.5, 0.5, "not recorded for this baseline", ha="center", transform=b.transAxes)
    b.set(xlabel="epoch", ylabel=f"channels with |γ| < {SMALL_GAMMA:g}·max (%)", title="small |γ| over training")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def repair_plot(curves: list[dict], modes, baseline_acc: float | None = None, title: str = ""):
    """Test accuracy against the share of filters removed, one line per repair; CMI solid, L1 dashed."""
    import seaborn as sns

    fig, ax = plt.subplots(figsize=(7.5, 4))
    colors = dict(zip(modes, sns.color_palette(n_colors=len(modes))))
    for crit, style in (("cmi", "-"), ("l1", "--")):
        part = sorted((r for r in curves if r["criterion"] == crit), key=lambda r: r["filters_kept"], reverse=True)
        if not part:
            continue
        x = [100 * (1 - r["filters_kept"] / r["filters_total"]) for r in part]
        for m in modes:
            ax.plot(x, [100 * r[f"acc_{m}"] for r in part], style, marker="o", ms=3, color=colors[m],
                    label=f"{m} ({crit})")
    if baseline_acc is not None:
        ax.axhline(100 * baseline_acc, color="k", lw=0.8)
        ax.axhline(100 * baseline_acc - 1, color="k", lw=0.8, ls=":")
    ax.axvline(100 / 3, color="grey", lw=0.8, ls=":")
    ax.set(xlabel="filters removed (%)", ylabel="test accuracy (%)",
           title=title or "Repairs without a gradient step: CMI (solid) and L1 (dashed)")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    return fig
