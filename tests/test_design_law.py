"""design=law: the slope variance it minimises, its rules (start, fill, anchor, law), and what it buys on a
synthetic law with a known exponent: every cell the fit reads full enough for an interval, the interval
holding the exponent, narrower than a grid of as many runs."""

from __future__ import annotations

import functools

import numpy as np
import pandas as pd
import pytest

from grokjax.analysis.law import fit_law
from grokjax.design.chooser import GROKKED, NOT_GROKKED, PENDING, BoundaryDesign
from grokjax.design.law import LawDesign, slope_variance

ALPHA, SIGMA, BUDGET, X_STAR = -1.0, 0.35, 4000.0, 0.2  # t = BUDGET (x / X_STAR)^ALPHA exp(SIGMA z)
LEVELS = np.logspace(-2, 0.5, 24)
X = np.repeat(LEVELS, 8)


def _times(draw: int) -> np.ndarray:
    return BUDGET * (X / X_STAR) ** ALPHA * np.exp(SIGMA * np.random.default_rng(draw).standard_normal(X.size))


def _simulate(cls, t: np.ndarray, runs: int = 64, slots: int = 16):
    """A design in ``slots`` slots, two runs resolving per refill: (the picks, their runs' outcomes)."""
    design, grokked = cls(X, runs, slots), (t < BUDGET).astype(np.int8)
    order, outcome, training, picks = np.zeros(0, np.int64), np.full(X.size, PENDING, np.int8), [], []
    while len(order) < runs:
        done, training = training[:2], training[2:]
        outcome[done] = grokked[done]
        new = design.pick(slots - len(training), order, outcome)
        picks += new
        order, training = np.concatenate([order, [p.index for p in new]]).astype(np.int64), training + [
            p.index for p in new]
    return picks, grokked


@functools.lru_cache(maxsize=None)
def _law_design_picks(draw: int) -> tuple:
    """design=law's picks on draw ``draw`` of the times (cached: two tests read the same draws)."""
    return tuple(_simulate(LawDesign, _times(draw))[0])


def _law(ix: np.ndarray, t: np.ndarray):
    g = t[ix] < BUDGET
    fits = pd.DataFrame({"wd": X[ix], "phase": np.where(g, "grokking", "memorization"), "censored": ~g,
                         "t_val": np.where(g, t[ix], np.nan), "budget": BUDGET, "t_train": 10.0})
    fits.attrs.update(axes=["wd", "seed"])
    return fit_law(fits, n_boot=300)


def test_the_slope_variance_is_that_of_least_squares_through_the_cell_medians():
    """V against the sandwich formula (X'X)^-1 X' diag(v) X (X'X)^-1 of ordinary least squares with cell
    variances v = 1 / (n p); infinite below three cells."""
    u = np.log([0.3, 0.5, 1.0, 2.0, 3.0])
    n, p = np.array([3, 8, 4, 8, 5]), np.array([0.75, 0.9, 1.0, 0.8, 1.0])
    design = np.stack([np.ones_like(u), u], axis=1)
    bread = np.linalg.inv(design.T @ design)
    sandwich = bread @ design.T @ np.diag(1 / (n * p)) @ design @ bread
    assert slope_variance(u, n, p) == pytest.approx(sandwich[1, 1], rel=1e-12)
    assert slope_variance(u[:2], n[:2], p[:2]) == np.inf
    assert slope_variance(np.zeros(3), n[:3], p[:3]) == np.inf


def test_the_start_fills_whole_cells_and_a_begun_grokking_cell_is_completed_first():
    """16 slots: 6 cells of 3 runs spread over the levels, ends included (the last cell gets the one run
    left); then the begun cell whose run grokked is completed before anything else."""
    design = LawDesign(X, 64, 16)
    first = design.pick(16, np.zeros(0, np.int64), np.full(X.size, PENDING, np.int8))
    levels, counts = np.unique(X[[p.index for p in first]], return_counts=True)
    assert [p.rule for p in first] == ["start"] * 16 and levels[0] == LEVELS[0] and levels[-1] == LEVELS[-1]
    assert counts.tolist() == [3, 3, 3, 3, 3, 1], counts
    order = np.array([p.index for p in first])
    outcome = np.full(X.size, PENDING, np.int8)
    outcome[order] = np.where(X[order] > 0.5, GROKKED, NOT_GROKKED)
    more = design.pick(2, order, outcome)
    assert [p.rule for p in more] == ["fill", "fill"] and all(X[p.index] == LEVELS[-1] for p in more)


def test_anchors_come_before_the_law_rule_and_each_is_filled_to_three_runs():
    """Three runs known at each level <= 0.1 (none grokked) and at the top (all grokked): one usable cell
    is complete, so the next runs open anchors below the top, each filled to three runs (fullest first),
    and only with three complete cells does the law rule pick, scoring a positive fall of V per run."""
    design = LawDesign(X, 60, 4)
    three = np.flatnonzero(np.arange(X.size) % 8 < 3)
    low, top = three[X[three] <= 0.1], three[X[three] == LEVELS[-1]]
    outcome = np.full(X.size, PENDING, np.int8)
    outcome[low], outcome[top] = NOT_GROKKED, GROKKED
    picks = design.pick(7, np.concatenate([low, top]), outcome)
    assert [p.rule for p in picks] == ["anchor", "fill", "fill", "anchor", "fill", "fill", "law"]
    first, second = X[picks[0].index], X[picks[3].index]
    assert LEVELS[-1] > first > second > 0.1 and all(X[p.index] == first for p in picks[:3])
    assert all(np.isnan(p.acquisition) for p in picks[:6]) and picks[6].acquisition > 0


