"""The wd -> grokking-time power law (Omnigrok; Lyu et al. 2023 predict t_grok ~ 1/(lr*wd))."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from grokjax.analysis.fit import GROKKED
from grokjax.analysis.survival import kaplan_meier_median, survival_arrays


@dataclass(frozen=True)
class Law:
    """log t_val = c + alpha * log x, x = wd or lr*wd; [alpha_low, alpha_high] is a bootstrap 95% interval."""

    x_name: str
    alpha: float
    alpha_low: float
    alpha_high: float
    c: float
    n_cells: int
    x_min: float
    x_max: float

    def __str__(self) -> str:
        return (f"t_grok ~ {self.x_name}^{self.alpha:.2f} [{self.alpha_low:.2f}, {self.alpha_high:.2f}] "
                f"({self.n_cells} cells)")


def _law_x(fits: pd.DataFrame) -> tuple[str, pd.Series]:
    axes = fits.attrs.get("axes", [])
    if "lr" in axes and "wd" in axes:
        return "lr*wd", fits["lr"] * fits["wd"]
    return "wd", fits["wd"]


def _slope(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    a, c = np.polyfit(np.log(x), np.log(y), 1)
    return float(a), float(c)


def fit_law(fits: pd.DataFrame, n_boot: int = 1000, seed: int = 0) -> Law | None:
    """Fit the power law over cells whose majority phase is grokking or comprehension and whose KM median
    is finite. None when fewer than two distinct x values qualify."""
    x_name, x = _law_x(fits)
    data = fits.assign(_x=x)
    data = data[data["_x"] > 0]
    groups = []
    for xv, cell in data.groupby("_x", sort=True):
        times, observed = survival_arrays(cell)
        med = kaplan_meier_median(times, observed)
        majority = cell["phase"].value_counts().idxmax()
        if majority in GROKKED and np.isfinite(med) and med > 0:
            groups.append((float(xv), times, observed, med))
    if len(groups) < 2:
        return None
    xs = np.array([g[0] for g in groups])
    alpha, c = _slope(xs, np.array([g[3] for g in groups]))
    rng = np.random.default_rng(seed)
    boots = []
    for _ in range(n_boot):
        meds = np.array([kaplan_meier_median(t[i], o[i]) for _, t, o, _ in groups
                         for i in [rng.integers(0, t.size, t.size)]])
        ok = np.isfinite(meds) & (meds > 0)
        if ok.sum() >= 2 and np.unique(xs[ok]).size >= 2:
            boots.append(_slope(xs[ok], meds[ok])[0])
    lo, hi = (np.quantile(boots, [0.025, 0.975]) if boots else (math.nan, math.nan))
    return Law(x_name, alpha, float(lo), float(hi), c, len(groups), float(xs.min()), float(xs.max()))


