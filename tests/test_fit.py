"""Grokking times, phases, Kaplan-Meier, the power law and the phase diagram, on synthetic runs."""

from __future__ import annotations

import math
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from conftest import REPO, merged

import grokjax
from grokjax.analysis.fit import FitOptions, fit_run
from grokjax.analysis.law import fit_law
from grokjax.analysis.plots import plot_phase_diagram
from grokjax.analysis.survival import cells, kaplan_meier_median
from grokjax.store.load import Results
from grokjax.store.outputs import save_figure

STEPS, EVAL = 3000, 100


def curve(t_train=None, t_val=None, spikes=(), diverge=None, steps=STEPS):
    """Metric rows of one synthetic run: accuracies step from 0.1 to 1.0 at the given steps."""
    step = np.arange(steps)
    train = np.where(step >= (t_train if t_train is not None else steps + 1), 1.0, 0.1)
    val = np.where(step >= (t_val if t_val is not None else steps + 1), 1.0, 0.05)
    for s in spikes:
        val[s] = 0.995
    loss = np.where(train > 0.5, 0.01, 2.0)
    if diverge is not None:
        loss[diverge:] = np.nan
    is_eval = (step % EVAL == 0) | (step == steps - 1)
    return pd.DataFrame({"step": step, "train_loss": loss, "train_acc": train,
                         "val_loss": np.where(is_eval, 1.0, np.nan), "val_acc": np.where(is_eval, val, np.nan)})


def test_known_transitions_are_exact():
    r = fit_run(curve(t_train=130, t_val=1700))
    assert (r["t_train"], r["t_val"], r["delay"], r["censored"]) == (130, 1700, 1570, False)
    assert r["phase"] == "grokking" and r["budget"] == STEPS
    assert 1600 < r["t_val_interp"] <= 1700
    assert 1600 < r["mid_step"] < 1800


def test_spikes_before_the_transition_do_not_count():
    r = fit_run(curve(t_train=100, t_val=2000, spikes=(500, 900)))
    assert r["t_val_first"] == 500 and r["t_val"] == 2000


def test_brief_dips_after_grokking_do_not_postpone_t_val():
    rows = curve(t_train=100, t_val=600)
    rows.loc[rows.step == 1500, "val_acc"] = 0.88  # one evaluation dips, then it recovers
    assert fit_run(rows)["t_val"] == 600
    assert fit_run(rows, FitOptions(keep=1.0))["t_val"] == 1600  # the strict rule waits for the last dip


def test_a_stopped_runs_skipped_evaluations_count_as_kept():
    """stop=resolved: a run that dipped right after t_val and stopped three evaluations after recovering
    has a short tail, in which one dip weighs more than in the budget run's; counting the evaluations it
    skipped as kept gives the budget run's t_val."""
    rows = curve(t_train=100, t_val=600)
    rows.loc[rows.step == 700, "val_acc"] = 0.88  # a spike after grokking, then it recovers
    full = fit_run(rows)["t_val"]
    stopped = rows[rows.step < 1100]  # evaluations 600..1000: the dip is 1 of 5
    skipped = len(range(1100, STEPS, EVAL)) + 1  # the evaluations to the budget (and the last step)
    # truncated: the dip postpones t_val to 800, which only 2 evaluations follow (unconfirmed under --confirm 3)
    assert full == 600 and fit_run(stopped, FitOptions(confirm=2))["t_val"] == 800
    assert fit_run(stopped)["unconfirmed"] and math.isnan(fit_run(stopped)["t_val"])
    assert fit_run(stopped, skipped_evals=skipped)["t_val"] == full


def test_a_t_val_needs_confirm_evaluations_after_it():
    """A run first at the threshold at its last evaluation has nothing to keep: censored, unconfirmed
    (the default sweep printed a law through such a cell, median t_val 3999 of a 4000-step budget)."""
    rows = curve(t_train=100, t_val=STEPS - 1)
    late = fit_run(rows)
    assert late["censored"] and late["unconfirmed"] and math.isnan(late["t_val"]) and late["t_val_first"] == 2999
    assert late["phase"] == "memorization" and late["max_val_acc"] == 1.0 and late["final_val_acc"] == 1.0
    two_after = curve(t_train=100, t_val=2700)  # evaluations 2700, 2800, 2900 and the last step 2999
    assert fit_run(two_after)["t_val"] == 2700 and not fit_run(two_after)["unconfirmed"]
    assert math.isnan(fit_run(two_after, FitOptions(confirm=4))["t_val"])
    assert fit_run(rows, FitOptions(confirm=0))["t_val"] == 2999


def test_censored_runs():
    r = fit_run(curve(t_train=100))
    assert r["censored"] and math.isnan(r["t_val"]) and math.isnan(r["delay"]) and r["budget"] == STEPS