def test_the_law_design_gives_the_exponent_an_interval_that_holds_it():
    """Three draws of a known law (alpha -1, scatter 0.35 in ln t, budget at x* = 0.2): 64 of 192 runs,
    every cell the fit reads with >= 3 runs, so the law has an interval, and it holds alpha; most runs after
    the start sit where runs mostly grok; the same outcomes give the same picks."""
    for draw in range(3):
        t = _times(draw)
        picks = _law_design_picks(draw)
        ix = np.array([p.index for p in picks])
        law = _law(ix, t)
        assert law.min_seeds >= 3 and law.alpha_low <= ALPHA <= law.alpha_high, (draw, law)
        later = X[ix[16:]]
        assert (later > X_STAR).mean() > 0.8, (draw, np.round(later, 3))  # P(grok) > 1/2 above x*
        assert {"start", "fill", "law"} <= {p.rule for p in picks}
        if draw == 0:  # the same outcomes give the same picks
            assert [p.index for p in _simulate(LawDesign, t)[0]] == ix.tolist()


def test_the_law_design_narrows_the_exponent_more_than_a_grid_of_as_many_runs():
    """Over four draws: the mean interval of alpha from design=law's 64 runs is narrower than from the grid
    of every third level x 8 seeds (64 runs), and the runs cost fewer model-steps; design=boundary's 64 runs
    leave the law without an interval (one seed at most levels)."""
    grid = np.flatnonzero(np.isin(np.arange(X.size) // 8, np.arange(0, 24, 3)))
    widths, cost = {"law": [], "grid": []}, {"law": [], "grid": []}
    for draw in range(4):
        t = _times(draw)
        for name, ix in (("law", np.array([p.index for p in _law_design_picks(draw)])), ("grid", grid)):
            law = _law(ix, t)
            widths[name].append(law.alpha_high - law.alpha_low)
            cost[name].append(np.minimum(t[ix], BUDGET).sum())
    assert np.mean(widths["law"]) < np.mean(widths["grid"]), widths
    assert np.mean(cost["law"]) < 0.75 * np.mean(cost["grid"]), cost
    boundary = np.array([p.index for p in _simulate(BoundaryDesign, _times(0))[0]])
    assert not np.isfinite(_law(boundary, _times(0)).alpha_low)



def test_a_law_design_sweep_records_which_rule_chose_each_run(tmp_path, capsys):
    """Through the CLI, on a tiny real MLP (float64): 9 of 12 candidates in 2 slots; the start's two runs
    open one cell at the smallest wd; every chosen run has its rule, and the summary names the design."""
    import grokjax
    from conftest import merged
    from test_design import MLP

    from grokjax.cli import main

    out = tmp_path / "r"
    code = main(["sweep", *merged(MLP, ["steps=40", "stop=resolved", "design=law", "runs=9",
                                        "wd=logspace(-1,0.5,4)", "seeds=3"]), "--out", str(out), "--no-plot"])
    printed = capsys.readouterr().out
    assert code == 0 and "9 runs (design=law: chosen of 12 candidates)" in printed
    r = grokjax.load(out)
    chosen = r.runs[r.runs.design_round >= 0].sort_values(["design_round", "run_id"])
    assert len(chosen) == 9 and set(r.metrics.run_id) == set(chosen.run_id)
    assert chosen.design_rule.isin(["start", "fill", "boundary", "anchor", "law"]).all()
    start = chosen[chosen.design_round == 0]
    assert start.design_rule.eq("start").all() and len(start) == 2 and start.wd.nunique() == 1
    assert r.runs.loc[r.runs.design_round < 0, "design_rule"].isna().all()


def test_a_range_that_reaches_confusion_does_not_send_the_runs_to_the_ends():
    """Above wd 1.5 no run groks (confusion, which the monotone boundary model cannot fit): the values not
    yet run take the fraction seen at their neighbours, so in two draws at most 26 of the 64 runs go where
    nothing groks (below 0.1 or above 1.5; the monotone model alone sent 32 to 34 there), and the law's
    interval still holds alpha."""
    for draw in range(2):
        t = np.where(X > 1.5, np.inf, _times(draw))
        ix = np.array([p.index for p in _simulate(LawDesign, t)[0]])
        wasted = int(((X[ix] < 0.1) | (X[ix] > 1.5)).sum())
        law = _law(ix, t)
        assert wasted <= 26 and law.alpha_low <= ALPHA <= law.alpha_high, (draw, wasted, law)


def test_a_new_cell_is_opened_only_if_the_runs_left_can_complete_it():
    """Three complete grokking cells at the top and failures at wd <= 0.1: with 3 runs left the law rule
    opens a new cell lower down (more leverage); with 1 left it adds a seed to a complete cell instead, since
    a cell left at one run would cost the law its interval."""
    three = np.flatnonzero(np.arange(X.size) % 8 < 3)
    low, top = three[X[three] <= 0.1], three[X[three] >= LEVELS[-3]]
    order = np.concatenate([low, top])
    outcome = np.full(X.size, PENDING, np.int8)
    outcome[low], outcome[top] = NOT_GROKKED, GROKKED
    roomy, = LawDesign(X, len(order) + 3, 4).pick(1, order, outcome)
    last, = LawDesign(X, len(order) + 1, 4).pick(1, order, outcome)
    assert roomy.rule == last.rule == "law" and X[roomy.index] < LEVELS[-3] <= X[last.index]
