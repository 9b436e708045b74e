"""Plain-text tables for the terminal."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

from grokjax.analysis.fit import PHASES
from grokjax.config.schedule import THRESHOLD


def _cell_axes(cell_stats: pd.DataFrame) -> list[str]:
    return [a for a in cell_stats.columns if a not in _CELL_STAT_COLUMNS]


def summary_table(cell_stats: pd.DataFrame, threshold: float = THRESHOLD) -> str:
    """The per-cell table: Kaplan-Meier medians of t_val (kept rule) and of the delay, with bootstrap
    95% intervals over seeds."""
    axes = _cell_axes(cell_stats)
    header = ("  ".join(f"{a:>8}" for a in axes) + "  seeds  grokked (kept)  median t_val [95% CI]      "
              "median delay [95% CI]    t_train  max val  phase")
    lines = [header]
    for _, r in cell_stats.iterrows():
        vals = "  ".join(f"{_fmt(r[a]):>8}" for a in axes)
        lines.append(f"{vals}  {r['n_seeds']:>5}  {r['frac_grokked']:>14.0%}  "
                     f"{_interval(r['median_t_val'], r['ci_low'], r['ci_high'], int(r['n_seeds']))}  "
                     f"{_interval(r['median_delay'], r['delay_ci_low'], r['delay_ci_high'], int(r['n_seeds']))}  "
                     f"{_steps(r['median_t_train']):>7}  {_acc(r.get('max_val_acc')):>7}  {r['phase']}")
    lines.append(f"(t_val: first evaluation at val acc >= {threshold:g} that is kept; delay = t_val - t_train; "
                 f"medians are Kaplan-Meier over seeds, censored at the budget; with n seeds a 95% interval "
                 f"is at most the seeds' range, n/a with fewer than 3 seeds; max val: the best validation "
                 f"accuracy of any seed)")
    return "\n".join(lines)


def side_by_side(tables: list[tuple[str, pd.DataFrame]]) -> str:
    """Per-cell tables of several sweeps joined on their common cell axes: grokked fraction and median
    t_val of each, one column pair per sweep."""
    common = set.intersection(*(set(_cell_axes(c)) for _, c in tables))
    axes = [a for a in _cell_axes(tables[0][1]) if a in common]
    merged: pd.DataFrame | None = None
    for i, (_, c) in enumerate(tables):
        part = c[axes + ["frac_grokked", "median_t_val"]].rename(
            columns={"frac_grokked": f"g{i}", "median_t_val": f"t{i}"})
        merged = part if merged is None else merged.merge(part, on=axes, how="outer")
    assert merged is not None
    merged = merged.sort_values(axes)
    width = max(16, *(len(label) for label, _ in tables))
    head = "  ".join(f"{a:>8}" for a in axes) + "  " + "  ".join(f"{label:>{width}}" for label, _ in tables)
    sub = "  ".join(" " * 8 for _ in axes) + "  " + "  ".join(f"{'grokked':>{width - 9}}  {'t_val':>7}"
                                                             for _ in tables)
    lines = [head, sub]
    for _, r in merged.iterrows():
        cols = []
        for i in range(len(tables)):
            g, t = r[f"g{i}"], r[f"t{i}"]
            cols.append(f"{'-' if pd.isna(g) else f'{g:.0%}':>{width - 9}}  {_steps(t):>7}")
        lines.append("  ".join(f"{_fmt(r[a]):>8}" for a in axes) + "  " + "  ".join(cols))
    lines.append("(grokked: fraction of seeds; t_val: Kaplan-Meier median of the kept-rule t_val; "
                 "'-': the cell is not in that sweep)")
    return "\n".join(lines)


_CELL_STAT_COLUMNS = {"n_seeds", "frac_grokked", "median_t_val", "ci_low", "ci_high", "median_delay",
                      "delay_ci_low", "delay_ci_high", "median_t_train", "max_val_acc", "final_val_acc",
                      "phase"} | {f"n_{p}" for p in PHASES}


def _interval(med: Any, lo: Any, hi: Any, n_seeds: int = 3) -> str:
    if pd.isna(lo) and pd.isna(hi):
        return f"{_steps(med):>7} [n/a: {n_seeds} seed{'s' if n_seeds != 1 else ''}]".ljust(27)
    return f"{_steps(med):>7} [{_steps(lo)}, {_steps(hi)}]".ljust(27)


def _acc(v: Any) -> str:
    return "-" if v is None or pd.isna(v) else f"{v:.3f}"


def near_misses(fits: pd.DataFrame, threshold: float, near: float) -> list[str]:
    """Runs that never kept the threshold but whose best validation accuracy came within ``near`` of it:
    "run 5 (wd=0.1, seed=2): near, max 0.985, final 0.972"."""
    axes = [a for a in fits.attrs.get("axes", []) if a in fits.columns] or ["wd"]
    close = fits[fits["censored"] & (fits["max_val_acc"] >= threshold - near) & (fits["phase"] != "diverged")]
    return [f"run {int(r['run_id'])} ({', '.join(f'{a}={_fmt(r[a])}' for a in axes)}): near, max "
            f"{r['max_val_acc']:.3f}, final {r['final_val_acc']:.3f}"
            + (" (reached it too late to confirm)" if r.get("unconfirmed") else "")
            for _, r in close.iterrows()]


def _fmt(v: object) -> str:
    return f"{v:g}" if isinstance(v, (float, np.floating)) else str(v)


def _steps(v: Any) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return ">budget" if math.isinf(v) else f"{v:.0f}"