@pytest.mark.parametrize("kwargs, phase", [
    (dict(t_train=100, t_val=300), "comprehension"),
    (dict(t_train=100, t_val=2500), "grokking"),
    (dict(t_train=100), "memorization"),
    (dict(), "confusion"),
    (dict(t_train=100, diverge=700), "diverged"),
])
def test_liu_phases_and_diverged(kwargs, phase):
    assert fit_run(curve(**kwargs), FitOptions(gap=1000))["phase"] == phase


def test_gap_is_configurable():
    assert fit_run(curve(t_train=100, t_val=300), FitOptions(gap=100))["phase"] == "grokking"


def test_kaplan_meier_median_hand_computed():
    # times 2,3+,4,5,6+,7 (+ = censored). S: after 2 -> 5/6; after 4 (3 at risk... 4 at risk) -> 5/6*3/4=0.625;
    # after 5 (3 at risk) -> 0.625*2/3 = 0.4167 <= 0.5, so the median is 5.
    t = np.array([2, 3, 4, 5, 6, 7])
    observed = np.array([1, 0, 1, 1, 0, 1], bool)
    assert kaplan_meier_median(t, observed) == 5
    assert kaplan_meier_median(np.array([1, 9, 9]), np.array([1, 0, 0], bool)) == math.inf
    # A mean of budgets would say 6.3; KM says 4 for this set.
    assert kaplan_meier_median(np.array([4, 4, 4, 9, 9]), np.array([1, 1, 1, 0, 0], bool)) == 4


def test_kaplan_meier_median_equals_scipys_ecdf_on_random_censored_samples():
    """The hand-written median (kept for speed, see survival.py) against scipy.stats.ecdf on CensoredData."""
    from scipy import stats

    rng = np.random.default_rng(7)
    for _ in range(500):
        n = int(rng.integers(1, 20))
        times = rng.integers(1, 30, n) * 50.0
        observed = rng.random(n) < rng.random()
        expected = math.inf
        if observed.any():
            sf = stats.ecdf(stats.CensoredData(uncensored=times[observed], right=times[~observed])).sf
            hit = np.flatnonzero(sf.probabilities <= 0.5 + 1e-12)
            expected = float(sf.quantiles[hit[0]]) if hit.size else math.inf
        assert kaplan_meier_median(times, observed) == expected, (times, observed)


def synthetic_fits(alpha=-1.0, seeds=8, noise=0.1, seed=0, wds=(0.1, 0.3, 1.0, 3.0, 10.0)):
    rng = np.random.default_rng(seed)
    rows = []
    for i, wd in enumerate(wds):
        for s in range(seeds):
            t = 2000 * wd**alpha * math.exp(noise * rng.standard_normal())
            rows.append(dict(run_id=i * seeds + s, wd=wd, lr=1e-3, seed=s, t_train=50.0, t_val=t, delay=t - 50,
                             censored=False, phase="grokking", budget=1e6))
    fits = pd.DataFrame(rows)
    fits.attrs["axes"] = ["wd", "seed"]
    return fits


@pytest.mark.parametrize("alpha", [-1.0, -0.5])
def test_power_law_recovers_a_known_exponent(alpha):
    law = fit_law(synthetic_fits(alpha=alpha))
    assert law.n_cells == 5 and abs(law.alpha - alpha) < 0.1
    assert law.alpha_low <= alpha <= law.alpha_high and law.alpha_high - law.alpha_low < 0.3
    assert f"wd^{law.alpha:.2f}" in str(law)


def test_cells_treat_censoring_and_count_phases():
    fits = synthetic_fits(seeds=4)
    fits.loc[fits.run_id < 3, ["censored", "phase", "t_val"]] = [True, "memorization", np.nan]
    c = cells(fits).set_index("wd")
    assert c.loc[0.1, "n_memorization"] == 3 and c.loc[0.1, "median_t_val"] == math.inf
    assert c.loc[0.1, "phase"] == "memorization" and c.loc[1.0, "frac_grokked"] == 1.0
    assert c.loc[1.0, "ci_low"] <= c.loc[1.0, "median_t_val"] <= c.loc[1.0, "ci_high"]


