"""The phase boundary of a fitted sweep: x* where P(grokked within the budget | x) = 1/2 along its one
swept per-model number (``design.boundary``), for a dense grid as for design=boundary, so the two compare.

A run counts as grokked within the budget when its phase is grokking or comprehension (a kept, confirmed
t_val); diverged runs and runs at x <= 0 (no log) are left out.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from grokjax.analysis.fit import GROKKED
from grokjax.config.fields import ALIASES, FIELDS
from grokjax.design.boundary import Estimate, estimate
from grokjax.grid.design import REPLICATES


@dataclass(frozen=True)
class Boundary:
    """x* of ``x_name`` with its interval (``estimate``), at a budget of ``steps``, from the runs of
    ``n_candidates`` that trained."""

    x_name: str
    estimate: Estimate
    steps: int
    n_candidates: int

    def __str__(self) -> str:
        e = self.estimate
        edge = "; the interval reaches the end of the swept range: the boundary may lie outside it" if e.edge else ""
        return (f"boundary {self.x_name}* = {e} at {self.steps} steps ({e.n} of {self.n_candidates} candidates "
                f"run, {e.n_grokked} grokked){edge}")

    def row(self) -> dict:
        """The laws.parquet row of the boundary."""
        e = self.estimate
        return {"target": "boundary", "x_name": self.x_name, "x_star": e.x_star, "x_star_low": e.low,
                "x_star_high": e.high, "n_runs": e.n, "n_grokked": e.n_grokked, "fitted": True}


def boundary_axis(fits: pd.DataFrame) -> str | None:
    """The one swept per-model number of the fits (a column name), or None (none, or several)."""
    moving = [a for a in fits.attrs.get("axes", []) if a in ALIASES and FIELDS[ALIASES[a]].per_model
              and ALIASES[a] not in REPLICATES and a in fits.columns]
    return moving[0] if len(moving) == 1 and not fits.attrs.get("arm_keys") else None


def fit_boundary(fits: pd.DataFrame) -> Boundary | None:
    """The boundary of a sweep of one compiled group along its one swept number, or None where it has
    none: no such axis, several groups or budgets, fewer than two values of x, or no outcome of each kind
    (then every run lies on one side)."""
    x_name = boundary_axis(fits)
    one = lambda col: col not in fits.columns or fits[col].nunique() == 1  # noqa: E731
    if x_name is None or not (one("group") and one("steps")) or "phase" not in fits.columns:
        return None
    data = fits[(fits["phase"] != "diverged") & (fits[x_name] > 0)]
    grokked = data["phase"].isin(GROKKED).to_numpy()
    if data[x_name].nunique() < 2 or grokked.all() or not grokked.any():
        return None
    x = data[x_name].to_numpy(np.float64)
    n_candidates = int(fits.attrs.get("n_candidates", len(fits)))
    steps = int(fits["steps"].iloc[0]) if "steps" in fits.columns else int(fits["budget"].max())
    return Boundary(x_name, estimate(x, grokked), steps, n_candidates)
