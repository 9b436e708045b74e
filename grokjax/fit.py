"""Memorization and grokking times per run, phases, per-cell survival statistics and the wd law.

Definitions (threshold 0.99 by default):

- ``t_train``: first logged step with train accuracy >= threshold (Power et al. 2022, "first reaches").
- ``t_val``: first evaluation step with validation accuracy >= threshold that it then KEEPS: at least a
  fraction ``keep`` (0.9) of the evaluations from there to the end stay >= threshold - slack (slack 0.01).
  A noisy spike before the transition does not count (the evaluations after it are mostly low), while a
  brief dip after grokking (seen with large lr*wd) does not postpone t_val; ``keep=1`` is the strict
  "never drops again" rule. ``t_val_first`` is Power et al.'s plain "first reaches" and ``t_val_interp`` linearly
  interpolates the crossing between the previous evaluation and ``t_val``.
- ``delay = t_val - t_train``; ``censored`` when t_val is never reached within the run's ``budget`` (the
  last step observed), so survival statistics can use the budget as a censoring time.
- Phases after Liu et al. 2022 ("Towards understanding grokking"): comprehension (train and val reach the
  threshold and delay <= gap), grokking (both, delay > gap), memorization (train only), confusion
  (neither); ``diverged`` when the loss became non-finite. Liu et al. used a gap of 10^3 steps, our
  default ``gap=1000``.
- A logistic in log10(step) fitted to validation accuracy gives the transition midpoint ``mid_step`` and
  its width ``width_decades`` where the curve rises far enough for one.
- Per cell (each combination of swept values other than the seed): Kaplan-Meier median of t_val with
  censored runs treated as censored (not as their budget), a bootstrap 95% interval, phase counts.
- The law (Omnigrok, Liu et al. 2022; Lyu et al. 2023 predict t_grok ~ 1/(lr*wd)): least squares of
  log t_val on log wd (or log lr*wd when lr is swept) over cells in the grokking/comprehension phases,
  with a bootstrap interval for the exponent alpha.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from grokjax.errors import UserError
from grokjax.store import FITS_PARQUET, Results, load

FIT_COLUMNS = ["t_train", "t_val", "delay", "censored", "phase", "budget", "t_val_first", "t_val_interp",
               "t_diverged", "mid_step", "width_decades", "final_train_acc", "final_val_acc"]
PHASES = ("comprehension", "grokking", "memorization", "confusion", "diverged")
GROKKED = ("comprehension", "grokking")


@dataclass(frozen=True)
class FitOptions:
    threshold: float = 0.99
    slack: float = 0.01
    gap: float = 1000.0
    keep: float = 0.9

    def check(self) -> "FitOptions":
        if not 0 < self.threshold <= 1:
            raise UserError(f"--threshold {self.threshold}: expected a number in (0, 1]")
        if not 0 <= self.slack < self.threshold:
            raise UserError(f"--slack {self.slack}: expected a number in [0, threshold)")
        if not self.gap >= 0:
            raise UserError(f"--gap {self.gap}: expected a number of steps >= 0")
        if not 0 < self.keep <= 1:
            raise UserError(f"--keep {self.keep}: expected a fraction in (0, 1]")
        return self


def _logistic(x: np.ndarray, lo: float, hi: float, mid: float, width: float) -> np.ndarray:
    return lo + (hi - lo) / (1 + np.exp(-(x - mid) / width))


def logistic_transition(steps: np.ndarray, acc: np.ndarray) -> tuple[float, float]:
    """Fit acc = lo + (hi-lo) * sigmoid((log10 step - mid)/width). Returns (10**mid, width) in decades,
    or NaNs when the curve does not rise by at least 0.5 or the fit fails."""
    keep = (steps > 0) & np.isfinite(acc)
    x, y = np.log10(steps[keep]), acc[keep]
    if x.size < 5 or y.max() - y.min() < 0.5:
        return math.nan, math.nan
    from scipy.optimize import curve_fit

    above = np.flatnonzero(y >= (y.min() + y.max()) / 2)
    p0 = [y.min(), y.max(), x[above[0]], 0.1]
    bounds = ([-0.1, 0.0, x.min() - 1, 1e-3], [1.0, 1.1, x.max() + 1, 5.0])
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            (lo, hi, mid, width), _ = curve_fit(_logistic, x, y, p0=p0, bounds=bounds, maxfev=5000)
    except (RuntimeError, ValueError):
        return math.nan, math.nan
    return float(10**mid), float(width)


def _first(steps: np.ndarray, mask: np.ndarray) -> float:
    hit = np.flatnonzero(mask)
    return float(steps[hit[0]]) if hit.size else math.nan


def fit_run(m: pd.DataFrame, opts: FitOptions = FitOptions()) -> dict[str, float | bool | str]:
    """Times and phase of one run from its metric rows (columns step, train_loss, train_acc, val_acc)."""
    m = m.sort_values("step")
    steps = m["step"].to_numpy()
    train_acc = m["train_acc"].to_numpy(dtype=float)
    loss = m["train_loss"].to_numpy(dtype=float)
    bad = ~np.isfinite(loss)
    t_div = _first(steps, bad)
    healthy = ~bad
    t_train = _first(steps[healthy], train_acc[healthy] >= opts.threshold)
    ev = m[m["val_acc"].notna()]
    ev_steps, val = ev["step"].to_numpy(), ev["val_acc"].to_numpy(dtype=float)
    reached = val >= opts.threshold
    # keeps[i]: at least a fraction `keep` of the evaluations from i to the end stay >= threshold - slack.
    above = (val >= opts.threshold - opts.slack).astype(float)
    keeps = np.flip(np.cumsum(np.flip(above))) / np.arange(len(val), 0, -1) >= opts.keep - 1e-12
    t_val = _first(ev_steps, reached & keeps)
    t_val_interp = t_val
    if np.isfinite(t_val):
        i = int(np.flatnonzero(ev_steps == t_val)[0])
        if i > 0 and val[i] > val[i - 1]:
            frac = (opts.threshold - val[i - 1]) / (val[i] - val[i - 1])
            t_val_interp = float(ev_steps[i - 1] + np.clip(frac, 0, 1) * (ev_steps[i] - ev_steps[i - 1]))
    mid, width = logistic_transition(ev_steps, val)
    delay = t_val - t_train
    if np.isfinite(t_div):
        phase = "diverged"
    elif np.isfinite(t_val):
        phase = "grokking" if np.isfinite(delay) and delay > opts.gap else "comprehension"
    elif np.isfinite(t_train):
        phase = "memorization"
    else:
        phase = "confusion"
    finite_val = val[np.isfinite(val)]
    return dict(
        t_train=t_train, t_val=t_val, delay=delay, censored=bool(not np.isfinite(t_val)), phase=phase,
        budget=float(steps.max() + 1) if steps.size else math.nan,
        t_val_first=_first(ev_steps, reached), t_val_interp=t_val_interp, t_diverged=t_div,
        mid_step=mid, width_decades=width,
        final_train_acc=float(train_acc[healthy][-1]) if healthy.any() else math.nan,
        final_val_acc=float(finite_val[-1]) if finite_val.size else math.nan,
    )


def fit_results(results: Results, opts: FitOptions = FitOptions()) -> pd.DataFrame:
    """One row per run: the runs table's hyperparameters plus the fitted times and phase."""
    opts.check()
    rows = []
    by_run = dict(tuple(results.metrics.groupby("run_id", sort=True)))
    for rid in results.runs["run_id"]:
        if rid in by_run:
            rows.append({"run_id": int(rid)} | fit_run(by_run[rid], opts))
    fits = pd.DataFrame(rows, columns=["run_id", *FIT_COLUMNS])
    fits = fits.merge(results.runs, on="run_id", how="left")
    fits.attrs.update(threshold=opts.threshold, slack=opts.slack, gap=opts.gap, keep=opts.keep,
                      axes=[a.rsplit(".", 1)[-1] for a in results.axes], path=str(results.path))
    return fits


