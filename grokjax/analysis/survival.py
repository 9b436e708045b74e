"""Survival statistics per cell: Kaplan-Meier median of t_val with censoring, bootstrap intervals."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from grokjax.analysis.fit import GROKKED, PHASES


def kaplan_meier_median(times: np.ndarray, observed: np.ndarray) -> float:
    """Median of the Kaplan-Meier estimate: the first event time where S(t) <= 0.5; inf when the
    survival curve never gets there (more than half the runs censored before grokking)."""
    times, observed = np.asarray(times, float), np.asarray(observed, bool)
    surv = 1.0
    for t in np.unique(times[observed]):
        at_risk = np.sum(times >= t)
        events = np.sum((times == t) & observed)
        surv *= 1 - events / at_risk
        if surv <= 0.5 + 1e-12:
            return float(t)
    return math.inf


def survival_arrays(cell: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    ok = cell[cell["phase"] != "diverged"]
    observed = ~ok["censored"].to_numpy(bool)
    times = np.where(observed, ok["t_val"].to_numpy(float), ok["budget"].to_numpy(float))
    return times, observed


def _bootstrap_medians(times: np.ndarray, observed: np.ndarray, rng: np.random.Generator, n: int) -> np.ndarray:
    if times.size == 0:
        return np.full(n, math.inf)
    idx = rng.integers(0, times.size, size=(n, times.size))
    return np.array([kaplan_meier_median(times[i], observed[i]) for i in idx])


def cell_axes(fits: pd.DataFrame) -> list[str]:
    """The swept columns other than the seed (structural ones included: they make facets)."""
    return [a for a in fits.attrs.get("axes", []) if a not in ("seed",) and a in fits.columns]


def cells(fits: pd.DataFrame, n_boot: int = 500, seed: int = 0) -> pd.DataFrame:
    """Per cell of the grid: n_seeds, frac_grokked, KM median t_val with bootstrap 95% interval, phase
    counts and the majority phase."""
    axes = cell_axes(fits) or ["wd"]
    rng = np.random.default_rng(seed)
    rows = []
    for key, cell in fits.groupby(axes, sort=True):
        key = key if isinstance(key, tuple) else (key,)
        times, observed = survival_arrays(cell)
        boots = _bootstrap_medians(times, observed, rng, n_boot)
        counts = cell["phase"].value_counts()
        row = dict(zip(axes, key))
        row |= dict(n_seeds=len(cell), frac_grokked=float(np.mean(cell["phase"].isin(GROKKED))),
                    median_t_val=kaplan_meier_median(times, observed),
                    ci_low=float(np.quantile(boots, 0.025, method="inverted_cdf")),
                    ci_high=float(np.quantile(boots, 0.975, method="inverted_cdf")),
                    median_t_train=float(cell["t_train"].median()),
                    phase=str(counts.idxmax()))
        row |= {f"n_{p}": int(counts.get(p, 0)) for p in PHASES}
        rows.append(row)
    return pd.DataFrame(rows)


