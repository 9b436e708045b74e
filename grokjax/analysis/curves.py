"""Figures of single runs over steps: learning curves (``plot_curves``) and the progress measures of a
grokking and a memorizing run side by side (``plot_measures``). Functions return Figures;
``store.outputs.save_figure`` writes them."""

from __future__ import annotations

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from grokjax.analysis.plots import numeric_axes, sweep_title

_MARKED = 200  # a curve of at most this many points (the evaluations) shows them as markers


def plot_curves(results_metrics: pd.DataFrame, fits: pd.DataFrame) -> Figure:
    """Learning curves: train and validation accuracy, train and validation loss and the parameter norm
    against the step (symlog: step 0, the initialisation, is shown). Colour = the first swept number that
    varies (wd where it does, e.g. frac in a warm-started sweep over training fractions), line style = seed."""
    fig = Figure(figsize=(14, 7.5), dpi=110)
    grid = fig.subplots(2, 3)
    panels = [("train_acc", "train accuracy", False), ("val_acc", "validation accuracy", False),
              ("param_norm", "parameter norm (L2)", False), ("train_loss", "train loss", True),
              ("val_loss", "validation loss", True)]
    by = next((a for a in numeric_axes(fits) if a in fits.columns and fits[a].nunique() > 1), "wd")
    wds = np.sort(fits[by].unique())
    cmap = matplotlib.colormaps["viridis"]
    color = {w: cmap(i / max(len(wds) - 1, 1)) for i, w in enumerate(wds)}
    seeds = np.sort(fits["seed"].unique()) if "seed" in fits.columns else np.array([0])
    styles = ["-", "--", ":", "-."]
    style = {s: styles[i % len(styles)] for i, s in enumerate(seeds)}
    info = fits.set_index("run_id")
    for rid, m in results_metrics.groupby("run_id"):
        if rid not in info.index:
            continue
        c, ls = color[info.at[rid, by]], style.get(info.at[rid, "seed"] if "seed" in info else 0, "-")
        for ax, (col, _, _) in zip(grid.ravel(), panels):
            rows = m[m[col].notna()]
            ax.plot(rows["step"], rows[col], ls=ls, lw=0.9, color=c, alpha=0.85, ms=2.5,
                    marker="." if len(rows) <= _MARKED else None)  # evaluation points, not every step
        _mark_descent(grid[1, 1], m, info.loc[rid], c)
    eval_steps = np.unique(results_metrics.loc[results_metrics["val_acc"].notna(), "step"])
    linthresh = float(eval_steps[1] - eval_steps[0]) if eval_steps.size > 1 else 1.0
    for ax, (col, title, log_y) in zip(grid.ravel(), panels):
        ax.set_xscale("symlog", linthresh=linthresh)
        if log_y:
            ax.set_yscale("log")
        elif col.endswith("acc"):
            ax.set_ylim(-0.02, 1.02)
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("step (symlog)")
        ax.grid(True, alpha=0.3)
    legend_ax = grid[1, 2]
    legend_ax.axis("off")
    handles = [Line2D([], [], color=color[w], label=f"{by}={w:g}") for w in wds]
    handles += [Line2D([], [], color="black", ls=style[s], label=f"seed {s}") for s in seeds[:len(styles)]]
    handles += [Line2D([], [], ls="", marker=mk, color="black", mfc="none", label=what) for mk, what in _DESCENT]
    legend_ax.legend(handles=handles, loc="center", fontsize=8, ncol=2)
    fig.suptitle(f"Learning curves\n{sweep_title(fits)}", fontsize=9)
    fig.tight_layout()
    return fig


_DESCENT = (("v", "val loss: minimum after t_train"), ("^", "its peak (double descent)"),
            ("o", "second descent below the minimum"))


def _mark_descent(ax, m: pd.DataFrame, fit: pd.Series, color) -> None:
    """A run's double descent (fits' t_val_loss_min, t_val_loss_peak, t_second_descent) on its val loss."""
    for (mk, _), col in zip(_DESCENT, ("t_val_loss_min", "t_val_loss_peak", "t_second_descent")):
        t = fit.get(col, np.nan)
        if np.isfinite(t):
            at = m.loc[m["step"] == t, "val_loss"]
            if len(at):
                ax.scatter([t], [float(at.iloc[0])], marker=mk, s=28, facecolors="none", edgecolors=color,
                           lw=1.1, zorder=4)


