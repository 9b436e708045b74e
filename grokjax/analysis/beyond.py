"""What a run's curves show beyond t_train and t_val, for ONE run (``fit_results`` maps them over runs).

Epoch-wise double descent of the validation loss (Nakkiran et al. 2021; Davies et al. 2023, "Unifying
grokking and double descent": "test error first decreases, then increases, then decreases again"). The
rule: the evaluated val loss in log10, smoothed by a centred running median over ``SMOOTH_EVALS``
evaluations (edges repeated), which removes single-evaluation spikes but keeps a rise that lasts; its
local minima and maxima are the ones of topographic prominence >= ``PROMINENCE`` decades
(``scipy.signal.find_peaks``).

- ``t_val_loss_min``: the first such minimum after t_train (none before a run memorizes);
- ``t_val_loss_peak``: the first such maximum after it, ``val_loss_peak_height`` its height above the
  minimum in decades (log10 peak - log10 minimum, smoothed);
- ``t_second_descent``: the first evaluation after the peak whose smoothed loss is below the minimum's;
- ``n_val_loss_peaks``: the prominent maxima after t_train.

The norm-gap relation (the generalization gap against ||theta||^2 / n, as the weight-norm account of
grokking has it: Liu et al. 2022, Omnigrok; Varma et al. 2023): ``gap`` = val_loss - train_loss and
``norm2_per_n`` = param_norm^2 / n_train at the first evaluation at or after t_train, at or after t_val,
and at the last evaluation (suffixes ``_t_train``, ``_t_val``, ``_end``).

Slingshots (Thilak et al. 2022): cycles in which the last layer's norm grows while the train loss sits
near zero, then the loss spikes and the norm turns. The rule, on the logged train steps after t_train (it
needs ``measures=norms``, whose ``unembed_norm`` is logged at every logged step):

- a spike: log10 train_loss at least ``SPIKE_DECADES`` above its minimum over the previous
  ``SLING_WINDOW`` steps; spikes within ``SLING_WINDOW`` steps of the previous one are one event, at its
  first step s;
- a slingshot: a spike at which the last layer's norm turns: the slope of ln ``unembed_norm`` over
  [s, s + W] differs from its slope over [s - W, s] by at least ``NORM_TURN`` per W (W = SLING_WINDOW).
  Weight decay's steady shrinking changes both slopes alike and is not a turn.

``n_slingshots`` counts them, ``slingshot_steps`` lists their steps (comma-separated) and
``slingshot_period`` is the median spacing between consecutive ones.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from scipy.ndimage import median_filter
from scipy.signal import find_peaks

SMOOTH_EVALS = 5
PROMINENCE = 0.1  # decades of val loss
DESCENT_COLUMNS = ("t_val_loss_min", "t_val_loss_peak", "val_loss_peak_height", "t_second_descent",
                   "n_val_loss_peaks")
SPIKE_DECADES = 1.0
SLING_WINDOW = 50  # steps
NORM_TURN = 0.02  # change of ln-norm slope, per window
SLING_COLUMNS = ("n_slingshots", "slingshot_steps", "slingshot_period")
NORM_GAP_COLUMNS = tuple(f"{q}_{at}" for at in ("t_train", "t_val", "end") for q in ("gap", "norm2_per_n"))


def smoothed_log_loss(loss: np.ndarray) -> np.ndarray:
    """log10 of ``loss`` [n evaluations], centred running median over SMOOTH_EVALS evaluations."""
    return median_filter(np.log10(np.maximum(loss, 1e-300)), size=SMOOTH_EVALS, mode="nearest")


def double_descent(steps: np.ndarray, val_loss: np.ndarray, t_train: float) -> dict[str, float]:
    """The double-descent columns of one run from its evaluations (``steps`` [n], ``val_loss`` [n]);
    NaN (0 peaks) where the run never memorized or the curve has no prominent minimum after t_train."""
    out = dict.fromkeys(DESCENT_COLUMNS, math.nan) | {"n_val_loss_peaks": 0}
    ok = np.isfinite(val_loss)
    steps, loss = np.asarray(steps)[ok], np.asarray(val_loss, np.float64)[ok]
    if not np.isfinite(t_train) or len(loss) < 3:
        return out
    y = smoothed_log_loss(loss)
    maxima = find_peaks(y, prominence=PROMINENCE)[0]
    minima = find_peaks(-y, prominence=PROMINENCE)[0]
    maxima, minima = maxima[steps[maxima] > t_train], minima[steps[minima] > t_train]
    out["n_val_loss_peaks"] = len(maxima)
    if not len(minima):
        return out
    lo = int(minima[0])
    out["t_val_loss_min"] = float(steps[lo])
    later = maxima[maxima > lo]
    if not len(later):
        return out
    hi = int(later[0])
    out["t_val_loss_peak"], out["val_loss_peak_height"] = float(steps[hi]), float(y[hi] - y[lo])
    below = np.flatnonzero(y[hi:] < y[lo])
    out["t_second_descent"] = float(steps[hi + below[0]]) if len(below) else math.nan
    return out


def norm_gap(evals: pd.DataFrame, t_train: float, t_val: float, n_train: int) -> dict[str, float]:
    """The norm-gap columns of one run from its evaluation rows (columns step, train_loss, val_loss,
    param_norm; sorted by step) and its training pairs ``n_train``."""
    out = dict.fromkeys(NORM_GAP_COLUMNS, math.nan)
    steps = evals["step"].to_numpy()
    if not len(steps) or n_train <= 0:
        return out
    gap = (evals["val_loss"] - evals["train_loss"]).to_numpy(np.float64)
    norm2 = evals["param_norm"].to_numpy(np.float64) ** 2 / n_train
    for at, t in (("t_train", t_train), ("t_val", t_val), ("end", float(steps[-1]))):
        i = np.searchsorted(steps, t) if np.isfinite(t) else len(steps)
        if i < len(steps):
            out[f"gap_{at}"], out[f"norm2_per_n_{at}"] = float(gap[i]), float(norm2[i])
    return out


def slingshots(steps: np.ndarray, train_loss: np.ndarray, norm: np.ndarray, t_train: float) -> dict:
    """The slingshot columns of one run from its logged rows (``steps`` [n] sorted, ``train_loss`` [n],
    the last layer's ``norm`` [n]); 0 events before t_train or on a finite curve without spikes."""
    ok = np.isfinite(train_loss) & np.isfinite(norm) & (norm > 0)
    steps, loss, norm = np.asarray(steps)[ok], np.log10(np.maximum(train_loss[ok], 1e-300)), np.log(norm[ok])
    events: list[float] = []
    if np.isfinite(t_train) and len(steps) > 2:
        prior = pd.Series(loss, index=pd.to_datetime(steps, unit="s")).rolling(f"{SLING_WINDOW}s").min()
        prior = np.r_[np.inf, prior.to_numpy()[:-1]]  # the minimum before each step, the step left out
        spikes = steps[(loss - prior >= SPIKE_DECADES) & (steps > t_train)]
        starts = [float(s) for i, s in enumerate(spikes) if i == 0 or s - spikes[i - 1] > SLING_WINDOW]
        for s in starts:
            u0, u1, u2 = np.interp([s - SLING_WINDOW, s, s + SLING_WINDOW], steps, norm)
            if abs((u2 - u1) - (u1 - u0)) >= NORM_TURN:
                events.append(s)
    period = float(np.median(np.diff(events))) if len(events) > 1 else math.nan
    return {"n_slingshots": len(events), "slingshot_steps": ",".join(f"{e:.0f}" for e in events),
            "slingshot_period": period}


def curve_measures(m: pd.DataFrame, t_train: float, t_val: float, n_train: int) -> dict[str, float]:
    """Every set of columns for one run's metric rows ``m`` (any order); the slingshot columns are NaN
    (and "") without ``unembed_norm`` (measures=norms)."""
    ev = m[m["val_loss"].notna()].sort_values("step")
    out = (double_descent(ev["step"].to_numpy(), ev["val_loss"].to_numpy(np.float64), t_train)
           | norm_gap(ev, t_train, t_val, n_train))
    if "unembed_norm" not in m or m["unembed_norm"].isna().all():
        return out | {"n_slingshots": math.nan, "slingshot_steps": "", "slingshot_period": math.nan}
    tr = m[m["train_loss"].notna()].sort_values("step")
    return out | slingshots(tr["step"].to_numpy(), tr["train_loss"].to_numpy(np.float64),
                            tr["unembed_norm"].to_numpy(np.float64), t_train)
