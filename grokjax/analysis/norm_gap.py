"""The norm-gap relation across a sweep's runs: the generalization gap val_loss - train_loss against
||theta||^2 / n_train (``analysis.beyond`` gives each run's values), with the slope of log gap on log
||theta||^2/n and its 95% interval (``scipy.stats.linregress``), and the figure ``grokjax plot --norm-gap``
draws (norm_gap.png): colour = wd, marker = frac; hollow at t_train, filled at the end."""

from __future__ import annotations

import math
from dataclasses import dataclass

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from scipy import stats

from grokjax.analysis.plots import sweep_title

MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")


@dataclass(frozen=True)
class NormGapFit:
    """log10 gap = intercept + slope * log10(||theta||^2/n) over ``n`` runs (gap > 0) at ``at``; [low, high]:
    the slope's 95% interval (NaN with fewer than 3 runs)."""

    at: str
    slope: float
    low: float
    high: float
    intercept: float
    n: int

    def __str__(self) -> str:
        if not math.isfinite(self.slope):
            return f"norm-gap at {self.at}: too few runs with a positive gap ({self.n})"
        return (f"norm-gap at {self.at}: gap ∝ (‖θ‖²/n)^{self.slope:.2f} [{self.low:.2f}, {self.high:.2f}] "
                f"over {self.n} runs")


def fit_norm_gap(fits: pd.DataFrame, at: str = "end") -> NormGapFit:
    """The log-log slope of the gap on ||theta||^2/n at ``at`` (t_train, t_val or end); runs with a gap
    <= 0 or a missing value are left out."""
    x, y = fits.get(f"norm2_per_n_{at}"), fits.get(f"gap_{at}")
    if x is None or y is None:
        return NormGapFit(at, math.nan, math.nan, math.nan, math.nan, 0)
    ok = (x > 0) & (y > 0) & np.isfinite(x) & np.isfinite(y)
    lx, ly = np.log10(x[ok].to_numpy(float)), np.log10(y[ok].to_numpy(float))
    if ok.sum() < 3 or np.ptp(lx) == 0:
        return NormGapFit(at, math.nan, math.nan, math.nan, math.nan, int(ok.sum()))
    r = stats.linregress(lx, ly)
    half = stats.t.ppf(0.975, len(lx) - 2) * r.stderr
    return NormGapFit(at, float(r.slope), float(r.slope - half), float(r.slope + half), float(r.intercept),
                      len(lx))


def plot_norm_gap(fits: pd.DataFrame) -> Figure:
    """The gap against ||theta||^2/n of every run, at t_train (hollow) and at the end (filled, with the
    fitted line), log-log; runs with a gap <= 0 are counted in the title."""
    fig = Figure(figsize=(9.5, 6), dpi=110)
    ax = fig.subplots()
    wds = np.sort(fits["wd"].unique())
    positive = wds[wds > 0]
    norm = matplotlib.colors.LogNorm(positive.min(), positive.max()) if len(positive) > 1 else None
    cmap = matplotlib.colormaps["viridis"]
    color = lambda w: cmap(norm(w)) if norm is not None and w > 0 else "gray"  # noqa: E731
    fracs = np.sort(fits["frac"].unique()) if "frac" in fits else np.array([math.nan])
    marker = {f: MARKERS[i % len(MARKERS)] for i, f in enumerate(fracs)}
    dropped = 0
    for at, filled in (("t_train", False), ("end", True)):
        x, y = fits[f"norm2_per_n_{at}"], fits[f"gap_{at}"]
        ok = (x > 0) & (y > 0)
        dropped += int((~ok & x.notna() & y.notna()).sum())
        for (w, f), sub in fits[ok].groupby(["wd", "frac"] if "frac" in fits else ["wd", "wd"]):
            c = color(w)
            ax.scatter(sub[f"norm2_per_n_{at}"], sub[f"gap_{at}"], marker=marker.get(f, "o"), s=22,
                       facecolors=c if filled else "none", edgecolors=c, lw=0.9, zorder=3)
    fit = fit_norm_gap(fits, "end")
    if math.isfinite(fit.slope):
        xs = np.geomspace(fits["norm2_per_n_end"][fits["norm2_per_n_end"] > 0].min(),
                          fits["norm2_per_n_end"].max(), 50)
        ax.plot(xs, 10 ** fit.intercept * xs ** fit.slope, "k--", lw=1.2, label=str(fit))
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("‖θ‖² / n_train")
    ax.set_ylabel("generalization gap: val loss − train loss (nats)")
    ax.grid(True, which="major", alpha=0.3)
    handles = [Line2D([], [], ls="", marker="o", mfc="none", mec="k", label="at t_train"),
               Line2D([], [], ls="", marker="o", color="k", label="at the end")]
    handles += [Line2D([], [], ls="", marker=marker[f], color="gray", label=f"frac={f:g}") for f in fracs
                if math.isfinite(f)]
    handles += ax.get_legend_handles_labels()[0]
    ax.legend(handles=handles, fontsize=7, loc="upper left", bbox_to_anchor=(1.18, 1.0))
    if norm is not None:
        fig.colorbar(matplotlib.cm.ScalarMappable(norm=norm, cmap=cmap), ax=ax, label="wd")
    extra = f"; {dropped} point(s) with a gap ≤ 0 not drawn" if dropped else ""
    fig.suptitle(f"Norm-gap relation\n{sweep_title(fits)}{extra}", fontsize=9)
    fig.tight_layout()
    return fig
