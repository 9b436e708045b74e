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
- ``stop_step`` (``stop=resolved``): where a run left the program, grokked or diverged. Such a run is
  resolved, not censored: its last ``patience`` evaluations are >= 0.99, so t_val is found (for fit
  thresholds up to 0.99). The kept rule counts the evaluations a grokked run skipped (from stop_step to
  its budget) as kept, the assumption it stopped under, so t_train / t_val equal those of the same run
  trained to its budget unless it would have lost its generalization later.
- Phases after Liu et al. 2022 ("Towards understanding grokking"): comprehension (train and val reach the
  threshold and delay <= gap), grokking (both, delay > gap), memorization (train only), confusion
  (neither); ``diverged`` from the first step whose train loss is non-finite or above
  ``DIVERGENCE_LOSS`` (1e8), or whose parameters would have become non-finite: the engine freezes the run
  there and logs NaN from that step on, and ``t_diverged`` is that step. Liu et al. used a gap of 10^3 steps, our
  default ``gap=1000``.
- A logistic in log10(step) fitted to validation accuracy gives the transition midpoint ``mid_step`` and
  its width ``width_decades`` where the curve rises far enough for one.
- Per cell (each combination of swept values other than the seed): Kaplan-Meier median of t_val with
  censored runs treated as censored (not as their budget), a bootstrap 95% interval, phase counts.
  Diverged runs are left out of the Kaplan-Meier estimate: divergence is a competing event after which
  grokking cannot happen, and counting it as censoring would assume the run might still grok. They are
  counted in the cell's ``n_diverged`` (and ``n_seeds``), so a cell's median speaks of the runs that
  stayed finite.
- The law (Omnigrok, Liu et al. 2022; Lyu et al. 2023 predict t_grok ~ 1/(lr*wd)): least squares of
  log t_val on log wd (or log lr*wd when lr is swept) over cells in the grokking/comprehension phases,
  with a bootstrap interval for the exponent alpha.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from grokjax.analysis.beyond import DESCENT_COLUMNS, NORM_GAP_COLUMNS, SLING_COLUMNS, curve_measures
from grokjax.config.schedule import THRESHOLD, evals_between
from grokjax.config.structure import DIVERGENCE_LOSS
from grokjax.errors import UserError
from grokjax.grid.design import moving_axes
from grokjax.grid.expand import n_train_of
from grokjax.store.load import Results, load
from grokjax.tasks.tables import n_pairs_of
from grokjax.store.outputs import save_fits

FIT_COLUMNS = ["t_train", "t_val", "delay", "censored", "unconfirmed", "phase", "budget", "t_val_first",
               "t_val_interp", "t_diverged", "mid_step", "width_decades", "final_train_acc", "final_val_acc",
               "max_val_acc", "stop_step", *DESCENT_COLUMNS, *NORM_GAP_COLUMNS, *SLING_COLUMNS]
NEAR = 0.02  # a run whose best validation accuracy came this close to the threshold is a near miss
PHASES = ("comprehension", "grokking", "memorization", "confusion", "diverged")
GROKKED = ("comprehension", "grokking")


@dataclass(frozen=True)
class FitOptions:
    """The rules of ``fit_run`` (see the module's docstring); ``grokjax fit --NAME`` sets each."""

    threshold: float = THRESHOLD
    slack: float = 0.01
    gap: float = 1000.0
    keep: float = 0.9
    confirm: int = 3

    def check(self) -> "FitOptions":
        if not 0 < self.threshold <= 1:
            raise UserError(f"--threshold {self.threshold}: expected a number in (0, 1]")
        if not 0 <= self.slack < self.threshold:
            raise UserError(f"--slack {self.slack}: expected a number in [0, threshold)")
        if not self.gap >= 0:
            raise UserError(f"--gap {self.gap}: expected a number of steps >= 0")
        if not 0 < self.keep <= 1:
            raise UserError(f"--keep {self.keep}: expected a fraction in (0, 1]")
        if not (isinstance(self.confirm, int) and 0 <= self.confirm <= 1_000_000):
            raise UserError(f"--confirm {self.confirm}: expected a whole number of evaluations >= 0")
        return self


FIT_OPTION_NAMES = tuple(f.name for f in dataclasses.fields(FitOptions))


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


