"""design=law against design=boundary and against grids, on a synthetic law with a known exponent.

Each run's grokking time is t = T (x / x*)^ALPHA exp(SIGMA z), z ~ N(0, 1): the law t ∝ wd^ALPHA with a
log-normal scatter, censored at the budget T (so P(grokked within T | x) is a probit in ln x with x* at its
middle). The candidates are 24 log-spaced values of x from 1e-2 to 10^0.5, 8 seeds each (the default sweep's
dense grid). Each design chooses 64 runs in 16 slots, two runs resolving per refill (as ``tests/test_design``
simulates); then ``analysis.law.fit_law`` fits the chosen runs, unchanged (Kaplan-Meier cells, bootstrap
interval). Reported per design, over DRAWS draws of the times: how often the fit has an interval, its mean
width, how often it holds ALPHA, and the model-steps the runs hold under stop=resolved (sum of min(t, T)).

    python benchmarks/law_design.py [DRAWS]   # default 40
"""

from __future__ import annotations

import sys
import time

import numpy as np
import pandas as pd

from grokjax.analysis.law import fit_law
from grokjax.design.chooser import PENDING, BoundaryDesign
from grokjax.design.law import LawDesign

ALPHA, SIGMA, T, X_STAR = -1.0, 0.35, 4000.0, 0.2
LEVELS, SEEDS, RUNS, SLOTS = np.logspace(-2, 0.5, 24), 8, 64, 16


def grokking_times(x: np.ndarray, draw: int) -> np.ndarray:
    return T * (x / X_STAR) ** ALPHA * np.exp(SIGMA * np.random.default_rng(draw).standard_normal(x.size))


def designed(cls: type[BoundaryDesign], x: np.ndarray, t: np.ndarray) -> np.ndarray:
    """The candidates ``cls`` chooses (indices), two runs resolving per refill."""
    design, grokked = cls(x, RUNS, SLOTS), (t < T).astype(np.int8)
    order, outcome, training = np.zeros(0, np.int64), np.full(x.size, PENDING, np.int8), []
    while len(order) < RUNS:
        done, training = training[:2], training[2:]
        outcome[done] = grokked[done]
        picks = [p.index for p in design.pick(SLOTS - len(training), order, outcome)]
        order, training = np.concatenate([order, picks]).astype(np.int64), training + picks
    return order


def law_of(x: np.ndarray, t: np.ndarray):
    g = t < T
    fits = pd.DataFrame({"wd": x, "phase": np.where(g, "grokking", "memorization"), "censored": ~g,
                         "t_val": np.where(g, t, np.nan), "budget": T, "t_train": 10.0})
    fits.attrs.update(axes=["wd", "seed"])
    return fit_law(fits, n_boot=500)


def main(draws: int) -> None:
    x = np.repeat(LEVELS, SEEDS)
    every_third = np.isin(np.arange(x.size) // SEEDS, np.arange(0, 24, 3))
    choosers = {"design=law, 64 runs": lambda t: designed(LawDesign, x, t),
                "design=boundary, 64 runs": lambda t: designed(BoundaryDesign, x, t),
                "grid 8 wd x 8 seeds, 64 runs": lambda t: np.flatnonzero(every_third),
                "dense grid 24 x 8, 192 runs": lambda t: np.arange(x.size)}
    print(f"alpha = {ALPHA}, sigma = {SIGMA}, budget {T:.0f}, x* = {X_STAR}; {draws} draws")
    print("| | with an interval | mean width | holds alpha | model-steps |")
    print("|---|---|---|---|---|")
    for name, choose in choosers.items():
        t0, rows = time.perf_counter(), []
        for draw in range(draws):
            t = grokking_times(x, draw)
            ix = choose(t)
            law = law_of(x[ix], t[ix])
            width = law.alpha_high - law.alpha_low
            rows.append((np.isfinite(width), width, law.alpha_low <= ALPHA <= law.alpha_high,
                         np.minimum(t[ix], T).sum()))
        ok, width, holds, steps = (np.array(c) for c in zip(*rows))
        print(f"| {name} | {ok.mean():.0%} | {np.nanmean(width) if ok.any() else np.nan:.3f} | "
              f"{holds.mean():.0%} | {steps.mean():,.0f} |  ({time.perf_counter() - t0:.0f} s)")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 40)
