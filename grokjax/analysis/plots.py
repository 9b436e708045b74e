"""The wd-vs-grokking-time phase diagram, 2-D heatmaps and learning curves (matplotlib, Agg backend).
Functions return Figures; ``store.outputs.save_figure`` writes them."""

from __future__ import annotations

import math

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from grokjax.analysis.law import fit_law  # noqa: E402
from grokjax.analysis.survival import cells  # noqa: E402
from grokjax.spec.structure import PER_MODEL_FIELDS  # noqa: E402

PHASE_COLORS = {"comprehension": "#cfe8cf", "grokking": "#fbe3b5", "memorization": "#f6c9c4",
                "confusion": "#dddddd", "diverged": "#c9c4f6"}
_FIXED_IN_TITLE = ("op", "p", "n_layers", "d_model", "n_heads", "d_mlp", "frac", "lr", "wd", "batch_size",
                   "steps", "init_scale")


def _numeric_axes(fits: pd.DataFrame) -> list[str]:
    axes = [a for a in fits.attrs.get("axes", []) if a in PER_MODEL_FIELDS and a != "seed"]
    if "wd" in axes:
        axes.remove("wd")
        axes.insert(0, "wd")
    return axes or ["wd"]


def _facets(fits: pd.DataFrame) -> list[tuple[str, pd.DataFrame]]:
    structural = [a for a in fits.attrs.get("axes", []) if a not in PER_MODEL_FIELDS and a in fits.columns]
    if not structural:
        return [("", fits)]
    out = []
    for key, sub in fits.groupby(structural, sort=True):
        key = key if isinstance(key, tuple) else (key,)
        sub = sub.copy()
        sub.attrs = fits.attrs
        out.append((", ".join(f"{a}={v}" for a, v in zip(structural, key)), sub))
    return out


def _title(fits: pd.DataFrame) -> str:
    axes = set(fits.attrs.get("axes", []))
    parts = []
    for col in _FIXED_IN_TITLE:
        if col in fits.columns and col not in axes and fits[col].nunique() == 1:
            parts.append(f"{col}={fits[col].iloc[0]}")
    n_seeds = fits["seed"].nunique() if "seed" in fits.columns else 1
    half = (len(parts) + 1) // 2
    return ("  ".join(parts[:half]) + "\n" + "  ".join(parts[half:])
            + f"  ({n_seeds} seed{'s' if n_seeds != 1 else ''})")


def _x_positions(values: np.ndarray) -> tuple[np.ndarray, dict[float, float]]:
    """Log-axis positions; a zero value is drawn one step left of the smallest positive one."""
    uniq = np.unique(values)
    pos_vals = uniq[uniq > 0]
    lo = pos_vals.min() if pos_vals.size else 1.0
    ratio = (pos_vals.max() / lo) ** (1 / max(len(pos_vals) - 1, 1)) if pos_vals.size > 1 else 10.0
    mapping = {float(v): (float(v) if v > 0 else lo / max(ratio, 2.0)) for v in uniq}
    return np.array([mapping[float(v)] for v in values]), mapping


def _diagram_1d(ax: plt.Axes, fits: pd.DataFrame, x_name: str, with_law: bool) -> None:
    xs, mapping = _x_positions(fits[x_name].to_numpy(float))
    seeds = fits["seed"].to_numpy() if "seed" in fits.columns else np.zeros(len(fits))
    uniq_seeds = np.unique(seeds)
    jitter = 1 + 0.06 * (np.searchsorted(uniq_seeds, seeds) - (len(uniq_seeds) - 1) / 2) / max(len(uniq_seeds), 1)
    xj = xs * jitter
    cell = cells(_with_axes(fits.copy(), [x_name]))
    keys = sorted(mapping)
    edges = np.sqrt([mapping[a] * mapping[b] for a, b in zip(keys[:-1], keys[1:])]) if len(keys) > 1 else []
    bounds = [mapping[keys[0]] / 2, *edges, mapping[keys[-1]] * 2]
    for i, k in enumerate(keys):
        phase = cell.loc[cell[x_name] == k, "phase"]
        if len(phase):
            ax.axvspan(bounds[i], bounds[i + 1], color=PHASE_COLORS[phase.iloc[0]], alpha=0.6, lw=0, zorder=0)
    budget = fits["budget"].max()
    ax.scatter(xj, fits["t_train"], marker="o", facecolors="none", edgecolors="tab:blue", s=28, zorder=3,
               label="t_train (train acc ≥ thr)")
    grokked = ~fits["censored"].to_numpy(bool)
    ax.scatter(xj[grokked], fits["t_val"][grokked], marker="^", color="tab:red", s=34, zorder=3,
               label="t_val (val acc ≥ thr, kept)")
    cens = ~grokked & (fits["phase"] != "diverged").to_numpy()
    if cens.any():
        ax.scatter(xj[cens], np.full(cens.sum(), budget), marker=r"$\uparrow$", color="tab:red", s=90,
                   zorder=3, label="censored (no grokking within budget)")
    finite = cell[np.isfinite(cell["median_t_val"])]
    if len(finite):
        cx = np.array([mapping[float(v)] for v in finite[x_name]])
        hi = np.where(np.isinf(finite["ci_high"]), budget, finite["ci_high"])
        ax.errorbar(cx, finite["median_t_val"], yerr=[finite["median_t_val"] - finite["ci_low"],
                                                      hi - finite["median_t_val"]],
                    fmt="s", color="black", ms=6, capsize=4, zorder=4, label="KM median t_val, 95% CI")
    law = fit_law(fits) if with_law else None
    if law is not None:
        line = np.geomspace(law.x_min, law.x_max, 50)
        ax.plot(line, np.exp(law.c) * line**law.alpha, "--", color="black", lw=1.2, zorder=2,
                label=f"fit: t ∝ {law.x_name}^{law.alpha:.2f} [{law.alpha_low:.2f}, {law.alpha_high:.2f}]")
    ax.axhline(budget, color="gray", lw=0.8, ls=":", zorder=1)
    ax.set_xscale("log")
    ax.set_yscale("log")
    if 0.0 in mapping:
        ax.axvline(bounds[1], color="gray", lw=0.8)
        ax.text(mapping[0.0], 1.0, f"{x_name}=0", transform=ax.get_xaxis_transform(), ha="center",
                va="bottom", fontsize=8)
    ax.set_xlabel(x_name)
    ax.set_ylabel("steps")
    ax.grid(True, which="major", alpha=0.3)