_MEASURE_PANELS = (
    ("accuracy", (("train_acc", "train"), ("val_acc", "validation")), False),
    ("loss", (("train_loss", "train"), ("val_loss", "validation"), ("restricted_loss", "restricted"),
              ("excluded_loss", "excluded")), True),
    ("parameter norms", (("param_norm", "all"), ("norm_embed", "embed"), ("norm_attn", "attention"),
                         ("norm_mlp", "MLP"), ("norm_unembed", "unembed"), ("norm_readout", "readout")), False),
    ("gradient and update norms", (("grad_norm", "gradient"), ("update_norm", "update")), True),
    ("last-layer norm", (("unembed_norm", "last layer, every step"),), False),
    ("logit scale (train pairs)", (("logit_margin", "correct-class margin"), ("logit_norm", "logit norm")), False),
    ("Fourier Gini (embedding)", (("fourier_gini", "Gini"),), False),
    ("Fourier: key frequencies", (("n_key_freqs", "n key freqs"),), False),
)


def pick_runs(fits: pd.DataFrame) -> list[int]:
    """A grokking run (the median t_val among the grokked) and a memorizing one (the highest wd among
    the runs that never grok), for side-by-side measures."""
    grokked = fits[fits["phase"].isin(("grokking", "comprehension"))].sort_values("t_val")
    memorized = fits[fits["phase"] == "memorization"].sort_values(["wd", "run_id"])
    out = []
    if len(grokked):
        out.append(int(grokked["run_id"].iloc[len(grokked) // 2]))
    if len(memorized):
        out.append(int(memorized["run_id"].iloc[-1]))
    return out or [int(fits["run_id"].iloc[0])]


def _slingshot_steps(info: pd.DataFrame, rid: int) -> list[float]:
    """The run's slingshot steps (fits' slingshot_steps), [] if none or not fitted."""
    text = info.at[rid, "slingshot_steps"] if rid in info.index and "slingshot_steps" in info else ""
    return [float(s) for s in text.split(",")] if isinstance(text, str) and text else []


def plot_measures(metrics: pd.DataFrame, fits: pd.DataFrame, run_ids: list[int] | None = None) -> Figure:
    """The progress measures (``measures=``) against the step for a few runs side by side (default: a
    grokking and a memorizing run): one column per run, one row per kind of measure the sweep logged,
    with the run's t_train and t_val marked."""
    run_ids = run_ids or pick_runs(fits)
    layer_cols = sorted(c for c in metrics.columns if c.startswith("norm_layer_"))
    panels = []
    for title, cols, log in _MEASURE_PANELS:
        cols = list(cols) + ([(c, c[5:]) for c in layer_cols] if title == "parameter norms" else [])
        cols = [(c, label) for c, label in cols if c in metrics.columns]
        if cols:
            panels.append((title, cols, log))
    fig = Figure(figsize=(6 * len(run_ids), 2.3 * len(panels)), dpi=100)
    grid = fig.subplots(len(panels), len(run_ids), squeeze=False, sharex="col", sharey="row")
    info = fits.set_index("run_id")
    for j, rid in enumerate(run_ids):
        m = metrics[metrics["run_id"] == rid]
        if rid in info.index:
            r = info.loc[rid]
            grid[0, j].set_title(f"run {rid}: wd={r.get('wd', float('nan')):g}, seed {r.get('seed', '')}, "
                                 f"{r['phase']}", fontsize=9)
        for i, (title, cols, log) in enumerate(panels):
            ax = grid[i, j]
            for c, label in cols:
                rows = m[m[c].notna()]
                ax.plot(rows["step"], rows[c], lw=1, label=label, ms=2.5, marker="." if len(rows) <= _MARKED else None)
            for t, style in (("t_train", ":"), ("t_val", "--")):
                if rid in info.index and np.isfinite(info.at[rid, t]):
                    ax.axvline(info.at[rid, t], color="gray", ls=style, lw=0.8)
            for s in _slingshot_steps(info, rid):
                ax.axvline(s, color="crimson", lw=0.8, alpha=0.6)
            ax.set_xscale("symlog", linthresh=10)
            if log:
                ax.set_yscale("log")
            ax.set_ylabel(title, fontsize=8)
            ax.grid(True, alpha=0.3)
            if j == len(run_ids) - 1 and len(cols) > 1:
                ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
        grid[-1, j].set_xlabel("step (symlog; dotted: t_train, dashed: t_val, red: slingshots)")
    fig.suptitle(f"Progress measures\n{sweep_title(fits)}", fontsize=9)
    fig.tight_layout()
    return fig