def test_phase_diagram_figure(tmp_path):
    fits = synthetic_fits(seeds=3)
    fits.loc[[0, 1], ["censored", "phase", "t_val"]] = [True, "memorization", np.nan]
    fig = plot_phase_diagram(fits)
    ax = fig.axes[0]
    assert ax.get_xscale() == "log" and ax.get_yscale() == "log"
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert any("wd^" in t and "4 cells" in t for t in labels) and any("delay" in t and "wd^" in t for t in labels)
    assert "budget (1000000 steps)" in labels and any("over 3 seeds" in t for t in labels)
    offsets = {c.get_label(): len(c.get_offsets()) for c in ax.collections if c.get_label()[:1] != "_"}
    assert offsets["t_train per seed (train acc ≥ 0.99)"] == len(fits)
    assert offsets["t_val per seed (val acc ≥ 0.99, kept)"] == len(fits) - 2
    assert offsets["censored: no t_val within budget (count)"] == 1  # one arrow for the wd's two runs
    texts = [t.get_text() for t in ax.texts]
    assert "×2" in texts and "1/3\ngrokked" in texts and texts.count("3/3\ngrokked") == 4
    # the censored arrow sits beside the band's centre (where the median's bar is), above the budget
    (arrow,) = [c for c in ax.collections if c.get_label().startswith("censored")]
    (ax_, ay_), = arrow.get_offsets()
    assert ax_ > 0.1 * 1.1 and ay_ > 1e6
    # the wd ticks are the swept values, not only the decades
    assert [t.get_text() for t in ax.get_xticklabels()] == ["0.1", "0.3", "1", "3", "10"]
    # a cell whose interval reaches past the budget is drawn open (a dashed arrow), not as a closed bar
    fits.loc[fits.wd == 0.3, ["censored", "phase", "t_val"]] = [True, "memorization", np.nan]
    fits.loc[fits.run_id == 3, ["censored", "phase", "t_val"]] = [False, "grokking", 5000.0]
    fits.loc[fits.run_id == 4, ["censored", "phase", "t_val"]] = [False, "grokking", 6000.0]
    labels = [t.get_text() for t in plot_phase_diagram(fits).axes[0].get_legend().get_texts()]
    assert "CI open above the budget (dashed arrow)" in labels
    path = save_figure(fig, tmp_path / "phase_diagram.png")
    from matplotlib.image import imread

    h, w = imread(path).shape[:2]
    assert w >= 800 and h >= 500


def test_zero_weight_decay_gets_its_own_panel_and_few_cells_no_law():
    fits = synthetic_fits(seeds=2, wds=(1e-9, 0.3, 1.0))
    fits.loc[fits.wd == 1e-9, ["wd", "censored", "phase", "t_val"]] = [0.0, True, "memorization", np.nan]
    fig = plot_phase_diagram(fits)
    zero, main_ax = fig.axes[0], fig.axes[1]
    assert [t.get_text() for t in zero.get_xticklabels()] == ["wd=0"]
    assert main_ax.get_xlim()[0] > 0.1  # the log axis holds only the positive wd values
    labels = [t.get_text() for t in main_ax.get_legend().get_texts()]
    assert "t_val (kept): no law (2 grokked cell(s) < 3)" in labels
    assert not any("wd^" in t for t in labels)


@pytest.mark.parametrize("own_figure", [True, False])
def test_a_sweep_with_every_wd_zero_draws_only_the_zero_panel(tmp_path, own_figure):
    """prieto2025 trains at wd = 0 only: no log-scaled wd axis is drawn (it crashed), the wd = 0 panel
    holds the runs and the legend."""
    import matplotlib.pyplot as plt

    fits = synthetic_fits(seeds=2, wds=(0.3,))
    fits["wd"] = 0.0
    ax = None if own_figure else plt.subplots()[1]
    fig = plot_phase_diagram(fits, ax=ax)
    save_figure(fig, tmp_path / "zero.png")
    shown = [a for a in fig.axes if a.get_visible()]
    assert len(shown) == 1 and [t.get_text() for t in shown[0].get_xticklabels()] == ["wd=0"]
    assert shown[0].get_legend() is not None and shown[0].get_xscale() == "linear"


def test_two_numeric_axes_give_a_heatmap():
    fits = pd.concat([synthetic_fits(seeds=2).assign(lr=lr) for lr in (1e-3, 3e-3)], ignore_index=True)
    fits.attrs["axes"] = ["wd", "lr", "seed"]
    fits.loc[fits.run_id == 0, ["censored", "phase", "t_val"]] = [True, "memorization", np.nan]
    fig = plot_phase_diagram(fits)
    assert fig.axes[0].images, "expected an image (heatmap)"
    texts = sorted(t.get_text() for t in fig.axes[0].texts)  # each cell: median t_val, grokked/seeds, phase
    c = cells(fits)
    n_grok = (c.n_grokking + c.n_comprehension).astype(int)
    want = sorted(f"{m:.0f}\n{g}/2\n{p[:4]}" for m, g, p in zip(c.median_t_val, n_grok, c.phase))
    assert texts == want and any("1/2" in t for t in texts)


def test_an_mlp_sweeps_title_names_the_mlp_and_not_the_transformers_keys():
    from grokjax.analysis.plots import sweep_title

    fits = synthetic_fits(seeds=2).assign(arch="mlp", d_model=128, n_heads=4, mlp_input="onehot", d_mlp=200)
    title = sweep_title(fits)
    assert "arch=mlp" in title and "d_mlp=200" in title and "n_heads" not in title and "d_model" not in title
    assert "d_model=128" in sweep_title(fits.assign(mlp_input="embed"))


