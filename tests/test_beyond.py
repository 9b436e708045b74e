"""The measures beyond t_grok, against constructed curves with known answers: epoch-wise double descent of
the val loss and the norm-gap relation (grokjax.analysis.beyond), and the cell's count of double descents."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from grokjax.analysis.beyond import curve_measures, double_descent, norm_gap
from grokjax.analysis.norm_gap import fit_norm_gap, plot_norm_gap
from grokjax.analysis.survival import cells

STEPS = np.arange(0, 2001, 10)


def _descent_curve(spike: bool = True) -> np.ndarray:
    """log10 val loss: 0 -> -1 at step 500, up to 0 at 1000, down to -2 at 2000 (the second descent
    crosses -1 at 1500); with one evaluation spiking a decade up at 1700, which is not a peak."""
    y = np.interp(STEPS, [0, 500, 1000, 2000], [0.0, -1.0, 0.0, -2.0])
    if spike:
        y[STEPS == 1700] += 1.0
    return 10 ** y


def test_a_double_descent_is_found_where_it_was_built():
    d = double_descent(STEPS, _descent_curve(), t_train=100.0)
    # the running median flattens a kink over an evaluation or two either side
    assert abs(d["t_val_loss_min"] - 500) <= 20 and abs(d["t_val_loss_peak"] - 1000) <= 20
    assert d["val_loss_peak_height"] == pytest.approx(1.0, abs=0.05)
    assert 1500 <= d["t_second_descent"] <= 1530 and d["n_val_loss_peaks"] == 1


def test_no_double_descent_before_memorization_or_without_a_rise():
    none = double_descent(STEPS, _descent_curve(), t_train=math.nan)
    assert none["n_val_loss_peaks"] == 0 and all(math.isnan(none[k]) for k in none if k != "n_val_loss_peaks")
    late = double_descent(STEPS, _descent_curve(), t_train=600.0)  # the minimum came before it memorized
    assert math.isnan(late["t_val_loss_min"]) and late["n_val_loss_peaks"] == 1
    falling = double_descent(STEPS, 10 ** np.linspace(0, -3, STEPS.size), t_train=100.0)
    assert math.isnan(falling["t_val_loss_min"]) and falling["n_val_loss_peaks"] == 0
    y = np.interp(STEPS, [0, 500, 1000, 2000], [0.0, -1.0, 0.0, -0.5])  # rises and never falls back
    stuck = double_descent(STEPS, 10 ** y, t_train=100.0)
    assert abs(stuck["t_val_loss_peak"] - 1000) <= 20 and math.isnan(stuck["t_second_descent"])


def test_the_norm_gap_is_read_at_the_first_evaluation_at_or_after_each_time():
    evals = pd.DataFrame({"step": [0, 50, 100, 150], "train_loss": [4.0, 1.0, 0.5, 0.1],
                          "val_loss": [4.0, 3.0, 2.0, 0.2], "param_norm": [10.0, 12.0, 11.0, 6.0]})
    g = norm_gap(evals, t_train=45.0, t_val=100.0, n_train=8)
    assert g["gap_t_train"] == 2.0 and g["norm2_per_n_t_train"] == 144 / 8
    assert g["gap_t_val"] == 1.5 and g["norm2_per_n_t_val"] == 121 / 8
    assert g["gap_end"] == pytest.approx(0.1) and g["norm2_per_n_end"] == 36 / 8
    never = norm_gap(evals, t_train=math.nan, t_val=math.nan, n_train=8)
    assert math.isnan(never["gap_t_train"]) and math.isnan(never["norm2_per_n_t_val"]) and never["gap_end"] > 0


def test_a_cell_counts_its_runs_with_a_double_descent():
    rows = []
    for seed in range(3):
        m = pd.DataFrame({"step": STEPS, "train_loss": 1e-3, "param_norm": 5.0,
                          "val_loss": _descent_curve() if seed < 2 else 10 ** np.linspace(0, -3, STEPS.size)})
        rows.append({"wd": 0.1, "seed": seed, "t_train": 100.0, "t_val": math.nan, "delay": math.nan,
                     "censored": True, "phase": "memorization", "budget": 2001.0, "max_val_acc": 0.5,
                     "final_val_acc": 0.5} | curve_measures(m, 100.0, math.nan, 100))
    fits = pd.DataFrame(rows)
    fits.attrs.update(axes=["wd", "seed"])
    assert cells(fits, n_boot=10)["n_double_descent"].tolist() == [2]


def test_the_norm_gap_slope_of_a_known_power_law():
    """gap = 0.3 (||theta||^2/n)^2 times noise of 5%: the slope's interval holds 2 and is narrow; runs with a
    gap <= 0 are left out; the figure draws the fitted line."""
    rng = np.random.default_rng(0)
    x = np.geomspace(0.5, 8, 40)
    fits = pd.DataFrame({"wd": np.repeat([0.1, 1.0], 20), "frac": 0.5, "norm2_per_n_end": x,
                         "gap_end": 0.3 * x ** 2 * np.exp(rng.normal(0, 0.05, x.size)),
                         "norm2_per_n_t_train": x, "gap_t_train": 1.0})
    fits.loc[0, "gap_end"] = -0.1
    fit = fit_norm_gap(fits)
    assert fit.n == 39 and fit.low < 2 < fit.high and fit.high - fit.low < 0.1, fit
    assert str(fit).startswith("norm-gap at end: gap ∝ (‖θ‖²/n)^2.0")
    fig = plot_norm_gap(fits)
    assert any(line.get_label().startswith("norm-gap at end") for line in fig.axes[0].get_lines())
    assert "1 point(s) with a gap ≤ 0 not drawn" in fig._suptitle.get_text()


def _sling_run(turn: bool, shrink: float = 0.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """3,000 steps: the train loss sits at 1e-7 and spikes to 0.1 at steps 1000 and 2200 (decaying back
    over 100 steps); the last layer's ln-norm grows 0.001 a step and, with ``turn``, falls 0.002 a step for
    100 steps after each spike; ``shrink`` is a steady ln-norm decay a step (weight decay)."""
    steps = np.arange(3000)
    loss = np.full(steps.size, -7.0)
    slope = np.full(steps.size, 0.001) - shrink
    for s in (1000, 2200):
        after = (steps >= s) & (steps < s + 100)
        loss[after] = -1.0 - 6.0 * (steps[after] - s) / 100
        if turn:
            slope[after] = -0.002 - shrink
    loss[steps < 100] = 0.0  # before t_train
    return steps, 10 ** loss, np.exp(np.cumsum(slope))


def test_slingshots_are_spikes_at_which_the_last_layer_norm_turns():
    from grokjax.analysis.beyond import slingshots

    got = slingshots(*_sling_run(turn=True), t_train=100.0)
    assert got == {"n_slingshots": 2, "slingshot_steps": "1000,2200", "slingshot_period": 1200.0}
    assert slingshots(*_sling_run(turn=False), t_train=100.0)["n_slingshots"] == 0  # spikes, no turn
    steady = slingshots(*_sling_run(turn=False, shrink=0.01), t_train=100.0)  # wd shrinks it throughout
    assert steady["n_slingshots"] == 0
    assert slingshots(*_sling_run(turn=True), t_train=1500.0)["slingshot_steps"] == "2200"
    one = slingshots(*_sling_run(turn=True), t_train=2000.0)
    assert one["n_slingshots"] == 1 and math.isnan(one["slingshot_period"])


def test_without_the_norms_measure_slingshots_are_not_counted():
    steps, loss, norm = _sling_run(turn=True)
    m = pd.DataFrame({"step": steps, "train_loss": loss, "val_loss": np.where(steps % 50 == 0, 1.0, np.nan),
                      "param_norm": 1.0})
    got = curve_measures(m, 100.0, math.nan, 10)
    assert math.isnan(got["n_slingshots"]) and got["slingshot_steps"] == ""
    assert curve_measures(m.assign(unembed_norm=norm), 100.0, math.nan, 10)["n_slingshots"] == 2
