"""Plain-text tables for the terminal."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from grokjax.analysis.fit import PHASES


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
