"""Survival statistics per cell: Kaplan-Meier median of t_val with censoring, bootstrap intervals."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from grokjax.analysis.fit import GROKKED, PHASES


def kaplan_meier_median(times: np.ndarray, observed: np.ndarray) -> float:
    """Median of the Kaplan-Meier estimate: the first event time where S(t) <= 0.5; inf when the
    survival curve never gets there (more than half the runs censored before grokking).

    Hand-written for speed: ``scipy.stats.ecdf`` on ``CensoredData`` gives the same medians (tested on 500
    random censored samples) but took 410 us a call against 169 us here (2-core EPYC, 16 runs), and the
    bootstraps below call this 10^4-10^5 times per fit."""
    times, observed = np.asarray(times, float), np.asarray(observed, bool)
    surv = 1.0
    for t in np.unique(times[observed]):
        at_risk = np.sum(times >= t)
        events = np.sum((times == t) & observed)
        surv *= 1 - events / at_risk
        if surv <= 0.5 + 1e-12:
            return float(t)
    return math.inf


MIN_SEEDS_FOR_INTERVAL = 3  # a cell's bootstrap interval needs at least this many seeds (else NaN)

# What a survival statistic or a law can be about: the kept-rule t_val, the first-reach t_val_first, and
# the delay t_val - t_train (Omnigrok's and Lyu et al.'s grokking delay).
TARGETS = ("t_val", "delay", "t_val_first")


def survival_arrays(cell: pd.DataFrame, target: str = "t_val") -> tuple[np.ndarray, np.ndarray]:
    """(times, observed) of a cell's non-diverged runs for ``target``; a run that never reaches it is
    censored at its budget. The delay counts only runs that memorized (finite t_train), censored at
    budget - t_train."""
    ok = cell[cell["phase"] != "diverged"]
    budget = ok["budget"].to_numpy(float)
    if target == "t_val_first":
        t = ok["t_val_first"].to_numpy(float)
        observed = np.isfinite(t)
        return np.where(observed, t, budget), observed
    observed = ~ok["censored"].to_numpy(bool)
    t_val = ok["t_val"].to_numpy(float)
    if target == "delay":
        t_train = ok["t_train"].to_numpy(float)
        mem = np.isfinite(t_train)
        return np.where(observed, t_val - t_train, budget - t_train)[mem], observed[mem]
    if target != "t_val":
        raise ValueError(f"target {target!r}: expected one of {', '.join(TARGETS)}")
    return np.where(observed, t_val, budget), observed


def _bootstrap_medians(times: np.ndarray, observed: np.ndarray, rng: np.random.Generator, n: int) -> np.ndarray:
    """Kaplan-Meier medians of ``n`` resamples of a cell (with replacement). Not ``scipy.stats.bootstrap``:
    its percentile interval interpolates between the resampled medians, which are often infinite (more than
    half censored), giving NaN with warnings where the inverted-CDF quantile used here gives inf."""
    if times.size == 0:
        return np.full(n, math.inf)
    idx = rng.integers(0, times.size, size=(n, times.size))
    return np.array([kaplan_meier_median(times[i], observed[i]) for i in idx])


def cell_axes(fits: pd.DataFrame) -> list[str]:
    """The swept columns other than the seed (structural ones included: they make facets)."""
    return [a for a in fits.attrs.get("axes", []) if a not in ("seed",) and a in fits.columns]


def cells(fits: pd.DataFrame, n_boot: int = 500, seed: int = 0) -> pd.DataFrame:
    """Per cell of the grid: n_seeds, frac_grokked, KM median t_val and KM median delay (t_val - t_train)
    each with a bootstrap 95% interval, phase counts and the majority phase."""
    axes = cell_axes(fits) or ["wd"]
    rng = np.random.default_rng(seed)
    rows = []
    for key, cell in fits.groupby(axes, sort=True):
        key = key if isinstance(key, tuple) else (key,)
        times, observed = survival_arrays(cell)
        boots = _bootstrap_medians(times, observed, rng, n_boot)
        d_times, d_observed = survival_arrays(cell, "delay")
        d_boots = _bootstrap_medians(d_times, d_observed, rng, n_boot)
        counts = cell["phase"].value_counts()
        row = dict(zip(axes, key))
        q = (lambda b, p: float(np.quantile(b, p, method="inverted_cdf"))) if len(cell) >= MIN_SEEDS_FOR_INTERVAL \
            else (lambda b, p: math.nan)  # a bootstrap over 1 or 2 seeds resamples almost nothing
        row |= dict(n_seeds=len(cell),
                    n_double_descent=int(cell["t_second_descent"].notna().sum()) if "t_second_descent" in cell else 0,
                    frac_grokked=float(np.mean(cell["phase"].isin(GROKKED))),
                    median_t_val=kaplan_meier_median(times, observed),
                    ci_low=q(boots, 0.025), ci_high=q(boots, 0.975),
                    median_delay=kaplan_meier_median(d_times, d_observed) if d_times.size else math.nan,
                    delay_ci_low=q(d_boots, 0.025), delay_ci_high=q(d_boots, 0.975),
                    median_t_train=float(cell["t_train"].median()),
                    max_val_acc=float(cell["max_val_acc"].max()) if "max_val_acc" in cell else math.nan,
                    final_val_acc=float(cell["final_val_acc"].median()) if "final_val_acc" in cell else math.nan,
                    phase=str(counts.idxmax()))
        row |= {f"n_{p}": int(counts.get(p, 0)) for p in PHASES}
        rows.append(row)
    return pd.DataFrame(rows)


