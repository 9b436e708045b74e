"""design=law: which candidate a freed slot trains next so that the exponent alpha of t_val ∝ wd^alpha
(Omnigrok; ``analysis.law.fit_law``) comes out with the narrowest interval.

fit_law draws a least-squares line ln t = c + alpha ln x through the Kaplan-Meier medians of the cells
(distinct x) whose runs mostly grok, and bootstraps seeds within cells for its interval, which needs at least
``MIN_SEEDS_FOR_INTERVAL`` runs in every fitted cell and ``MIN_LAW_CELLS`` cells. If each run's ln t scatters by
sigma about the line, a cell of n_j runs of which a fraction p_j grok (the events its median is read from)
has a median of variance ~ sigma^2 / (n_j p_j), and the slope's variance is, in units of sigma^2,

    V = sum_j c_j^2 / (n_j p_j),   c_j = (u_j - mean u) / sum_k (u_k - mean u)^2,   u = ln x.

V depends on where the cells lie and how full they are, not on the times themselves, so the outcomes the
boundary design learns (grokked within the budget or not) are all the rule needs, and a resume replays it.
The rule:

1. The start fills whole cells: ``n_initial`` runs over evenly spread levels, ``MIN_SEEDS_FOR_INTERVAL`` at
   each (rule ``start``).
2. A cell is *usable* where its expected grokking fraction is at least ``USABLE``: the outcomes known and the
   runs still training at the boundary model's predictive probability (``design.boundary``); a value not yet
   run takes the fraction interpolated (in ln x) between its nearest neighbours run, or beyond them the
   boundary model's. At 3/4, a cell of 3 runs has its median observed with probability 0.84, of 4 with 0.95.
3. A cell begun that the fit would read (expected fraction >= 1/2) is completed first, the fullest first
   (rule ``fill``): one cell with fewer seeds leaves fit_law's law without an interval.
4. Until ``MIN_LAW_CELLS`` usable cells are complete, runs go to the *anchors*: the top, bottom and middle of
   the usable levels, the fullest first (rule ``anchor``).
5. Then each run goes where it most lowers V per run, a new cell costing the runs that complete it (rule
   ``law``; its acquisition is that fall of V per run).
6. Where no open level is usable, or fewer than ``MIN_LAW_CELLS`` levels are, the boundary rule picks (rule
   ``boundary``): its runs show where runs grok.

Runs placed for the slope sit at the ends of the grokking range, the bottom end just above the boundary
(the slowest runs); the law itself is fitted by ``grokjax fit`` unchanged (its cells, ``--confirm`` and all).
"""

from __future__ import annotations

import math

import numpy as np

from grokjax.analysis.law import MIN_LAW_CELLS
from grokjax.analysis.survival import MIN_SEEDS_FOR_INTERVAL
from grokjax.design.chooser import PENDING, BoundaryDesign, Pick

USABLE = 0.75  # the expected grokking fraction at which a cell's median counts as observed


def slope_variance(u: np.ndarray, n: np.ndarray, p: np.ndarray) -> float:
    """V, the variance (units sigma^2) of the least-squares slope through cells at ``u`` [k] (ln x) of ``n``
    [k] runs grokking in fractions ``p`` [k]; inf below MIN_LAW_CELLS cells or with all cells at one u."""
    if len(u) < MIN_LAW_CELLS:
        return math.inf
    d = u - u.mean()
    ss = float((d * d).sum())
    return float(((d / ss) ** 2 / (n * p)).sum()) if ss > 0 else math.inf