@pytest.mark.slow
def test_fit_on_a_real_sweep_is_consistent_with_its_metrics(tmp_path, tiny):
    from grokjax.cli import main

    out = tmp_path / "r"
    args = merged(tiny, ["steps=200", "wd=[0.3,1]", "lr=1e-2"])
    assert main(["sweep", *args, "--out", str(out), "--quiet", "--no-plot"]) == 0
    assert main(["fit", str(out)]) == 0 and main(["plot", str(out), "--curves"]) == 0
    r = grokjax.load(out)
    fits = grokjax.fit(r)
    assert (out / "phase_diagram.png").exists() and (out / "curves.png").exists()
    saved = pd.read_parquet(out / "fits.parquet")
    assert {"run_id", "t_train", "t_val", "delay", "censored", "phase"} <= set(saved.columns)
    for f in fits.itertuples():
        m = r.metrics[r.metrics.run_id == f.run_id]
        if not math.isnan(f.t_train):
            assert m.loc[m.step == f.t_train, "train_acc"].iloc[0] >= 0.99
            assert (m.loc[m.step < f.t_train, "train_acc"] < 0.99).all()
        if not f.censored:
            assert m.loc[m.step == f.t_val, "val_acc"].iloc[0] >= 0.99
    assert isinstance(r, Results)


def test_structural_axes_become_facets(tmp_path):
    fits = pd.concat([synthetic_fits(seeds=2).assign(p=p) for p in (31, 47)], ignore_index=True)
    fits.attrs["axes"] = ["p", "wd", "seed"]
    fig = plot_phase_diagram(fits)
    visible = [a for a in fig.axes if a.get_visible()]
    assert [a.get_title() for a in visible] == ["p=31", "p=47"]
    path = save_figure(fig, tmp_path / "phase_diagram.svg")
    assert path.read_text().lstrip().startswith(("<?xml", "<svg"))


@pytest.mark.slow
def test_plot_cli_formats(tmp_path, tiny, capsys):
    from grokjax.cli import main

    out = tmp_path / "r"
    assert main(["sweep", *tiny, "--out", str(out), "--quiet", "--no-plot"]) == 0
    assert main(["plot", str(out), "--format", "svg"]) == 0 and (out / "phase_diagram.svg").exists()
    assert main(["plot", str(out), "--format", "gif"]) == 2
    assert "invalid choice" in capsys.readouterr().err


def test_importing_and_drawing_never_change_the_matplotlib_backend(tmp_path):
    """A notebook's backend is its own: the plots are built without pyplot and matplotlib.use is not
    called (it used to be, at import)."""
    synthetic_fits().to_parquet(tmp_path / "fits.parquet")
    code = ("import matplotlib, sys, pathlib, pandas as pd; import grokjax.analysis.plots as plots; "
            "import grokjax.analysis.curves; from grokjax.store.outputs import save_figure; "
            f"d = pathlib.Path({str(tmp_path)!r}); fits = pd.read_parquet(d / 'fits.parquet'); "
            "fits.attrs['axes'] = ['wd', 'seed']; save_figure(plots.plot_phase_diagram(fits), d / 'p.png'); "
            "print(matplotlib.get_backend(), 'matplotlib.pyplot' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=dict(os.environ, PYTHONPATH=str(REPO), MPLBACKEND="svg"))
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["svg", "False"] and (tmp_path / "p.png").stat().st_size > 10_000


def test_learning_curves_colour_by_the_swept_number_that_varies():
    """A warm-started sweep over training fractions at one wd: the curves' colours name frac, not wd; a wd
    sweep keeps wd."""
    from grokjax.analysis.curves import plot_curves

    steps = np.arange(0, 30, 10)
    for axes, values in ((["frac", "wd", "seed"], {"frac": [0.1, 0.2], "wd": [1.0, 1.0]}),
                         (["wd", "seed"], {"frac": [0.3, 0.3], "wd": [0.1, 1.0]})):
        fits = pd.DataFrame({"run_id": [0, 1], "seed": [0, 0], **values})
        fits.attrs["axes"] = axes
        metrics = pd.DataFrame({"run_id": np.repeat([0, 1], len(steps)), "step": np.tile(steps, 2),
                                **{c: np.linspace(0.1, 1, 2 * len(steps)) for c in
                                   ("train_acc", "val_acc", "param_norm", "train_loss", "val_loss")}})
        legend = plot_curves(metrics, fits).axes[5].get_legend()
        labels = [t.get_text() for t in legend.get_texts()]
        key = axes[0]
        assert [f"{key}={v:g}" for v in values[key]] == labels[:2], labels
