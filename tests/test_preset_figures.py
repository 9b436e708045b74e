"""Every preset's figure, drawn from its own grid with made-up times (no training): the panels it has, its
title, and its size. The arms presets compare their arms in one panel; the digits figure is titled without
op and p; the headline grid's 32 and 64 wd cells keep one legend entry per meaning."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest

from grokjax.analysis.plots import plot_phase_diagram
from grokjax.grid.expand import build_sweep
from grokjax.store.directory import runs_table


def _fake_fits(preset: str, args: list[str] = ()) -> pd.DataFrame:
    """The preset's runs table with times: even run_ids grok at 300 steps, odd ones never (censored)."""
    sweep = build_sweep(preset, list(args))
    fits = runs_table(sweep)
    grok = fits["run_id"].to_numpy() % 2 == 0
    budget = float(fits["steps"].max())
    fits = fits.assign(t_train=60.0, t_val=np.where(grok, 300.0, np.nan), delay=np.where(grok, 240.0, np.nan),
                       censored=~grok, phase=np.where(grok, "comprehension", "memorization"), budget=budget,
                       t_val_first=np.where(grok, 300.0, np.nan), max_val_acc=0.5, final_val_acc=0.5)
    fits.attrs.update(axes=[a.rsplit(".", 1)[-1] for a in sweep.to_json()["axes"]], threshold=0.99, keep=0.9,
                      arm_keys=list(dict.fromkeys(k.rsplit(".", 1)[-1] for arm in sweep.arms for k in arm)))
    return fits


def _panels(fig) -> list:
    return [a for a in fig.axes if a.get_visible() and a.get_label() != "<colorbar>"]


@pytest.mark.parametrize("preset, args, n_panels, title, ticks", [
    ("default", [], 2, ["Grokking phase diagram", "op=add  p=47"], None),  # the wd = 0 panel and the log panel
    ("nanda2023", [], 1, ["Grokking phase diagram", "op=add  p=113"], None),
    ("power2022", [], 1, ["Grokking phase diagram", "op=div  p=97"], None),
    ("omnigrok_digits", [], 1, ["Grokking phase diagram", "digits"], None),
    ("prieto2025_collapse", [], 2, ["Grokking phase diagram"], None),  # frac x loss_dtype
    ("grokfast2024", [], 1, ["Grokking per arm", "op=mul  p=97"], ["grokfast=none\nwd=0", "grokfast=ema"]),
    ("prieto2025", [], 1, ["Grokking per arm", "op=add  p=113"], ["loss=softmax", "loss=stablemax"]),
])
def test_each_presets_figure_has_its_panels_and_title(preset, args, n_panels, title, ticks):
    fits = _fake_fits(preset, args)
    fig = plot_phase_diagram(fits)
    text = fig._suptitle.get_text()
    assert all(t in text for t in title), text
    if preset == "omnigrok_digits":
        assert not re.search(r"(^|\s)(op|p)=", text), text
    assert len(_panels(fig)) == n_panels, [a.get_label() for a in fig.axes]
    assert fig.get_figwidth() * fig.dpi <= 2200  # prieto2025 was a 3,795-px strip of three facets
    if ticks:
        labels = " ".join(t.get_text() for t in _panels(fig)[0].get_xticklabels())
        assert all(t in labels for t in ticks) and labels.index(ticks[0]) < labels.index(ticks[1]), labels  # arm order
        legend = [t.get_text() for t in _panels(fig)[0].get_legend().get_texts()]
        assert not any("CI open" in t for t in legend)  # no interval drawn from one seed
        assert any("no interval from 1 seed" in t for t in legend), legend


@pytest.mark.parametrize("n_wd", [32, 64])
def test_the_headline_grid_stays_readable(n_wd):
    fits = _fake_fits("default", [f"wd=logspace(-3,1,{n_wd})", "seeds=16", "steps=500"])
    fits["t_val"] = np.where(fits["wd"] > 0.5, 200.0, np.nan)
    fits["censored"] = ~np.isfinite(fits["t_val"])
    fits["phase"] = np.where(fits["censored"], "memorization", "comprehension")
    fig = plot_phase_diagram(fits)
    (ax,) = _panels(fig)
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert len(legend) == len(set(legend)), legend  # "CI open above the budget" was listed twice
    bands = [t for t in ax.texts if "/16" in t.get_text()]
    assert len(bands) <= 36 and all(t.get_rotation() == 90 for t in bands)  # upright, thinned past 36
    assert all("\n" not in t.get_text() for t in bands)
