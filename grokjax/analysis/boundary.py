"""The phase boundary of a fitted sweep: x* where P(grokked within the budget | x) = 1/2 along a swept
per-model number (``design.boundary``), for a dense grid as for design=boundary, so the two compare.

With one such axis there is one x*. With two (wd x frac, lr x wd) the boundary is a curve: x* along each
axis at every value of the other, so a wd x frac grid gives wd* at each frac and the critical training
fraction frac* at each wd (Varma et al. 2023, Huang et al. 2024), from the one estimator. A run counts as
grokked within the budget when its phase is grokking or comprehension (a kept, confirmed t_val); censored
runs count as not grokked, and diverged runs and runs at x <= 0 (no log) are left out.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from grokjax.analysis.fit import GROKKED
from grokjax.design.boundary import Estimate, estimate
from grokjax.grid.design import moving_axes


@dataclass(frozen=True)
class Boundary:
    """x* of ``x_name`` with its interval (``estimate``), at a budget of ``steps``, from the runs of
    ``n_candidates`` that trained; with two swept axes, at ``by`` = ``by_value``."""

    x_name: str
    estimate: Estimate
    steps: int
    n_candidates: int
    by: str | None = None
    by_value: float = math.nan

    def __str__(self) -> str:
        e = self.estimate
        edge = "; the interval reaches the end of the swept range: the boundary may lie outside it" if e.edge else ""
        at = f"{self.by}={self.by_value:.4g}, " if self.by else ""
        return (f"boundary {self.x_name}* = {e} at {at}{self.steps} steps ({e.n} of {self.n_candidates} "
                f"candidates run, {e.n_grokked} grokked){edge}")

    def row(self) -> dict:
        """The laws.parquet row of the boundary (with two axes: ``by`` names the other, whose value is in the
        column of its name)."""
        e = self.estimate
        at = {"by": self.by, self.by: self.by_value} if self.by else {}
        return {"target": "boundary", "x_name": self.x_name, "x_star": e.x_star, "x_star_low": e.low,
                "x_star_high": e.high, "n_runs": e.n, "n_grokked": e.n_grokked, "fitted": True} | at


def boundary_axes(fits: pd.DataFrame) -> list[str]:
    """The swept per-model numbers of the fits (column names, in the order typed): [] where there are none,
    more than two, or arms."""
    moving = [a for a in moving_axes(fits.attrs.get("axes", [])) if a in fits.columns]
    return moving if 1 <= len(moving) <= 2 and not fits.attrs.get("arm_keys") else []


def fit_boundaries(fits: pd.DataFrame) -> list[Boundary]:
    """The boundaries of a sweep of one compiled group and one budget: along its one swept number, or with
    two, along each at every value of the other (the first typed first). A line has no boundary where it
    has fewer than two values of x or no outcome of each kind (every run lies on one side)."""
    axes = boundary_axes(fits)
    one = lambda col: col not in fits.columns or fits[col].nunique() == 1  # noqa: E731
    if not axes or not (one("group") and one("steps")) or "phase" not in fits.columns:
        return []
    steps = int(fits["steps"].iloc[0]) if "steps" in fits.columns else int(fits["budget"].max())
    counts = _candidate_counts(fits, axes)
    data = fits[fits["phase"] != "diverged"]
    if len(axes) == 1:
        b = _fit_line(data, axes[0], steps, int(fits.attrs.get("n_candidates", counts.sum())))
        return [b] if b else []
    out = []
    for x_name, by in (axes, axes[::-1]):
        per_value = counts.groupby(level=by).sum()
        for value, line in data.groupby(by, sort=True):
            b = _fit_line(line, x_name, steps, int(per_value.get(value, len(line))), by, float(value))
            out += [b] if b else []
    return out


def _fit_line(data: pd.DataFrame, x_name: str, steps: int, n_candidates: int, by: str | None = None,
              by_value: float = math.nan) -> Boundary | None:
    data = data[data[x_name] > 0]
    grokked = data["phase"].isin(GROKKED).to_numpy()
    if data[x_name].nunique() < 2 or grokked.all() or not grokked.any():
        return None
    x = data[x_name].to_numpy(np.float64)
    return Boundary(x_name, estimate(x, grokked), steps, n_candidates, by, by_value)


def _candidate_counts(fits: pd.DataFrame, axes: list[str]) -> pd.Series:
    """The candidate runs per point of ``axes`` (fits.attrs["candidates"]: [[value..., count], ...] over
    the candidates' axes, written by fit_results), else the fitted runs per point."""
    cand = fits.attrs.get("candidates")
    if cand and list(cand["axes"]) == axes:
        frame = pd.DataFrame(cand["cells"], columns=[*axes, "n"])
        return frame.set_index(axes)["n"]
    return fits.groupby(axes).size()


def boundary_lines(boundaries: list[Boundary]) -> list[str]:
    """The summary's lines: one per boundary of a one-axis sweep; with two axes one per direction, e.g.
    ``boundary frac* at 4000 steps, by wd: 0.1 → 0.42 [0.35, 0.5] (8 of 8 run, 3 grokked); ...``."""
    if all(b.by is None for b in boundaries):
        return [str(b) for b in boundaries]
    lines = []
    for x_name in dict.fromkeys(b.x_name for b in boundaries):
        line = [b for b in boundaries if b.x_name == x_name]
        edge = " (*: the interval reaches the end of the swept range)" if any(b.estimate.edge for b in line) else ""
        cells = "; ".join(f"{b.by_value:.4g} → {b.estimate}{'*' if b.estimate.edge else ''} ({b.estimate.n} of "
                          f"{b.n_candidates} run, {b.estimate.n_grokked} grokked)" for b in line)
        lines.append(f"boundary {x_name}* at {line[0].steps} steps, by {line[0].by}: {cells}{edge}")
    return lines