def _with_axes(df: pd.DataFrame, axes: list[str]) -> pd.DataFrame:
    df.attrs = dict(df.attrs, axes=axes)
    return df


def _heatmap(ax: plt.Axes, fits: pd.DataFrame, x_name: str, y_name: str, fig: Figure) -> None:
    cell = cells(_with_axes(fits.copy(), [x_name, y_name]))
    xv, yv = sorted(cell[x_name].unique()), sorted(cell[y_name].unique())
    grid = np.full((len(yv), len(xv)), np.nan)
    for _, r in cell.iterrows():
        grid[yv.index(r[y_name]), xv.index(r[x_name])] = (np.log10(r["median_t_val"])
                                                           if np.isfinite(r["median_t_val"]) else np.nan)
    im = ax.imshow(grid, origin="lower", aspect="auto", cmap="viridis_r")
    for _, r in cell.iterrows():
        ax.text(xv.index(r[x_name]), yv.index(r[y_name]), r["phase"][:4], ha="center", va="center",
                fontsize=8, color="white" if np.isfinite(r["median_t_val"]) else "black")
    ax.set_xticks(range(len(xv)), [f"{v:g}" for v in xv], rotation=45)
    ax.set_yticks(range(len(yv)), [f"{v:g}" for v in yv])
    ax.set_xlabel(x_name)
    ax.set_ylabel(y_name)
    fig.colorbar(im, ax=ax, label="log10 median t_val (blank: censored)")


def plot_phase_diagram(fits: pd.DataFrame, ax: plt.Axes | None = None) -> Figure:
    """The phase diagram of a fitted sweep (``grokjax.fit`` output).

    One numeric axis (wd, or the first swept one): x = that value (log), y = steps (log), every seed's
    t_train and t_val, KM medians with 95% intervals, censored runs as arrows at the budget, background
    shaded by majority phase, the fitted law. Two numeric axes: a heatmap of log median t_val with each
    cell's phase. Structural axes (p, op, sizes) become facets.
    """
    numeric = _numeric_axes(fits)
    facets = _facets(fits)
    if ax is not None and len(facets) > 1:
        raise ValueError("a sweep with structural facets needs its own figure; call without ax")
    if ax is None:
        ncols = min(len(facets), 3)
        nrows = math.ceil(len(facets) / ncols)
        fig, axes = plt.subplots(nrows, ncols, figsize=(8.5 * ncols, 5.5 * nrows), squeeze=False, dpi=110)
        axes_list = list(axes.ravel())
    else:
        fig, axes_list = ax.figure, [ax]
    for (label, sub), a in zip(facets, axes_list):
        if len(numeric) >= 2:
            _heatmap(a, sub, numeric[0], numeric[1], fig)
        else:
            _diagram_1d(a, sub, numeric[0], with_law=numeric[0] == "wd")
            handles, labels = a.get_legend_handles_labels()
            phases = sorted(set(sub["phase"]), key=list(PHASE_COLORS).index)
            handles += [plt.Rectangle((0, 0), 1, 1, color=PHASE_COLORS[p], alpha=0.6) for p in phases]
            labels += [f"majority phase: {p}" for p in phases]
            a.legend(handles, labels, fontsize=8, loc="best", framealpha=0.9)
        if label:
            a.set_title(label, fontsize=10)
    for a in axes_list[len(facets):]:
        a.set_visible(False)
    fig.suptitle(f"Grokking phase diagram\n{_title(fits)}", fontsize=10)
    fig.tight_layout()
    return fig


def plot_curves(results_metrics: pd.DataFrame, fits: pd.DataFrame) -> Figure:
    """Train (dashed) and validation (solid) accuracy against log step, coloured by wd."""
    fig, ax = plt.subplots(figsize=(9, 5.5), dpi=110)
    wds = np.sort(fits["wd"].unique())
    cmap = plt.get_cmap("viridis")
    color = {w: cmap(i / max(len(wds) - 1, 1)) for i, w in enumerate(wds)}
    wd_of = fits.set_index("run_id")["wd"]
    for rid, m in results_metrics.groupby("run_id"):
        c = color[wd_of[rid]]
        m = m[m["step"] > 0]
        ax.plot(m["step"], m["train_acc"], ls="--", lw=0.8, color=c, alpha=0.7)
        ev = m[m["val_acc"].notna()]
        ax.plot(ev["step"], ev["val_acc"], lw=1.2, color=c, alpha=0.9)
    for w in wds:
        ax.plot([], [], color=color[w], label=f"wd={w:g}")
    ax.plot([], [], "k--", lw=0.8, label="train")
    ax.plot([], [], "k-", lw=1.2, label="validation")
    ax.set_xscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("accuracy")
    ax.set_ylim(-0.02, 1.02)
    ax.legend(fontsize=8, ncol=2)
    ax.set_title(f"Learning curves\n{_title(fits)}", fontsize=9)
    fig.tight_layout()
    return fig