def fit_run(m: pd.DataFrame, opts: FitOptions = FitOptions(), skipped_evals: int = 0, steps: int | None = None
            ) -> dict[str, float | bool | str]:
    """Times and phase of one run from its metric rows (columns step, train_loss, train_acc, val_acc).
    ``skipped_evals``: evaluations a run stopped as grokked (stop=resolved) did not have before its budget;
    the kept rule counts them as kept, the assumption the run stopped under, so its t_val is that of the
    same run trained to the budget whenever it would have stayed grokked. ``steps``: the run's budget
    (its ``budget`` is the updates observed: at most ``steps``, whose row measures the final parameters)."""
    m = m.sort_values("step")
    budget_steps, steps = steps, m["step"].to_numpy()
    train_acc = m["train_acc"].to_numpy(dtype=float)
    loss = m["train_loss"].to_numpy(dtype=float)
    bad = ~np.isfinite(loss) | (np.nan_to_num(loss, nan=np.inf) > DIVERGENCE_LOSS)
    t_div = _first(steps, bad)
    healthy = ~bad
    t_train = _first(steps[healthy], train_acc[healthy] >= opts.threshold)
    ev = m[m["val_acc"].notna()]
    ev_steps, val = ev["step"].to_numpy(), ev["val_acc"].to_numpy(dtype=float)
    reached = val >= opts.threshold
    # keeps[i]: at least a fraction `keep` of the evaluations from i to the end stay >= threshold - slack.
    above = (val >= opts.threshold - opts.slack).astype(float)
    kept_after = np.flip(np.cumsum(np.flip(above))) + skipped_evals
    keeps = kept_after / (np.arange(len(val), 0, -1) + skipped_evals) >= opts.keep - 1e-12
    t_val = _first(ev_steps, reached & keeps)
    # A t_val needs `confirm` evaluations after it (a run that first reaches the threshold at the last
    # evaluation has nothing to keep): otherwise the run is censored and marked unconfirmed.
    unconfirmed = False
    if np.isfinite(t_val):
        after = len(val) - 1 - int(np.flatnonzero(ev_steps == t_val)[0]) + skipped_evals
        if after < opts.confirm:
            t_val, unconfirmed = math.nan, True
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
        t_train=t_train, t_val=t_val, delay=delay, censored=bool(not np.isfinite(t_val)), unconfirmed=unconfirmed,
        phase=phase,
        budget=float(min(steps.max() + 1, budget_steps or math.inf)) if steps.size else math.nan,
        t_val_first=_first(ev_steps, reached), t_val_interp=t_val_interp, t_diverged=t_div,
        mid_step=mid, width_decades=width,
        final_train_acc=float(train_acc[healthy][-1]) if healthy.any() else math.nan,
        final_val_acc=float(finite_val[-1]) if finite_val.size else math.nan,
        max_val_acc=float(finite_val.max()) if finite_val.size else math.nan,
    )


def _evals_between(stop_step: int, runs: pd.DataFrame, run_id: int) -> int:
    """Evaluation steps in [stop_step, steps] of a run (``config.schedule.evals_between``)."""
    row = runs.loc[runs["run_id"] == run_id].iloc[0]
    return evals_between(stop_step, int(row["steps"]), int(row["eval_every"]))


def fit_results(results: Results, opts: FitOptions = FitOptions()) -> pd.DataFrame:
    """One row per run: the runs table's hyperparameters plus the fitted times and phase."""
    opts.check()
    rows = []
    by_run = dict(tuple(results.metrics.groupby("run_id", sort=True)))
    grokked = results.stops[results.stops["reason"] == "grokked"]
    stopped = dict(zip(results.stops["run_id"].tolist(), results.stops["stop_step"].tolist()))
    skipped = {int(r.run_id): _evals_between(int(r.stop_step), results.runs, int(r.run_id))
               for r in grokked.itertuples()}
    for run in results.runs.itertuples():
        rid = run.run_id
        if rid in by_run:
            row = fit_run(by_run[rid], opts, skipped.get(int(rid), 0), int(run.steps))
            rows.append({"run_id": int(rid)} | row | {"stop_step": float(stopped.get(int(rid), math.nan))}
                        | curve_measures(by_run[rid], row["t_train"], row["t_val"], _n_train(run)))
    fits = pd.DataFrame(rows, columns=["run_id", *FIT_COLUMNS])
    fits = fits.merge(results.runs, on="run_id", how="left")
    fits.attrs.update(threshold=opts.threshold, slack=opts.slack, gap=opts.gap, keep=opts.keep,
                      confirm=opts.confirm, axes=results.axes, arm_keys=results.arm_keys, path=str(results.path),
                      **candidate_attrs(results))
    return fits


def _n_train(run) -> int:
    """The training pairs of a runs-table row (a namedtuple); 0 (no norm-gap columns) for a table without
    the task's keys."""
    if not all(hasattr(run, k) for k in ("frac", "op", "p")):
        return 0
    pairs = n_pairs_of(run.op, int(run.p), bool(getattr(run, "nonzero_y", False)),
                       getattr(run, "dataset", "algorithmic"))
    return n_train_of(float(run.frac), pairs)


def candidate_attrs(results: Results) -> dict:
    """The fits' attrs about the grid's candidate runs (all of them, trained or not): ``n_candidates``, and
    with one or two swept numbers ``candidates`` = {"axes": those, "cells": [[value..., count], ...]}, what
    the boundary counts and the figures mark as sampled or not."""
    axes = [a for a in moving_axes(results.axes) if a in results.runs.columns]
    out: dict = {"n_candidates": len(results.runs)}
    if 1 <= len(axes) <= 2 and len(results.runs):
        cells = results.runs.groupby(axes).size().reset_index()
        out["candidates"] = {"axes": axes, "cells": cells.to_numpy(np.float64).tolist()}
    return out


def fit(path_or_results: str | Path | Results, threshold: float = THRESHOLD, slack: float = 0.01,
        gap: float = 1000.0, keep: float = 0.9, confirm: int = 3, save: bool = False) -> pd.DataFrame:
    """Python API of ``grokjax fit``: per-run fits as a DataFrame (written to fits.parquet if ``save``)."""
    results = path_or_results if isinstance(path_or_results, Results) else load(path_or_results)
    fits = fit_results(results, FitOptions(threshold, slack, gap, keep, confirm))
    if save and not fits.empty:  # no metrics yet: nothing is written (an empty fits.parquet would mislead)
        save_fits(results.path, fits)
    return fits