class LawDesign(BoundaryDesign):
    """Chooses up to ``budget`` of the candidates at values ``x`` [R] of wd (> 0), ``n_initial`` of them
    space-filling, to narrow the interval of fit_law's exponent (one swept axis: no ``by``)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.n_by != 1:
            raise ValueError("design=law maps one swept number")
        self.u = np.log(self.levels)
        self.full = np.minimum(MIN_SEEDS_FOR_INTERVAL, np.bincount(self.level_of, minlength=len(self.levels)))

    def _best(self, order: np.ndarray, outcome: np.ndarray, picks: list[Pick],
              taken: np.ndarray) -> tuple[tuple[int, int], float, str]:
        """The level whose next run narrows the exponent most (see the module's rule): the point, its score
        and the rule that chose it."""
        n_levels = len(self.levels)
        done = order[outcome[order] != PENDING]
        p_hat = self._predictive(done, outcome, self._pending(order, outcome, picks))
        count = lambda ix, w=None: np.bincount(self.level_of[ix], w, minlength=n_levels)  # noqa: E731
        n = count(np.flatnonzero(taken))
        grokked = count(done, outcome[done].astype(np.float64)) + (n - count(done)) * p_hat
        frac = self._expected_fraction(n, grokked, p_hat)
        usable, is_open = frac >= USABLE, count(np.flatnonzero(~taken)) > 0
        choices, complete = usable & is_open, usable & (n >= self.full)
        begun = np.flatnonzero(is_open & (n > 0) & (n < self.full) & (frac >= 0.5))
        if len(begun):
            return (int(begun[np.lexsort((-begun, -n[begun]))[0]]), 0), math.nan, "fill"
        if not choices.any() or usable.sum() < MIN_LAW_CELLS:
            return super()._best(order, outcome, picks, taken)
        if complete.sum() < MIN_LAW_CELLS:
            return (self._anchor(np.flatnonzero(usable), n, choices), 0), math.nan, "anchor"
        return self._most_informative(choices, complete, n, grokked, p_hat, self.budget - int(taken.sum()))

    def _spread(self, taken: np.ndarray) -> tuple[int, int]:
        """The start: pick i goes to the (i div MIN_SEEDS_FOR_INTERVAL)-th of the start's cells, spread evenly
        over the levels (by rank), or to the nearest open level."""
        i, per_cell = int(taken.sum()), MIN_SEEDS_FOR_INTERVAL
        n_cells = -(-self.n_initial // per_cell)
        target = round((i // per_cell) * (len(self.levels) - 1) / max(n_cells - 1, 1))
        open_levels = np.unique(self.level_of[~taken])
        return int(open_levels[np.argmin(np.abs(open_levels - target))]), 0

    def _expected_fraction(self, n: np.ndarray, grokked: np.ndarray, p_hat: np.ndarray) -> np.ndarray:
        """The expected grokked fraction at each level [L]: the taken runs' (outcomes known, the pending at
        ``p_hat``); at a level not yet run, interpolated in ln x between the nearest levels run on either
        side, and ``p_hat`` beyond the outermost. Not the boundary model alone: it is monotone, so a range
        that reaches confusion at large wd (runs that stop generalizing) would drag it down everywhere."""
        tried = np.flatnonzero(n > 0)
        frac = p_hat.copy()
        if len(tried):
            seen = grokked[tried] / n[tried]
            inside = (self.u > self.u[tried[0]]) & (self.u < self.u[tried[-1]])
            frac[inside] = np.interp(self.u[inside], self.u[tried], seen)
            frac[tried] = seen
        return frac

    def _predictive(self, done: np.ndarray, outcome: np.ndarray, pending: np.ndarray) -> np.ndarray:
        """P(a run at each level groks within the budget) [L], under the boundary posterior."""
        post = np.exp(self._posterior(done, outcome, pending))[:, :, None]
        return (post * self.grid.p_grok(self.levels)).sum(axis=(0, 1))

    def _anchor(self, usable: np.ndarray, n: np.ndarray, choices: np.ndarray) -> int:
        """The level of the next anchor run: of the usable levels' top, bottom and middle (by rank), the
        unfinished one with the most runs (the highest on a tie); any open usable level once all are full."""
        ranks = np.unique(np.round(np.linspace(0, len(usable) - 1, MIN_LAW_CELLS)).astype(int))
        anchors = usable[ranks][::-1]
        open_anchors = [a for a in anchors if choices[a] and n[a] < self.full[a]]
        if not open_anchors:
            return int(np.flatnonzero(choices)[-1])
        return int(max(open_anchors, key=lambda a: n[a]))

    def _most_informative(self, choices: np.ndarray, complete: np.ndarray, n: np.ndarray, grokked: np.ndarray,
                          p_hat: np.ndarray, left: int) -> tuple[tuple[int, int], float, str]:
        """The open usable level whose completion (or next run, if complete) lowers V most per run, among
        those the ``left`` runs still to choose can complete (a cell begun and left thin would cost the law
        its interval) unless none can be."""
        cells = np.flatnonzero(complete)
        now = slope_variance(self.u[cells], n[cells], grokked[cells] / n[cells])
        cost = np.maximum(1, self.full - n)
        if (choices & (cost <= left)).any():
            choices = choices & (cost <= left)
        best: tuple[float, int] | None = None
        for j in np.flatnonzero(choices):
            k = int(cost[j])
            after_n, after_g = n.astype(np.float64), grokked.copy()
            after_n[j], after_g[j] = n[j] + k, grokked[j] + k * p_hat[j]
            ix = np.union1d(cells, [j])
            gain = (now - slope_variance(self.u[ix], after_n[ix], after_g[ix] / after_n[ix])) / k
            if best is None or gain > best[0]:
                best = (gain, int(j))
        assert best is not None, "called only with an open usable level"
        return (best[1], 0), best[0], "law"
