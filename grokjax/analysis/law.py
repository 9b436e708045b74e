"""The wd -> grokking-time power laws (Omnigrok, Liu et al. 2022; Lyu et al. 2023 predict t ~ 1/(lr*wd)).

Fitted separately for the kept-rule ``t_val``, for the grokking delay ``t_val - t_train`` (the two
exponents can differ a lot) and for the first-reach ``t_val_first`` (how much the law depends on the rule
that defines t_val). A law is fitted only through at least ``MIN_LAW_CELLS`` cells: a line through two
points has no test of being a power law, and its bootstrap interval means little.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from grokjax.analysis.fit import GROKKED
from grokjax.analysis.survival import MIN_SEEDS_FOR_INTERVAL, TARGETS, kaplan_meier_median, survival_arrays

MIN_LAW_CELLS = 3  # distinct wd (or lr*wd) values whose runs mostly grok, with a finite KM median
TARGET_NAMES = {"t_val": "t_val (kept)", "delay": "delay t_val-t_train", "t_val_first": "t_val_first"}


@dataclass(frozen=True)
class Law:
    """log t = c + alpha * log x for t = ``target``, x = wd or lr*wd over ``n_cells`` distinct x values
    (``n_grid_cells`` cells of the grid: two cells may share lr*wd); [alpha_low, alpha_high] is a bootstrap
    95% interval (seeds resampled within cells), NaN with fewer than MIN_SEEDS_FOR_INTERVAL seeds in a cell.
    ``alpha`` is NaN when fewer than ``MIN_LAW_CELLS`` x values qualify: then there is no fit, only the
    count. ``left_out``: the x values not fitted, and why."""

    target: str
    x_name: str
    alpha: float
    alpha_low: float
    alpha_high: float
    c: float
    n_cells: int
    x_min: float
    x_max: float
    n_grid_cells: int = 0
    min_seeds: int = 0
    left_out: str = ""

    @property
    def fitted(self) -> bool:
        return math.isfinite(self.alpha)

    def __str__(self) -> str:
        name = TARGET_NAMES[self.target]
        x = "(lr·wd)" if self.x_name == "lr*wd" else self.x_name
        distinct = self.x_name.replace("*", "·")
        tail = f"; left out: {self.left_out}" if self.left_out else ""
        if not self.fitted:
            return (f"{name}: no law fitted: {self.n_cells} grokked cell(s), at least {MIN_LAW_CELLS} "
                    f"distinct {distinct} values needed{tail}")
        interval = (f"[{self.alpha_low:.2f}, {self.alpha_high:.2f}]" if math.isfinite(self.alpha_low)
                    else f"[n/a: {self.min_seeds} seed{'s' if self.min_seeds != 1 else ''}]")
        return (f"{name} ∝ {x}^{self.alpha:.2f} {interval} ({self.n_cells} distinct {distinct}, "
                f"{self.n_grid_cells} cells){tail}")


def _law_x(fits: pd.DataFrame) -> tuple[str, pd.Series]:
    axes = fits.attrs.get("axes", [])
    if "lr" in axes and "wd" in axes:
        return "lr*wd", fits["lr"] * fits["wd"]
    return "wd", fits["wd"]


def _slope(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    a, c = np.polyfit(np.log(x), np.log(y), 1)
    return float(a), float(c)


def fit_law(fits: pd.DataFrame, target: str = "t_val", n_boot: int = 1000, seed: int = 0,
            min_cells: int = MIN_LAW_CELLS) -> Law:
    """Fit the power law of ``target`` (one of ``TARGETS``) over cells (x values > 0) whose majority phase
    is grokking or comprehension and whose Kaplan-Meier median of the target is finite and > 0."""
    if target not in TARGETS:
        raise ValueError(f"target {target!r}: expected one of {', '.join(TARGETS)}")
    x_name, x = _law_x(fits)
    data = fits.assign(_x=x)
    cell_keys = [a for a in fits.attrs.get("axes", []) if a != "seed" and a in fits.columns] or ["wd"]
    left_out = [f"{x_name}=0 (no log)"] if (data["_x"] <= 0).any() else []
    data = data[data["_x"] > 0]
    groups = []
    for xv, cell in data.groupby("_x", sort=True):
        times, observed = survival_arrays(cell, target)
        med = kaplan_meier_median(times, observed) if times.size else math.nan
        majority = cell["phase"].value_counts().idxmax()
        if majority not in GROKKED:
            left_out.append(f"{x_name}={xv:g} ({majority})")
        elif not (np.isfinite(med) and med > 0):
            unconfirmed = int(cell["unconfirmed"].sum()) if "unconfirmed" in cell.columns else 0
            left_out.append(f"{x_name}={xv:g} (median censored" + (f", {unconfirmed} unconfirmed)" if unconfirmed
                                                                     else ")"))
        else:
            groups.append((float(xv), times, observed, med, cell))
    xs = np.array([g[0] for g in groups])
    n_grid = int(sum(len(g[4].groupby(cell_keys)) for g in groups))
    min_seeds = int(min((len(g[4]) for g in groups), default=0))
    why = ", ".join(left_out)
    if len(groups) < max(min_cells, 2):
        lo_x, hi_x = (float(xs.min()), float(xs.max())) if xs.size else (math.nan, math.nan)
        return Law(target, x_name, math.nan, math.nan, math.nan, math.nan, len(groups), lo_x, hi_x, n_grid,
                   min_seeds, why)
    alpha, c = _slope(xs, np.array([g[3] for g in groups]))
    if min_seeds < MIN_SEEDS_FOR_INTERVAL:
        return Law(target, x_name, alpha, math.nan, math.nan, c, len(groups), float(xs.min()), float(xs.max()),
                   n_grid, min_seeds, why)
    # Seeds resampled within each cell, and a resample kept only where >= 2 cells have a finite median: not
    # scipy.stats.bootstrap, which resamples but cannot drop the resamples where the slope is undefined.
    rng = np.random.default_rng(seed)
    boots = []
    for _ in range(n_boot):
        meds = np.array([kaplan_meier_median(t[i], o[i]) for _, t, o, _, _ in groups
                         for i in [rng.integers(0, t.size, t.size)]])
        ok = np.isfinite(meds) & (meds > 0)
        if ok.sum() >= 2 and np.unique(xs[ok]).size >= 2:
            boots.append(_slope(xs[ok], meds[ok])[0])
    lo, hi = (np.quantile(boots, [0.025, 0.975]) if boots else (math.nan, math.nan))
    return Law(target, x_name, alpha, float(lo), float(hi), c, len(groups), float(xs.min()), float(xs.max()),
               n_grid, min_seeds, why)


def fit_laws(fits: pd.DataFrame, n_boot: int = 1000, seed: int = 0) -> list[Law]:
    """The laws of every target: t_val (kept rule), the delay, and t_val_first (rule sensitivity)."""
    return [fit_law(fits, t, n_boot, seed) for t in TARGETS]


def laws_table(laws: list[Law], fits: pd.DataFrame, boundaries: list = ()) -> pd.DataFrame:
    """The laws as rows (laws.parquet), then the phase boundaries (``analysis.boundary.Boundary``) as rows
    of target = boundary, with the fit options they were computed under."""
    rows = [vars(law) | {"fitted": law.fitted} for law in laws] + [b.row() for b in boundaries]
    df = pd.DataFrame(rows)
    for key in ("threshold", "slack", "keep", "gap", "confirm"):
        df[key] = fits.attrs.get(key, math.nan)
    return df