def fit(path_or_results: str | Path | Results, threshold: float = 0.99, slack: float = 0.01,
        gap: float = 1000.0, keep: float = 0.9, save: bool = False) -> pd.DataFrame:
    """Python API of ``grokjax fit``: per-run fits as a DataFrame (written to fits.parquet if ``save``)."""
    results = path_or_results if isinstance(path_or_results, Results) else load(path_or_results)
    fits = fit_results(results, FitOptions(threshold, slack, gap, keep))
    if save:
        out = fits.copy()
        out.attrs = {}
        tmp = results.path / f".{FITS_PARQUET}.tmp"
        out.to_parquet(tmp, index=False)
        tmp.replace(results.path / FITS_PARQUET)
    return fits


# ----------------------------------------------------------------------------------------------------
# Survival statistics.


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


def _survival_arrays(cell: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
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
        times, observed = _survival_arrays(cell)
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
        times, observed = _survival_arrays(cell)
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


def summary_table(fits: pd.DataFrame, cell_stats: pd.DataFrame) -> str:
    """A plain-text per-cell table for the terminal."""
    axes = [a for a in cell_stats.columns if a not in _CELL_STAT_COLUMNS]
    header = "  ".join(f"{a:>8}" for a in axes) + "  seeds  grokked  median t_val [95% CI]      t_train  phase"
    lines = [header]
    for _, r in cell_stats.iterrows():
        vals = "  ".join(f"{_fmt(r[a]):>8}" for a in axes)
        med = _steps(r["median_t_val"])
        ci = f"[{_steps(r['ci_low'])}, {_steps(r['ci_high'])}]"
        lines.append(f"{vals}  {r['n_seeds']:>5}  {r['frac_grokked']:>7.0%}  {med:>12} {ci:<14}"
                     f"{_steps(r['median_t_train']):>7}  {r['phase']}")
    return "\n".join(lines)


_CELL_STAT_COLUMNS = {"n_seeds", "frac_grokked", "median_t_val", "ci_low", "ci_high", "median_t_train",
                      "phase"} | {f"n_{p}" for p in PHASES}


def _fmt(v: object) -> str:
    return f"{v:g}" if isinstance(v, (float, np.floating)) else str(v)


def _steps(v: float) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return ">budget" if math.isinf(v) else f"{v:.0f}"
