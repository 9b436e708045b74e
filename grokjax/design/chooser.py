"""design=boundary: which queued candidate a freed slot trains next.

The candidates are a grid's runs; ``x`` [R] is each one's value of the swept number whose boundary is
mapped, and ``by`` [R] (optional) the index of its value of a second swept number: with two axes the
design maps x* at each value of the second (the boundary curve), one independent posterior per value. The
first ``n_initial`` picks spread over the grid (the values of the second axis in turn, and within each the
sorted distinct values of x evenly: a space-filling start); every later pick is the (x, second value) where
one more run most lowers the expected entropy of that value's x* (QUEST+'s rule,
``boundary.expected_entropy``; with one axis simply the least expected entropy), at the lowest run_id not
yet run there: a point where outcomes disagree is picked again, so its seeds are added. Runs still training
count as soft outcomes at their predicted probability while the next picks are scored (and each pick of one
call joins them), so slots freed together spread over several points instead of piling onto one.
Deterministic: the same outcomes in the same order give the same picks.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from grokjax.design.boundary import (Estimate, Grid, estimate, expected_entropy, log_posterior,
                                     marginal_entropy)

PENDING, NOT_GROKKED, GROKKED = -1, 0, 1


@dataclass(frozen=True)
class Pick:
    """One chosen candidate: its index, the score that chose it (``rule`` boundary: the expected entropy of
    x*'s posterior at its value of the second axis, if any; law: ``design.law``'s; NaN in the space-filling
    start and law's fill and anchor rules), the estimate of that x* from the outcomes known when it was chosen (None before
    any) and the rule that chose it (one of ``RULES``)."""

    index: int
    acquisition: float
    estimate: Estimate | None
    rule: str = "boundary"


RULES = ("start", "boundary", "fill", "anchor", "law")  # the space-filling start; design.chooser's; design.law's

@dataclass
class BoundaryDesign:
    """Chooses up to ``budget`` of the candidates at values ``x`` [R] (> 0), ``n_initial`` of them
    space-filling; ``by`` [R] (default all 0): each candidate's value index on a second swept axis."""

    x: np.ndarray
    budget: int
    n_initial: int
    by: np.ndarray | None = None

    def __post_init__(self) -> None:
        self.x = np.asarray(self.x, np.float64)
        self.by = np.zeros(len(self.x), np.int64) if self.by is None else np.asarray(self.by, np.int64)
        self.levels, self.level_of = np.unique(self.x, return_inverse=True)
        self.n_by = int(self.by.max()) + 1 if len(self.by) else 1
        self.grid = Grid.spanning(self.x)

    def pick(self, k: int, order: np.ndarray, outcome: np.ndarray) -> list[Pick]:
        """The next ``k`` candidates (fewer once ``budget`` or the candidates run out), given those run so
        far (``order``, candidate indices in launch order) and ``outcome`` [R] (PENDING, NOT_GROKKED or
        GROKKED for the runs of ``order``)."""
        taken = np.zeros(len(self.x), bool)
        taken[order] = True
        k = min(k, self.budget - len(order), int((~taken).sum()))
        picks: list[Pick] = []
        done = order[outcome[order] != PENDING]
        known = [self._known(done[self.by[done] == b], outcome) for b in range(self.n_by)]
        for _ in range(k):
            if int(taken.sum()) < self.n_initial:
                point, score, rule = self._spread(taken), float("nan"), "start"
            else:
                point, score, rule = self._best(order, outcome, picks, taken)
            level, b = point
            index = int(np.flatnonzero(~taken & (self.level_of == level) & (self.by == b))[0])
            taken[index] = True
            picks.append(Pick(index, score, known[b], rule))
        return picks

    def _known(self, done: np.ndarray, outcome: np.ndarray) -> Estimate | None:
        return estimate(self.x[done], outcome[done], self.x) if len(done) else None

    def _spread(self, taken: np.ndarray) -> tuple[int, int]:
        """The space-filling start: pick i goes to the second axis's value i mod B, and there to the j-th
        (j = i div B) of its share of evenly spaced levels of x (by rank), or the nearest open point."""
        i = int(taken.sum())
        b, j = i % self.n_by, i // self.n_by
        share = len(range(b, self.n_initial, self.n_by))
        target = round(j * (len(self.levels) - 1) / max(share - 1, 1))
        open_here = ~taken & (self.by == b)
        if not open_here.any():
            open_here = ~taken
            b = int(self.by[np.flatnonzero(open_here)[0]])
            open_here &= self.by == b
        open_levels = np.unique(self.level_of[open_here])
        return int(open_levels[np.argmin(np.abs(open_levels - target))]), b

    def _best(self, order: np.ndarray, outcome: np.ndarray, picks: list[Pick],
              taken: np.ndarray) -> tuple[tuple[int, int], float, str]:
        """The open point whose run most lowers its x*'s expected entropy (runs still training counted at
        their predictive probability): the point, its expected entropy and the rule's name."""
        best: tuple[float, tuple[int, int], float] | None = None
        pending = self._pending(order, outcome, picks)
        for b in range(self.n_by):
            open_levels = np.unique(self.level_of[~taken & (self.by == b)])
            if not len(open_levels):
                continue
            done = order[(outcome[order] != PENDING) & (self.by[order] == b)]
            log_post = self._posterior(done, outcome, pending[self.by[pending] == b])
            after = expected_entropy(self.grid, log_post, self.levels[open_levels])
            gain = after - (marginal_entropy(log_post) if self.n_by > 1 else 0.0)
            j = int(np.argmin(gain))
            if best is None or gain[j] < best[0]:
                best = (float(gain[j]), (int(open_levels[j]), b), float(after[j]))
        assert best is not None, "pick() asks only while a candidate is open"
        return best[1], best[2], "boundary"

    @staticmethod
    def _pending(order: np.ndarray, outcome: np.ndarray, picks: list[Pick]) -> np.ndarray:
        """The candidates taken whose outcomes are not known yet: still training, or picked in this call."""
        return np.concatenate([order[outcome[order] == PENDING], [p.index for p in picks]]).astype(np.int64)

    def _posterior(self, done: np.ndarray, outcome: np.ndarray, pending: np.ndarray) -> np.ndarray:
        """The log posterior [C, S] of the runs ``done`` with the runs ``pending`` as soft outcomes."""
        log_post = log_posterior(self.grid, self.x[done], outcome[done])
        if not len(pending):
            return log_post
        soft = (np.exp(log_post)[:, :, None] * self.grid.p_grok(self.x[pending])).sum(axis=(0, 1))
        return log_posterior(self.grid, np.concatenate([self.x[done], self.x[pending]]),
                             np.concatenate([outcome[done], soft]))
